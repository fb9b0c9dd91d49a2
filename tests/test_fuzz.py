"""Property-based fuzzing of every input bequeath reads (issue 15, "Property-based fuzzing").

Input kinds, FUZZ_EXAMPLES (1000) generated cases each, derandomized so that CI sees the same
cases on every run (``derandomize=True``, no example database):

- ``spec fields``  / ``policy fields``: a valid audit spec / gate policy with one to three fields
  set to generated values (wrong types, bools where counts go, strings, lists, nested dicts,
  negative, zero, huge and non-finite numbers, unknown keys of any type, bad probe and model
  entries), written as YAML and read with ``AuditSpec.from_file`` / ``Policy.from_file``;
- ``spec bytes`` / ``policy bytes``: the valid file's bytes damaged (non-UTF-8 and control bytes,
  YAML syntax, aliases, tags, truncation, moved lines);
- ``run.json``: one mutation of the real fixture run (``audit_runs``) at a path drawn from its
  own JSON (change, remove, retype, reorder, add), judged by ``bequeath gate`` (``audit.cli.main``);
- ``items.jsonl``: one mutation of the rows (changed values, dropped, duplicated, reordered,
  garbage lines, truncation), with ``items_sha256`` in run.json re-recorded most of the time (an
  editor who knows the format), judged by ``bequeath gate``;
- ``cache chunk``: one mutation of a results-cache chunk (or its key.json) on disk, then
  ``ResultsCache.rows`` again.

Properties:
- a spec or policy either parses into values of the documented types and ranges (an oracle
  written here from the documentation, ``spec_problems``/``policy_problems``), or raises a
  ``BequeathError`` whose message names the file and every field at fault (for a problem that
  is not a field's: the file and the line, or the byte for non-UTF-8); never another exception;
- the gate returns an int (nothing propagates), and on a mutated run it exits 1 or 2 unless the
  mutation is inert (``inert_run_mutation``/``inert_items_mutation`` say precisely which and
  why; everything else must be caught); on exit 2 it says what it refused;
- a mutated cache chunk is never used: ``rows`` returns the rows an untouched cache gives, the
  chunk's items are recomputed, and the chunk is named in a warning and moved aside.

Known bugs: a traceback or false pass found by this file is recorded in ``KNOWN`` (class id ->
what is wrong) with a minimal reproduction in a strict-xfail regression test below
(``test_known_*``). The fuzz tests tolerate the known classes and fail on any new one. When a
class is fixed its regression test XPASSes (strict: the suite goes red): remove the xfail mark
and the class's entry in ``KNOWN``/its matcher so the fuzz test holds the fix too.

The table printed at the end (``test_zz_fuzz_table``) lists, per input kind, the cases tried,
the rejections, the tracebacks, wrong acceptances / gate false passes and bad messages, each with
the number that belongs to known (xfail) classes.

Cost (~3.5 minutes on one core for the whole file): a gate run is ~60 ms, most of it the run
format's validation of run.json; the run.json cases memoise the recomputation on the fields it
reads (``memoised_recompute``: a mutation elsewhere reuses it; ~250 ms otherwise with 9999 sign
vectors). The items.jsonl cases need a real recomputation each, on a run written with n_perm 999
(``make_run(..., n_perm=999)``, ~3x cheaper), with the sign-flip intervals of untouched cells
memoised and run.json validated once (``items_speedups``): ~90 ms a case.
``BEQUEATH_FUZZ_EXAMPLES=n`` changes the number of cases; ``BEQUEATH_FUZZ_LOG=file`` appends every
finding as a JSON line; ``BEQUEATH_FUZZ_TRIAGE=1`` logs a new gate finding instead of failing (to
sort findings into classes after a change).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from audit.errors import BequeathError

REPO = Path(__file__).resolve().parents[1]
FUZZ_EXAMPLES = int(os.environ.get("BEQUEATH_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                print_blob=False, suppress_health_check=[
                    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                    HealthCheck.filter_too_much, HealthCheck.large_base_example])

# a policy that passes the unmutated fixture run (checked by test_the_passing_policy_passes): nothing in
# the fixture is reversed, and task retention is gated so that task figures matter too
PASSING_POLICY = {"fail_verdicts": ["reversed"], "required_tasks": ["bundled_qa"], "min_task_retention": 0.8}


# ---------------------------------------------------------------- tally and known bugs

TALLY: dict[str, Counter] = defaultdict(Counter)
FIRST: dict[tuple[str, str], str] = {}  # (kind, class) -> the first reproduction seen this session

KNOWN: dict[str, str] = {}  # class id -> what is wrong; filled next to each matcher below


def known(cls: str, what: str) -> str:
    KNOWN[cls] = what
    return cls


def crash_site(exc: BaseException) -> str:
    """'ExcType in path:function' of the innermost frame in bequeath's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(str(REPO)) and "/tests/" not in f.filename
           and "/.venv/" not in f.filename]
    if not (own or frames):
        return f"{type(exc).__name__} in ?"
    f = (own or frames)[-1]
    file = Path(f.filename).relative_to(REPO) if f.filename.startswith(str(REPO)) else Path(f.filename).name
    return f"{type(exc).__name__} in {file}:{f.name}"


def record(kind: str, outcome: str, cls: str | None = None, repro: str = "") -> None:
    """Count one case. ``outcome``: ok | rejected | traceback | false_pass | bad_message | wrong_reject."""
    TALLY[kind]["cases"] += 1
    TALLY[kind][outcome] += 1
    if cls is not None:
        TALLY[kind][f"{outcome}_known"] += 1
        FIRST.setdefault((kind, cls), repro[:600])
    if os.environ.get("BEQUEATH_FUZZ_LOG") and outcome not in ("ok", "rejected"):  # every finding, for triage
        with open(os.environ["BEQUEATH_FUZZ_LOG"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, "outcome": outcome, "class": cls, "case": repro[:3000]}) + "\n")


def short(x: Any, n: int = 300) -> str:
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------- generated values

NUMBERS = st.one_of(
    st.integers(-3, 12), st.sampled_from([-1, 0, 1, 2, 99, 100, 998, 999, 1000, 2**31, 2**63, 10**30, -10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.05, 0.4999, 0.5, 1.0, 1.5, 2.0, 3.0, 1e-300, 1e308, math.nan, math.inf, -math.inf]))
WORDS = st.sampled_from([
    "", " ", "0", "3", "1.5", "true", "false", "no", "yes", "null", "~", "holm", "bh", "engine", "hflm", "bundled",
    "bundeld", "winogender", "bundled_qa", "bundled,bundled_qa", "smollm2-135m", "float32", "bf16", "auto", "../..",
    "/", "a/b", "soft", "hard", "teacher", "amplified", "reversed", "not detected", "inconclusive", "complete",
    "partial", "\u202e", "x" * 300])
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS, st.text(max_size=10))
KEYS = st.one_of(st.text(max_size=8), WORDS, st.sampled_from(["seeds", "studnets", "tolerence", "probe", "task",
                                                              "Teacher", "alpha ", "limit", "name"]))
BAD_KEYS = st.one_of(st.integers(-2, 2), st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), WORDS), inner, max_size=3)),
    max_leaves=6)


# ---------------------------------------------------------------- raw file damage (spec and policy bytes)

CHUNKS = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\x00", b"\x07", b"\t", b"\r", b"\x85",
          "\u2028".encode(), "\ufeff".encode(), b"\x1b[31m", b"&a [*a]", b"*undefined", b"!!python/object/apply:os.system ['true']",
          b"!!binary AAAA", b"!!set {a, b}", b"? [a, b]\n: c\n", b"{", b"}", b"[", b"]", b":", b": :", b"- ", b"---\n",
          b"...\n", b"%YAML 1.1\n", b"#", b"'", b'"', b"\\", b"\nseed: 2\n", b"\nunknown_key: 1\n", b"\n1: x\n",
          b"\n<<: {seed: 3}\n", b"\nprobes: &p [bundled, *p]\n", b"\ntasks: !!str 5\n", b"\nalpha: 0x10\n",
          b"\nseed: 0o17\n", b"\nallow_skip: no\n", b"\nallow_skip: 'no'\n", b"\nseed: 1_000\n", b"\ntolerance: .inf\n"]


@st.composite
def damaged(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "insert", "delete", "replace", "truncate", "dupline", "swaplines",
                                   "indent", "encode"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.one_of(st.sampled_from(CHUNKS), st.binary(min_size=1, max_size=6)))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 12))]
        elif op == "replace" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op in ("dupline", "swaplines", "indent"):
            lines = bytes(data).split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "dupline":
                lines.insert(j, lines[i])
            elif op == "swaplines":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines[i] = b" " * draw(st.integers(1, 3)) + lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "encode":
            enc = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
            text = bytes(data).decode("utf-8", errors="replace") + "\n# é ü ß\n"
            data = bytearray(text.encode(enc, errors="replace"))
    return bytes(data)


