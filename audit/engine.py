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

import contextlib
import inspect
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from audit.plan import (
    Cluster,
    Layout,
    Split,
    layout,
    memory_model,
    plan_passes,
    split_request,
    tree_mask,
)

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str] | None, list[int], list[int]]



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
        self.shard: tuple[int, int] | None = None  # (rank, world) in a data-parallel audit: see audit.parallel
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
        if self.shard is not None:  # a data-parallel audit: this rank runs every n-th pass (audit.parallel)
            return self._score_shard(requests, splits, passes, disable_tqdm)
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

    def _score_shard(self, requests: list[Request], splits: Sequence[Split], passes: list,
                     disable_tqdm: bool) -> list[tuple[float, bool]]:
        """This rank's passes (``k % world == rank``), then every rank's answers, in request order. The
        passes are planned over all requests on every rank, so each answer is the float it is in one process."""
        from audit.parallel import gather

        rank, world = self.shard
        mine: dict[int, tuple[float, bool]] = {}
        error = None
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or rank != 0),
                    desc=f"Running loglikelihood requests (prefix sharing, rank {rank} of {world})")
        try:
            for rows in passes[rank::world]:
                for idx, answer in self._score_pass(rows, splits):
                    mine[idx] = answer
                    pbar.update(1)
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, or they wait on the gather
            error = f"{type(exc).__name__}: {exc}"
        pbar.close()
        res = gather(mine, len(requests), error=error)
        for (key, _, _), answer in zip(requests, res, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return res

    # ------------------------------------------------------------ forward passes

    def _attention_mask(self, lay: Layout) -> torch.Tensor:
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
