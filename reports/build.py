"""A stored run (run.json + items.jsonl) -> the view model every report format renders.

The run is read and verified by ``audit.verify`` in the app layer (``reports.cli``); ``build`` reads it
once as the typed run (``audit.run_format.AuditRun``) and is pure: plain dicts and strings, already
formatted, so templates hold no logic and every format says the same thing. Missing measurements become the word "missing" with the reason, never 0.
Model outputs and dataset strings stay untrusted text here: escaping is the writers' job
(jinja2 autoescape for HTML, ``md_escape`` for Markdown).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from audit.run_format import AuditRun, Comparison, Delta, ModelEntry, Score
from audit.verdicts import (
    VERDICTS,  # noqa: E402  (the rule module is stdlib-only: no torch, no numpy)
    GateResult,
)

# the order findings are shown in: what a reviewer must act on first
FINDING_ORDER = ("amplified", "introduced", "reversed", "inherited", "attenuated")
PROBE_LABELS = {"crows_pairs": "CrowS-Pairs", "stereoset": "StereoSet", "bbq": "BBQ", "winobias": "WinoBias",
                "winogender": "Winogender", "holisticbias": "HolisticBias", "bold": "BOLD",
                "bundled": "the bundled templates"}
TECHNIQUES = {"soft_label": "soft-label", "hard_label": "hard-label", "co_distillation": "co-distilled"}
MINUS = "\u2212"
N_FINDINGS = 5
N_EXAMPLES = 5


# ---------------------------------------------------------------- reading


def as_run(run: AuditRun | Mapping[str, Any]) -> AuditRun:
    """The typed run of a run.json document (validated: RunFormatError names a malformed field), or the run."""
    return run if isinstance(run, AuditRun) else AuditRun.from_json(run)


# ---------------------------------------------------------------- formatting


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, fmt: str = ".1f", *, sign: bool = False) -> str:
    """A number with a real minus sign; 'missing' for None/NaN."""
    if missing(x):
        return "missing"
    text = format(x, ("+" if sign else "") + fmt)
    return text.replace("-", MINUS)


def ci_text(ci: Any, fmt: str = ".1f") -> str:
    if not ci or any(missing(v) for v in ci):
        return "missing"
    return f"[{num(ci[0], fmt)}, {num(ci[1], fmt)}]"


def delta_ci_text(d: Delta) -> str:
    """Δ's interval at the level that decided it (labelled), never an unadjusted one beside an adjusted p."""
    if missing(d.level) or not d.ci_decision:
        return "no interval at the decision level"
    pct = f"{100 * d.level:.2f}".rstrip("0").rstrip(".")
    return f"{pct}% CI {ci_text(d.ci_decision)}"


def probe_label(name: str) -> str:
    return PROBE_LABELS.get(name, name)


def student_label(model: ModelEntry) -> str:
    tech = (model.card or {}).get("technique")
    kind = TECHNIQUES.get(tech, str(tech).replace("_", "-")) if tech else "student"
    return f"{kind} student \u201c{model.name}\u201d" if tech else f"student \u201c{model.name}\u201d"


def metric_value(value: Any, metric: dict) -> str:
    """A metric value in the reader's units: percent for shares (scale 100, neutral in [0, 1])."""
    if missing(value):
        return "missing"
    if metric.get("scale") == 100.0 and 0 <= (metric.get("neutral") or 0) <= 1:
        return f"{value * 100:.0f}%"
    return num(value, ".3g")


def group_phrase(c: Comparison) -> str:
    if c.group_key == "all":
        return "overall bias"
    if c.group_key == "bias_type":
        return f"{c.group} bias"
    return f"bias on {c.group_key} \u201c{c.group}\u201d"


def teacher_name(models: list[ModelEntry]) -> str:
    """The teacher by its name, or by its source when the run only calls it "teacher"."""
    t = next((m for m in models if m.role == "teacher"), None)
    if t is None:
        return "missing"
    return (t.source or t.name) if t.name in ("", "teacher") else t.name


def display_names(models: list[ModelEntry]) -> dict[str, str]:
    """Model name as stored (items, comparisons) -> the name a reader sees."""
    return {m.name: (teacher_name(models) if m.role == "teacher" else m.name) for m in models}