def loaded(raw_bytes: bytes) -> tuple[bool, Any]:
    """(True, what yaml.safe_load gives) when the bytes are UTF-8 YAML, else (False, None)."""
    try:
        return True, yaml.safe_load(raw_bytes.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False, None


LOCATION = re.compile(r"line \d+|byte \d+")


def named(message: str, field: Any) -> bool:
    """Whether an error message names a field (a top-level key; '<top>' the document itself)."""
    if field == "<top>":
        return "top level" in message or "mapping" in message
    return str(field) in message


# ---------------------------------------------------------------- spec: the oracle

from audit.models import _DTYPES as DTYPES  # noqa: E402
from audit.spec import AuditSpec  # noqa: E402
from audit.tasks import LOCAL_TASKS, unknown_task  # noqa: E402
from audit.tasks import SAMPLING as TASK_SAMPLING  # noqa: E402
from probes.registry import available, get_probe  # noqa: E402

PROBES = tuple(available())
SPEC_FIELDS = tuple(AuditSpec.__dataclass_fields__)
MODEL_KEYS = ("name", "path", "revision", "dtype", "trust_remote_code")
COUNTS = {"task_limit": 1, "seed": 0, "n_boot": 100, "min_items": 1, "min_clusters": 2, "n_perm": 999,
          "max_items": 1, "batch_size": 1}  # n_boot, n_perm, min_clusters: audit.compare.Settings' minimums
CHOICES = {"correction": ("holm", "bh"), "backend": ("engine", "hflm")}

BASE_SPEC = {
    "teacher": "smollm2-135m",
    "students": ["runs/students/soft", {"name": "hard", "path": "runs/students/hard", "revision": "main",
                                        "dtype": "bfloat16", "trust_remote_code": False}],
    "probes": ["bundled", {"name": "winogender", "limit": 40}], "tasks": ["bundled_qa"], "task_limit": 20,
    "seed": 0, "n_boot": 1000, "alpha": 0.05, "tolerance": 3.0, "correction": "holm", "min_items": 10,
    "min_clusters": 6, "n_perm": 9999, "until_decided": False, "max_items": 400, "backend": "engine",
    "batch_size": 32, "allow_skip": False, "out": "out/audit", "cache": "out/cache", "data_dir": "data"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _model_problem(v: Any) -> str | None:
    """Why a model entry is invalid, or None. Valid: a non-empty string, or a mapping of MODEL_KEYS with
    a non-empty path or name, text name/path/revision, a known dtype and a boolean trust_remote_code."""
    if isinstance(v, str):
        return "model:empty" if v == "" else None
    if not isinstance(v, dict):
        return "model:type"
    if any(k not in MODEL_KEYS for k in v):
        return "model:unknown-key"
    if "trust_remote_code" in v and not isinstance(v["trust_remote_code"], bool):
        return "model:trust_remote_code"
    if "dtype" in v and not (isinstance(v["dtype"], str) and v["dtype"] in DTYPES):
        return "model:dtype"
    if not any(_text(v.get(k)) for k in ("name", "path")):
        return "model:no-name-or-path"
    for k in ("name", "path", "revision"):
        if v.get(k) is not None and not _text(v[k]):
            return "model:field-type"
    return None


def _model_name(v: Any, default: str | None) -> Any:
    """The name a valid model entry gets (README: a path's last part, unless given)."""
    if isinstance(v, str):
        return default or (Path(v).name if "/" in v else v)
    return v.get("name") or default or Path(str(v.get("path"))).name


def _probe_params(name: str) -> set[str]:
    import inspect

    return {p for p in inspect.signature(type(get_probe(name)).__init__).parameters if p != "self"}


PROBE_PARAMS = {p: _probe_params(p) for p in ("bundled", "winogender")}


def _task_name(t: Any) -> str | None:
    """The name of a valid task entry (a name, or a mapping of name and an optional metric), else None."""
    if isinstance(t, str):
        return t or None
    if not isinstance(t, dict) or any(k not in ("name", "metric") for k in t):
        return None
    if t.get("metric") is not None and not _text(t["metric"]):
        return None
    return t.get("name") if _text(t.get("name")) else None


def _task_path_ok(p: Any) -> bool:
    """A task_paths entry: an existing folder, or an existing .yaml/.yml file."""
    return _text(p) and Path(p).exists() and (Path(p).is_dir() or Path(p).suffix in (".yaml", ".yml"))


def spec_problems(raw: Any) -> tuple[dict, set]:
    """({field: {why}} for the fields that must be refused, {fields whose value may go either way}), from
    the README's and issue 15's rules: strict types (a boolean is true/false, a count a whole number in
    range, a limit a positive whole number or absent), names that exist, nothing twice, something to run."""
    if raw is None:
        return {}, {"<top>"}  # an empty file: the defaults (refusing it is fine too)
    if not isinstance(raw, dict):
        return {"<top>": {"top:falsy" if not raw else "top:type"}}, set()
    bad: dict[Any, set] = defaultdict(set)
    either = set()
    for k in raw:
        if not isinstance(k, str) or k not in SPEC_FIELDS:
            bad[k].add("unknown-key")
    teacher = raw.get("teacher", "smollm2-135m")
    if why := _model_problem(teacher):
        bad["teacher"].add(why)
    students = raw.get("students")
    if students is None:
        students = []
    if not isinstance(students, list):
        bad["students"].add("students:falsy" if not students else "students:type")
    elif whys := {w for w in map(_model_problem, students) if w}:
        bad["students"].update(whys)
    elif "teacher" not in bad:
        names = [_model_name(s, None) for s in students] + [_model_name(teacher, "teacher")]
        if any(not _text(n) for n in names) or len(set(names)) < len(names):
            bad["students"].add("model:names")
    probes = raw.get("probes", ["bundled"])
    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    n_probes = 0
    if probes is None:
        either.add("probes")
    elif not isinstance(probes, list):
        bad["probes"].add("probes:type")
    else:
        names = []
        for p in probes:
            if isinstance(p, str):
                names.append(p)
                if p not in PROBES:
                    bad["probes"].add("probes:unknown")
            elif isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"] in PROBES:
                names.append(p["name"])
                limit = p.get("limit")
                params = PROBE_PARAMS.get(p["name"]) or _probe_params(p["name"])
                opts = {k: v for k, v in p.items() if k not in ("name", "limit")}
                if limit is not None and not (_is_int(limit) and limit >= 1):
                    bad["probes"].add("probes:limit")
                if any(not isinstance(k, str) or k not in params for k in opts):
                    bad["probes"].add("probes:option-unknown")
                if "path" in opts and not _text(opts["path"]):
                    bad["probes"].add("probes:option-type")
            else:
                bad["probes"].add("probes:entry")
        if len(set(names)) < len(names):
            bad["probes"].add("probes:duplicate")  # two entries of one probe: their comparisons share a key
        n_probes = len(probes)
    paths = raw.get("task_paths")
    paths = [paths] if isinstance(paths, str) else paths
    if paths is not None and not (isinstance(paths, list) and all(_task_path_ok(p) for p in paths)):
        bad["task_paths"].add("task_paths")
    good_paths = tuple(p for p in paths if _task_path_ok(p)) if isinstance(paths, list) else ()
    sampling = raw.get("task_sampling")
    if sampling is not None and not (isinstance(sampling, str) and sampling in TASK_SAMPLING):
        bad["task_sampling"].add("choice")
    tasks = raw.get("tasks", ["bundled_qa"])
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = [] if tasks is None else tasks
    task_names = [_task_name(t) for t in tasks] if isinstance(tasks, list) else [None]
    if None in task_names:
        bad["tasks"].add("tasks:entry")
    elif any(unknown_task(n, good_paths) for n in task_names):
        bad["tasks"].add("tasks:unknown")  # ours, in task_paths, or in lm-eval's catalogue
    elif len(set(task_names)) < len(task_names):
        bad["tasks"].add("tasks:duplicate")
    elif not tasks and n_probes == 0 and "probes" not in bad and "probes" not in either:
        bad["probes"].add("nothing-to-run")
    for name, lo in COUNTS.items():
        v = raw.get(name)
        if v is not None and not (_is_int(v) and v >= lo):
            bad[name].add("count")
    alpha, tol = raw.get("alpha"), raw.get("tolerance")
    if alpha is not None and not (_is_num(alpha) and 0 < alpha < 0.5):
        bad["alpha"].add("alpha")
    if tol is not None and not (_is_num(tol) and tol > 0 and not math.isnan(tol)):
        bad["tolerance"].add("tolerance")
    elif tol is not None and math.isinf(tol):
        bad["tolerance"].add("tolerance:inf")  # every cell would be "not detected"
    for name, allowed in CHOICES.items():
        if raw.get(name) is not None and not (isinstance(raw[name], str) and raw[name] in allowed):
            bad[name].add("choice")
    for name in ("out", "cache", "data_dir"):
        if raw.get(name) is not None and not _text(raw[name]):
            bad[name].add("text")
    for name in ("allow_skip", "until_decided"):
        if name in raw and raw[name] is not None and not isinstance(raw[name], bool):
            bad[name].add("bool")
    if raw.get("until_decided") is True and raw.get("max_items") is None:
        bad["max_items"].add("max_items:needed")
    for name in (*COUNTS, "alpha", "tolerance", "correction", "backend", "out", "cache", "data_dir", "students",
                 "tasks", "allow_skip", "until_decided", "task_paths", "task_sampling"):
        if name in raw and raw[name] is None:
            either.add(name)  # null: the default (refusing it is fine too)
    return dict(bad), either


# ---------------------------------------------------------------- spec: known bugs (each has a test_known_* below)

# why (a reason code of spec_problems) a spec the validation lets through is invalid -> known bug class.
# Empty: the spec classes found here (spec-falsy-top-level, spec-students-falsy, spec-model-empty,
# spec-trust-remote-code-coerced, spec-model-field-types, spec-model-names, spec-probe-options-unchecked,
# spec-duplicate-names, spec-infinite-tolerance) are fixed; their reproductions below now hold the fixes.
SPEC_ACCEPTED: dict[str, str] = {}


def classify_accepted(table: dict, bad: dict) -> str | None:
    """The known class of invalid fields that were let through: every reason must be a known one."""
    classes = [table.get(why) for field in bad for why in bad[field]]
    return None if not classes or None in classes else classes[0]


def classify_spec(raw: Any, bad: dict, outcome: str, detail: str) -> str | None:
    """The known bug class of a spec case that went wrong, or None (a new bug: the test fails). The
    tracebacks (spec-nonstring-key, spec-recursive-options) and bad messages (yaml-reader-no-line,
    spec-error-message-expands-aliases) found here are fixed: nothing is tolerated."""
    if outcome in ("traceback", "bad_message"):
        return None
    return classify_accepted(SPEC_ACCEPTED, bad)


TASK_PATHS = ("", "missing-folder", "README.md", "tests/fixtures/probes", str(REPO / "audit" / "taskdata"))
SPEC_VALUES = {
    "teacher": st.one_of(VALUES, st.dictionaries(st.sampled_from(MODEL_KEYS + ("nme", "device")), VALUES, max_size=4)),
    "students": st.one_of(VALUES, st.lists(st.one_of(
        WORDS, st.text(max_size=8), VALUES,
        st.dictionaries(st.sampled_from(MODEL_KEYS + ("nme",)), st.one_of(WORDS, VALUES), max_size=4)), max_size=3)),
    "probes": st.one_of(VALUES, WORDS, st.lists(st.one_of(
        st.sampled_from(PROBES + ("bundeld", "")), VALUES,
        st.fixed_dictionaries({"name": st.one_of(st.sampled_from(PROBES + ("bundeld",)), VALUES)},
                              optional={"limit": st.one_of(st.integers(-2, 5), VALUES), "path": VALUES,
                                        "foo": VALUES})), max_size=3)),
    # task_paths: never a folder as big as "/" or ".." (lm-eval would index every YAML file under it)
    "task_paths": st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(TASK_PATHS), st.lists(st.one_of(
        st.sampled_from(TASK_PATHS), st.none(), NUMBERS), max_size=2)),
    "task_sampling": st.one_of(VALUES, st.sampled_from(tuple(TASK_SAMPLING) + ("Random", "all"))),
    "tasks": st.one_of(VALUES, WORDS, st.lists(st.one_of(st.sampled_from(tuple(LOCAL_TASKS) + ("bundled-qa",)),
                                                         st.fixed_dictionaries({"name": st.one_of(st.sampled_from(
                                                             tuple(LOCAL_TASKS)), VALUES)}, optional={
                                                             "metric": VALUES, "path": VALUES}),
                                                         VALUES), max_size=3)),
}


def spec_value(field: str) -> st.SearchStrategy:
    return SPEC_VALUES.get(field, VALUES)


def check_file(kind: str, path: Path, data: bytes, raw_note: str, parse, problems_of, classify) -> None:
    """Write ``data`` to ``path``, ``parse(path)`` it and check the property (module docstring); counts
    the case. ``problems_of(raw)`` is the oracle, ``classify`` names a known bug class (or None: fail)."""
    path.write_bytes(data)
    ok, raw = loaded(data)
    bad, either = problems_of(raw) if ok else ({}, set())
    try:
        parsed = parse(path)
    except BequeathError as exc:
        msg = str(exc)
        classes, problems = [], []
        if str(path) not in msg:
            problems.append("the file is not named")
            classes.append(classify(raw, bad, "bad_message", msg))
        if not ok and not LOCATION.search(msg):
            problems.append("no line (or byte) for a problem that is not a field's")
            classes.append(classify(raw, bad, "bad_message", msg))
        missing = {f for f in bad if not named(msg, f)} if ok else set()
        if missing:  # an invalid field the message leaves out was let through by the validation
            problems.append(f"invalid fields not named: {sorted(map(str, missing))}")
            classes.append(classify(raw, {f: bad[f] for f in missing}, "false_pass", msg))
        if ok and not bad and not either:
            record(kind, "wrong_reject", None, f"{raw_note}\n{msg}")
            pytest.fail(f"a valid file was refused: {raw_note}\n{msg}")
        if problems:
            cls = None if None in classes else classes[0]
            record(kind, "bad_message", cls, f"{raw_note}\n-> {msg[:400]}")
            assert cls, f"bad message ({'; '.join(problems)}) for {raw_note}:\n{msg[:2000]}"
            return
        record(kind, "rejected")
        return
    except Exception as exc:  # noqa: BLE001 - the property: no other exception
        detail = crash_site(exc) + " " + "".join(traceback.format_exception(exc))[-1500:]
        cls = classify(raw, bad, "traceback", detail)
        record(kind, "traceback", cls, f"{raw_note}\n-> {crash_site(exc)}: {exc}")
        assert cls, f"traceback for {raw_note}:\n{detail}"
        return
    if bad:
        cls = classify(raw, bad, "false_pass", "")
        record(kind, "false_pass", cls, f"{raw_note}\n-> accepted; invalid: {short({str(k): sorted(v) for k, v in bad.items()})}")
        assert cls, f"accepted an invalid file (invalid: {short({str(k): sorted(v) for k, v in bad.items()})}): {raw_note}\n{parsed}"
        return
    record(kind, "ok")


def parse_spec(path: Path) -> Any:
    """AuditSpec.from_file, and what the audit does with a spec at once (to_dict, spec_hash)."""
    spec = AuditSpec.from_file(path)
    spec.to_dict()
    spec.spec_hash()
    return spec


def check_spec_file(kind: str, path: Path, data: bytes, raw_note: str) -> None:
    check_file(kind, path, data, raw_note, parse_spec, spec_problems, classify_spec)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_the_base_spec_and_policy_parse(scratch):
    from audit.gate import Policy

    path = scratch / "base.yaml"
    path.write_text(yaml.safe_dump(BASE_SPEC), encoding="utf-8")
    assert spec_problems(BASE_SPEC) == ({}, set())
    AuditSpec.from_file(path).spec_hash()
    path.write_text(yaml.safe_dump(BASE_POLICY), encoding="utf-8")
    assert policy_problems(BASE_POLICY) == ({}, set())
    Policy.from_file(path)


@st.composite
def mutated_mapping(draw, base: dict, fields: tuple, values) -> tuple[dict, list]:
    raw = copy.deepcopy(base)
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set"] * 8 + ["delete"] * 2 + ["unknown"] * 2 + ["badkey"]))
        if op in ("unknown", "badkey"):  # a misspelt or made-up key; rarely one that is not text (1:, null:)
            key, value = draw(KEYS if op == "unknown" else BAD_KEYS), draw(VALUES)
            raw[key] = value
        elif op == "delete":
            key, value = draw(st.sampled_from(fields)), None
            raw.pop(key, None)
        else:
            key = draw(st.sampled_from(fields))
            value = draw(values(key))
            raw[key] = value
        ops.append((op, key, value))
    return raw, ops


@FUZZ
@given(case=mutated_mapping(BASE_SPEC, SPEC_FIELDS, spec_value))
def test_fuzz_spec_fields(scratch, case):
    raw, ops = case
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    note(text)
    check_spec_file("spec fields", scratch / "spec-fuzz.yaml", text.encode("utf-8"), f"mutations {short(ops)}")


BASE_SPEC_BYTES = ("# audit spec\n" + yaml.safe_dump(BASE_SPEC, sort_keys=False)).encode("utf-8")


@FUZZ
@given(data=damaged(BASE_SPEC_BYTES))
def test_fuzz_spec_bytes(scratch, data):
    note(repr(data))
    check_spec_file("spec bytes", scratch / "spec-fuzz.yaml", data, f"bytes {short(data, 400)}")


# ---------------------------------------------------------------- policy: the oracle

from audit.verdicts import VERDICTS  # noqa: E402

POLICY_FIELDS = ("fail_verdicts", "tolerance", "alpha", "min_items", "min_task_retention", "required_probes",
                 "required_tasks", "require_groups")
BASE_POLICY = {"fail_verdicts": ["amplified", "introduced", "reversed"], "tolerance": 2.0, "alpha": 0.05,
               "min_items": 10, "min_task_retention": 0.8, "required_probes": ["bundled"],
               "required_tasks": ["bundled_qa"], "require_groups": False}


def policy_problems(raw: Any) -> tuple[dict, set]:
    """({key: {why}} for keys that must be refused, {keys that may go either way}), from audit/gate.py's
    documentation: verdict names that exist, numbers in range, a whole number >= 1, booleans, names."""
    if raw is None:
        return {}, {"<top>"}  # an empty file: the default policy
    if not isinstance(raw, dict):
        return {"<top>": {"top:falsy" if not raw else "top:type"}}, set()
    bad: dict[Any, set] = defaultdict(set)
    either = set()
    for k, v in raw.items():
        if k not in POLICY_FIELDS:
            bad[k].add("unknown-key")
        elif v is None:
            either.add(k)  # null for an optional key: the default (refusing it is fine too)
        elif k == "fail_verdicts":
            names = [v] if isinstance(v, str) else v
            if not isinstance(names, list) or not all(isinstance(n, str) and n in VERDICTS for n in names):
                bad[k].add("verdicts")
        elif k in ("required_probes", "required_tasks"):
            names = [v] if isinstance(v, str) else v
            if not isinstance(names, list) or not all(_text(n) for n in names):
                bad[k].add("names")
        elif k == "require_groups" and not isinstance(v, bool):
            bad[k].add("bool")
        elif k == "min_items" and not (_is_int(v) and v >= 1):
            bad[k].add("count")
        elif k == "tolerance" and not (_is_num(v) and math.isfinite(v) and v >= 0):
            bad[k].add("number")
        elif k == "alpha" and not (_is_num(v) and 0 < v < 1):
            bad[k].add("number")
        elif k == "min_task_retention" and not (_is_num(v) and math.isfinite(v) and v > 0):
            bad[k].add("number")
    return dict(bad), either


POLICY_ACCEPTED: dict[str, str] = {}  # policy-falsy-top-level is fixed


def classify_policy(raw: Any, bad: dict, outcome: str, detail: str) -> str | None:
    if outcome in ("bad_message", "traceback"):
        return None  # yaml-reader-no-line is fixed
    return classify_accepted(POLICY_ACCEPTED, bad)


POLICY_VALUES = {
    "fail_verdicts": st.one_of(VALUES, st.sampled_from(VERDICTS + ("amplifed", "")),
                               st.lists(st.one_of(st.sampled_from(VERDICTS + ("amplifed",)), VALUES), max_size=3)),
    "required_probes": st.one_of(VALUES, st.lists(st.one_of(WORDS, VALUES), max_size=3)),
    "required_tasks": st.one_of(VALUES, st.lists(st.one_of(WORDS, VALUES), max_size=3)),
}


def policy_value(field: str) -> st.SearchStrategy:
    return POLICY_VALUES.get(field, VALUES)


@pytest.fixture(scope="module")
def fixture_run(audit_runs) -> dict:
    return json.loads((audit_runs["complete"] / "run.json").read_text(encoding="utf-8"))


def check_policy_file(kind: str, path: Path, data: bytes, raw_note: str, run: dict) -> None:
    from audit.gate import Policy, evaluate

    def parse(p: Path) -> Any:
        policy = Policy.from_file(p)
        assert evaluate(run, policy).exit_code in (0, 1, 2)  # a policy that parses must be usable by the gate
        return policy

    check_file(kind, path, data, raw_note, parse, policy_problems, classify_policy)


@FUZZ
@given(case=mutated_mapping(BASE_POLICY, POLICY_FIELDS, policy_value))
def test_fuzz_policy_fields(scratch, fixture_run, case):
    raw, ops = case
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    note(text)
    check_policy_file("policy fields", scratch / "policy-fuzz.yaml", text.encode("utf-8"), f"mutations {short(ops)}",
                      fixture_run)


BASE_POLICY_BYTES = ("# gate policy\n" + yaml.safe_dump(BASE_POLICY, sort_keys=False)).encode("utf-8")


@FUZZ
@given(data=damaged(BASE_POLICY_BYTES))
def test_fuzz_policy_bytes(scratch, fixture_run, data):
    note(repr(data))
    check_policy_file("policy bytes", scratch / "policy-fuzz.yaml", data, f"bytes {short(data, 400)}", fixture_run)


# ---------------------------------------------------------------- the gate: running it


def _json_paths(x: Any, path: tuple = ()) -> list[tuple]:
    """Every node of a JSON value below the root, as a tuple of keys and indices."""
    out = []
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        out.append((*path, k))
        out += _json_paths(v, (*path, k))
    return out


def template(path: tuple) -> str:
    """'comparisons/*/delta/ci/*' for ('comparisons', 3, 'delta', 'ci', 0)."""
    return "/".join("*" if isinstance(k, int) else str(k) for k in path)


def get_at(x: Any, path: tuple) -> Any:
    for k in path:
        x = x[k]
    return x


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """The same JSON value: numbers equal up to float noise (``rel``, 1e-9 relative: what another
    platform's arithmetic may change in a recomputed figure), a bool only equal to a bool, NaN equal
    to NaN, 2 equal to 2.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_num(a) and _is_num(b):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= rel * max(1.0, abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_RECOMPUTE_MEMO: dict[str, tuple[str, Any]] = {}  # kept across examples


@contextlib.contextmanager
def memoised_recompute():
    """``audit.compare.recompute`` memoised on what it reads (for speed: a mutation elsewhere reuses the
    result). The real function is called on a run holding only those fields, so if it ever reads
    another one the unmutated run stops passing (test_the_passing_policy_passes) instead of the memo
    going stale; when the fields cannot even be picked out the real function runs on the whole run."""
    import audit.compare as compare

    real = compare.recompute
    memo = _RECOMPUTE_MEMO

    def projected(run: dict) -> dict:  # what audit.compare.recompute reads, nothing else
        return {"settings": run["settings"],
                "models": [{"name": m["name"], "role": m["role"], "content_hash": bool(m.get("content_hash"))}
                           for m in run["models"]],
                "spec": {"probes": (run.get("spec") or {}).get("probes")},
                "probes": [{"probe": p["probe"]} for p in run["probes"]],
                "tasks": [{"task": t["task"]} for t in run.get("tasks") or []]}

    def fast(run, rows):
        try:
            proj = projected(run)
            key = json.dumps([proj, run.get("items_sha256"), len(rows)], sort_keys=True, default=repr)
        except Exception:  # noqa: BLE001 - the real function says what is wrong with this run
            return real(run, rows)
        if key not in memo:
            try:
                memo[key] = ("ok", real(proj, rows))
            except Exception as exc:  # noqa: BLE001
                memo[key] = ("err", exc)
        state, value = memo[key]
        if state == "err":
            raise value
        return copy.deepcopy(value)

    compare.recompute = fast
    try:
        yield
    finally:
        compare.recompute = real


_INTERVAL_MEMO: dict[bytes, Any] = {}
_VALIDATED: set[str] = set()


@contextlib.contextmanager
def items_speedups(run: dict):
    """For the items.jsonl cases (each needs a real recomputation): ``audit.stats.SignFlip.interval``
    memoised on everything it reads (the cluster contributions and weights, the sign vectors, the
    level), so the cells a mutated row does not touch reuse their intervals; and the validation of
    run.json (``AuditRun.from_json``) done once for ``run``, the one document these cases share
    (they differ only in the sha256 of items.jsonl and the integrity block over it). Both are pure functions of their inputs."""
    from audit import run_format, stats

    real_interval, real_from_json = stats.SignFlip.interval, run_format.AuditRun.from_json.__func__
    volatile = ("items_sha256", "integrity")  # what an items.jsonl case re-records
    shared = json.dumps({k: v for k, v in run.items() if k not in volatile}, sort_keys=True)

    def interval(self, level):
        key = b"|".join([self.d.tobytes(), self.w.tobytes(), self._x.tobytes(), self._y.tobytes(),
                         repr((self.exact, self.p_floor, float(level))).encode()])
        if key not in _INTERVAL_MEMO:
            _INTERVAL_MEMO[key] = real_interval(self, level)
        return _INTERVAL_MEMO[key]

    def from_json(cls, value, path=""):
        if isinstance(value, dict) and isinstance(value.get("items_sha256"), str) and json.dumps(
                {k: v for k, v in value.items() if k not in volatile}, sort_keys=True) == shared:
            if shared not in _VALIDATED:
                real_from_json(cls, value, path)
                _VALIDATED.add(shared)
            return None  # the gate only checks that it does not raise
        return real_from_json(cls, value, path)

    stats.SignFlip.interval = interval
    run_format.AuditRun.from_json = classmethod(from_json)
    try:
        yield
    finally:
        stats.SignFlip.interval = real_interval
        run_format.AuditRun.from_json = classmethod(real_from_json)


SIGNING_KEY = "fuzz signing key"  # the key of the signed cases (``signed``); the gate reads it from the environment


@contextlib.contextmanager
def signing_env(key: str | None):
    """``$BEQUEATH_SIGNING_KEY`` set to ``key`` (unset for None) and ``$BEQUEATH_REQUIRE_SIGNATURE`` unset."""
    from audit.gate import REQUIRE_SIGNATURE_ENV
    from audit.run_format import SIGNING_KEY_ENV

    saved = {k: os.environ.pop(k, None) for k in (SIGNING_KEY_ENV, REQUIRE_SIGNATURE_ENV)}
    if key is not None:
        os.environ[SIGNING_KEY_ENV] = key
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def run_gate(folder: Path, policy: Path, key: str | None = None) -> tuple[Any, str, str]:
    """(exit code, or the exception that escaped ``bequeath gate``; stdout; stderr); ``key``: the signing
    key in the gate's environment (None: no key)."""
    from audit.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), signing_env(key):
            code = main(["gate", str(folder), "--policy", str(policy)])
    except Exception as exc:  # noqa: BLE001 - the property: nothing propagates
        return exc, out.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def redigest(run: dict) -> dict:
    """``run`` with its integrity block's plain sha256 recomputed (audit.run_format.integrity_of): what an
    editor who knows the format does after a change, so that the gate's semantic checks are what is
    tested. An unsigned run stays unsigned."""
    from audit.run_format import integrity_of

    run["integrity"] = integrity_of(run)
    return run


