"""A log-likelihood backend that runs each distinct context once and scores its continuations from the cache.

lm-eval's ``HFLM`` feeds ``context + continuation`` to the model once per request, so a multiple-choice
item with 12 options runs its context 12 times (89% of the tokens of BBQ). ``PrefixCacheLM`` is an
``HFLM`` (same constructor, same request tokenisation, same ``loglikelihood_rolling`` and
``generate_until``) that only overrides the token-level scoring, ``_loglikelihood_tokens``:

1. Each request is cut exactly where HFLM would cut it: the model window is
   ``(context + continuation)[-(max_length + 1):][:-1]`` and the scored logits are its last
   ``len(continuation)`` positions. The first of them is the window's last context token: it ends the
   request's *prefix* (cached; only its last position's logits are computed, once for every
   continuation of that context); the rest is its *suffix* (continuation[:-1], empty for a one-token
   continuation, which then needs no pass of its own). A request whose window has only one token before
   the continuation (a prefix-token context) has no prefix: it is a plain forward, as in HFLM, since a
   one-token cache saves nothing and costs the cached-attention path.
2. Requests with the same prefix form a group; groups whose prefixes share a long head (a trie over
   token ids, e.g. BBQ items with one context and two questions) form a cluster with a shared *root*.
3. A batch of clusters runs in three passes that extend one ``DynamicCache``: roots, then the rest of
   each group's prefix (cache rows selected per group), then all suffixes of all groups, right-padded
   together, with an attention mask over cache + suffix and position ids that continue the prefix.
   The vocabulary head runs only at the positions that score something (each prefix's last token, each
   suffix's real tokens), not at padding. The cache lives for one batch; the batch is sized by
   ``memory_budget_mb``.

Numbers equal HFLM's up to float summation order (fp32: far below 1e-4); results come back in request
order and go to ``cache_hook.add_partial`` under the same (context, continuation) key, so the audit's
results cache does not depend on the backend.
"""

