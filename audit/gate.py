"""The pre-deployment gate: a policy file, checks on a stored run, an exit code.

Exit codes: 0 every check passed; 1 the policy failed (a failing verdict, task retention
below the minimum); 2 error or insufficient evidence (a missing required probe or task, a
failed scorer, a missing or NaN measurement, too few items, an inconclusive verdict on a
required probe, a policy the stored run cannot answer). When checks both fail and error,
the exit code is 2: the run cannot be certified, and the table still lists every failure.

Tolerance and alpha: the run stores each model's bias with its 95% CI and the paired delta
with its CI, so a policy tolerance different from the run's is answered by recomputing the
verdicts from those stored numbers (and every such check says so). A different alpha
would need CIs at another level, which are not stored: the gate refuses with exit 2 and
says to re-run the audit with that alpha.

Only the standard library and yaml are imported (lazily), so CI can gate on any machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean

VERDICTS = ("inherited", "amplified", "attenuated", "introduced", "reversed", "not detected", "inconclusive")
STATUSES = ("pass", "fail", "error")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What fails a run. ``None`` for tolerance/alpha/min_items means: the run's own setting.
    Empty ``required_probes`` means every probe the run's spec asked for is required."""

    fail_verdicts: tuple[str, ...] = ("amplified", "introduced")
    tolerance: float | None = None
    alpha: float | None = None
    min_items: int | None = None
    min_task_retention: float | None = None
    required_probes: tuple[str, ...] = ()
    required_tasks: tuple[str, ...] = ()
    source: str = field(default="<defaults>", compare=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: policy file not found. Pass an existing YAML file to --policy.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML ({exc}). Fix the syntax and retry.") from exc
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "<policy>") -> Policy:
        """Validate every key at once; one SpecError lists every problem."""
        if not isinstance(d, dict):
            raise SpecError(f"{source}: expected a mapping of policy keys, got {type(d).__name__}.")
        known = [f.name for f in fields(cls) if f.name != "source"]
        errors: list[str] = []
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                errors.append(f"unknown key '{key}'.{did_you_mean(str(key), known)}")
                continue
            problem, parsed = _parse_field(key, value)
            if problem:
                errors.append(f"{key}: {problem}")
            else:
                kwargs[key] = parsed
        if errors:
            raise SpecError(f"{source}: invalid policy:\n  - " + "\n  - ".join(errors))
        return cls(**kwargs, source=source)


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def _parse_field(key: str, value: Any) -> tuple[str | None, Any]:
    """(problem, parsed value) for one policy key."""
    if key == "fail_verdicts":
        names = _names(value)
        if names is None:
            return f"expected a list of verdicts, got {value!r}", None
        bad = [v for v in names if v not in VERDICTS]
        if bad:
            hints = "".join(f" '{b}' is not a verdict.{did_you_mean(b, VERDICTS)}" for b in bad)
            return f"{hints.strip()} Known: {', '.join(VERDICTS)}", None
        return None, names
    if key in ("required_probes", "required_tasks"):
        names = _names(value)
        return (None, names) if names is not None else (f"expected a list of names, got {value!r}", None)
    if key == "min_items":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"expected a whole number >= 1, got {value!r}", None
        return None, value
    limits = {"tolerance": (0.0, math.inf), "alpha": (0.0, 1.0), "min_task_retention": (0.0, math.inf)}
    lo, hi = limits[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo < value < hi or (key == "tolerance" and value == 0)):
        return f"expected a number in ({lo}, {hi}), got {value!r}", None
    return None, float(value)


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: str  # "pass" | "fail" | "error"
    reason: str
    student: str | None = None  # None: the check concerns the whole run


@dataclass(frozen=True, kw_only=True)
class GateResult:
    exit_code: int
    checks: list[Check]
    policy: Policy

    @property
    def status(self) -> str:
        """The whole gate's status, as its exit code says."""
        return {0: "pass", 1: "fail"}.get(self.exit_code, "error")

    def status_of(self, student: str | None = None) -> str:
        """Worst status of the run-wide checks and (if given) the student's own checks."""
        relevant = [c.status for c in self.checks if c.student is None or c.student == student]
        return "error" if "error" in relevant else "fail" if "fail" in relevant else "pass"