def sign(run: dict) -> dict:
    """``run`` signed with ``SIGNING_KEY`` as audit.harness.write_run signs it (audit.run_format.integrity_of)."""
    from audit.run_format import integrity_of

    run["integrity"] = integrity_of(run, SIGNING_KEY.encode())
    return run


def says_what(code: int, out: str, err: str) -> bool:
    """Exit 2 names what it refused: an 'error: <file>: ...' line, or an ERROR row with a check and a reason."""
    if code != 2:
        return True
    return bool(re.search(r"^error: .*(run\.json|items\.jsonl|policy)", err, re.M)
                or re.search(r"^ERROR +\S.*\S +\S", out, re.M))


class Lab:
    """A fixture run and a passing policy; ``folder(run_json, items)`` makes a run folder to gate."""

    def __init__(self, src: Path, root: Path) -> None:
        self.src, self.root = src, root
        self.run_text = (src / "run.json").read_text(encoding="utf-8")
        self.run = json.loads(self.run_text)
        self.items = (src / "items.jsonl").read_bytes()
        self.policy = root / "policy.yaml"
        self.policy.write_text(yaml.safe_dump(PASSING_POLICY), encoding="utf-8")
        self.paths = _json_paths(self.run)
        self.templates: dict[str, list[tuple]] = defaultdict(list)
        for p in self.paths:
            self.templates[template(p)].append(p)

    @contextlib.contextmanager
    def folder(self, run_bytes: bytes | None = None, items: bytes | None = None):
        d = Path(tempfile.mkdtemp(dir=self.root, prefix="case-"))
        try:
            (d / "run.json").write_bytes(self.run_text.encode("utf-8") if run_bytes is None else run_bytes)
            if items is None:
                os.link(self.src / "items.jsonl", d / "items.jsonl")
            else:
                (d / "items.jsonl").write_bytes(items)
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def run_lab(audit_runs, tmp_path_factory) -> Lab:
    """The fixture run, signed with ``SIGNING_KEY`` (its unsigned cases drop the signature)."""
    lab = Lab(audit_runs["complete"], tmp_path_factory.mktemp("fuzz-run-json"))
    lab.run = sign(lab.run)
    lab.run_text = json.dumps(lab.run)
    lab.paths = _json_paths(lab.run)
    lab.templates = defaultdict(list)
    for p in lab.paths:
        lab.templates[template(p)].append(p)
    return lab


