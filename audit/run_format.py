"""The stored run (run.json), as typed frozen records with validation that names the field at fault.

The audit writes run.json through ``AuditRun.from_json(doc)`` (so what it writes always conforms),
and the gate and the reports read it the same way: a malformed field is one error naming its path
(``comparisons[3].delta.p_adj: expected a number or null, got 'x'``), never a traceback deeper in.
The JSON keeps the field names documented in docs/run-schema.md; any change bumps
``SCHEMA_VERSION`` in audit.store.

Validation is written here rather than with a schema library: the records are plain frozen
dataclasses (the project's style), and one small walker over their type hints gives path-named
errors for all of them. Stdlib only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from audit.verdicts import STATES, VERDICTS


class RunFormatError(ValueError):
    """run.json does not have the stored run's shape; ``problems`` lists "path: what" for each field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        super().__init__("\n  - ".join(["run.json is malformed:"] + shown))


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is float:
        return "a number"
    if tp is int:
        return "a whole number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "text"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + (" or null" if len(args) < len(get_args(tp)) else "")
    if origin is list:
        return "a list"
    if origin is tuple:
        return "an interval [low, high]"
    if origin is dict or tp is dict:
        return "an object"
    if is_dataclass(tp):
        return "an object"
    return str(tp)


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """``value`` checked against type hint ``tp``; problems appended as "path: expected ..., got ..."."""
    origin = get_origin(tp)
    bad = f"{path}: expected {_describe(tp)}, got {value!r}"[:300]
    if tp is Any:
        return value
    if origin is tuple:  # an interval: [low, high] in JSON
        if not isinstance(value, list) or len(value) != len(get_args(tp)):
            problems.append(f"{path}: expected an interval [low, high], got {value!r}"[:300])
            return None
        return tuple(_convert(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, get_args(tp), strict=True)))
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _convert(value, a, path, trial)
            if not trial:
                return out
        problems.append(bad)
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(bad)
            return None
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            problems.append(bad)
            return None
        return value
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(bad)
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(bad)
            return []
        (item,) = get_args(tp)
        return [_convert(v, item, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(bad)
            return {}
        args = get_args(tp)
        if not args:
            return value
        return {k: _convert(v, args[1], f"{path}.{k}", problems) for k, v in value.items()}
    if is_dataclass(tp):
        return _record(tp, value, path, problems)
    raise TypeError(f"run_format: unsupported type {tp!r} at {path}")


def _record(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path or 'run.json'}: expected an object, got {value!r}"[:300])
        return None
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.default is MISSING:
                problems.append(f"{where}: missing")
            continue
        kwargs[f.name] = _convert(value[f.name], hints[f.name], where, problems)
    unknown = sorted(set(value) - {f.name for f in fields(cls)})
    if unknown:
        problems.append(f"{path or 'run.json'}: unknown field(s) {', '.join(map(str, unknown))}")
    try:
        return cls(**kwargs)
    except TypeError:  # a missing required field, already reported
        return None


def _to_json(value: Any) -> Any:
    """``value`` as run.json holds it: records as objects (their field names), intervals as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


class _Record:
    @classmethod
    def from_json(cls, value: Any, path: str = "") -> Any:
        """The record of ``value``; RunFormatError listing every malformed field by path."""
        problems: list[str] = []
        out = _record(cls, value, path, problems)
        if problems:
            raise RunFormatError(problems)
        return out

    def to_json(self) -> dict[str, Any]:
        """The record as run.json holds it (``from_json`` reads it back to an equal record)."""
        return _to_json(self)


Number = float | None
Interval = tuple[float, float] | None


@dataclass(frozen=True, kw_only=True)
class ModelSide(_Record):
    """One model's numbers on a cell (from its own items)."""

    value: Number
    bias: Number
    ci: Interval
    ci_tost: Interval
    n: int
    n_clusters: int
    why: str | None
    state: Literal[STATES]  # type: ignore[valid-type]
    biased: bool | None


@dataclass(frozen=True, kw_only=True)
class Delta(_Record):
    value: Number
    ci: Interval
    ci_equiv: Interval
    ci_decision: Interval
    level: Number
    p: Number
    p_adj: Number
    p_floor: Number
    method: str | None
    tested: bool
    why: str | None


@dataclass(frozen=True, kw_only=True)
class McNemar(_Record):
    b: int
    c: int
    p: Number
    p_adj: Number


@dataclass(frozen=True, kw_only=True)
class Evidence(_Record):
    p_s_given_t: Number
    p_s_given_not_t: Number
    kappa: Number
    margin_corr: Number


@dataclass(frozen=True, kw_only=True)
class Quality(_Record):
    metric: str
    teacher: Number
    student: Number


@dataclass(frozen=True, kw_only=True)
class Power(_Record):
    mde: Number
    items_needed: int | None


@dataclass(frozen=True, kw_only=True)
class Comparison(_Record):
    """One teacher-student cell: student x probe x bias metric x group (built by audit.compare)."""

    student_name: str
    probe: str
    metric: str
    kind: Literal["bias"]
    group_key: str
    group: str
    not_measurable: str | None
    n: int
    n_clusters: int
    teacher: ModelSide
    student: ModelSide
    mcnemar: McNemar | None
    evidence: Evidence | None
    quality: list[Quality]
    power: Power | None
    verdict: Literal[VERDICTS]  # type: ignore[valid-type]
    reason: str
    delta: Delta  # last: the key order of run.json, which ``to_json`` keeps


@dataclass(frozen=True, kw_only=True)
class Score(_Record):
    value: Number
    ci: Interval


@dataclass(frozen=True, kw_only=True)
class TaskResult(_Record):
    task: str
    metric: str | None
    n: int | None
    error: str | None
    scores: dict[str, Score]
    retention: dict[str, Score]


@dataclass(frozen=True, kw_only=True)
class ProbeModel(_Record):
    n_scored: int
    n_invalid: int
    error: str | None


@dataclass(frozen=True, kw_only=True)
class ProbeResult(_Record):
    probe: str
    version: str
    kind: Literal["loglikelihood", "generation"]
    card: dict[str, Any]
    group_keys: list[str]
    metrics: list[dict[str, Any]]
    n_total: int
    n_skipped: int
    limit: int | None
    sampled_ids_sha256: str
    models: dict[str, ProbeModel]
    breakdown: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ModelEntry(_Record):
    role: Literal["teacher", "student"]
    name: str
    source: str
    content_hash: str | None
    n_params: int | None
    dtype: str
    tokenizer_hash: str | None = None
    card: dict[str, Any] | None
    notes: list[str]


@dataclass(frozen=True, kw_only=True)
class Look(_Record):
    limit: int | None
    information: float
    alpha_spent: float
    undecided_overall: int


@dataclass(frozen=True, kw_only=True)
class BackendRecord(_Record):
    """An lm-eval model type as run.json records it (``backend: {name: vllm, args: {...}}``); arguments whose
    name holds 'key' or the word 'token' are stored as "<redacted>". Ours (engine, hflm) stay a plain name."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunSettings(_Record):
    alpha: float
    tolerance: float
    n_boot: int
    n_perm: int
    correction: Literal["holm", "bh"]
    min_items: int
    min_clusters: int
    seed: int
    backend: Literal["engine", "hflm"] | BackendRecord
    looks: list[float]
    alpha_look: float
    adaptive: list[Look] | None = None


@dataclass(frozen=True, kw_only=True)
class RunError(_Record):
    model: str | None
    stage: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Provenance(_Record):
    """Where and how the run was made: the machine's versions (null: not installed), the seed, the
    spec's sha256 (``AuditSpec.spec_hash``) and the sha256 of every data file read (path -> sha256)."""

    python: str
    platform: str
    torch: str | None
    transformers: str | None
    lm_eval: str | None
    fairlearn: str | None
    bequeath: str | None
    git: str | None
    seed: int
    spec_hash: str
    dataset_files: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class Integrity(_Record):
    """``sha256``: of the canonical JSON of run.json without this block (``canonical``), so every field,
    items_sha256 included, is covered; ``hmac_sha256``: the same bytes keyed with the signing key
    (``BEQUEATH_SIGNING_KEY``), null when the run was not signed. The plain digest catches an edit by
    someone who does not recompute it; only the signature catches one by someone who does."""

    sha256: str
    hmac_sha256: str | None


@dataclass(frozen=True, kw_only=True)
class AuditRun(_Record):
    schema_version: int
    status: Literal["complete", "partial"]
    created: str
    provenance: Provenance
    settings: RunSettings
    spec: dict[str, Any]
    models: list[ModelEntry]
    tasks: list[TaskResult]
    probes: list[ProbeResult]
    comparisons: list[Comparison]
    errors: list[RunError]
    integrity: Integrity  # set by audit.harness.write_run, last (see Integrity)
    items_sha256: str | None = None  # set by audit.harness.write_run; the gate requires it


SIGNING_KEY_ENV = "BEQUEATH_SIGNING_KEY"


def signing_key(environ: Any = None) -> bytes | None:
    """The run-signing key from ``BEQUEATH_SIGNING_KEY`` (its UTF-8 bytes), or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(SIGNING_KEY_ENV)
    return value.encode("utf-8") if value else None


def canonical(doc: dict) -> bytes:
    """The bytes the integrity block covers: run.json without ``integrity``, keys sorted, no spaces,
    ASCII only. A re-serialisation of the same document (another layout or key order) gives the same
    bytes; any change of a value, key or list order gives others."""
    body = {k: v for k, v in doc.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode("ascii")


def integrity_of(doc: dict, key: bytes | None = None) -> dict[str, str | None]:
    """The ``integrity`` block of ``doc`` (see ``Integrity``); signed when ``key`` is given."""
    data = canonical(doc)
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "hmac_sha256": hmac.new(key, data, hashlib.sha256).hexdigest() if key else None}


def integrity_problems(doc: dict, key: bytes | None, *, require_signature: bool = False) -> tuple[list[str], str]:
    """(problems, what was verified: "digest", "digest, signature unchecked" or "digest and signature")
    of ``doc``'s integrity block. With a key the run must be signed by
    it (a run stripped of its signature is refused); without one a signature cannot be checked, and
    ``require_signature`` refuses the run."""
    block = doc.get("integrity")
    if not isinstance(block, dict) or not isinstance(block.get("sha256"), str):
        return ["run.json has no integrity block: it was not written by this bequeath (or it was removed); "
                "re-run the audit"], ""
    want = integrity_of(doc, key)
    if not hmac.compare_digest(block["sha256"].encode("utf-8"), want["sha256"].encode("ascii")):
        return [f"integrity.sha256 {block['sha256'][:12]}... is not the digest of run.json "
                f"({want['sha256'][:12]}...): run.json was changed after the audit; re-run it"], ""
    signature = block.get("hmac_sha256")
    if key is None:
        if require_signature:
            return [f"a signed run is required but no key is set: set {SIGNING_KEY_ENV} to the key the audit "
                    "signed with"], ""
        return [], "digest, signature unchecked" if signature else "digest"
    if not isinstance(signature, str):
        return [f"run.json is not signed, and {SIGNING_KEY_ENV} is set: runs must be signed with it; re-run the "
                "audit with the key set"], ""
    if not hmac.compare_digest(signature.encode("utf-8"), want["hmac_sha256"].encode("ascii")):
        return ["integrity.hmac_sha256 does not match: run.json was changed after the audit, or signed with "
                "another key"], ""
    return [], "digest and signature"


RECORDS = (AuditRun, Provenance, Integrity, RunSettings, Look, ModelEntry, ProbeResult, ProbeModel, TaskResult, Score, Comparison,
           ModelSide, Delta, McNemar, Evidence, Quality, Power, RunError)

__all__ = ["AuditRun", "Provenance", "Integrity", "canonical", "integrity_of", "integrity_problems", "signing_key", "Comparison", "ModelSide", "Delta",
           "McNemar", "Evidence", "Quality", "Power", "Interval", "TaskResult", "ProbeResult", "ModelEntry",
           "RunSettings", "RunFormatError", "RECORDS"]
