"""The engine's planner (pure: token ids in, a plan of packed passes out; see ``audit.engine``).

Each request is cut where lm-eval's HFLM cuts it (``split_request``); requests sharing a prefix
form groups, groups sharing a long head form clusters (``plan_clusters``), clusters are divided to
fit a pass and packed into rows (``plan_passes``), and a pass's rows are laid out with position ids
and a tree attention mask (``layout``, ``tree_mask``) in which each token sees exactly its
ancestors. ``audit.engine.PrefixCacheLM`` runs these plans through the model.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Split:
    """One request cut at the first scored position of HFLM's model window."""

    prefix: tuple[int, ...]  # shared window tokens; the last one's logits score targets[0]
    suffix: tuple[int, ...]  # the rest of the window; its logits score targets[1:] (all targets if no prefix)
    targets: tuple[int, ...]  # the continuation tokens


@dataclass(frozen=True, kw_only=True)
class Group:
    """Requests with one prefix: ``segment`` is that prefix after the cluster's root."""

    segment: tuple[int, ...]
    leaves: tuple[int, ...]  # request indices


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """Groups whose prefixes all start with ``root``; the root is run once for all of them."""

    root: tuple[int, ...]
    groups: tuple[Group, ...]


@dataclass(frozen=True, kw_only=True)
class MemoryModel:
    """Bytes per token of the quantities that dominate peak memory in one pass."""

    logits: int  # one scored position's vocabulary logits, log-softmax and temporaries
    activations: int  # hidden states and MLP intermediates of one position in one layer
    heads: int  # attention heads (for the score matrix)
    elem: int  # bytes per element of activations


def split_request(context_enc: Sequence[int], continuation_enc: Sequence[int], max_length: int) -> Split:
    """HFLM's window ``(ctx + cont)[-(max_length+1):][:-1]``, cut after the first of its last ``len(cont)`` positions."""
    if len(context_enc) < 1 or len(continuation_enc) < 1:
        # HFLM asserts the same. ``loglikelihood`` gives an empty context the prefix token, but a context of
        # whitespace only loses it to the continuation (lm-eval's _encode_pair) and encodes to nothing.
        raise ValueError(
            f"Cannot score a request with {len(context_enc)} context and {len(continuation_enc)} continuation "
            "tokens: both need at least one token, as in lm-eval's HFLM. A context of only whitespace encodes "
            "to no tokens (use '' to condition on the prefix token); an empty continuation has nothing to score."
        )
    if len(continuation_enc) > max_length:
        raise ValueError(
            f"Continuation of {len(continuation_enc)} tokens is longer than the model window ({max_length}); "
            "HFLM cannot score it either. Shorten the continuation or raise max_length."
        )
    window = (list(context_enc) + list(continuation_enc))[-(max_length + 1):]
    inp, n_cont = window[:-1], len(continuation_enc)
    cut = len(inp) - n_cont
    if cut == 0:  # nothing before the first scored position: no prefix to share (CrowS-Pairs' BOS-only context)
        return Split(prefix=(), suffix=tuple(inp), targets=tuple(continuation_enc))
    return Split(prefix=tuple(inp[:cut + 1]), suffix=tuple(inp[cut + 1:]), targets=tuple(continuation_enc))


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_clusters(splits: Sequence[Split], *, min_shared: int = 8) -> list[Cluster]:
    """Group requests by prefix and cluster groups under shared roots (one trie level, where it pays).

    Prefixes are sorted, so prefixes with a common head are neighbours. A prefix joins the current
    cluster when the head it shares with it (``l`` tokens, at least ``min_shared``) saves more than the
    shortening of the root costs the members already in it: ``l > (k - 1) * (root - l)``. Requests with
    no prefix share nothing: each is a cluster of its own.
    """
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(splits):
        by_prefix.setdefault(s.prefix, []).append(i)
    clusters = [Cluster(root=(), groups=(Group(segment=(), leaves=(i,)),)) for i in by_prefix.pop((), [])]
    members: list[tuple[int, ...]] = []
    root = 0

    def flush() -> None:
        if members:
            groups = tuple(Group(segment=p[root:], leaves=tuple(by_prefix[p])) for p in members)
            clusters.append(Cluster(root=members[0][:root], groups=groups))

    for p in sorted(by_prefix):
        shared = min(root, _lcp(members[-1], p)) if members else 0
        if members and shared >= min_shared and shared > (len(members) - 1) * (root - shared):
            members.append(p)
            root = shared
        else:
            flush()
            members, root = [p], len(p)
    flush()
    return clusters


