"""Model access through lm-eval's ``LM`` interface, and task benchmarks run by lm-eval.

The lm-eval imports of the harness live here (the prefix-cache backend in
``audit/engine.py`` subclasses lm-eval's HFLM). Every request goes through
``LM.loglikelihood`` / ``LM.generate_until``, so any lm-eval backend works and the
numbers are exactly lm-eval's for the same (context, continuation).
"""

from __future__ import annotations

import json
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


def make_lm(loaded: Any, *, backend: str | dict[str, Any] = "engine", batch_size: int = 32,
            max_length: int | None = None):
    """An lm-eval LM for a loaded model (``audit.models.LoadedModel``): ours (``engine``, ``hflm``) wrap
    the loaded weights; any other lm-eval model type (``{name:, args:}``) is built from the registry
    with the model's path (and dtype) as its ``pretrained``/``model`` argument."""
    import torch

    _say_hflm_warnings_once()
    name, args = backend_name(backend), backend_args(backend)
    if name not in BACKENDS:
        return _registry_lm(loaded, name, args, batch_size=batch_size, max_length=max_length)
    kw: dict[str, Any] = dict(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                              device="cpu" if not torch.cuda.is_available() else "cuda")
    if max_length:
        kw["max_length"] = max_length
    if name == "hflm":
        from lm_eval.models.huggingface import HFLM

        return HFLM(**kw)
    try:
        from audit.engine import PrefixCacheLM
    except ImportError:  # engine not available in this build: lm-eval's HFLM computes the same numbers
        from lm_eval.models.huggingface import HFLM

        return HFLM(**kw)
    return PrefixCacheLM(**kw)


# ---------------------------------------------------------------- any lm-eval model type

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
_TASK_NEEDS = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
               "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate_until"}
REDACTED = "<redacted>"


def backend_name(backend: str | dict[str, Any]) -> str:
    return backend if isinstance(backend, str) else backend["name"]


def backend_args(backend: str | dict[str, Any]) -> dict[str, Any]:
    return {} if isinstance(backend, str) else dict(backend.get("args") or {})


def _secret(key: str) -> bool:
    """An argument not to record: its name holds 'key' (api_key), or 'token' as a word (auth_token, hf_token;
    not tokenizer or max_tokens), or says secret/password."""
    k = key.lower()
    return ("key" in k or "secret" in k or "password" in k
            or "token" in k.replace("-", "_").split("_"))


def redacted(backend: str | dict[str, Any]) -> str | dict[str, Any]:
    """The backend as run.json records it: ours as its name (as before), others as {name, args} with the
    value of every secret-looking argument replaced by ``<redacted>``."""
    if isinstance(backend, str):
        return backend
    args = {str(k): (REDACTED if _secret(str(k)) else v) for k, v in backend_args(backend).items()}
    return {"name": backend["name"], "args": json.loads(json.dumps(args, default=str))}


def backend_key(backend: str | dict[str, Any]) -> dict[str, Any]:
    """What the results cache adds to its keys for a backend: nothing for ours (engine and hflm give the same
    numbers on the same loaded weights), the recorded backend for any other (vllm, a server: other kernels)."""
    return {} if isinstance(backend, str) else {"backend": redacted(backend)}


def registry_names() -> list[str]:
    """Every model type lm-eval's registry knows (names only: nothing is imported)."""
    from lm_eval.api import registry

    if len(registry.model_registry) == 0:
        import lm_eval.models  # noqa: F401
    return sorted(registry.model_registry.keys())


def backend_class(name: str) -> type:
    """The LM class of a backend; SpecError when lm-eval has no such model type or cannot import it."""
    from audit.errors import SpecError, did_you_mean

    if name == "hflm":
        from lm_eval.models.huggingface import HFLM

        return HFLM
    if name == "engine":
        from audit.engine import PrefixCacheLM

        return PrefixCacheLM
    names = registry_names()
    if name not in names:
        raise SpecError(f"Unknown backend '{name}'.{did_you_mean(name, [*BACKENDS, *names])} Choose one of ours "
                        f"({', '.join(BACKENDS)}) or an lm-eval model type: {', '.join(names)}.")
    from lm_eval.api.registry import get_model

    try:
        return get_model(name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"Backend '{name}': lm-eval cannot import it ({exc}). Install its extra, e.g. "
                        f"pip install \"lm-eval[{name.split('-')[0]}]\".") from exc


