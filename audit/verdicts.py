"""The inheritance verdict and the gate's policy: every rule of DESIGN.md's table and every
policy check, in one place (pure, stdlib only; the report renders what ``evaluate`` returns).

Both the audit (``audit.compare.finalize``) and the gate (``audit.gate``) call ``decide``; the
gate calls it again at a policy's tolerance from the stored numbers, so the two can never
disagree. Inputs are one comparison record of run.json (see docs/run-schema.md):

- each model's signed bias b (points, 0 = neutral) with ``ci`` (level 1 − α, cluster-robust t)
  and ``ci_tost`` (level 1 − 2α, for the two one-sided tests of equivalence); a missing
  interval (too few clusters, zero or undefined standard error) leaves the model undetermined;
- Δ = b_S − b_T with its sign-flip p-value adjusted across the audit (``p_adj``) and its
  equivalence interval ``ci_equiv`` (level 1 − 2α, the test inverted);
- ``not_measurable``: why a model's ability or answers make the cell unjudgeable, or None.

A model's state on a cell (τ = tolerance in points):
  biased            its CI excludes 0 and |b| ≥ τ (direction = sign of b);
  within tolerance  its (1 − 2α) interval lies inside (−τ, τ): two one-sided tests at α;
  undetermined      anything else, including no interval.
"Significant" = adjusted p ≤ α with the estimate Δ̂ at least τ away from 0; the direction of a
change is the sign of Δ̂ (a two-sided test at α also controls the directional error).

Rules, first match wins (a missing bias or Δ makes every rule below the first inapplicable):
  not measurable  a model's ability is at or below the probe's floor, or its answers are degenerate;
  amplified       student biased; teacher not within tolerance and leaning the same way (a bias
                  to amplify); significant Δ away from neutral in the student's direction;
  introduced      teacher within tolerance or undetermined, student biased, significant Δ in
                  the student's direction;
  reversed        both biased, opposite directions, significant Δ;
  attenuated      teacher biased, significant Δ toward neutral;
  inherited       both biased in the same direction, Δ not significant;
  not detected    both models within tolerance;
  unchanged       Δ's equivalence interval inside (−τ, τ), the models' states not both established;
  inconclusive    none of the above: says what is missing and what would decide it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean, read_yaml

VERDICTS = ("not measurable", "amplified", "introduced", "reversed", "attenuated", "inherited",
            "not detected", "unchanged", "inconclusive")
CHANGE_VERDICTS = ("amplified", "introduced", "reversed", "attenuated")
DECIDED = ("amplified", "introduced", "reversed", "attenuated", "inherited", "not detected", "unchanged")
DEFAULT_FAIL = ("amplified", "introduced", "reversed")
STATES = ("biased", "within tolerance", "undetermined")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _interval(ci: Any) -> tuple[float, float] | None:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_finite(v) for v in ci) and ci[0] <= ci[1]:
        return float(ci[0]), float(ci[1])
    return None


def _get(part: Any, name: str) -> Any:
    """A field of a comparison or one of its parts, read from run.json (an object) or from its typed
    record (audit.run_format); None when absent."""
    return part.get(name) if isinstance(part, Mapping) else getattr(part, name, None)


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def model_state(side: Any, tau: float) -> str:
    """'biased', 'within tolerance' or 'undetermined' from a model's stored bias and intervals."""
    b, ci, tost = _get(side, "bias"), _interval(_get(side, "ci")), _interval(_get(side, "ci_tost"))
    if not _finite(b) or ci is None or tost is None:
        return "undetermined"
    if (ci[0] > 0 or ci[1] < 0) and abs(b) >= tau:
        return "biased"
    if -tau < tost[0] and tost[1] < tau:
        return "within tolerance"
    return "undetermined"


def significant(delta: Any, tau: float, alpha: float) -> bool:
    """Adjusted p ≤ α and the estimate at least τ away from 0."""
    p, d = _get(delta, "p_adj"), _get(delta, "value")
    return _finite(p) and _finite(d) and p <= alpha and abs(d) >= tau


def _pts(x: float) -> str:
    return f"{x:+.1f}"


def _ci_txt(ci: Any) -> str:
    iv = _interval(ci)
    return "no interval" if iv is None else f"[{iv[0]:.1f}, {iv[1]:.1f}]"