def tree_tokens(cluster: Cluster, splits: Sequence[Split]) -> int:
    """Tokens of ``cluster`` laid out as one tree: root, then per group its segment and its suffixes."""
    return len(cluster.root) + sum(len(g.segment) + sum(len(splits[i].suffix) for i in g.leaves)
                                   for g in cluster.groups)


def divide(cluster: Cluster, splits: Sequence[Split], limit: int) -> list[Cluster]:
    """``cluster`` cut into trees of at most ``limit`` tokens, each keeping its root and segments (down to
    single requests, which always run whole)."""
    if tree_tokens(cluster, splits) <= limit:
        return [cluster]
    if len(cluster.groups) > 1:
        half = len(cluster.groups) // 2
        parts = (cluster.groups[:half], cluster.groups[half:])
    elif len(cluster.groups[0].leaves) > 1:
        g = cluster.groups[0]
        half = len(g.leaves) // 2
        parts = ((Group(segment=g.segment, leaves=g.leaves[:half]),),
                 (Group(segment=g.segment, leaves=g.leaves[half:]),))
    else:
        return [cluster]
    return [piece for part in parts for piece in divide(Cluster(root=cluster.root, groups=part), splits, limit)]


def pack_rows(sizes: Sequence[int]) -> list[list[int]]:
    """Indices of trees of ``sizes`` tokens packed into rows as wide as the largest (best fit, largest
    first); rows come back widest first. Padding is at most what the last rows leave empty."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    if not order:
        return []
    width = sizes[order[0]]
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in order:
        k = bisect.bisect_left(room, (sizes[i], -1))
        if k < len(room):
            free, r = room.pop(k)
        else:
            free, r = width, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(room, (free - sizes[i], r))
    used = [sum(sizes[i] for i in r) for r in rows]
    return [rows[r] for r in sorted(range(len(rows)), key=lambda r: -used[r])]


def plan_passes(splits: Sequence[Split], *, min_shared: int = 8, max_row_tokens: int = 512,
                max_pass_tokens: int = 2048, max_pass_scored: int | None = None) -> list[list[list[Cluster]]]:
    """Every request in trees (``divide``), trees in rows (``pack_rows``), rows in passes: a pass is rows
    of similar width whose padded tokens stay within ``max_pass_tokens`` and whose scored positions stay
    within ``max_pass_scored`` (a single row always runs)."""
    pieces = [p for c in plan_clusters(splits, min_shared=min_shared) for p in divide(c, splits, max_row_tokens)]
    sizes = [tree_tokens(p, splits) for p in pieces]
    scored = [sum(len(splits[i].targets) for g in p.groups for i in g.leaves) for p in pieces]
    passes: list[list[list[Cluster]]] = []
    width = n_scored = 0
    for row in pack_rows(sizes):
        used, row_scored = sum(sizes[i] for i in row), sum(scored[i] for i in row)
        if passes and (len(passes[-1]) + 1) * width <= max_pass_tokens and (
                max_pass_scored is None or n_scored + row_scored <= max_pass_scored):
            passes[-1].append([pieces[i] for i in row])
            n_scored += row_scored
        else:  # rows come widest first: the first row of a pass sets its width
            passes.append([[pieces[i] for i in row]])
            width, n_scored = used, row_scored
    return passes


def memory_model(config, dtype: torch.dtype, logits_dtype: torch.dtype) -> MemoryModel:
    """Per-token memory of a decoder from its config (text config for multimodal wrappers)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    elem = torch.finfo(dtype).bits // 8
    inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    return MemoryModel(
        # logits, their log-softmax, and one temporary of the same size
        logits=3 * cfg.vocab_size * max(torch.finfo(logits_dtype).bits // 8, 4),
        activations=(6 * cfg.hidden_size + 3 * inter) * elem,
        heads=cfg.num_attention_heads,
        elem=elem,
    )


@dataclass(frozen=True, kw_only=True)
class Layout:
    """One pass: token ids, position ids and the tree of every position ([rows, width] each), and
    where each request's scored logits are (indices into the flattened positions)."""

    ids: torch.Tensor
    positions: torch.Tensor
    tree: torch.Tensor  # tree number in its row; -1 for padding
    group: torch.Tensor  # group number in its row; -1 for root tokens and padding
    leaf: torch.Tensor  # leaf number in its row; -1 for root and segment tokens and padding
    scored: dict[int, list[int]]  # request index -> flat positions whose logits score its targets


def layout(rows: Sequence[Sequence[Cluster]], splits: Sequence[Split], pad: int) -> Layout:
    """Place every tree of ``rows`` (see ``plan_passes``) token by token."""
    width = max(sum(tree_tokens(c, splits) for c in row) for row in rows)
    shape = (len(rows), width)
    ids, positions = [[pad] * width for _ in rows], [[0] * width for _ in rows]
    tree, group, leaf = ([[-1] * width for _ in rows] for _ in range(3))
    scored: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        at = n_group = n_leaf = 0

        def put(tokens, start, t, g, lf, r=r):
            nonlocal at
            for j, tok in enumerate(tokens):
                ids[r][at + j], positions[r][at + j] = tok, start + j
                tree[r][at + j], group[r][at + j], leaf[r][at + j] = t, g, lf
            at += len(tokens)

        for t, c in enumerate(row):
            put(c.root, 0, t, -1, -1)
            root_end = at - 1 if c.root else None
            for g in c.groups:
                put(g.segment, len(c.root), t, n_group, -1)
                prefix_end = at - 1 if g.segment else root_end
                depth = len(c.root) + len(g.segment)
                for i in g.leaves:
                    s = splits[i]
                    first = at
                    put(s.suffix, depth, t, n_group, n_leaf)
                    own = [r * width + first + j for j in range(len(s.suffix))]
                    # the prefix's last logits score the first target, unless there is no prefix
                    scored[i] = ([r * width + prefix_end] if len(s.suffix) < len(s.targets) else []) + own
                    n_leaf += 1
                n_group += 1
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long).reshape(shape)  # noqa: E731
    return Layout(ids=as_tensor(ids), positions=as_tensor(positions), tree=as_tensor(tree), group=as_tensor(group),
                   leaf=as_tensor(leaf), scored=scored)


def tree_mask(lay: Layout) -> torch.Tensor:
    """[rows, 1, width, width] bool, True where query i may attend key j: j is i itself or earlier in the
    same tree, and j's node (root, segment, suffix) is i's node or one of its ancestors. A padding
    position sees only itself (so no row of the softmax is empty) and no real token sees it."""
    n = lay.ids.shape[1]
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    t, g, lf = lay.tree, lay.group, lay.leaf
    same_tree = (t[:, :, None] == t[:, None, :]) & (t[:, None, :] >= 0)
    ancestor = (g[:, None, :] < 0) | ((g[:, None, :] == g[:, :, None]) & ((lf[:, None, :] < 0) | (lf[:, None, :] == lf[:, :, None])))
    mask = causal & same_tree & ancestor
    return (mask | torch.eye(n, dtype=torch.bool)).unsqueeze(1)