from __future__ import annotations

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

    prefix: tuple[int, ...]  # cached window tokens; the last one's logits score targets[0]
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
    """Bytes per token of the quantities that dominate peak memory in one batch."""

    kv: int  # key + value cache, all layers
    logits: int  # one position's vocabulary logits, log-softmax and temporaries
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
    if cut == 0:  # nothing before the first scored position: a plain forward, no cache (CrowS-Pairs' BOS-only context)
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
    shortening of the root costs the members already in it: ``l > (k - 1) * (root - l)``.
    """
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(splits):
        by_prefix.setdefault(s.prefix, []).append(i)
    clusters: list[Cluster] = []
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


@dataclass(frozen=True)
class _Shape:
    """What a batch's memory depends on: counts of roots, groups and leaves, and their longest rows."""

    n_r: int
    n_g: int
    n_l: int
    lr: int
    lg: int
    ls: int

    @classmethod
    def of(cls, clusters: Sequence[Cluster], splits: Sequence[Split]) -> _Shape:
        groups = [g for c in clusters for g in c.groups]
        leaves = [i for g in groups for i in g.leaves]
        return cls(len(clusters), len(groups), len(leaves), max(len(c.root) for c in clusters),
                   max(len(g.segment) for g in groups), max(len(splits[i].suffix) for i in leaves))

    def __add__(self, other: _Shape) -> _Shape:
        return _Shape(self.n_r + other.n_r, self.n_g + other.n_g, self.n_l + other.n_l, max(self.lr, other.lr),
                      max(self.lg, other.lg), max(self.ls, other.ls))

    def bytes(self, mem: MemoryModel, pass_tokens: int | None) -> int:
        n_r, n_g, lr, lg, ls = self.n_r, self.n_g, self.lr, self.lg, self.ls
        n_p = self.n_l if pass_tokens is None else min(self.n_l, max(1, pass_tokens // max(1, ls)))
        kv = mem.kv * (n_r * lr + n_g * (lr + lg) + n_p * (lr + lg + ls))
        acts = mem.activations * max(n_r * lr, n_g * lg, n_p * ls)
        scores = mem.heads * mem.elem * max(n_r * lr * lr, n_g * lg * (lr + lg), n_p * ls * (lr + lg + ls))
        return kv + acts + scores + mem.logits * (n_p * ls + n_r + n_g)


def batch_bytes(clusters: Sequence[Cluster], splits: Sequence[Split], mem: MemoryModel, *,
                pass_tokens: int | None = None) -> int:
    """Estimated peak bytes of running ``clusters`` as one padded batch (caches kept across passes).

    Root and segment caches live for the whole batch; suffixes run in passes of at most
    ``pass_tokens`` positions (None: all at once), and only one pass's rows hold a copy of their
    prefix cache, activations and logits at a time.
    """
    return _Shape.of(clusters, splits).bytes(mem, pass_tokens)


def _divide(cluster: Cluster, splits: Sequence[Split], mem: MemoryModel, budget: int,
            pass_tokens: int | None) -> list[Cluster]:
    """``cluster`` cut into pieces that each fit ``budget`` (down to single requests, which always run)."""
    if batch_bytes([cluster], splits, mem, pass_tokens=pass_tokens) <= budget:
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
    return [piece for part in parts
            for piece in _divide(Cluster(root=cluster.root, groups=part), splits, mem, budget, pass_tokens)]


def plan_batches(
    splits: Sequence[Split], mem: MemoryModel, budget_bytes: int, *, min_shared: int = 8,
    pass_tokens: int | None = None,
) -> list[list[Cluster]]:
    """Clusters packed greedily, longest first (less padding), into batches within ``budget_bytes``
    (suffixes run in passes of at most ``pass_tokens`` positions, see ``batch_bytes``)."""
    pieces = [p for c in plan_clusters(splits, min_shared=min_shared)
              for p in _divide(c, splits, mem, budget_bytes, pass_tokens)]
    shapes = {id(p): _Shape.of([p], splits) for p in pieces}
    pieces.sort(key=lambda c: (shapes[id(c)].lr, shapes[id(c)].lg, shapes[id(c)].ls), reverse=True)
    batches: list[list[Cluster]] = []
    current: _Shape | None = None
    for piece in pieces:
        grown = current + shapes[id(piece)] if current is not None else None
        if grown is not None and grown.bytes(mem, pass_tokens) <= budget_bytes:
            batches[-1].append(piece)
            current = grown
        else:
            batches.append([piece])
            current = shapes[id(piece)]
    return batches


def length_chunks(lengths: Sequence[int], *, ratio: float = 0.8) -> list[list[int]]:
    """Indices sorted by length (longest first), cut where a length drops below ``ratio`` x its chunk's longest.

    Rows of one batch run in these chunks so that padding wastes at most ``1 - ratio`` of a row; the
    cached prefix rows are selected per chunk (a cheap copy next to a forward pass). Filling small
    chunks up to a few hundred tokens was measured and did not pay: the padding it adds cost what
    the bigger products saved.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        if chunks and lengths[i] >= ratio * lengths[chunks[-1][0]]:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def memory_model(config, dtype: torch.dtype, logits_dtype: torch.dtype) -> MemoryModel:
    """Per-token memory of a decoder from its config (text config for multimodal wrappers)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = torch.finfo(dtype).bits // 8
    inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    return MemoryModel(
        kv=2 * cfg.num_hidden_layers * kv_heads * head_dim * elem,
        # logits, their log-softmax, and one temporary of the same size
        logits=3 * cfg.vocab_size * max(torch.finfo(logits_dtype).bits // 8, 4),
        activations=(6 * cfg.hidden_size + 3 * inter) * elem,
        heads=heads,
        elem=elem,
    )


# ---------------------------------------------------------------- the backend


class PrefixCacheLM(HFLM):
    """``HFLM`` whose log-likelihood scoring runs each distinct context once (see the module docstring).

    Constructed exactly like ``HFLM`` plus ``memory_budget_mb`` (the estimated peak of one batch's
    caches, activations and logits), ``min_shared_prefix`` (tokens two prefixes must share before
    they share a root) and ``max_pass_tokens`` (scored positions per forward pass). HFLM's ``batch_size``
    still governs ``generate_until``; the scoring batches are
    sized by the memory budget.
    """

    def __init__(self, *args, memory_budget_mb: int = 2048, min_shared_prefix: int = 8, max_pass_tokens: int = 2048,
                 **kwargs) -> None:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}.")
        super().__init__(*args, **kwargs)
        self.memory_budget_mb = int(memory_budget_mb)
        self.min_shared_prefix = int(min_shared_prefix)
        self.max_pass_tokens = int(max_pass_tokens)
        self._pass_tokens = self.max_pass_tokens
        params = inspect.signature(self.model.forward).parameters
        self._keep_kw = "logits_to_keep" in params
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _cache_supported(self) -> str | None:
        """Why the prefix cache cannot be used for this model, or None."""
        if self.backend != "causal":
            return f"backend is {self.backend}"
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        kinds = set(getattr(cfg, "layer_types", None) or ())
        if kinds - {"full_attention"}:
            return f"layer types {sorted(kinds)} (a sliding or linear cache cannot be padded and reused)"
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            return "sliding-window attention"
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
        # a pass's logits take at most half the budget (a large vocabulary gets shorter passes)
        self._pass_tokens = max(1, min(self.max_pass_tokens, budget // 2 // mem.logits))
        batches = plan_batches(splits, mem, budget, min_shared=self.min_shared_prefix, pass_tokens=self._pass_tokens)
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or (self.rank != 0)),
                    desc="Running loglikelihood requests (prefix cache)")
        for batch in batches:
            for idx, answer in self._score_batch(batch, splits):
                res[idx] = answer
                key = requests[idx][0]
                if key is not None:  # loglikelihood_rolling adds its partials per document itself
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                pbar.update(1)
        pbar.close()
        return res  # type: ignore[return-value]

    # ------------------------------------------------------------ forward passes

    def _extend(self, rows: Sequence[Sequence[int]], parents: Sequence[int] | None, kv, mask, *, head: str):
        """Run ``rows`` (right-padded) after the cached rows ``parents``; return (kv, mask, logits).

        ``kv`` is a list of (keys, values) per layer, [rows, kv_heads, T, head_dim], or None; ``mask``
        [rows, T] marks its valid positions. In this pass every new position may be attended (right padding
        and causality keep valid tokens away from pads, and no query is left with nothing to attend, which
        would give NaN); the returned mask marks only the valid new tokens. ``head`` says where the
        vocabulary head runs: ``"last"``, each row's last token ([rows, V]; an empty row's is meaningless);
        ``"valid"``, every real token, rows concatenated ([Σ len, V]).
        """
        from transformers.cache_utils import DynamicCache, DynamicLayer

        n, width = len(rows), max(len(r) for r in rows)
        if parents is not None:
            index = torch.tensor(parents, dtype=torch.long, device=self.device)
            mask = mask.index_select(0, index)
            kv = None if kv is None else [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
        if width == 0:
            return kv, mask, None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long, device=self.device)
        valid = torch.zeros((n, width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, : len(r)] = 1
        if head == "last":
            keep = [i * width + max(len(r) - 1, 0) for i, r in enumerate(rows)]
        else:
            keep = [i * width + j for i, r in enumerate(rows) for j in range(len(r))]
        keep_index = torch.tensor(keep, dtype=torch.long, device=self.device)
        positions = mask.sum(dim=1, keepdim=True) + torch.arange(width, device=self.device)
        kwargs = {"logits_to_keep": 0} if self._keep_kw else {}
        kwargs[self._cache_kw] = DynamicCache(ddp_cache_data=kv) if kv is not None else None
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None), \
                self._head_at(keep_index) as gathered:
            if kv is None:  # no cache: right padding needs no mask under causal attention (HFLM's own call)
                out = self.model(input_ids=ids, use_cache=True, **kwargs)
            else:
                out = self.model(input_ids=ids, attention_mask=torch.cat([mask, torch.ones_like(valid)], dim=1),
                                 position_ids=positions, use_cache=True, **kwargs)
        cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise RuntimeError(
                f"{type(self.model).__name__} returned cache layers {sorted({type(x).__name__ for x in cache.layers})}; "
                "PrefixCacheLM needs plain full-attention DynamicLayer caches. Use lm-eval's HFLM for this model."
            )
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        if not gathered:  # no head to hook: pick the positions from the full logits
            logits = logits[keep_index]
        return [(layer.keys, layer.values) for layer in cache.layers], torch.cat([mask, valid], dim=1), logits

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

    def _extend_chunked(self, rows: Sequence[Sequence[int]], parents: Sequence[int] | None, kv, mask):
        """``_extend`` with each row's last logits, run in chunks of similar length; the chunks' caches are
        zero-padded to one width (their mask is 0 there, so the zeros are never attended) and put back in
        row order, with the logits."""
        chunks = length_chunks([len(r) for r in rows])
        if len(chunks) == 1:
            return self._extend(rows, parents, kv, mask, head="last")
        parents = range(len(rows)) if parents is None else parents
        parts = [self._extend([rows[i] for i in c], [parents[i] for i in c], kv, mask, head="last") for c in chunks]
        width = max(m.shape[1] for _, m, _ in parts)
        order = torch.tensor([i for c in chunks for i in c], device=self.device).argsort()
        mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m, _ in parts]).index_select(0, order)
        like_logits = next((lg for _, _, lg in parts if lg is not None), None)
        logits = None if like_logits is None else torch.cat([
            lg if lg is not None else like_logits.new_full((len(c), like_logits.shape[1]), float("nan"))
            for (_, _, lg), c in zip(parts, chunks, strict=True)]).index_select(0, order)
        if all(p_kv is None for p_kv, _, _ in parts):
            return None, mask, logits
        like = next(p_kv for p_kv, _, _ in parts if p_kv is not None)
        parts = [(p_kv if p_kv is not None else [(k.new_zeros((m.shape[0], *k.shape[1:2], 0, k.shape[3])),) * 2
                                                 for k, _ in like], m) for p_kv, m, _ in parts]
        layers = []
        for layer in zip(*(p_kv for p_kv, _ in parts), strict=True):
            keys = torch.cat([F.pad(k, (0, 0, 0, width - k.shape[2])) for k, _ in layer]).index_select(0, order)
            values = torch.cat([F.pad(v, (0, 0, 0, width - v.shape[2])) for _, v in layer]).index_select(0, order)
            layers.append((keys, values))
        return layers, mask, logits

    def _score_batch(self, batch: Sequence[Cluster], splits: Sequence[Split]):
        """Yield (request index, (loglik, is_greedy)) for every request in ``batch``."""
        groups = [g for c in batch for g in c.groups]
        group_parent = [ci for ci, c in enumerate(batch) for _ in c.groups]
        leaves = [i for g in groups for i in g.leaves]
        leaf_parent = [gi for gi, g in enumerate(groups) for _ in g.leaves]
        empty = torch.zeros((len(batch), 0), dtype=torch.long, device=self.device)
        kv, mask, root_last = self._extend_chunked([c.root for c in batch], None, None, empty)
        kv, mask, seg_last = self._extend_chunked([g.segment for g in groups], group_parent, kv, mask)
        # each prefix's last logits (they score every continuation's first token): its segment's, or
        # its root's when the prefix is the root itself
        # (a group with no prefix at all gets a row of NaN: its requests score every target from the suffix pass)
        rows = [seg_last[gi] if g.segment else root_last[group_parent[gi]] if batch[group_parent[gi]].root else None
                for gi, g in enumerate(groups)]
        like = next((r for r in rows if r is not None), None)
        first = None if like is None else F.log_softmax(
            torch.stack([r if r is not None else torch.full_like(like, float("nan")) for r in rows]), dim=-1,
            dtype=self.softmax_dtype)
        lengths = [len(splits[i].suffix) for i in leaves]
        short = [r for r, n in enumerate(lengths) if n == 0]  # one-token continuations: no pass of their own
        yield from self._score_leaves([leaves[r] for r in short], [leaf_parent[r] for r in short], None, None,
                                      splits, first)
        long = [r for r, n in enumerate(lengths) if n > 0]
        for whole in length_chunks([lengths[r] for r in long]):
            whole = [long[j] for j in whole]
            # rows per pass: at most ``_pass_tokens`` scored positions. Measured at 2 threads on SmolLM2 (head
            # on scored positions only): 512 -> 2048 took CrowS-Pairs from 0.88x to 1.02x HFLM, HellaSwag
            # from 2.02x to 2.29x (before the head gather, big passes had thrashed caches: 0.7x)
            step = max(1, self._pass_tokens // max(1, lengths[whole[0]]))
            for chunk in (whole[j: j + step] for j in range(0, len(whole), step)):
                yield from self._score_leaves([leaves[r] for r in chunk], [leaf_parent[r] for r in chunk], kv, mask,
                                              splits, first)
        # the batch's cache (kv) is released when this generator ends

    def _score_leaves(self, rows: Sequence[int], parents: Sequence[int], kv, mask, splits: Sequence[Split],
                      first: torch.Tensor):
        """Score requests ``rows``: their first token from ``first[parent]`` (the prefix's last log-probs),
        the rest from a pass over their suffixes after the cached prefixes; yield (index, answer)."""
        if not rows:
            return
        suffixes = [splits[i].suffix for i in rows]
        logp = None
        if any(suffixes):
            _, _, logits = self._extend(suffixes, parents, kv, mask, head="valid")
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            del logits
        at = 0
        for row, idx in enumerate(rows):
            n = len(suffixes[row])
            if n < len(splits[idx].targets):  # the first target is scored by the prefix's last logits
                scored = first[parents[row]].unsqueeze(0)
                scored = torch.cat([scored, logp[at: at + n]]) if n else scored
            else:
                scored = logp[at: at + n]
            at += n
            targets = torch.tensor(splits[idx].targets, dtype=torch.long, device=self.device)
            greedy = bool((scored.argmax(dim=-1) == targets).all())
            yield idx, (float(scored.gather(1, targets[:, None]).sum()), greedy)