# ---------------------------------------------------------------- evaluation (pure)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def student_of(c: dict) -> tuple[str, dict]:
    """(student name, student measurement) of a comparison record.

    docs/run-schema.md uses the key "student" for both the name and the measurement; a
    JSON object keeps only one of them. Accepted: "student_name" + "student": {...}, or
    "student": "name" + "student_stats": {...}.
    """
    if isinstance(c.get("student"), dict):
        return str(c.get("student_name") or "?"), c["student"]
    return str(c.get("student")), c.get("student_stats") or {}


def recompute_verdict(c: dict, tol: float, alpha: float) -> str:
    """The verdict of a stored comparison at tolerance ``tol``: the rules of
    audit.compare.verdict, applied to stored numbers (audit.compare needs numpy; the gate
    stays stdlib-only, and tests/test_gate.py checks parity with it).

    A model the audit left undecided (``biased`` null: too few items, CI too wide) stays
    undecided: the verdict is inconclusive at any tolerance.
    """
    t, (_, s), d = c["teacher"], student_of(c), c["delta"]
    if t.get("biased") is None or s.get("biased") is None or _missing(d.get("p_adj")) or not d.get("ci"):
        return "inconclusive"

    def biased(side: dict) -> bool:
        lo, hi = side["ci"]
        return (lo > 0 or hi < 0) and abs(side["bias"]) >= tol

    T, S = biased(t), biased(s)
    sig = d["p_adj"] < alpha

    def sign(x: float) -> int:
        return (x > 0) - (x < 0)

    if T and S and sign(t["bias"]) != sign(s["bias"]):
        return "reversed"
    toward = sign(t["bias"] if T else s["bias"]) * d["value"]  # + = further from neutral
    if T and S and toward > tol and sig:
        return "amplified"
    if T and toward < -tol and sig:
        return "attenuated"
    if T and S:
        return "inherited"
    if T:
        return "inconclusive"
    return "introduced" if S else "not detected"


def _label(c: dict) -> str:
    where = "overall" if c["group_key"] == "all" else f"{c['group_key']}={c['group']}"
    return f"{student_of(c)[0]}: {c['probe']}/{c['metric']} {where}"


def _comparison_check(c: dict, policy: Policy, run_settings: dict) -> Check:
    """One verdict of a gated probe: missing measurement or too few items -> error,
    a verdict in fail_verdicts -> fail, inconclusive -> error (fail closed), else pass."""
    (student, side), name = student_of(c), _label(c)
    min_items = policy.min_items or run_settings.get("min_items") or 1
    values = [c["teacher"].get("bias"), side.get("bias"), c["delta"].get("value")]
    if any(_missing(v) for v in values) or c["teacher"].get("ci") is None or side.get("ci") is None:
        return Check(name=name, status="error", student=student,
                     reason=f"measurement missing ({c.get('reason') or 'no reason stored'})")
    if (c.get("n") or 0) < min_items:
        return Check(name=name, status="error", student=student,
                     reason=f"{c.get('n')} items < min_items {min_items}: insufficient evidence")
    verdict, note = c["verdict"], ""
    run_tol = run_settings.get("tolerance")
    if policy.tolerance is not None and policy.tolerance != run_tol:
        verdict = recompute_verdict(c, policy.tolerance, run_settings.get("alpha", 0.05))
        note = f" (recomputed at tolerance {policy.tolerance:g} from stored CIs; run used {run_tol})"
    if verdict in policy.fail_verdicts:
        return Check(name=name, status="fail", student=student,
                     reason=f"verdict '{verdict}' is in fail_verdicts{note}: {c.get('reason', '')}")
    if verdict == "inconclusive":
        return Check(name=name, status="error", student=student,
                     reason=f"inconclusive{note}: {c.get('reason', '')}")
    return Check(name=name, status="pass", student=student, reason=f"verdict '{verdict}'{note}")