def _only_raises_not_implemented(fn: Any) -> bool:
    """True when ``fn``'s body (after its docstring) is one ``raise NotImplementedError(...)``."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0].body if tree.body and hasattr(tree.body[0], "body") else []
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def lacking(cls: type) -> set[str]:
    """The request types ``cls`` does not implement: its method is lm-eval's abstract one, or only raises
    NotImplementedError (e.g. chat-completions APIs, which return no prompt log-probabilities)."""
    out = set()
    for req in REQUEST_TYPES:
        owner = next((c for c in cls.__mro__ if req in c.__dict__), None)
        fn = owner.__dict__[req] if owner else None
        if fn is None or getattr(fn, "__isabstractmethod__", False) or _only_raises_not_implemented(fn):
            out.add(req)
    return out


def probe_needs(probe: Any) -> tuple[str, ...]:
    """A probe's request types: its ``needs``, else (a plugin without it) what its ``kind`` implies."""
    return tuple(getattr(probe, "needs", None) or
                 (("generate_until",) if getattr(probe, "kind", None) == "generation" else ("loglikelihood",)))


def task_needs(output_types: Sequence[str]) -> tuple[str, ...]:
    """The request types of lm-eval tasks with these ``output_type``s (multiple_choice: loglikelihood)."""
    return tuple(sorted({_TASK_NEEDS.get(t, t) for t in output_types}))


def check_needs(name: str, needs: dict[str, tuple[str, ...]]) -> None:
    """Refuse backend ``name`` when it lacks a request type that a probe or task needs; ``needs`` maps
    "probe bold" / "task piqa" to its request types. SpecError naming each request type and who needs it."""
    from audit.errors import SpecError

    missing = lacking(backend_class(name))
    by_type: dict[str, list[str]] = {}
    for who, reqs in needs.items():
        for req in reqs:
            if req in missing:
                by_type.setdefault(req, []).append(who)
    if by_type:
        lines = [f"it has no {req} (lm-eval's {backend_class(name).__name__} does not implement it), which "
                 f"{', '.join(who)} need(s)" for req, who in sorted(by_type.items())]
        raise SpecError(f"Backend '{name}' cannot run this audit: " + "; ".join(lines) +
                        ". Remove them from the spec, or choose a backend that implements it (engine, hflm, hf, "
                        "vllm, or local-completions against a server that returns prompt log-probabilities).")


def _init_params(cls: type) -> set[str]:
    """The keyword arguments ``cls`` accepts, following ``**kwargs`` up the class tree."""
    import inspect

    params: set[str] = set()
    for c in cls.__mro__:
        if "__init__" not in c.__dict__ or c is object:
            continue
        sig = inspect.signature(c.__dict__["__init__"]).parameters
        params |= {p for p, v in sig.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self"}
        if not any(v.kind is v.VAR_KEYWORD for v in sig.values()):
            break
    return params


def registry_kwargs(cls: type, loaded: Any, args: dict[str, Any], *, batch_size: int,
                    max_length: int | None = None) -> dict[str, Any]:
    """The constructor arguments of an lm-eval model type for one audited model: the user's ``args``, plus
    the model's path as ``pretrained`` (hf, vllm) or ``model`` (API models), its dtype, revision and
    trust_remote_code, and the batch size, each where the class takes it and the user did not give it."""
    ref = loaded.ref
    params = _init_params(cls)
    where = str(loaded.directory) if loaded.directory else ref.source
    kw = dict(args)
    slot = "model" if "model" in params else "pretrained" if "pretrained" in params else None  # API: model
    if slot and not {"model", "pretrained"} & kw.keys():
        kw[slot] = where
    extra = {"dtype": ref.dtype, "batch_size": batch_size, "revision": ref.revision,
             "trust_remote_code": ref.trust_remote_code or None, "max_length": max_length}
    kw.update({k: v for k, v in extra.items() if v is not None and k in params and k not in kw})
    return kw


def _registry_lm(loaded: Any, name: str, args: dict[str, Any], *, batch_size: int, max_length: int | None):
    from audit.errors import SpecError

    cls = backend_class(name)
    try:
        return cls(**registry_kwargs(cls, loaded, args, batch_size=batch_size, max_length=max_length))
    except ModuleNotFoundError as exc:  # lm-eval's API models import their client packages only here
        raise SpecError(f"Backend '{name}': {exc}. Install what it names (for the API model types: "
                        "pip install \"lm-eval[api]\"), then run the audit again.") from exc


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