@pytest.fixture(scope="module")
def items_lab(make_run_module, tmp_path_factory) -> Lab:
    """The fixture run written with n_perm 999: the gate recomputes it ~3x faster (items mutations
    cannot use the memo)."""
    root = tmp_path_factory.mktemp("fuzz-items")
    return Lab(make_run_module.make_run(root / "run", n_perm=999), root)


def test_the_passing_policy_passes(run_lab, items_lab):
    """The fuzz tests' premise: both fixture runs, untouched, pass the policy (exit 0), with the real
    recomputation and with the memoised one."""
    for lab in (run_lab, items_lab):
        with lab.folder() as d:
            code, out, err = run_gate(d, lab.policy)
            assert code == 0, out + err
            assert "items.jsonl verified" in out
            with memoised_recompute():
                assert run_gate(d, lab.policy)[0] == 0
                assert run_gate(d, lab.policy)[0] == 0  # from the memo
            with items_speedups(lab.run):
                assert run_gate(d, lab.policy)[0] == 0
                assert run_gate(d, lab.policy)[0] == 0  # from the memo
    with run_lab.folder() as d:  # the signed run: its signature is checked with the key, refused with another
        code, out, err = run_gate(d, run_lab.policy, SIGNING_KEY)
        assert code == 0 and "digest and signature of run.json verified" in out, out + err
        code, out, err = run_gate(d, run_lab.policy, "another key")
        assert code == 2 and "integrity.hmac_sha256 does not match" in out, out + err


# ---------------------------------------------------------------- run.json: mutations and what is inert

RUN_VALUES = st.one_of(SCALARS, st.sampled_from(VERDICTS + ("complete", "partial", "running", "teacher", "student",
                                                            "bundled", "pct_stereotype", "all")), VALUES)
TOP_LISTS = ("comparisons", "models", "tasks", "probes", "errors")  # records identified by their keys


@st.composite
def mutate_at(draw, doc: Any, path: tuple) -> tuple[str, Any, Any]:
    """Mutate ``doc`` in place at ``path``: (op, old value, new value); new is None for "remove"."""
    parent, key = get_at(doc, path[:-1]), path[-1]
    old = parent[key]
    ops = ["remove", "set", "set", "retype"]
    if _is_num(old):
        ops += ["number"] * 3
    elif isinstance(old, bool):
        ops += ["flip"] * 2
    elif isinstance(old, str):
        ops += ["text"] * 2
    elif isinstance(old, list):
        ops += ["append", "drop", "dup", "swap", "clear"] if old else ["append"] * 2
    elif isinstance(old, dict):
        ops += ["add", "clear"]
    op = draw(st.sampled_from(ops))
    new: Any = None
    if op == "remove":
        del parent[key]
        return op, old, None
    if op == "set":
        new = draw(RUN_VALUES)
    elif op == "retype":
        new = draw(st.sampled_from([str(old), [old], {"value": old}, json.dumps(old)]))
    elif op == "number":
        new = draw(st.one_of(
            st.sampled_from([old + 1, old - 1, -old, old * 10, old + 0.5, math.nan, math.inf, -math.inf,
                             float(old), int(old) if math.isfinite(old) else old,
                             old * (1 + 1e-4) + 1e-4,  # a small real change
                             old * (1 + 1e-13)]),  # float noise: the same value
            NUMBERS))
    elif op == "flip":
        new = not old
    elif op == "text":
        new = draw(st.one_of(WORDS, st.sampled_from([old + "x", old.upper(), old[:-1], old + " "])))
    elif op == "append":
        new = [*old, copy.deepcopy(old[0]) if old and draw(st.booleans()) else draw(RUN_VALUES)]
    elif op == "drop":
        new = list(old)
        del new[draw(st.integers(0, len(old) - 1))]
    elif op == "dup":
        i = draw(st.integers(0, len(old) - 1))
        new = [*old[:i + 1], copy.deepcopy(old[i]), *old[i + 1:]]
    elif op == "swap":
        i, j = draw(st.integers(0, len(old) - 1)), draw(st.integers(0, len(old) - 1))
        new = list(old)
        new[i], new[j] = new[j], new[i]
    elif op == "clear":
        new = type(old)()
    elif op == "add":
        new = {**old, draw(st.one_of(WORDS, st.text(max_size=6))): draw(RUN_VALUES)}
    parent[key] = new
    return op, old, new


@st.composite
def run_mutation(draw, lab: Lab) -> tuple[dict, tuple, str, Any, Any]:
    """(mutated run, path, op, old value, new value): a top-level section first (so that the
    thousands of nodes of the breakdowns and cards do not crowd out the rest), then a node of it."""
    run = copy.deepcopy(lab.run)
    section = draw(st.sampled_from(sorted(lab.run)))
    names = sorted(t for t in lab.templates if t == section or t.startswith(section + "/"))
    path = draw(st.sampled_from(lab.templates[draw(st.sampled_from(names))]))
    op, old, new = draw(mutate_at(run, path))
    return run, path, op, old, new


# Every run.json case is judged as an editor who knows the format leaves it: the integrity block's plain
# sha256 re-recorded after the change (``redigest``), so that what is tested is the gate's own checks of
# the run (recomputation, spec, settings, records) and not only the digest. Fields that nothing in the
# run can check are tested on a signed run instead (``SIGNED_ONLY``, ``signed``): the HMAC the audit wrote
# is kept (the editor has no key), the gate has the key, and every change must be caught:
# - the creation time, the machine's versions and platform (provenance), where the run and the cache were
#   written (spec.out, spec.cache: left out of spec_hash by design), the probe card's prose (title,
#   measures, data, license, citation, metric and caveat texts, a metric's description);
# - the models' identity: source, content_hash, tokenizer_hash, n_params and the student's distillation
#   card (distill_card.json as read from its folder): the weights are not in the run;
# - the integrity block itself.
SIGNED_ONLY = re.compile(r"^(created|provenance/(python|platform|torch|transformers|lm_eval|fairlearn|bequeath|git)"
                         r"|spec/(out|cache)|probes/\*/card/(title|measures|data|license|citation|metrics/[^/]+"
                         r"|caveats/\*)|probes/\*/metrics/\*/description"
                         r"|models/\*/(source|content_hash|tokenizer_hash|n_params|card)(/.*)?|integrity(/.*)?)$")

# Inert mutations of an unsigned run.json (a gate exit 0 is right). Everything else must be caught.
# - a value replaced by the same value (same(): 2 for 2.0, float noise of 1e-9 relative) is a re-serialisation;
# - a null field left out: the run format's default;
# - the order of the top-level record lists (comparisons, models, tasks, probes, errors): each record is
#   identified by its own keys (student, probe, metric, group; role/name; task; probe; stage) and the
#   gate matches them by key.
# On a signed run only the same document is inert: the signature covers every byte of its canonical JSON.