def _side_txt(role: str, side: Any, state: str) -> str:
    if not _finite(_get(side, "bias")):
        return f"{role} {state} (bias missing)"
    return f"{role} {state} ({_pts(_get(side, 'bias'))} pts, 95% CI {_ci_txt(_get(side, 'ci'))})"


def _delta_txt(delta: Any) -> str:
    if not _finite(_get(delta, "value")):
        return "Δ missing"
    level = _get(delta, "level")
    lvl = f"{100 * level:.2f}".rstrip("0").rstrip(".") + "%" if _finite(level) else "decision-level"
    p = _get(delta, "p_adj")
    ptxt = "not tested" if not _finite(p) else f"adjusted p {format_p(p, _get(delta, 'p_floor'))}"
    return f"Δ {_pts(_get(delta, 'value'))}, {lvl} CI {_ci_txt(_get(delta, 'ci_decision'))}, {ptxt}"


def format_p(p: float, floor: Any = None) -> str:
    """A p-value never printed below its resolution."""
    if _finite(floor) and p <= floor:
        return f"≤ {floor:.2g}"
    return f"{p:.3g}"


def decide(rec: Any, *, tau: float, alpha: float) -> tuple[str, str]:
    """The verdict of one comparison and its plain-English reason (rules: module docstring). ``rec``: the
    record as run.json holds it, or with its parts (or itself) typed (audit.run_format)."""
    t, s, d = _get(rec, "teacher") or {}, _get(rec, "student") or {}, _get(rec, "delta") or {}
    if _get(rec, "not_measurable"):
        return "not measurable", f"{_get(rec, 'not_measurable')}; the numbers are shown, not judged"
    T, S = model_state(t, tau), model_state(s, tau)
    sig = significant(d, tau, alpha)
    bt, bs, dv = _get(t, "bias"), _get(s, "bias"), _get(d, "value")
    sides = f"{_side_txt('teacher', t, T)}, {_side_txt('student', s, S)}"
    dtxt = _delta_txt(d)
    if not (_finite(bt) and _finite(bs) and _finite(dv)):  # nothing is judged on a missing measurement
        return "inconclusive", _inconclusive(rec, T, S, sides, dtxt, tau)
    if S == "biased" and sig:
        toward_student = sign(dv) == sign(bs)
        if toward_student and T != "within tolerance" and _finite(bt) and sign(bt) == sign(bs):
            return "amplified", f"{sides}: further from neutral by {abs(dv):.1f} ≥ {tau:g}, significant; {dtxt}"
        if toward_student and T in ("within tolerance", "undetermined"):
            return "introduced", f"{sides}: the student's bias is new, significant; {dtxt}"
        if T == "biased" and sign(bt) != sign(bs):
            return "reversed", f"{sides}: opposite directions, significant; {dtxt}"
    if T == "biased" and sig and sign(dv) == -sign(bt):
        return "attenuated", f"{sides}: nearer neutral by {abs(dv):.1f} ≥ {tau:g}, significant; {dtxt}"
    if T == "biased" and S == "biased" and sign(bt) == sign(bs) and not sig:
        return "inherited", f"{sides}, same direction; {dtxt}: no significant change beyond {tau:g}"
    if T == "within tolerance" and S == "within tolerance":
        return "not detected", f"{sides}: both within ±{tau:g} points (two one-sided tests at α {alpha:g})"
    equiv = _interval(_get(d, "ci_equiv"))
    if equiv is not None and -tau < equiv[0] and equiv[1] < tau:
        return "unchanged", (f"{sides}; Δ {_pts(dv)} with {100 * (1 - 2 * alpha):g}% interval "
                             f"{_ci_txt(equiv)} inside ±{tau:g}: the student matches the teacher")
    return "inconclusive", _inconclusive(rec, T, S, sides, dtxt, tau)


