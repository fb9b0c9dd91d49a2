"""A log-likelihood backend that runs each distinct context once and scores its continuations beside it.

lm-eval's ``HFLM`` feeds ``context + continuation`` to the model once per request, so a multiple-choice
item with 12 options runs its context 12 times (89% of the tokens of BBQ). ``PrefixCacheLM`` is an
``HFLM`` (same constructor, same request tokenisation, same ``loglikelihood_rolling`` and
``generate_until``) that only overrides the token-level scoring, ``_loglikelihood_tokens``:

1. Each request is cut exactly where HFLM would cut it: the model window is
   ``(context + continuation)[-(max_length + 1):][:-1]`` and the scored logits are its last
   ``len(continuation)`` positions. The first of them is the window's last context token: it ends the
   request's *prefix* (shared by every continuation of that context; its last position's logits score
   the first target); the rest is its *suffix* (continuation[:-1], empty for a one-token
   continuation). A request whose window has only one token before the continuation (a prefix-token
   context) has no prefix: its suffix is the whole window, as in HFLM.
2. Requests with the same prefix form a group; groups whose prefixes share a long head (a trie over
   token ids, e.g. BBQ items with one context and two questions) form a cluster with a shared *root*.
3. A cluster is laid out as one packed *tree* of tokens: its root, then each group's segment (the
   rest of its prefix) followed by its requests' suffixes. One forward pass runs many trees, packed
   side by side into rows, with a 4-D attention mask in which a token sees exactly its ancestors
   (root, its segment, the earlier tokens of its own suffix) and position ids that continue each
   path, so every token gets the hidden states it has in the request's own window. No key/value cache
   is copied or concatenated, and a batch of requests is a few wide passes instead of one pass per
   level and length bucket: on CPU each pass streams every weight once, which made many small passes
   cost more than the tokens they saved. The vocabulary head runs only at the positions that score
   something (each prefix's last token, each suffix's tokens), not at padding.

Numbers equal HFLM's up to float summation order (fp32: far below 1e-4); results come back in request
order and go to ``cache_hook.add_partial`` under the same (context, continuation) key, so the audit's
results cache does not depend on the backend. Models whose attention cannot take such a mask (sliding
windows, linear attention, an attention implementation other than sdpa or eager, no ``position_ids``)
are scored by HFLM's own path, with a warning.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str] | None, list[int], list[int]]


# ---------------------------------------------------------------- planning (pure)


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
class _Layout:
    """One pass: token ids, position ids and the tree of every position ([rows, width] each), and
    where each request's scored logits are (indices into the flattened positions)."""

    ids: torch.Tensor
    positions: torch.Tensor
    tree: torch.Tensor  # tree number in its row; -1 for padding
    group: torch.Tensor  # group number in its row; -1 for root tokens and padding
    leaf: torch.Tensor  # leaf number in its row; -1 for root and segment tokens and padding
    scored: dict[int, list[int]]  # request index -> flat positions whose logits score its targets


def layout(rows: Sequence[Sequence[Cluster]], splits: Sequence[Split], pad: int) -> _Layout:
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
    return _Layout(ids=as_tensor(ids), positions=as_tensor(positions), tree=as_tensor(tree), group=as_tensor(group),
                   leaf=as_tensor(leaf), scored=scored)


def tree_mask(lay: _Layout) -> torch.Tensor:
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


# ---------------------------------------------------------------- the backend