def inert_run_mutation(path: tuple, op: str, old: Any, new: Any) -> str | None:
    """Why a mutation of an unsigned run.json is inert (a gate exit 0 is right), or None: it must be caught."""
    t = template(path)
    if op != "remove" and same(old, new):
        return "the same value"
    if op == "remove" and old is None:
        return "a null field left out (the run format's default)"
    if op == "swap" and t in TOP_LISTS:
        return "the order of records identified by their keys"
    return None


def inert_signed_mutation(run: dict, original: dict) -> str | None:
    """A signed run is unchanged only when its canonical JSON is (audit.run_format.canonical)."""
    from audit.run_format import canonical

    same_doc = canonical(run) == canonical(original) and run.get("integrity") == original.get("integrity")
    return "the same document" if same_doc else None


TRIAGE = bool(os.environ.get("BEQUEATH_FUZZ_TRIAGE"))  # log new classes instead of failing (after a fix)

# known bug classes of the gate: (outcome, regex on the mutated path's template or on the crash site, class)
RUN_KNOWN: list[tuple[str, re.Pattern, str]] = []


def run_known(outcome: str, pattern: str, cls: str, what: str) -> None:
    RUN_KNOWN.append((outcome, re.compile(pattern), known(cls, what)))


# Empty: the classes found here are fixed and their reproductions (test_known_*) hold the fixes:
# run.json: comparison, task and probe figures, the spec, the settings, duplicate records (recomputed from
# items.jsonl and checked against the spec), provenance (typed; spec_hash, seed and dataset_files checked)
# and the models' identity (notes, dtype and hashes checked; the rest only a signature can protect: see
# SIGNED_ONLY); items.jsonl: answers re-scored and requests re-built from the probe's data, every column
# re-derived (an invalid row has none).
# fixed: duplicate rows, rows of nothing in the run, an item with two groups, renamed rows


def classify_run(outcome: str, subject: str) -> str | None:
    """The known class of a gate finding: ``subject`` is the path template (false pass, bad message) or
    'site | path template' (traceback)."""
    for o, rx, cls in RUN_KNOWN:
        if o == outcome and rx.search(subject):
            return cls
    return f"new: {outcome}: {subject[:160]}" if TRIAGE else None


def judge_gate(kind: str, lab: Lab, run_bytes: bytes | None, items: bytes | None, inert, subject: str,
               repro: str, key: str | None = None) -> None:
    """Run the gate on a mutated run folder and check the property; counts the case. ``inert()`` says
    why the mutation is inert, or None (asked only when the gate passes: it can be costly)."""
    with lab.folder(run_bytes, items) as d:
        code, out, err = run_gate(d, lab.policy, key)
    if isinstance(code, BaseException):
        site = crash_site(code)
        cls = classify_run("traceback", f"{site} | {subject}")
        record(kind, "traceback", cls, f"{repro}\n-> {site}: {short(str(code), 200)}")
        assert cls, f"traceback for {repro}:\n{''.join(traceback.format_exception(code))[-3000:]}"
        return
    assert isinstance(code, int) and code in (0, 1, 2), (code, out, err)
    if code == 0 and not inert():
        cls = classify_run("false_pass", subject)
        record(kind, "false_pass", cls, repro)
        assert cls, f"the gate passed a mutated run (exit 0): {repro}\n{out[-2000:]}"
        return
    if not says_what(code, out, err):
        cls = classify_run("bad_message", subject)
        record(kind, "bad_message", cls, f"{repro}\n-> {(err or out)[-300:]}")
        assert cls, f"exit 2 names nothing: {repro}\n{out[-1500:]}\n{err[-1500:]}"
        return
    record(kind, "rejected" if code else "ok")



@FUZZ
@given(data=st.data())
def test_fuzz_run_json(run_lab, data):
    from audit.run_format import integrity_of

    run, path, op, old, new = data.draw(run_mutation(run_lab))  # run_lab.run is signed with SIGNING_KEY
    by_key = bool(SIGNED_ONLY.match(template(path)))
    if by_key:  # the editor re-records the plain sha256 (unless it edited the block itself), not the HMAC
        if path[0] != "integrity":
            run["integrity"] = dict(run_lab.run["integrity"], sha256=integrity_of(run)["sha256"])
        inert = lambda: inert_signed_mutation(run, run_lab.run)  # noqa: E731
    else:  # an unsigned run, its plain sha256 re-recorded
        redigest(run)
        inert = lambda: inert_run_mutation(path, op, old, new)  # noqa: E731
    repro = f"run.json {op} at {'/'.join(map(str, path))}: {short(old, 150)} -> {short(new, 150)}" \
        + (" (signed; the gate has the key)" if by_key else " (unsigned; sha256 re-recorded)")
    note(repro)
    with memoised_recompute():
        judge_gate("run.json", run_lab, json.dumps(run).encode("utf-8"), None, inert, template(path), repro,
                   key=SIGNING_KEY if by_key else None)


# ---------------------------------------------------------------- items.jsonl

GARBAGE = st.one_of(st.sampled_from([
    b"{", b"not json", b"[]", b"1", b'"x"', b"null", b"NaN", b"{}", b'{"model": "teacher"}', b'{"item": "x"}',
    b'{"model": "teacher", "item": "x"}', b'{"model": "teacher", "probe": "bundled", "item": "x", "columns": {}}',
    b'{"model": "soft", "task": "bundled_qa", "item": "999", "columns": {"acc": 1.0}}', b"\xff\xfe", b"\xc3\x28",
    b"\x00", b'{"model": "teacher", "item": "x"} trailing', b'{"model": 1, "item": []}', b"\r", b"\x1e{}"]),
    st.binary(min_size=1, max_size=12))


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")


@st.composite
def items_mutation(draw, lab: Lab) -> tuple[bytes, str, str]:
    """(new items.jsonl bytes, what was done, the subject for known-bug matching)."""
    lines = _lines(lab.items)
    n = len(lines)
    op = draw(st.sampled_from(["value", "value", "value", "value", "drop", "dup", "swap", "garbage", "blank",
                               "truncate", "reformat", "model"]))
    i = draw(st.integers(0, n - 1))
    row = json.loads(lines[i])
    if op == "value":
        path = draw(st.sampled_from(_json_paths(row)))
        vop, old, new = draw(mutate_at(row, path))
        lines[i] = json.dumps(row, allow_nan=True).encode("utf-8")
        what = f"row {i} ({row.get('model')}/{row.get('item')}): {vop} at {'/'.join(map(str, path))}: " \
               f"{short(old, 80)} -> {short(new, 80)}"
        subject = f"value:{template(path)}:{vop}" + (" invalid-row" if json.loads(lines[i]).get("invalid") else "")
    elif op == "drop":
        k = draw(st.integers(1, 3))
        gone = sorted({i, *(draw(st.integers(0, n - 1)) for _ in range(k - 1))}, reverse=True)
        for j in gone:
            del lines[j]
        what, subject = f"rows {sorted(gone)} dropped", "drop"
    elif op == "dup":
        lines.insert(draw(st.integers(0, n)), lines[i])
        what, subject = f"row {i} duplicated", "dup"
    elif op == "swap":
        j = draw(st.integers(0, n - 1))
        lines[i], lines[j] = lines[j], lines[i]
        what, subject = f"rows {i} and {j} swapped", "swap"
    elif op == "garbage":
        g = draw(GARBAGE)
        lines.insert(i, g)
        what, subject = f"line {i + 1} inserted: {g!r}", f"garbage:{g!r}"
    elif op == "blank":
        b = draw(st.sampled_from([b"", b" ", b"\t", b"  \t "]))
        lines.insert(i, b)
        what, subject = f"blank line {b!r} inserted at {i + 1}", "blank"
    elif op == "truncate":
        data = b"\n".join(lines) + b"\n"
        cut = draw(st.integers(0, len(data) - 1))
        return data[:cut], f"truncated at byte {cut} of {len(data)}", "truncate"
    elif op == "reformat":
        lines[i] = json.dumps(row, indent=None, separators=(",", ":"), sort_keys=True).encode("utf-8")
        what, subject = f"row {i} re-serialised compactly with sorted keys", "reformat"
    else:  # another model's, or another item's, row
        models = sorted({m["name"] for m in lab.run["models"]})
        field = draw(st.sampled_from(["model", "item"]))
        new = draw(st.sampled_from(models)) if field == "model" else json.loads(lines[draw(st.integers(0, n - 1))])["item"]
        what = f"row {i}: {field} {row.get(field)!r} -> {new!r}"
        row[field] = new
        lines[i] = json.dumps(row, allow_nan=True).encode("utf-8")
        subject = f"value:{field}:rename"
    return b"\n".join(lines) + b"\n", what, subject


def _stripped_lines(data: bytes) -> list[str] | None:
    """The non-blank lines of items.jsonl as ``audit.gate.load_run`` reads them (text mode, so universal
    newlines; blank lines skipped), or None when the file is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return [line.strip() for line in io.StringIO(text, newline=None) if line.strip()]


def _canon(line: str, drop: tuple = ()) -> str | None:
    """A row in a canonical form (key order, layout, 0 and 0.0, and a null field the same as an absent
    one: the readers use .get()), or None when load_run would refuse the line. ``drop``: fields left out,
    "is_greedy" the answers' greedy flags."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or "model" not in row or "item" not in row:
        return None
    if "is_greedy" in drop and isinstance(row.get("answers"), list):
        row["answers"] = [[a[0], None, *a[2:]] if isinstance(a, list) and len(a) == 3 and isinstance(a[1], bool)
                          else a for a in row["answers"]]
    return json.dumps(_numbers_as_floats({k: v for k, v in row.items() if v is not None and k not in drop}),
                      sort_keys=True)


def _numbers_as_floats(x: Any) -> Any:
    """0, 0.0 and -0.0 are one JSON number (IEEE: -0.0 == 0.0; no mean, sum or comparison tells them apart)."""
    if isinstance(x, dict):
        return {k: _numbers_as_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_numbers_as_floats(v) for v in x]
    if isinstance(x, float) and x == 0.0:
        return 0.0
    return float(x) if _is_num(x) and not isinstance(x, float) and abs(x) < 2**53 else x


def inert_items_mutation(old: bytes, new: bytes, rehash: bool) -> str | None:
    """Why a change of items.jsonl is inert (a gate exit 0 is right), or None: it must be caught.

    Without the sha256 in run.json re-recorded, any change of bytes must be caught. With it (someone
    who knows the format), the rows are a set of records keyed by model and item: the same rows in
    another order, with blank lines, another JSON layout or a null field left out are the same file.
    And ``text`` and the answers' ``is_greedy`` flags (a boolean still): for a log-likelihood probe (the
    fixture's) they are model output kept for the record, from which nothing is derived (no probe's
    scoring rule reads is_greedy) and which no other file holds, so nothing but a signature could check
    them (the signature covers items_sha256). Any other
    change (a column, an answer, a group, a cluster, a request, a duplicated, dropped or added row)
    must be caught: it disagrees with run.json's figures or with what the row derives from (its
    answers, the probe's data)."""
    if new == old:
        return "the same bytes"
    if not rehash:
        return None
    a, b = _stripped_lines(old), _stripped_lines(new)
    if b is None:
        return None
    extra, gone = Counter(b) - Counter(a), Counter(a) - Counter(b)  # only the lines that differ are parsed
    for drop, why in (((), "the same rows"), (("text", "is_greedy"), "only model output nothing derives from")):
        x = Counter(_canon(line, drop) for line in extra.elements())
        y = Counter(_canon(line, drop) for line in gone.elements())
        if None in x:
            return None
        if x == y:
            return why
    return None