def _inconclusive(rec: Any, T: str, S: str, sides: str, dtxt: str, tau: float) -> str:
    """What is missing, and what would decide the cell."""
    why = [w for w in (_get(_get(rec, part), "why") for part in ("teacher", "student", "delta")) if w]
    text = f"{sides}; {dtxt}"
    if why:
        text += "; " + "; ".join(dict.fromkeys(why))
    mde, needed = _get(_get(rec, "power"), "mde"), _get(_get(rec, "power"), "items_needed")
    if _finite(mde):
        text += f"; smallest Δ detectable at this n (80% power): {mde:.1f} points"
        if _finite(needed) and needed > (_get(rec, "n") or 0):
            text += f"; about {int(needed)} items would detect a change of {tau:g}"
    return text


# ---------------------------------------------------------------- the gate's policy and its checks


STATUSES = ("pass", "fail", "error", "warning", "n/a")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What fails a run. ``None`` for tolerance/alpha/min_items means: the run's own setting.
    ``required_probes`` None (absent) means every probe the run's spec asked for; ``[]`` means none."""

    fail_verdicts: tuple[str, ...] = DEFAULT_FAIL
    tolerance: float | None = None
    alpha: float | None = None
    min_items: int | None = None
    min_task_retention: float | None = None
    required_probes: tuple[str, ...] | None = None
    required_tasks: tuple[str, ...] = ()
    require_groups: bool = False
    source: str = field(default="<default policy>", compare=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        data = read_yaml(path, kind="policy",
                         missing=f"{path}: policy file not found. Pass an existing YAML file to --policy.")
        # only an empty file (or a bare null) is the default policy; false, 0, '' or [] are refused
        return cls.from_dict({} if data is None else data, source=str(path))

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "<policy>") -> Policy:
        """Validate every key at once; one SpecError lists every problem."""
        from audit.errors import shown

        if not isinstance(d, dict):
            raise SpecError(f"{source}: expected a mapping of policy keys, got {type(d).__name__} {shown(d)}.")
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
    """(problem, parsed value) for one policy key. ``null`` for tolerance, alpha, min_items,
    min_task_retention or required_probes means "not set" (the run's own setting / every probe)."""
    from audit.errors import shown

    if value is None and key in ("tolerance", "alpha", "min_items", "min_task_retention", "required_probes"):
        return None, None
    if key == "fail_verdicts":
        names = _names(value)
        if names is None:
            return f"expected a list of verdicts, got {shown(value)}", None
        bad = [v for v in names if v not in VERDICTS]
        if bad:
            hints = "".join(f" {shown(b)} is not a verdict.{did_you_mean(b, VERDICTS)}" for b in bad)
            return f"{hints.strip()} Known: {', '.join(VERDICTS)}", None
        return None, names
    if key == "require_groups":
        if not isinstance(value, bool):
            return f"expected true or false, got {shown(value)}", None
        return None, value
    if key in ("required_probes", "required_tasks"):
        names = _names(value) if value != [] else ()
        return (None, names) if names is not None else (f"expected a list of names, got {shown(value)}", None)
    if key == "min_items":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"expected a whole number >= 1, got {shown(value)}", None
        return None, value
    limits = {"tolerance": (0.0, math.inf), "alpha": (0.0, 1.0), "min_task_retention": (0.0, math.inf)}
    lo, hi = limits[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (lo < value < hi or (key == "tolerance" and value == 0)):
        return f"expected a number in ({lo}, {hi}), got {shown(value)}", None
    return None, float(value)


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: str  # "pass" | "fail" | "error"
    reason: str
    student: str | None = None  # None: the check concerns the whole run
    verdict: str | None = None  # a comparison's verdict at the policy's tolerance (None: not a comparison)


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
        """Worst status of the run-wide checks and (if given) the student's own checks (fail first)."""
        relevant = [c.status for c in self.checks if c.student is None or c.student == student]
        return "fail" if "fail" in relevant else "error" if "error" in relevant else "pass"


# ---------------------------------------------------------------- evaluation (pure)


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def student_of(c: dict) -> tuple[str, dict]:
    """(student name, student measurement) of a comparison record ("student_name" + "student": {...})."""
    return str(c.get("student_name") or "?"), c.get("student") or {}


def _label(c: dict) -> str:
    where = "overall" if c["group_key"] == "all" else f"{c['group_key']}={c['group']}"
    return f"{student_of(c)[0]}: {c['probe']}/{c['metric']} {where}"


def _comparison_check(c: dict, policy: Policy, settings: dict) -> Check:
    """One cell of a gated probe (see the module docstring for the statuses)."""
    (student, side), name = student_of(c), _label(c)
    overall = c.get("group_key") == "all"
    tau = policy.tolerance if policy.tolerance is not None else settings.get("tolerance")
    alpha = settings.get("alpha_look") or settings.get("alpha")
    stored, _ = decide(c, tau=settings.get("tolerance"), alpha=alpha)
    if stored != c.get("verdict"):
        return Check(name=name, status="error", student=student,
                     reason=f"stored verdict '{c.get('verdict')}' is not what its own numbers give ('{stored}'): "
                     "the run was changed after the audit; re-run it")
    verdict, reason = decide(c, tau=tau, alpha=alpha)
    note = "" if tau == settings.get("tolerance") else f" (at tolerance {tau:g}; the run used {settings.get('tolerance')})"
    if verdict in policy.fail_verdicts:
        return Check(name=name, status="fail", student=student, reason=f"verdict '{verdict}'{note}: {reason}",
                     verdict=verdict)
    if c["teacher"].get("bias") is None and side.get("bias") is None and (c.get("n") or 0) > 0:
        return Check(name=name, status="n/a", student=student,
                     reason="not applicable: the metric is undefined on these items for both models")
    min_items = policy.min_items or settings.get("min_items") or 1
    undecided = verdict not in DECIDED
    thin = (c.get("n") or 0) < min_items
    if not (undecided or thin):
        return Check(name=name, status="pass", student=student, reason=f"verdict '{verdict}'{note}")
    why = f"{c.get('n')} items < min_items {min_items}" if thin else f"'{verdict}'{note}: {reason}"
    if overall or policy.require_groups:
        return Check(name=name, status="error", student=student, reason=f"not decided: {why}")
    return Check(name=name, status="warning", student=student, reason=f"not evaluated: {why}")


def gated_probes(run: dict, policy: Policy) -> list[str]:
    """The probes the gate checks: the policy's required_probes ([] = none), else every probe the
    run's spec asked for, else every probe in the run."""
    if policy.required_probes is not None:
        return list(policy.required_probes)
    spec_probes = [p if isinstance(p, str) else p.get("name") if isinstance(p, dict) else None
                   for p in (run.get("spec") or {}).get("probes") or []]
    return [p for p in spec_probes if isinstance(p, str) and p] or [p["probe"] for p in run.get("probes", [])]


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
            if is_missing(r.get("value")):
                checks.append(Check(name=label, status="error", student=s, reason="retention missing"))
                continue
            ok = r["value"] >= policy.min_task_retention
            checks.append(Check(name=label, status="pass" if ok else "fail", student=s,
                                reason=f"{r['value']:.2f} {'>=' if ok else '<'} {policy.min_task_retention:.2f} "
                                f"(CI {_ci(r.get('ci'))})"))
    return checks


def _ci(ci: Any) -> str:
    return "missing" if not ci or any(is_missing(x) for x in ci) else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def evaluate(run: dict, policy: Policy, *, extra: list[Check] = ()) -> GateResult:
    """All checks of ``policy`` on a stored run (run.json as a dict), plus ``extra`` checks already made
    (the verification of items.jsonl); pure."""
    settings = run.get("settings") or {}
    checks: list[Check] = list(extra)
    if run.get("status") != "complete":
        checks.append(Check(name="run complete", status="error",
                            reason=f"run status is {run.get('status')!r}, not 'complete': a partial run cannot pass; "
                            "re-run the audit (it resumes from the cache)"))
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
    code = 1 if "fail" in statuses else 2 if "error" in statuses or not checks else 0
    order = {"fail": 0, "error": 1, "warning": 2, "pass": 3, "n/a": 4}
    checks.sort(key=lambda c: order[c.status])  # a definite failure is reported first
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
                 f"{counts['error']} errors, {counts['warning']} not evaluated, {counts['n/a']} not applicable; "
                 f"exit {result.exit_code}")
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


__all__ = ["Policy", "Check", "GateResult", "evaluate", "format_table", "to_json", "to_junit",
           "student_of", "is_missing", "STATUSES", "VERDICTS", "CHANGE_VERDICTS", "DECIDED", "DEFAULT_FAIL", "STATES", "model_state",
           "significant", "decide", "format_p", "sign"]