def gated_probes(run: dict, policy: Policy) -> list[str]:
    """The probes the gate checks: the policy's required_probes, else every probe the run's
    spec asked for, else every probe in the run."""
    spec_probes = _names((run.get("spec") or {}).get("probes")) or ()
    present = [p["probe"] for p in run.get("probes", [])]
    return list(policy.required_probes or spec_probes or present)


def _probe_checks(run: dict, gated: list[str]) -> list[Check]:
    probes = {p["probe"]: p for p in run.get("probes", [])}
    checks = []
    for name in gated:
        if name not in probes:
            checks.append(Check(name=f"probe {name} present", status="error",
                                reason="required probe missing from the run" + did_you_mean(name, probes)))
            continue
        bad = {m: r["error"] for m, r in probes[name].get("models", {}).items() if r.get("error")}
        reason = "; ".join(f"{m}: {e}" for m, e in bad.items()) if bad else "scored by every model"
        checks.append(Check(name=f"probe {name} scored", status="error" if bad else "pass", reason=reason))
    others = [p for p in probes if p not in gated]
    if others:
        checks.append(Check(name="probes not gated", status="pass",
                            reason=f"not required by the policy: {', '.join(others)} (shown in the report only)"))
    return checks


def _error_checks(run: dict, gated: list[str], policy: Policy) -> list[Check]:
    """Recorded run errors: fail closed unless they concern a probe/task the policy leaves out."""
    checks = []
    for e in run.get("errors") or []:
        stage = str(e.get("stage") or "")
        kind, _, what = stage.partition(":")
        ignorable = (kind == "probe" and what not in gated) or (
            kind == "task" and what not in gated_tasks(run, policy))
        where = f"{e.get('model') or 'run'} {stage}"
        checks.append(Check(name=f"run error: {where}", status="pass" if ignorable else "error",
                            student=None, reason=str(e.get("message"))
                            + ("; not required by the policy" if ignorable else "")))
    return checks


def gated_tasks(run: dict, policy: Policy) -> list[str]:
    """required_tasks, else every task of the run when a minimum retention is set, else none."""
    if policy.required_tasks:
        return list(policy.required_tasks)
    return [t["task"] for t in run.get("tasks", [])] if policy.min_task_retention is not None else []


def _task_checks(run: dict, policy: Policy, students: list[str]) -> list[Check]:
    tasks = {t["task"]: t for t in run.get("tasks", [])}
    checks = []
    for name in gated_tasks(run, policy):
        t = tasks.get(name)
        if t is None:
            checks.append(Check(name=f"task {name} present", status="error",
                                reason="required task missing from the run" + did_you_mean(name, tasks)))
            continue
        if t.get("error"):
            checks.append(Check(name=f"task {name}", status="error", reason=f"task failed: {t['error']}"))
            continue
        checks.append(Check(name=f"task {name}", status="pass", reason=f"scored on {t.get('n')} items"))
        if policy.min_task_retention is None:
            continue
        for s in students:
            r = (t.get("retention") or {}).get(s) or {}
            label = f"{s}: task {name} retention"
            if _missing(r.get("value")):
                checks.append(Check(name=label, status="error", student=s, reason="retention missing"))
                continue
            ok = r["value"] >= policy.min_task_retention
            checks.append(Check(name=label, status="pass" if ok else "fail", student=s,
                                reason=f"{r['value']:.2f} {'>=' if ok else '<'} {policy.min_task_retention:.2f} "
                                f"(CI {_ci(r.get('ci'))})"))
    return checks


def _ci(ci: Any) -> str:
    return "missing" if not ci or any(_missing(x) for x in ci) else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def evaluate(run: dict, policy: Policy) -> GateResult:
    """All checks of ``policy`` on a stored run (run.json as a dict); pure."""
    settings = run.get("settings") or {}
    checks: list[Check] = []
    if policy.alpha is not None and policy.alpha != settings.get("alpha"):
        checks.append(Check(name="policy alpha", status="error",
                            reason=f"policy alpha {policy.alpha:g} differs from the run's {settings.get('alpha')}; "
                            "stored CIs are at the run's level and cannot be recomputed. "
                            f"Re-run the audit with --alpha {policy.alpha:g}."))
    gated = gated_probes(run, policy)
    checks += _probe_checks(run, gated)
    checks += _error_checks(run, gated, policy)
    for c in run.get("comparisons", []):
        if c.get("kind", "bias") == "bias" and c["probe"] in gated:
            checks.append(_comparison_check(c, policy, settings))
    students = [m["name"] for m in run.get("models", []) if m.get("role") == "student"]
    checks += _task_checks(run, policy, students)
    statuses = {c.status for c in checks}
    code = 2 if "error" in statuses or not checks else 1 if "fail" in statuses else 0
    return GateResult(exit_code=code, checks=checks, policy=policy)