@FUZZ
@given(data=st.data())
def test_fuzz_items_jsonl(items_lab, data):
    new, what, subject = data.draw(items_mutation(items_lab))
    rehash = data.draw(st.sampled_from([True, True, True, False]))  # mostly an editor who re-records the sha256
    run = redigest(dict(items_lab.run, items_sha256=hashlib.sha256(new).hexdigest())) if rehash else items_lab.run
    repro = f"items.jsonl {what}{' (sha256 and run.json digest re-recorded)' if rehash else ''}"
    note(repro)
    with items_speedups(items_lab.run):
        judge_gate("items.jsonl", items_lab, json.dumps(run).encode("utf-8"), new,
                   lambda: inert_items_mutation(items_lab.items, new, rehash),
                   f"{subject}{' rehash' if rehash else ''}", repro)


# ---------------------------------------------------------------- results cache chunks

CACHE_KEY = {"model": "f" * 64, "dtype": "float32", "probe": "bundled", "version": "2", "data": ["a" * 64],
             "options": {}}
CACHE_IDS = [f"item-{i:03d}" for i in range(40)]
CACHE_CHUNK = 16  # three chunks: 16, 16 and 8 rows


def cache_row(item: str) -> dict:
    """A deterministic row shaped like audit.harness._result_row's."""
    h = int(hashlib.sha256(item.encode()).hexdigest()[:8], 16)
    margin = (h % 2000 - 1000) / 250
    return {"item": item, "columns": {"stereotyped": float(margin > 0), "margin": margin, "abs_margin": abs(margin)},
            "text": None, "invalid": None, "answers": [[-10.5 - h % 7, False, 6], [-10.5 - h % 7 - margin, False, 6]]}


class Computer:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, positions: list[int]) -> list[dict]:
        self.asked += [CACHE_IDS[p] for p in positions]
        return [cache_row(CACHE_IDS[p]) for p in positions]


@st.composite
def cache_mutation(draw, files: list[str], docs: dict[str, Any]) -> tuple[str, bytes, str, str]:
    """(file name, its new bytes, what was done, subject) for one chunk or key.json of a fresh cache."""
    name = draw(st.sampled_from(files))
    raw = docs[name]
    op = draw(st.sampled_from(["json", "json", "json", "bytes", "file"]))
    if op == "json":
        doc = json.loads(raw)
        path = draw(st.sampled_from(_json_paths(doc)))
        vop, old, new = draw(mutate_at(doc, path))
        data = json.dumps(doc, allow_nan=True).encode("utf-8")
        return name, data, f"{name}: {vop} at {'/'.join(map(str, path))}: {short(old, 80)} -> {short(new, 80)}", \
            f"json:{template(path)}"
    if op == "bytes":
        data = draw(damaged(raw))
        return name, data, f"{name}: bytes damaged -> {short(data[:200], 220)}", "bytes"
    kind = draw(st.sampled_from(["empty", "reformat", "other-chunk", "list", "old-format"]))
    if kind == "empty":
        data = b""
    elif kind == "reformat":  # the same document, pretty-printed: inert
        data = json.dumps(json.loads(raw), indent=2).encode("utf-8")
    elif kind == "other-chunk":  # a chunk of the same key, renamed onto this one
        other = draw(st.sampled_from([f for f in files if f != name]))
        data = docs[other]
    elif kind == "list":  # a format-2 chunk: a bare list of rows
        doc = json.loads(raw)
        data = json.dumps(doc.get("rows", doc)).encode("utf-8")
    else:
        doc = json.loads(raw)
        data = json.dumps({**doc, "format": 2}).encode("utf-8")
    return name, data, f"{name}: replaced by {kind} ({len(data)} bytes)", f"file:{kind}"


def inert_cache_mutation(old: bytes, new: bytes, subject: str) -> str | None:
    """A cache file is inert when it is the same JSON document (another layout, 3.0 for 3), or another
    valid chunk of the same key under this chunk's name (its rows are right where they are used, and
    this chunk's items are missing, so recomputed): then it may be used. Every other change must be
    caught. (A chunk edited by someone who also recomputes its sha256s is not generated:
    audit.store.ResultsCache documents that its hashes are not a signature against that.)"""
    if old == new:
        return "the same bytes"
    if subject == "file:other-chunk":
        return "another valid chunk of the key"
    try:
        a, b = json.loads(old), json.loads(new.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return "the same document" if same(a, b, rel=0.0) else None


@pytest.fixture(scope="module")
def cache_lab(tmp_path_factory) -> tuple[Path, list[str], dict[str, bytes], list[dict]]:
    """A cache written once by ResultsCache.rows (the real code): its folder, files and rows."""
    from audit.store import ResultsCache

    root = tmp_path_factory.mktemp("fuzz-cache")
    cache = ResultsCache(root / "cache")
    rows, n = cache.rows(CACHE_KEY, CACHE_IDS, Computer(), chunk=CACHE_CHUNK)
    assert n == len(CACHE_IDS)
    base = cache.folder(CACHE_KEY)
    docs = {p.name: p.read_bytes() for p in sorted(base.glob("*.json"))}
    assert len(docs) == 4 and "key.json" in docs  # three chunks and key.json
    return root, sorted(docs), docs, rows


@FUZZ
@given(data=st.data())
def test_fuzz_cache_chunks(cache_lab, data):
    from audit.store import CacheIntegrityWarning, ResultsCache

    root, files, docs, expected = cache_lab
    name, new, what, subject = data.draw(cache_mutation(files, docs))
    note(what)
    kind = "cache chunk"
    inert = inert_cache_mutation(docs[name], new, subject)
    here = Path(tempfile.mkdtemp(dir=root, prefix="case-"))
    try:
        cache = ResultsCache(here / "cache")
        base = cache.folder(CACHE_KEY)
        base.mkdir(parents=True)
        for f in files:
            (base / f).write_bytes(docs[f])
        (base / name).write_bytes(new)
        owned = [] if name == "key.json" else [r["item"] for r in json.loads(docs[name])["rows"]]
        compute = Computer()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rows, n = cache.rows(CACHE_KEY, CACHE_IDS, compute, chunk=CACHE_CHUNK)
                again, n_again = cache.rows(CACHE_KEY, CACHE_IDS, Computer(), chunk=CACHE_CHUNK)
            except Exception as exc:  # noqa: BLE001 - the property: no exception
                cls = classify_run("traceback", f"{crash_site(exc)} | cache {subject}")
                record(kind, "traceback", cls, f"{what}\n-> {crash_site(exc)}: {short(str(exc), 200)}")
                assert cls, f"traceback for {what}:\n{''.join(traceback.format_exception(exc))[-3000:]}"
                return
        named_warnings = [str(w.message) for w in caught if issubclass(w.category, CacheIntegrityWarning)]
        assert rows == expected and again == expected, f"wrong rows after {what}"
        assert n_again == 0, f"the second read recomputed {n_again} items after {what}"
        if inert:
            record(kind, "ok")
            return
        used = [i for i in owned if i not in compute.asked]
        if used or (name == "key.json" and not named_warnings):
            cls = classify_run("false_pass", f"cache {subject}")
            record(kind, "false_pass", cls, f"{what}\n-> used without a check: {used[:3]}")
            assert cls, f"a mutated cache file was used silently ({used[:3]}...): {what}"
            return
        moved = list((here / "cache" / "quarantine").rglob(f"{name}.*"))
        if not any(str(base / name) in m for m in named_warnings) or not moved:
            cls = classify_run("bad_message", f"cache {subject}")
            record(kind, "bad_message", cls, f"{what}\n-> warnings {named_warnings}, moved {moved}")
            assert cls, f"not named in a warning or not moved aside: {what}: {named_warnings} {moved}"
            return
        record(kind, "rejected")
    finally:
        shutil.rmtree(here, ignore_errors=True)


def test_a_key_json_with_a_field_the_cache_does_not_write_is_moved_aside(cache_lab):
    """Found by test_fuzz_cache_chunks (a line of the key duplicated at the top level): such a key.json is
    named in a warning, moved to quarantine and written again; the rows are still the right ones."""
    from audit.store import CacheIntegrityWarning, ResultsCache

    root, files, docs, expected = cache_lab
    here = Path(tempfile.mkdtemp(dir=root, prefix="key-"))
    cache = ResultsCache(here / "cache")
    base = cache.folder(CACHE_KEY)
    base.mkdir(parents=True)
    for f in files:
        (base / f).write_bytes(docs[f])
    (base / "key.json").write_text(json.dumps({**json.loads(docs["key.json"]), "dtype": "float32"}), encoding="utf-8")
    with pytest.warns(CacheIntegrityWarning, match="unknown field"):
        rows, n = cache.rows(CACHE_KEY, CACHE_IDS, Computer(), chunk=CACHE_CHUNK)
    assert rows == expected and n == 0
    assert list((here / "cache" / "quarantine").rglob("key.json.*"))
    assert set(json.loads((base / "key.json").read_text(encoding="utf-8"))) == {"format", "key_sha256", "key"}


# ---------------------------------------------------------------- known bugs: one reproduction each (strict xfail)
#
# Each case below is a minimal input the fuzz tests found (or the explorations behind them); the test
# states the behaviour issue 15 asks for, so it fails today. strict=True: when a fix lands the case
# XPASSes and the suite goes red; then remove its mark (and its class from KNOWN) so it stays fixed.


def xfail(cls: str):
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"{cls}: {KNOWN[cls]}")


# fixed spec and policy bugs: each reproduction now asserts the fixed behaviour (no xfail)
FIXED_SPECS = [
    ("spec-nonstring-key", "teacher: smollm2-135m\n1: x\n", "unknown field '1'"),
    ("spec-nonstring-key", "null: 1\n", "unknown field 'None'"),
    ("spec-recursive-options", "probes: [{name: bundled, o: &o [*o]}]\n", "probes[0]"),
    ("spec-recursive-options", "probes: [{name: bundled, path: &o [*o]}]\n", "probes[0]"),
    ("spec-falsy-top-level", "false\n", "top level"),
    ("spec-falsy-top-level", "0\n", "top level"),
    ("spec-falsy-top-level", "''\n", "top level"),
    ("spec-falsy-top-level", "[]\n", "top level"),
    ("spec-students-falsy", "students: false\n", "students"),
    ("spec-students-falsy", "students: 0\n", "students"),
    ("spec-students-falsy", "students: ''\n", "students"),
    ("spec-students-falsy", "students: {}\n", "students"),
    ("spec-model-empty", "teacher: ''\n", "teacher"),
    ("spec-trust-remote-code-coerced", "teacher: {path: smollm2-135m, trust_remote_code: 'no'}\n", "trust_remote_code"),
    ("spec-trust-remote-code-coerced", "students: [{path: a/b, trust_remote_code: 1}]\n", "trust_remote_code"),
    ("spec-model-field-types", "teacher: {path: 5}\n", "teacher"),
    ("spec-model-field-types", "students: [{name: [1], path: runs/students/soft}]\n", "students"),
    ("spec-model-field-types", "teacher: {name: t, path: smollm2-135m, revision: 5}\n", "revision"),
    ("spec-model-names", "students: ['/']\n", "students"),
    ("spec-probe-options-unchecked", "probes: [{name: bundled, foo: 1}]\n",
     "probes[0]: unknown option 'foo' for probe 'bundled'"),
    ("spec-probe-options-unchecked", "probes: [{name: bundled, path: [1]}]\n", "probes[0]"),
    ("spec-probe-options-unchecked", "probes: [{name: bundled, path: ''}]\n", "probes[0]"),
    ("spec-duplicate-names", "probes: [bundled, bundled]\n", "probes"),
    ("spec-duplicate-names", "tasks: [bundled_qa, bundled_qa]\n", "tasks"),
    ("spec-infinite-tolerance", "tolerance: .inf\n", "tolerance"),
    ("spec-infinite-tolerance", "tolerance: .nan\n", "tolerance"),
    ("yaml-reader-no-line", "seed: 1\nalpha: \x07\n", "line 2"),
]