def finding(c: Comparison, who: str, metric: dict, teacher: str = "the teacher") -> str:
    """One plain sentence for a comparison with a decided verdict."""
    verdict = c.verdict
    word = metric.get("binary") or metric.get("name", "")
    what = group_phrase(c)
    where = probe_label(c.probe)
    numbers = (f"{metric_value(c.student.value, metric)} vs {metric_value(c.teacher.value, metric)} {word}, "
               f"\u0394 {num(c.delta.value, sign=True)} pts, {delta_ci_text(c.delta)}")
    if verdict == "introduced":
        return f"The {who} introduced a {what} on {where} that {teacher} does not show: {numbers}."
    return f"The {who} {verdict} the {what} of {teacher} on {where}: {numbers}."


# ---------------------------------------------------------------- the view model (pure)


def _metrics(run: AuditRun) -> dict[tuple[str, str], dict]:
    return {(p.probe, m["name"]): m for p in run.probes for m in p.metrics}


def _comparisons(run: AuditRun, student: str | None = None) -> list[Comparison]:
    return [c for c in run.comparisons if c.kind == "bias" and (student is None or c.student_name == student)]


def _findings(comps: list[Comparison], who: str, metrics: dict, teacher: str) -> list[str]:
    # the widest cells first (overall, then bias types, then subgroups), each by severity, then by |Δ|
    ranked = sorted((c for c in comps if c.verdict in FINDING_ORDER),
                    key=lambda c: (c.group_key != "all", c.group_key != "bias_type",
                                   FINDING_ORDER.index(c.verdict), -abs(c.delta.value or 0.0)))
    return [finding(c, who, metrics.get((c.probe, c.metric), {}), teacher) for c in ranked[:N_FINDINGS]]


def _student_summary(model: ModelEntry, run: AuditRun, gate: GateResult, metrics: dict) -> dict:
    comps = _comparisons(run, model.name)
    counts = [{"verdict": v, "n": sum(c.verdict == v for c in comps), "cls": v.replace(" ", "-")}
              for v in VERDICTS]
    status = gate.status_of(model.name)
    undecided = [c for c in comps if c.verdict in ("inconclusive", "not measurable")]
    who = student_label(model)
    return {"name": model.name, "label": who, "title": who[0].upper() + who[1:],
            "status": status, "status_text": {"pass": "passes", "fail": "fails", "error": "cannot be certified (error or insufficient evidence)"}[status],
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason} for c in gate.checks
                       if c.student == model.name and c.status != "pass"],
            "failing": _failing(gate, model.name),
            "counts": counts, "findings": _findings(comps, who, metrics, f"teacher \u201c{teacher_name(run.models)}\u201d"),
            "n_inconclusive": len(undecided),
            "inconclusive": [f"{probe_label(c.probe)}, {group_phrase(c)}: {c.reason or 'no reason stored'}"
                             for c in undecided]}


def _failing(gate: GateResult, student: str) -> str:
    """What fails the gate for a student: "2 introduced cells", "3 amplified and 1 reversed cells", a failing
    check that is not a comparison by its name ("task bundled_qa retention"), or ""."""
    fails = [c for c in gate.checks if c.student == student and c.status == "fail"]
    by = Counter(c.verdict for c in fails if c.verdict)
    kinds = [f"{k} {v}" for v, k in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))]
    cells = [(", ".join(kinds[:-1]) + " and " if len(kinds) > 1 else "") + kinds[-1]
             + (" cell" if sum(by.values()) == 1 else " cells")] if kinds else []
    others = [c.name.removeprefix(f"{student}: ") for c in fails if not c.verdict]
    return " and ".join(cells + others)


def _matrix(run: AuditRun | Mapping[str, Any], students: list[dict]) -> list[dict]:
    """Per student: rows are groups, columns probe·metric (few), so 25 groups still fit 1280 px;
    each cell names its verdict."""
    comps = _comparisons(as_run(run))
    groups: list[tuple[str, str]] = list(dict.fromkeys((c.group_key, c.group) for c in comps))
    groups.sort(key=lambda k: (k[0] != "all", k[0] != "bias_type", k[0], k[1]))
    columns = list(dict.fromkeys((c.probe, c.metric) for c in comps))
    panels = []
    for st in students:
        by = {(c.probe, c.metric, c.group_key, c.group): c for c in comps if c.student_name == st["name"]}
        rows = []
        for key, group in groups:
            cells = []
            for probe, metric in columns:
                c = by.get((probe, metric, key, group))
                cells.append({"verdict": c.verdict if c else "not measured",
                              "cls": (c.verdict if c else "not-measured").replace(" ", "-"),
                              "delta": f"\u0394 {num(c.delta.value, sign=True)}" if c else "",
                              "title": c.reason if c else "this probe has no such group"})
            rows.append({"key": key, "group": "overall" if key == "all" else group,
                         "kind": {"all": "", "bias_type": "bias type"}.get(key, key), "cells": cells})
        cols = []
        for probe, metric in columns:
            label = probe_label(probe)
            cols.append({"probe": label[0].upper() + label[1:], "metric": metric})
        panels.append({"student": st["label"], "name": st["name"], "columns": cols, "rows": rows})
    return panels