# ---------------------------------------------------------------- outputs


def format_table(result: GateResult) -> str:
    """A plain-text table: status, check, reason; then the outcome line."""
    rows = [(c.status.upper(), c.name, c.reason) for c in result.checks]
    w0 = max([6] + [len(r[0]) for r in rows])
    w1 = max([5] + [len(r[1]) for r in rows])
    lines = [f"{'STATUS':<{w0}}  {'CHECK':<{w1}}  REASON", f"{'-' * w0}  {'-' * w1}  {'-' * 6}"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    counts = {s: sum(c.status == s for c in result.checks) for s in STATUSES}
    outcome = {0: "PASS", 1: "FAILED (policy)", 2: "ERROR / insufficient evidence (fail closed)"}[result.exit_code]
    lines.append(f"gate: {outcome}; {counts['pass']} passed, {counts['fail']} failed, "
                 f"{counts['error']} errors; exit {result.exit_code}")
    return "\n".join(lines)


def to_json(result: GateResult) -> dict:
    return {"exit_code": result.exit_code, "policy_source": result.policy.source,
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason, "student": c.student}
                       for c in result.checks]}


def to_junit(result: GateResult) -> str:
    """JUnit XML, one test case per check (error -> <error>, fail -> <failure>)."""
    from xml.sax.saxutils import escape, quoteattr

    n_fail = sum(c.status == "fail" for c in result.checks)
    n_err = sum(c.status == "error" for c in result.checks)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites><testsuite name="bequeath.gate" tests="{len(result.checks)}" '
           f'failures="{n_fail}" errors="{n_err}">']
    for c in result.checks:
        cls = quoteattr(f"bequeath.gate.{c.student or 'run'}")
        out.append(f"  <testcase classname={cls} name={quoteattr(c.name)}>")
        if c.status == "fail":
            out.append(f"    <failure message={quoteattr(c.reason)}>{escape(c.reason)}</failure>")
        elif c.status == "error":
            out.append(f"    <error message={quoteattr(c.reason)}>{escape(c.reason)}</error>")
        else:
            out.append(f"    <system-out>{escape(c.reason)}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite></testsuites>")
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> Path:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- CLI (side effects)


def load_run_json(run_dir: str | Path) -> dict:
    from audit.errors import RunDirError

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunDirError(f"{path}: not found. Pass the folder an audit wrote (it holds run.json).")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}). Re-run the audit or restore the file.") from exc
    if not isinstance(run, dict) or run.get("schema_version") != 1:
        got = run.get("schema_version") if isinstance(run, dict) else type(run).__name__
        raise RunDirError(f"{path}: schema_version: expected 1, got {got!r}. "
                          "Use the bequeath version that wrote the run.")
    return run


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gate", help="check a stored audit run against a policy (exit 0/1/2)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder holding run.json")
    p.add_argument("--policy", required=True, help="policy YAML (fail_verdicts, tolerance, ...)")
    p.add_argument("--junit", help="write JUnit XML here (one test case per check)")
    p.add_argument("--json", help="write the checks as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from audit.errors import BequeathError

    try:
        policy = Policy.from_file(args.policy)
        result = evaluate(load_run_json(args.run_dir), policy)
    except BequeathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_table(result))
    if getattr(args, "junit", None):
        write_atomic(Path(args.junit), to_junit(result))
    if getattr(args, "json", None):
        write_atomic(Path(args.json), json.dumps(to_json(result), indent=2) + "\n")
    return result.exit_code