@pytest.mark.parametrize("cls, text, field", [pytest.param(c, t, f, id=f"{c}-{i}")
                                              for i, (c, t, f) in enumerate(FIXED_SPECS)])
def test_fixed_spec_bugs(scratch, cls, text, field):
    """The spec is refused with a SpecError naming the file and the field (or line): no traceback, no
    silent acceptance, nothing deferred to spec_hash()."""
    path = scratch / "known-spec.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        parse_spec(path)
    except BequeathError as exc:
        assert str(path) in str(exc) and field in str(exc), str(exc)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"traceback: {crash_site(exc)}: {exc}") from exc
    else:
        raise AssertionError("accepted")


@pytest.mark.parametrize("text", ["", "null\n", "# only a comment\n"])
def test_an_empty_spec_is_the_defaults(scratch, text):
    path = scratch / "empty-spec.yaml"
    path.write_text(text, encoding="utf-8")
    assert parse_spec(path) == AuditSpec.from_dict({})


def test_a_probe_option_the_probe_takes_is_kept(scratch):
    path = scratch / "options-spec.yaml"
    path.write_text("probes: [{name: winogender, path: data/wg.tsv, check_sha256: false}]\n", encoding="utf-8")
    assert parse_spec(path).probes[0].options == {"path": "data/wg.tsv", "check_sha256": False}


def _laughs(levels: int) -> str:
    text = "k0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    text += "".join(f"k{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, levels + 1))
    return text + f"tasks: *l{levels}\n"


@pytest.mark.parametrize("levels", [5, 9])  # spec-error-message-expands-aliases (fixed)
def test_spec_error_message_is_bounded(scratch, levels):
    path = scratch / "laughs.yaml"
    path.write_text(_laughs(levels), encoding="utf-8")
    with pytest.raises(BequeathError) as exc:
        AuditSpec.from_file(path)
    assert len(str(exc.value)) < 10_000, f"a {len(str(exc.value)):,}-character message from {path.stat().st_size} bytes"


def test_policy_error_message_is_bounded(scratch):
    from audit.gate import Policy

    path = scratch / "laughs-policy.yaml"
    path.write_text(_laughs(9).replace("tasks:", "required_tasks:") + "fail_verdicts: *l9\n", encoding="utf-8")
    with pytest.raises(BequeathError) as exc:
        Policy.from_file(path)
    assert len(str(exc.value)) < 10_000


FIXED_POLICIES = [
    ("policy-falsy-top-level", "false\n", "mapping"),
    ("policy-falsy-top-level", "0\n", "mapping"),
    ("policy-falsy-top-level", "[]\n", "mapping"),
    ("yaml-reader-no-line", "tolerance: 2\nalpha: \x07\n", "line 2"),
]


@pytest.mark.parametrize("cls, text, field", [pytest.param(c, t, f, id=f"{c}-{i}")
                                              for i, (c, t, f) in enumerate(FIXED_POLICIES)])
def test_fixed_policy_bugs(scratch, cls, text, field):
    from audit.gate import Policy

    path = scratch / "known-policy.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        Policy.from_file(path)
    except BequeathError as exc:
        assert str(path) in str(exc) and field in str(exc), str(exc)
    else:
        raise AssertionError("accepted")


def test_policy_null_means_not_set(scratch):
    """The docstring: None for tolerance/alpha/min_items (and min_task_retention) is the run's own setting."""
    from audit.gate import Policy

    path = scratch / "null-policy.yaml"
    path.write_text("tolerance: null\nalpha: null\nmin_items: null\nmin_task_retention: null\n", encoding="utf-8")
    policy = Policy.from_file(path)
    assert (policy.tolerance, policy.alpha, policy.min_items, policy.min_task_retention) == (None, None, None, None)
    assert policy == Policy()
    path.write_text("", encoding="utf-8")
    assert Policy.from_file(path) == Policy()


def _cell(run: dict, student: str, where: str) -> dict:
    key, _, group = where.partition("=")
    return next(c for c in run["comparisons"] if c["student_name"] == student
                and (c["group_key"], c["group"]) == ((key, group) if group else ("all", "all")))


def _widen_ci(run: dict) -> None:
    ci = _cell(run, "soft", "overall")["teacher"]["ci"]  # [9.6, 18.1]: still excludes 0, the verdict holds
    ci[0], ci[1] = ci[0] - 1, ci[1] + 1


KNOWN_RUNS = [  # (class, what, mutation of run.json)
    ("run-comparison-figures-unchecked", "the teacher's CI widened by a point each side", _widen_ci),
    ("run-comparison-figures-unchecked", "n_clusters 92 -> 0", lambda r: _cell(r, "soft", "overall").update(n_clusters=0)),
    ("run-comparison-figures-unchecked", "delta.ci_equiv moved", lambda r: _cell(r, "hard", "overall")["delta"].update(ci_equiv=[-50.0, 50.0])),
    ("run-comparison-figures-unchecked", "the reason rewritten", lambda r: _cell(r, "hard", "overall").update(reason="no change")),
    ("run-comparison-figures-unchecked", "mcnemar.p_adj rewritten", lambda r: _cell(r, "hard", "overall")["mcnemar"].update(p_adj=1.0)),
    ("run-task-figures-unchecked", "a task score's CI", lambda r: r["tasks"][0]["scores"]["teacher"].update(ci=[0.0, 1.0])),
    ("run-task-figures-unchecked", "a task's n", lambda r: r["tasks"][0].update(n=4800)),
    ("run-probe-record-unchecked", "a breakdown value", lambda r: r["probes"][0]["breakdown"]["teacher"]["pct_stereotype"]["bias_type"]["by_group"].update(gender=0.1)),
    ("run-probe-record-unchecked", "n_scored of a model", lambda r: r["probes"][0]["models"]["hard"].update(n_scored=736, n_invalid=0)),
    ("run-probe-record-unchecked", "a metric's neutral point", lambda r: r["probes"][0]["metrics"][0].update(neutral=0.9)),
    ("run-spec-unchecked", "a student the spec names is missing from the run", lambda r: r["spec"]["students"][0].update(name="other")),
    ("run-spec-unchecked", "a task the spec names is missing from the run", lambda r: r["spec"]["tasks"].append("arc_easy_local")),
    ("run-spec-unchecked", "the spec's alpha differs from settings", lambda r: r["spec"].update(alpha=0.01)),
    ("run-settings-partly-checked", "settings.n_boot 1000 -> 999", lambda r: r["settings"].update(n_boot=999)),
    ("run-settings-partly-checked", "settings.backend rewritten", lambda r: r["settings"].update(backend="x")),
    ("run-provenance-unchecked", "provenance.seed differs from settings.seed", lambda r: r["provenance"].update(seed=7)),
    ("run-provenance-unchecked", "provenance.spec_hash not the spec's", lambda r: r["provenance"].update(spec_hash="0" * 64)),
    ("run-provenance-unchecked", "provenance.python retyped", lambda r: r["provenance"].update(python={})),
    ("run-model-identity-unchecked", "a student's content_hash", lambda r: r["models"][1].update(content_hash="0" * 64)),
    ("run-model-identity-unchecked", "the teacher's source", lambda r: r["models"][0].update(source="another/model")),
    ("run-duplicate-records", "a comparison twice", lambda r: r["comparisons"].append(copy.deepcopy(r["comparisons"][0]))),
    ("run-spec-probes-crash", "spec.probes[0] = 1.5", lambda r: r["spec"]["probes"].__setitem__(0, 1.5)),
    ("run-short-ci-crash", "a retention CI of one number", lambda r: r["tasks"][0]["retention"]["soft"].update(ci=[1.0])),
    ("run-provenance-unchecked", "provenance.python removed", lambda r: r["provenance"].pop("python")),
    ("run-provenance-unchecked", "a dataset file's sha256", lambda r: r["provenance"]["dataset_files"].update(
        {next(iter(r["provenance"]["dataset_files"])): "0" * 64})),
    ("run-provenance-unchecked", "a dataset file left out", lambda r: r["provenance"]["dataset_files"].pop(
        next(iter(r["provenance"]["dataset_files"])))),
    ("run-provenance-unchecked", "the spec and its spec_hash changed together",
     lambda r: (r["spec"].update(batch_size=7), r["provenance"].update(spec_hash=_spec_hash(r["spec"])))),
    ("run-settings-partly-checked", "settings.looks of an audit that was not adaptive", lambda r: r["settings"].update(looks=[0.5, 1.0])),
    ("run-model-identity-unchecked", "a student's dtype", lambda r: r["models"][1].update(dtype="bfloat16")),
    ("run-model-identity-unchecked", "a note removed", lambda r: r["models"][2].update(notes=["failed to load: x"])),
    ("run-model-identity-unchecked", "the teacher's tokenizer_hash", lambda r: r["models"][0].update(tokenizer_hash="1" * 64)),
    ("run-model-identity-unchecked", "a student's n_params", lambda r: r["models"][1].update(n_params=7)),
    ("run-model-identity-unchecked", "a student's card", lambda r: r["models"][1].update(card={})),
    ("run-task-figures-unchecked", "a task's error text", lambda r: r["tasks"][0].update(error="x")),
    ("run-probe-record-unchecked", "sampled_ids_sha256", lambda r: r["probes"][0].update(sampled_ids_sha256="0" * 64)),
    ("run-probe-record-unchecked", "n_total", lambda r: r["probes"][0].update(n_total=700)),
    ("run-status", "status 'partial' on a complete run", lambda r: r.update(status="partial")),
    ("run-integrity", "the integrity block removed", lambda r: r.pop("integrity")),
    ("run-schema-version-crash", "schema_version a list", lambda r: r.update(schema_version=[3])),
    ("run-schema-version-crash", "schema_version an object", lambda r: r.update(schema_version={"value": 3})),
    ("run-spec-probes-crash", "a spec probe's name a list", lambda r: r["spec"]["probes"][0].update(name=["bundled"])),
    ("run-infinite-figure", "a breakdown value made infinite", lambda r: r["probes"][0]["breakdown"]["teacher"][
        "pct_stereotype"]["subgroup"]["by_group"].update(poor=math.inf)),
]

# what only a signature protects (audit.run_format.Integrity): these cases edit a signed run, re-record its
# plain sha256, and gate it with the key; the others edit an unsigned run and re-record its sha256, so
# what catches them is the gate's own checks (the test asserts the digest itself verified)
SIGNED_CASES = {"a student's content_hash", "the teacher's source", "a student's n_params", "a student's card",
                "the spec and its spec_hash changed together"}  # batch_size: no figure depends on it


def _spec_hash(spec: dict) -> str:
    from audit.gate import spec_hash_of

    return spec_hash_of(spec)


def test_spec_hash_of_a_stored_spec_is_the_audit_spec_hash(make_run_module, tmp_path):
    spec = make_run_module.spec_for(tmp_path, partial=False)
    assert _spec_hash(spec.to_dict()) == spec.spec_hash()


# cases fixed since the fuzzing found them: they run as regression tests


def _gate_edited(lab: Lab, run: dict, items: bytes | None, key: str | None) -> tuple[int, str]:
    with lab.folder(json.dumps(run).encode("utf-8"), items) as d:
        code, out, err = run_gate(d, lab.policy, key)
    assert isinstance(code, int), f"traceback: {crash_site(code)}: {code}"
    return code, out + err


@pytest.mark.parametrize("cls, what, mutate", [pytest.param(c, w, m, id=f"{c}-{i}")
                                               for i, (c, w, m) in enumerate(KNOWN_RUNS)])