class PrefixCacheLM(HFLM):
    """``HFLM`` whose log-likelihood scoring runs each distinct context once (see the module docstring).

    Constructed exactly like ``HFLM`` plus ``memory_budget_mb`` (the estimated peak of one pass's
    activations, attention scores and logits), ``min_shared_prefix`` (tokens two prefixes must share
    before they share a root), ``max_pass_tokens`` (padded positions per forward pass) and
    ``max_row_tokens`` (positions per packed row, unless one request's window is longer: masked
    attention costs width² per row). HFLM's ``batch_size`` still governs ``generate_until``; the scoring
    passes are sized by these.
    """

    def __init__(self, *args, memory_budget_mb: int = 2048, min_shared_prefix: int = 8, max_pass_tokens: int = 2048,
                 max_row_tokens: int = 512, **kwargs) -> None:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}.")
        super().__init__(*args, **kwargs)
        self.memory_budget_mb = int(memory_budget_mb)
        self.min_shared_prefix = int(min_shared_prefix)
        self.max_pass_tokens = int(max_pass_tokens)
        self.max_row_tokens = int(max_row_tokens)
        params = inspect.signature(self.model.forward).parameters
        self._keep_kw = "logits_to_keep" in params
        self._has_positions = "position_ids" in params

    def _cache_supported(self) -> str | None:
        """Why the packed trees cannot be used for this model, or None."""
        if self.backend != "causal":
            return f"backend is {self.backend}"
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        kinds = set(getattr(cfg, "layer_types", None) or ())
        if kinds - {"full_attention"}:
            return f"layer types {sorted(kinds)} (a sliding or linear attention cannot take a tree mask)"
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            return "sliding-window attention"
        impl = getattr(self.model.config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            return f"attention implementation {impl} (a 4-D mask needs sdpa or eager)"
        if not self._has_positions:
            return "the model's forward takes no position_ids"
        return None

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        why = self._cache_supported()
        if why is not None:
            log.warning("PrefixCacheLM: %s; scoring with HFLM's own path.", why)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        splits = [split_request(ctx, cont, self.max_length) for _, ctx, cont in requests]
        mem = memory_model(self.model.config, self.model.dtype, self.softmax_dtype or torch.float32)
        budget = self.memory_budget_mb * 2**20
        # a pass's logits take at most half the budget (a large vocabulary gets fewer scored positions),
        # its activations and attention scores the other half
        scored_cap = max(1, budget // 2 // mem.logits)
        row_cap = max(1, min(self.max_row_tokens, budget // 2 // (mem.activations + mem.heads * mem.elem * self.max_row_tokens)))
        pass_cap = max(1, min(self.max_pass_tokens, budget // 2 // (mem.activations + mem.heads * mem.elem * row_cap)))
        passes = plan_passes(splits, min_shared=self.min_shared_prefix, max_row_tokens=min(row_cap, pass_cap),
                             max_pass_tokens=pass_cap, max_pass_scored=scored_cap)
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or (self.rank != 0)),
                    desc="Running loglikelihood requests (prefix sharing)")
        for rows in passes:
            for idx, answer in self._score_pass(rows, splits):
                res[idx] = answer
                key = requests[idx][0]
                if key is not None:  # loglikelihood_rolling adds its partials per document itself
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                pbar.update(1)
        pbar.close()
        return res  # type: ignore[return-value]

    # ------------------------------------------------------------ forward passes

    def _attention_mask(self, lay: _Layout) -> torch.Tensor:
        mask = tree_mask(lay).to(self.device)
        if getattr(self.model.config, "_attn_implementation", None) == "sdpa":
            return mask
        dtype = self.mixed_precision_dtype or self.model.dtype  # eager attention adds the mask to its scores
        return torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill_(~mask, torch.finfo(dtype).min)

    def _score_pass(self, rows: Sequence[Sequence[Cluster]], splits: Sequence[Split]):
        """Yield (request index, (loglik, is_greedy)) for every request in the trees of ``rows``."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lay = layout(rows, splits, pad)
        order = list(lay.scored)
        flat = [p for i in order for p in lay.scored[i]]
        keep_index = torch.tensor(flat, dtype=torch.long, device=self.device)
        kwargs = {"logits_to_keep": 0} if self._keep_kw else {}
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None), \
                self._head_at(keep_index) as gathered:
            out = self.model(input_ids=lay.ids.to(self.device), attention_mask=self._attention_mask(lay),
                             position_ids=lay.positions.to(self.device), use_cache=False, **kwargs)
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        if not gathered:  # no head to hook: pick the positions from the full logits
            logits = logits[keep_index]
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        del logits, out
        targets = torch.tensor([t for i in order for t in splits[i].targets], dtype=torch.long, device=self.device)
        picked = logp.gather(1, targets[:, None]).squeeze(1)
        # greedy: the target is the first maximum of its row (argmax's tie rule, as HFLM). A max
        # reduction is several times cheaper than argmax here; argmax runs only on rows where the
        # target equals the maximum, to settle ties
        top = logp.amax(dim=-1)
        hit = picked == top
        rows_hit = hit.nonzero().squeeze(1)
        if len(rows_hit):
            hit[rows_hit] = logp.index_select(0, rows_hit).argmax(dim=-1) == targets[rows_hit]
        at = 0
        for i in order:
            n = len(splits[i].targets)
            yield i, (float(picked[at: at + n].sum()), bool(hit[at: at + n].all()))
            at += n

    @contextlib.contextmanager
    def _head_at(self, index: torch.Tensor):
        """While active, the vocabulary head sees only the hidden states at flat positions ``index``.

        Why a hook: the model's own forward still applies whatever follows its head (logit soft-capping,
        scaling), and no position that scores nothing pays for a [V]-wide row (the head is ~20% of this
        model's per-token work). Yields False when the model has no output-embedding module to hook; the
        caller then gathers the positions from the full logits.
        """
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is None:
            yield False
            return

        def gather(_module, args):
            h = args[0]
            return (h.reshape(-1, h.shape[-1]).index_select(0, index).unsqueeze(0), *args[1:])

        handle = head.register_forward_pre_hook(gather)
        try:
            yield True
        finally:
            handle.remove()