def _tasks(run: AuditRun, students: list[str], teacher: str) -> dict:
    rows = []
    for t in run.tasks:
        cells = [_score_text(t.scores.get(m), t.error) for m in ["teacher", *students]]
        ret = [_score_text(t.retention.get(s), t.error, ".2f") for s in students]
        rows.append({"task": t.task, "metric": t.metric, "n": t.n,
                     "error": t.error, "scores": cells, "retention": ret})
    return {"teacher": teacher, "students": students, "rows": rows}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def headline(run: AuditRun, students: list[dict], teacher: str) -> str:
    """One sentence: what was compared, and each student's verdict (with its overall verdict per probe)."""
    n_probes, n_tasks = len(run.probes), len(run.tasks)
    where = " and ".join(x for x in (_plural(n_probes, "probe") if n_probes else "",
                                     _plural(n_tasks, "task") if n_tasks else "") if x) or "nothing"
    parts = []
    for st in students:
        overall = [c.verdict for c in _comparisons(run, st["name"]) if c.group_key == "all"]
        words = ", ".join(dict.fromkeys(overall))
        status = {"pass": "passes", "fail": "fails the gate", "error": "cannot be certified"}[st["status"]]
        why = f" on {st['failing']}" if st["status"] == "fail" and st.get("failing") else ""
        parts.append(f"{st['name']} {status}{why}" + (f" (overall: {words})" if words else ""))
    return (f"Teacher {teacher} was compared with {_plural(len(students), 'student')} on {where}"
            + (": " + ", ".join(parts) if parts else "") + ".")


def _score_text(score: Score | None, error: str | None, fmt: str = ".3f") -> str:
    if score is None or missing(score.value):
        return f"missing: {error}" if error else "missing: no value stored"
    return f"{num(score.value, fmt)} {ci_text(score.ci, fmt)}"


def run_errors(run: AuditRun) -> list[str]:
    """Each error the run recorded, in one line: model (or "run") / stage: message."""
    return [f"{e.model or 'run'} / {e.stage}: {e.message}" for e in run.errors]


def build(run: AuditRun | Mapping[str, Any], items: list[dict], gate: GateResult, *, figures: bool = True) -> dict:
    """The whole report as plain data (``figures=False`` skips the SVGs, for md/json); ``run``: the typed
    run, or run.json's document (read as one, once)."""
    from reports import sections

    run = as_run(run)
    student_models = [m for m in run.models if m.role == "student"]
    names = [m.name for m in student_models]
    metrics = _metrics(run)
    students = [_student_summary(m, run, gate, metrics) for m in student_models]
    teacher = teacher_name(run.models)
    shown = display_names(run.models)
    view = {
        "title": "bequeath audit: which biases did each student inherit?",
        "created": run.created, "status": run.status,
        "teacher": teacher, "headline": headline(run, students, teacher),
        "gate": {"exit_code": gate.exit_code, "status": gate.status,
                 "policy": gate.policy.source, "fail_verdicts": list(gate.policy.fail_verdicts),
                 "checks": [{"name": c.name, "status": c.status, "reason": c.reason} for c in gate.checks]},
        "run_errors": run_errors(run),
        "students": students, "verdicts": VERDICTS, "matrix": _matrix(run, students),
        "tasks": _tasks(run, names, teacher), "probes": sections.probe_sections(run, items, names, N_EXAMPLES, shown),
        "cards": sections.card_comparison(run.models, figures=figures), "method": sections.method(run, shown),
        "content_warning": sections.CONTENT_WARNING, "forest": [],
    }
    if figures:
        from reports.figures import forest_plots

        view["forest"] = forest_plots(run)
    return view