def test_known_run_json_bugs(items_lab, cls, what, mutate):
    """The gate refuses a run.json changed after the audit: exit 2 (or 1), never 0, never a traceback;
    by its own checks when the editor re-recorded the digest, by the signature when only it can tell."""
    original = copy.deepcopy(items_lab.run)
    if what in SIGNED_CASES:
        original = sign(original)
    run = copy.deepcopy(original)
    mutate(run)
    if what in SIGNED_CASES:
        run["integrity"] = dict(original["integrity"], sha256=redigest(copy.deepcopy(run))["integrity"]["sha256"])
        code, out = _gate_edited(items_lab, run, None, SIGNING_KEY)
        assert code == 2 and "integrity.hmac_sha256 does not match" in out, f"{what}: exit {code}\n{out[-1500:]}"
        assert _gate_edited(items_lab, run, None, None)[0] == 0  # without the key nothing else can tell
        return
    if "integrity" in run:
        redigest(run)
    code, out = _gate_edited(items_lab, run, None, None)
    assert code in (1, 2), f"{what}: exit {code}\n{out[-1500:]}"
    if "integrity" in run and not out.startswith("error:"):
        assert re.search(r"^PASS +run\.json integrity", out, re.M), out[-1500:]


def _rows(lab: Lab) -> list[dict]:
    return [json.loads(line) for line in _lines(lab.items)]


def _first(rows: list[dict], **match) -> dict:
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


KNOWN_ITEMS = [  # (class, what, mutation of the rows); run.json's items_sha256 is re-recorded
    ("items-duplicate-rows", "a row twice", lambda rows: rows.insert(1, copy.deepcopy(rows[0]))),
    ("items-answers-not-rescored", "an answer's log-likelihood", lambda rows: rows[0]["answers"][0].__setitem__(0, 0.0)),
    ("items-requests-unchecked", "a request's text", lambda rows: rows[0]["requests"][0].__setitem__(1, " they said nothing.")),
    ("items-columns-not-rederived", "a margin", lambda rows: rows[0]["columns"].update(margin=99.0)),
    ("items-columns-not-rederived", "a column of an invalid row", lambda rows: next(r for r in rows if r.get("invalid")).update(columns={"stereotyped": 1.0, "margin": 5.0})),
    ("items-item-metadata-last-row-wins", "the teacher row's group", lambda rows: _first(rows, model="teacher", probe="bundled")["groups"].update(bias_type="age")),
    ("items-item-metadata-last-row-wins", "the teacher row's cluster", lambda rows: _first(rows, model="teacher", probe="bundled").update(cluster="z9")),
    ("items-stray-rows", "a row of no probe or task", lambda rows: rows.append({"model": "teacher", "item": "x"})),
    ("items-renamed-rows", "a task row's item id", lambda rows: _first(rows, model="teacher", task="bundled_qa", item="0").update(item="1000")),
    ("items-answers-not-rescored", "an answer removed", lambda rows: rows[0]["answers"].pop()),
    ("items-answers-not-rescored", "an answer's token count", lambda rows: rows[0]["answers"][0].__setitem__(2, "6")),
    ("items-answers-not-rescored", "answers and columns changed together", lambda rows: _flip_choice(rows[3])),
    ("items-requests-unchecked", "a prompt added", lambda rows: rows[0].update(prompt="Say something.")),
    ("items-columns-not-rederived", "an abs_margin", lambda rows: rows[0]["columns"].update(abs_margin=0.0)),
    ("items-columns-not-rederived", "a per-token column", lambda rows: rows[0]["columns"].update(margin_per_token=0.1)),
    ("items-columns-not-rederived", "a column added", lambda rows: rows[0]["columns"].update(ability=1.0)),
    ("items-columns-not-rederived", "a 0 column made 5e-221", lambda rows: rows[0]["columns"].update(
        stereotyped_per_token=5.116755154028959e-221 if rows[0]["columns"]["stereotyped_per_token"] == 0 else 0.0)),
    ("items-columns-not-rederived", "an invalid row made valid", lambda rows: next(r for r in rows if r.get("invalid")).update(invalid=None)),
]


def _flip_choice(row: dict) -> None:
    """The two log-likelihoods swapped and the columns set to what the swapped answers give: only the
    probe's data (which answer is which) or items the statistics disagree with can tell."""
    (a, b) = row["answers"]
    row["answers"] = [[b[0], b[1], a[2]], [a[0], a[1], b[2]]]
    row["columns"] = {"stereotyped": 1.0 - row["columns"]["stereotyped"], "margin": -row["columns"]["margin"],
                      "abs_margin": row["columns"]["abs_margin"]}


@pytest.mark.parametrize("cls, what, mutate", [pytest.param(c, w, m, id=f"{c}-{i}")
                                               for i, (c, w, m) in enumerate(KNOWN_ITEMS)])
def test_known_items_jsonl_bugs(items_lab, cls, what, mutate):
    """The gate refuses doctored items.jsonl even when run.json records its new sha256."""
    rows = _rows(items_lab)
    mutate(rows)
    data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode("utf-8")
    assert not inert_items_mutation(items_lab.items, data, rehash=True)
    run = redigest(dict(items_lab.run, items_sha256=hashlib.sha256(data).hexdigest()))
    code, out = _gate_edited(items_lab, run, data, None)
    assert code in (1, 2), f"{what}: exit {code}\n{out[-1500:]}"
    assert re.search(r"^PASS +run\.json integrity", out, re.M), out[-1500:]


# ---------------------------------------------------------------- no path traversal from spec or data
#
# Names that become parts of paths: a probe's name (the registry), a task's name (the registry), the
# probe options that name files or folders (bold's domains -> <domain>_prompt.json, bbq's categories ->
# bbq/<category>.jsonl, holisticbias's version -> holisticbias/<version>/): each is checked against a
# fixed list, so '../' or '/' is refused when the spec is read, before anything is loaded or scored.
# Model names never become paths: outputs go to the spec's out (run.json, items.jsonl) and the results
# cache (folders named by a sha256 of the key), whatever the models are called.

TRAVERSALS = [
    ({"probes": ["../bundled"]}, "Unknown probe '../bundled'"),
    ({"probes": ["bundled/../../x"]}, "Unknown probe 'bundled/../../x'"),
    ({"probes": [{"name": "bold", "domains": ["../../etc/passwd"]}]}, "bold: unknown domains ['../../etc/passwd']"),
    ({"probes": [{"name": "bbq", "categories": ["../Age"]}]}, "bbq: unknown categories ['../Age']"),
    ({"probes": [{"name": "holisticbias", "version": "../../v1.0"}]}, "version must be one of"),
    ({"tasks": ["../bundled_qa"]}, "Unknown task '../bundled_qa'"),
    ({"tasks": ["/etc/passwd"]}, "Unknown task '/etc/passwd'"),
]


@pytest.mark.parametrize("raw, says", TRAVERSALS, ids=[s.split(" ", 2)[1] + "-" + str(i) for i, (_, s) in
                                                        enumerate(TRAVERSALS)])
def test_a_name_that_would_leave_its_folder_is_refused_before_scoring(raw, says, monkeypatch):
    """The spec is refused when it is read (nothing loaded, nothing scored), naming the value."""
    import audit.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(audit.models, "load_model", no_load)
    with pytest.raises(BequeathError) as exc:
        AuditSpec.from_dict(raw)
    assert says in str(exc.value), str(exc.value)


def test_model_names_never_become_paths(tmp_path, tiny_model_dir):
    """An audit whose models are called '../../escaped' and 'a/../../b' writes nothing outside its out and
    cache folders, and no file or folder anywhere is named after a model."""
    from audit.harness import run_audit

    work = tmp_path / "inside" / "deeper"
    spec = AuditSpec.from_dict({
        "teacher": {"name": "../../escaped", "path": str(tiny_model_dir)},
        "students": [{"name": "a/../../b", "path": str(tiny_model_dir)}],
        "probes": [{"name": "bundled", "limit": 3}], "tasks": [], "n_boot": 100, "n_perm": 999,
        "backend": "hflm", "out": str(work / "run"), "cache": str(work / "cache")})
    out, code = run_audit(spec, progress=False)
    assert code == 0 and out == work / "run"
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert all(w.startswith("inside") for w in written), written
    assert not any("escaped" in w or w.endswith("/b") for w in written), written
    assert sorted(p.name for p in (work / "run").iterdir()) == ["items.jsonl", "run.json"]
    names = [m["name"] for m in json.loads((out / "run.json").read_text(encoding="utf-8"))["models"]]
    assert names == ["../../escaped", "a/../../b"]  # kept as names, shown as text
    # and the gate verifies this real audit (hflm scores, the real cache), the rows re-derived from the data
    policy = tmp_path / "verify-only.yaml"
    policy.write_text("fail_verdicts: []\nrequired_probes: []\n", encoding="utf-8")
    code, out_text, err = run_gate(out, policy)
    assert code == 0, out_text + err
    assert re.search(r"^PASS +probe bundled rows re-derived +12 sampled items", out_text, re.M), out_text


# ---------------------------------------------------------------- the table


KINDS = ("spec fields", "spec bytes", "policy fields", "policy bytes", "run.json", "items.jsonl", "cache chunk")


def fuzz_table() -> str:
    def cell(c: Counter, name: str) -> str:
        n, k = c[name], c[f"{name}_known"]
        return f"{n}" + (f" ({k} known)" if k else "")

    head = ("input kind", "cases", "accepted", "rejected", "tracebacks", "false passes", "bad messages")
    rows = [head] + [(kind, str(TALLY[kind]["cases"]), str(TALLY[kind]["ok"]), str(TALLY[kind]["rejected"]),
                      cell(TALLY[kind], "traceback"), cell(TALLY[kind], "false_pass"), cell(TALLY[kind], "bad_message"))
                     for kind in KINDS if TALLY[kind]["cases"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = ("accepted: a valid spec/policy parsed, an inert mutation passed (exit 0), an inert cache file used; "
              "rejected: refused with a message naming file and field, gate exit 1/2, a mutated cache file "
              "quarantined and recomputed; false passes: an invalid spec/policy accepted, a mutated run passing "
              "the gate (exit 0), a mutated cache file used; bad messages: a refusal that leaves out the file, "
              "an invalid field (let through while another was refused) or the line of a syntax error, an exit "
              "2 naming nothing, a quarantined cache file not named; known: a class with a strict-xfail "
              "reproduction in test_known_*")
    classes = [f"  {kind}: {cls}\n      first case: {FIRST[(kind, cls)][:240]!r}" for kind, cls in sorted(FIRST)]
    return "\n".join(["", "fuzz cases (tests/test_fuzz.py)", *lines, legend, "known bug classes seen:", *classes])


def test_zz_fuzz_table(capsys):
    """Print the table (last test of the module: pytest runs a module's tests in file order)."""
    if not TALLY:
        pytest.skip("no fuzz test ran in this session")
    with capsys.disabled():
        print(fuzz_table())
    # every input kind that ran was tried at least 1,000 times, and nothing outside a known class got through
    assert all(t["cases"] >= 1000 for t in TALLY.values()), {k: t["cases"] for k, t in TALLY.items()}
    for kind, t in TALLY.items():
        for outcome in ("traceback", "false_pass", "bad_message"):
            assert t[outcome] == t[f"{outcome}_known"], (kind, outcome, dict(t))
    if FUZZ_EXAMPLES >= 1000:
        short_kinds = [k for k in KINDS if 0 < TALLY[k]["cases"] < 1000]
        assert not short_kinds, f"fewer than 1000 cases for {short_kinds}"
