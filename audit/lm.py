"""Model access through lm-eval's ``LM`` interface, and task benchmarks run by lm-eval.

The lm-eval imports of the harness live here (the prefix-cache backend in
``audit/engine.py`` subclasses lm-eval's HFLM). Every request goes through
``LM.loglikelihood`` / ``LM.generate_until``, so any lm-eval backend works and the
numbers are exactly lm-eval's for the same (context, continuation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probes.base import Answer, ProbeError, ProbeItem

BACKENDS = ("engine", "hflm")


@dataclass(frozen=True, kw_only=True)
class ItemResult:
    """One model's result on one probe item; ``invalid`` says why it could not be scored."""

    item_id: str
    columns: dict[str, float] | None
    answers: list[Answer] | None = None
    text: str | None = None
    invalid: str | None = None


# lm-eval warns on every HFLM built over a loaded model (we always pass one, on purpose); a run wraps
# each model once or more, so these two lines are said once per process, not once per wrap.
_HFLM_LOGGER = "lm_eval.models.huggingface"
_ONCE_PREFIXES = ("`pretrained` model kwarg is not of type `str`",
                  "Passed an already-initialized model through `pretrained`")


class _OncePerProcess(logging.Filter):
    """Lets each of ``_ONCE_PREFIXES`` through the first time only; every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        for prefix in _ONCE_PREFIXES:
            if msg.startswith(prefix):
                if prefix in self.seen:
                    return False
                self.seen.add(prefix)
        return True


_ONCE = _OncePerProcess()


def _say_hflm_warnings_once() -> None:
    logger = logging.getLogger(_HFLM_LOGGER)
    if _ONCE not in logger.filters:
        logger.addFilter(_ONCE)


def make_lm(loaded: Any, *, backend: str = "engine", batch_size: int = 32, max_length: int | None = None):
    """An lm-eval LM over an already loaded model (``audit.models.LoadedModel``)."""
    import torch

    _say_hflm_warnings_once()

    kw: dict[str, Any] = dict(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                              device="cpu" if not torch.cuda.is_available() else "cuda")
    if max_length:
        kw["max_length"] = max_length
    if backend == "hflm":
        from lm_eval.models.huggingface import HFLM

        return HFLM(**kw)
    if backend == "engine":
        try:
            from audit.engine import PrefixCacheLM
        except ImportError:  # engine not available in this build: lm-eval's HFLM computes the same numbers
            from lm_eval.models.huggingface import HFLM

            return HFLM(**kw)
        return PrefixCacheLM(**kw)
    from audit.errors import SpecError, did_you_mean

    raise SpecError(f"Unknown backend '{backend}'.{did_you_mean(backend, BACKENDS)} Choose one of {BACKENDS}.")


def _instances(request_type: str, args: Sequence[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _continuation_tokens(lm: Any, context: str, continuation: str) -> int | None:
    """Tokens in the continuation exactly as lm-eval splits the pair (None if the backend cannot say)."""
    try:
        if context == "":
            return len(lm.tok_encode(continuation, add_special_tokens=False))
        return len(lm._encode_pair(context, continuation)[1])
    except (AttributeError, TypeError):
        return None


def loglikelihoods(lm: Any, requests: Sequence[tuple[str, str]], *, tokenizer: Any = None,
                   progress: bool = False) -> list[Answer]:
    """Log-likelihood of each continuation given its context, via ``lm.loglikelihood``."""
    if not requests:
        return []
    out = lm.loglikelihood(_instances("loglikelihood", list(requests)), disable_tqdm=not progress)
    return [
        Answer(loglik=float(ll), is_greedy=bool(g), n_tokens=_continuation_tokens(lm, c, x))
        for (ll, g), (c, x) in zip(out, requests, strict=True)
    ]


def generate(lm: Any, prompts: Sequence[str], *, max_gen_toks: int = 32, until: Sequence[str] = ("\n",),
             progress: bool = False) -> list[str]:
    """Greedy continuations of ``prompts`` via ``lm.generate_until``."""
    if not prompts:
        return []
    gen = {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False}
    return list(lm.generate_until(_instances("generate_until", [(p, gen) for p in prompts]),
                                  disable_tqdm=not progress))


def score_probe_items(lm: Any, probe: Any, items: Sequence[ProbeItem], *, tokenizer: Any = None,
                      progress: bool = True) -> list[ItemResult]:
    """Answer every item's requests in one batched call, then apply the probe's scoring rule."""
    if probe.kind == "generation":
        texts = generate(lm, [it.prompt or "" for it in items],
                         max_gen_toks=getattr(probe, "max_gen_toks", 32), progress=progress)
        return [_score_one(probe, it, t, text=t) for it, t in zip(items, texts, strict=True)]
    flat = [r for it in items for r in it.requests]
    answers = loglikelihoods(lm, flat, tokenizer=tokenizer, progress=progress)
    results, pos = [], 0
    for it in items:
        mine = answers[pos: pos + len(it.requests)]
        pos += len(it.requests)
        results.append(_score_one(probe, it, mine, answers=mine))
    return results


def _score_one(probe: Any, item: ProbeItem, given: Any, *, answers=None, text=None) -> ItemResult:
    try:
        cols = probe.score_item(item, given)
    except ProbeError as exc:
        return ItemResult(item_id=item.id, columns=None, answers=answers, text=text, invalid=str(exc))
    if cols is None:
        return ItemResult(item_id=item.id, columns=None, answers=answers, text=text, invalid="not scorable")
    bad = [k for k, v in cols.items() if v is not None and isinstance(v, float) and math.isinf(v)]
    if bad:
        return ItemResult(item_id=item.id, columns=None, answers=answers, text=text,
                          invalid=f"infinite value in column(s) {bad}")
    return ItemResult(item_id=item.id, columns=dict(cols), answers=answers, text=text)
