"""View-model pieces for the detail sections: per-probe tables and evidence, example items,
distillation cards and method/provenance (pure; see reports.build). They read the typed run
(``audit.run_format``); per-item rows (items.jsonl) stay plain dicts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from audit.run_format import AuditRun, Comparison, Delta, ModelEntry, ProbeResult
from reports.build import (
    ci_text,
    delta_ci_text,
    metric_value,
    missing,
    num,
    probe_label,
    run_errors,
)

CONTENT_WARNING = ("Content warning: these items contain social stereotypes (some offensive) and raw "
                   "model outputs, shown as plain text.")


def _breakdowns(p: ProbeResult, models: list[str], shown: dict[str, str]) -> list[dict]:
    """fairlearn MetricFrame breakdowns as tables: rows groups, columns models."""
    tables = []
    for metric in p.metrics:
        for key in p.group_keys:
            per_model = {m: (p.breakdown.get(m) or {}).get(metric["name"], {}).get(key) for m in models}
            groups = sorted({g for b in per_model.values() if b for g in (b.get("by_group") or {})})
            rows = [{"group": g, "summary": False, "values": [metric_value(((per_model[m] or {}).get("by_group") or {}).get(g), metric)
                                            for m in models]} for g in groups]
            for label, field in (("overall", "overall"), ("difference (max \u2212 min)", "difference"),
                                 ("ratio (min / max)", "ratio")):
                fmt = (lambda v, m=metric: metric_value(v, m)) if field == "overall" else (lambda v: num(v, ".3f"))
                rows.append({"group": label, "summary": True,
                             "values": [fmt((per_model[m] or {}).get(field)) if per_model[m] else "missing: not scored"
                                        for m in models]})
            tables.append({"caption": f"{metric['name']} by {key}", "models": [shown.get(m, m) for m in models],
                           "rows": rows})
    return tables


def _evidence_rows(comps: list[Comparison]) -> list[dict]:
    rows = []
    for c in comps:
        ev, mc, d = c.evidence, c.mcnemar, c.delta
        rows.append({
            "student": c.student_name, "group": "overall" if c.group_key == "all" else f"{c.group_key}: {c.group}",
            "n": c.n,
            "teacher": f"{num(c.teacher.bias, sign=True)} {ci_text(c.teacher.ci)}",
            "student_bias": f"{num(c.student.bias, sign=True)} {ci_text(c.student.ci)}",
            "delta": f"{num(d.value, sign=True)}, {delta_ci_text(d)} (unadjusted 95%: {ci_text(d.ci)})",
            "delta_value": num(d.value, sign=True), "delta_ci": delta_ci_text(d),
            "delta_unadjusted": ci_text(d.ci),
            "p_adj": _p_text(d), "p_short": _p_text(d).split(":")[0],
            "mcnemar": f"b={mc.b}, c={mc.c}, p_adj {num(mc.p_adj, '.3g')}" if mc else "not applicable",
            "p_s_t": num(ev.p_s_given_t, ".2f") if ev else "not applicable",
            "p_s_not_t": num(ev.p_s_given_not_t, ".2f") if ev else "not applicable",
            "kappa": num(ev.kappa, ".2f") if ev else "not applicable",
            "margin_corr": num(ev.margin_corr, ".2f") if ev else "not applicable",
            "verdict": c.verdict, "cls": c.verdict.replace(" ", "-"),
            "reason": c.reason or "no reason stored",
        })
    return rows


def _p_text(d: Delta) -> str:
    """The adjusted p, never below its resolution; why Δ was not tested otherwise."""
    from audit.verdicts import format_p

    if missing(d.p_adj):
        return "not tested" + (f": {d.why}" if d.why else "")
    return format_p(d.p_adj, d.p_floor)


def _examples(p: ProbeResult, items: list[dict], students: list[str], n_max: int) -> list[dict]:
    """Items where teacher and student both chose the stereotype, and where they disagree."""
    binary = next((m.get("binary") for m in p.metrics if m.get("binary")), None)
    if not binary:
        return []
    rows = {(r["model"], r["item"]): r for r in items if r.get("probe") == p.probe}
    teacher_items = [r for (m, _), r in rows.items() if m == "teacher"]
    out = []
    for s in students:
        both, differ = [], []
        for t in teacher_items:
            sr = rows.get((s, t["item"]))
            tv, sv = (t.get("columns") or {}).get(binary), ((sr or {}).get("columns") or {}).get(binary)
            if sr is None or missing(tv) or missing(sv):
                continue
            ex = {"item": t["item"], "groups": ", ".join(f"{k}: {v}" for k, v in (t.get("groups") or {}).items()),
                  "teacher": _choice(t, binary), "student": _choice(sr, binary),
                  "teacher_text": t.get("text"), "student_text": sr.get("text")}
            (both if tv == 1 and sv == 1 else differ if tv != sv else []).append(ex)
        out.append({"student": s, "binary": binary, "both": both[:n_max], "differ": differ[:n_max],
                    "n_both": len(both), "n_differ": len(differ)})
    return out


def _choice(row: dict, binary: str) -> str:
    cols = row.get("columns") or {}
    word = "stereotype" if cols.get(binary) == 1 else "anti-stereotype"
    margin = cols.get("margin")
    return word if missing(margin) else f"{word} (margin {num(margin, '.2f', sign=True)})"


def probe_sections(run: AuditRun, items: list[dict], students: list[str], n_examples: int = 5,
                   shown: dict[str, str] | None = None) -> list[dict]:
    models = ["teacher", *students]
    shown = shown or {}
    out = []
    for p in run.probes:
        comps = [c for c in run.comparisons if c.probe == p.probe]
        counts = [{"model": shown.get(m, m), "n_scored": r.n_scored, "n_invalid": r.n_invalid,
                   "error": r.error or ""} for m, r in p.models.items()]
        out.append({"id": f"probe-{p.probe}", "name": p.probe, "label": probe_label(p.probe),
                    "title": p.card.get("title", p.probe), "version": p.version,
                    "n_total": p.n_total, "n_skipped": p.n_skipped, "limit": p.limit,
                    "counts": counts, "breakdowns": _breakdowns(p, models, shown),
                    "evidence": _evidence_rows(comps), "examples": _examples(p, items, students, n_examples),
                    "teacher": shown.get("teacher", "teacher")})
    return out


def _flat(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), "missing" if d is None else str(d))]


CARD_ROWS = (("technique", "technique"), ("bias-aware distillation", "debias"), ("hyperparameters", "hyperparameters"), ("student init", "student_init"),
             ("data", "data"), ("steps", "steps"), ("tokens seen", "tokens_seen"), ("wall time (s)", "wall_time_s"),
             ("final loss", "final_loss"), ("loss curve", "loss_curve"), ("learning curve", "learning_curve"),
             ("teacher", "teacher"), ("versions", "versions"))
# hyperparameters every method uses; the others belong to one method (see distill/spec.py and distill/train.py)
COMMON_HP = ("student", "corpus", "corpus_field", "prompts", "gen_max_new_tokens", "gen_temperature", "gen_batch_size", "max_steps",
             "batch_size", "grad_accum", "lr", "warmup_steps", "lr_schedule", "weight_decay", "seq_len", "seed", "dtype")
GENERATION_HP = ("prompts", "gen_max_new_tokens", "gen_temperature", "gen_batch_size")
# fields the card shows elsewhere (teacher, output folder) or that do not change the result
HIDDEN_HP = ("teacher", "method", "output", "checkpoint_every", "resume")


def used_hyperparameters(method: str | None, hp: dict) -> dict:
    """Only what the technique used: no divergence or temperature for hard-label students."""
    keep = [k for k in COMMON_HP if not (k in GENERATION_HP and hp.get("corpus") != "generate")]
    if method == "soft":
        keep += ["divergence", "temperature", "alpha", "tau_squared"]
        keep += ["beta"] if hp.get("divergence") == "jsd" else []
        keep += ["skew_lambda"] if hp.get("divergence") == "skew_kl" else []
    elif method == "hard":
        keep += ["hard_level"]
    elif method == "co":
        keep += ["temperature", "tau_squared", "lam", "teacher_lambda", "burn_in", "peers", "teacher_lr", "snapshot_every"]
    else:  # unknown method: show everything rather than hide what we cannot judge
        keep = [k for k in hp if k not in HIDDEN_HP]
    if hp.get("cache") and method in ("soft", "hard"):
        keep += ["cache", "top_k"]
    return {k: hp[k] for k in hp if k in keep}


_SPARK_COLOURS = ("#1f4e8c", "#b5451b", "#2e7d32", "#6a1b9a")


def spark_svg(series: list[list[tuple[float, float]]], label: str, *, dashed: list[float] = (),
              width: int = 240, height: int = 72) -> str:
    """Small inline line chart (no script, no axes): one polyline per series and a dashed horizontal
    line per ``dashed`` value (e.g. the teacher's score), same colour order. Built only from numbers and
    ``label`` (callers pass text they made from numbers), so it holds no untrusted text."""
    series = [pts for pts in series if len(pts) >= 2]
    if not series:
        return ""
    pad = 4.0
    xs = [x for pts in series for x, _ in pts]
    ys = [y for pts in series for _, y in pts] + list(dashed)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)

    def at(x: float, y: float) -> str:
        return f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}"

    lines = "".join(f'<polyline fill="none" stroke="{_SPARK_COLOURS[i % len(_SPARK_COLOURS)]}" stroke-width="1.5" '
                    f'points="{" ".join(at(x, y) for x, y in pts)}"/>' for i, pts in enumerate(series))
    lines += "".join(f'<polyline fill="none" stroke="{_SPARK_COLOURS[i % len(_SPARK_COLOURS)]}" stroke-width="1" '
                     f'stroke-dasharray="3,2" points="{at(x0, y)} {at(x1, y)}"/>' for i, y in enumerate(dashed))
    return (f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}"><title>{label}</title>'
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" stroke="#c8c8c8"/>'
            f'{lines}</svg>')


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and not missing(x)


def loss_svg(curve: list) -> str:
    """The loss curve as a small inline SVG."""
    pts = [(float(e["step"]), float(e["loss"])) for e in curve or []
           if isinstance(e, dict) and _is_number(e.get("step")) and _is_number(e.get("loss"))]
    if len(pts) < 2:
        return ""
    return spark_svg([pts], f"training loss from {pts[0][1]:.3g} at step {pts[0][0]:g} to {pts[-1][1]:.3g} "
                            f"at step {pts[-1][0]:g}")


def _curve_series(block: dict) -> list[tuple[str, list[tuple[float, float]]]]:
    points = [p for p in block.get("points") or [] if isinstance(p, dict) and _is_number(p.get("tokens_seen"))]
    out = []
    for task in block.get("tasks") or []:
        pts = [(float(p["tokens_seen"]), float(v)) for p in points
               if isinstance(p.get("scores"), dict) and _is_number(v := p["scores"].get(task))]
        out.append((str(task), pts))
    return out


def learning_curve_svg(block: dict) -> str:
    """Task score against tokens seen, one line per task, the teacher's score dashed in the same colour."""
    if not isinstance(block, dict):
        return ""
    series = _curve_series(block)
    teacher = block.get("teacher") if isinstance(block.get("teacher"), dict) else {}
    dashed = [float(teacher[t]) for t, _ in series if _is_number(teacher.get(t))]
    if len(dashed) != len(series):
        dashed = []  # colours pair a task with its teacher line; without every teacher score, draw none
    return spark_svg([pts for _, pts in series], "task score against tokens seen; dashed: the teacher",
                     dashed=dashed)


def learning_curve_lines(block: Any) -> list[str]:
    """One line per task: teacher, first and last student score, and the last point's retention."""
    if not isinstance(block, dict):
        return ["not recorded (distil with eval_tasks to record task scores against tokens seen)"]
    points = [p for p in block.get("points") or [] if isinstance(p, dict)]
    teacher = block.get("teacher") if isinstance(block.get("teacher"), dict) else {}
    when = f"every {block['every']} steps" if block.get("every") else "before and after training"
    lines = [f"{len(points)} points, {when}, "
             f"{'all' if block.get('limit') is None else block.get('limit')} documents per task"]
    for task, pts in _curve_series(block):
        last = points[-1] if points else {}
        ret = (last.get("retention") or {}).get(task)
        lines.append(f"{task}: teacher {num(teacher.get(task), '.3f')}; student "
                     + (f"{pts[0][1]:.3f} at {pts[0][0]:,.0f} tokens \u2192 {pts[-1][1]:.3f} at {pts[-1][0]:,.0f}"
                        if pts else "missing")
                     + f"; retention {num(ret, '.2f')}")
    return lines


def _loss_lines(curve: list) -> list[str]:
    pts = [e for e in curve or [] if isinstance(e, dict) and not missing(e.get("loss"))]
    if not pts:
        return ["not recorded"]
    return [f"{len(pts)} logged steps: {num(pts[0]['loss'], '.3g')} at step {pts[0].get('step')} "
            f"\u2192 {num(pts[-1]['loss'], '.3g')} at step {pts[-1].get('step')}"]


def contamination_lines(block: dict) -> list[str]:
    """The card's n-gram overlap check (distill.eval_items) in a few lines: the total, then each probe or task."""
    n = block.get("ngram")
    lines = [f"{block.get('items_overlapping')} of {block.get('items_checked')} items share a {n}-gram with the corpus"]
    for s in block.get("sets") or []:
        line = f"{s.get('name')} ({s.get('kind')}): {s.get('overlapping')} of {s.get('checked')}"
        if s.get("examples"):
            line += f", e.g. {', '.join(str(x) for x in s['examples'])}"
        if s.get("too_short"):
            line += f"; {s['too_short']} under {block.get('min_ngram')} words, not checked"
        lines.append(line)
    if block.get("not_checked"):
        lines.append("not checked (no data): " + ", ".join(str(x.get("name")) for x in block["not_checked"]))
    return lines


def debias_lines(block: dict | None) -> list[str]:
    """The card's ``debias`` record (distill.api._pair_up): the method, what it paired and the word lists
    with their hashes; ``None`` is a plain distillation."""
    if block is None:
        return ["none (plain distillation)"]
    if not isinstance(block, dict):
        return [str(block)]
    lines = [f"{block.get('summary') or block.get('method')}: {block.get('n_pairs')} of {block.get('n_sequences')} "
             f"sequences paired with their swap ({block.get('n_aligned_pairs')} token-aligned)"]
    for extra in ("crr", "invariance"):
        if isinstance(block.get(extra), dict):
            lines.append(f"{extra}: " + ", ".join(f"{k} {v}" for k, v in block[extra].items()))
    for wl in block.get("word_lists") or []:
        lines.append(f"word list {wl.get('path')} (sha256 {str(wl.get('sha256'))[:12]}…)")
    return lines


def _card_cell(card: dict | None, key: str, figures: bool) -> dict:
    if not card:
        return {"lines": ["missing: no distill_card.json was found for this student"], "svg": ""}
    if key not in card:
        return {"lines": ["not recorded"], "svg": ""}
    v = card[key]
    if key == "contamination" and isinstance(v, dict):
        return {"lines": contamination_lines(v), "svg": ""}
    if key == "debias":
        return {"lines": debias_lines(v), "svg": ""}
    if key == "loss_curve":
        return {"lines": _loss_lines(v), "svg": loss_svg(v) if figures else ""}
    if key == "learning_curve":
        return {"lines": learning_curve_lines(v), "svg": learning_curve_svg(v) if figures else ""}
    if key == "hyperparameters" and isinstance(v, dict):
        v = used_hyperparameters(card.get("method"), v)
    if key == "tokens_seen" and isinstance(v, int):
        return {"lines": [f"{v:,}"], "svg": ""}
    if isinstance(v, dict):
        return {"lines": [f"{k}: {x}" for k, x in _flat(v)], "svg": ""}
    return {"lines": ["missing" if v is None else str(v)], "svg": ""}


def card_comparison(models: list[ModelEntry], figures: bool = True) -> dict:
    """Distillation cards side by side: rows are card fields, columns students."""
    students = [m for m in models if m.role == "student"]
    rows = [{"label": label, "cells": [_card_cell(m.card, key, figures) for m in students]}
            for label, key in CARD_ROWS]
    skip = {*dict(CARD_ROWS).values(), "method", "schema_version", "spec_sha256"}
    extra = sorted({k for m in students for k in (m.card or {}) if k not in skip})
    for key in extra:
        rows.append({"label": key.replace("_", " "), "cells": [_card_cell(m.card or {"": 0}, key, figures)
                                                               for m in students]})
    return {"students": [m.name for m in students], "rows": rows}


def sentence(text: object) -> str:
    """Text ending in exactly one full stop (card fields often bring their own), never two."""
    t = str(text).strip()
    while t.endswith(".."):
        t = t[:-1]
    return t if t.endswith((".", "!", "?")) else t + "."


def _recorded(record: Any) -> dict[str, Any]:
    """A record's fields as run.json holds them, less the optional ones it did not record (null by default)."""
    optional = {f.name for f in fields(record) if f.default is None}
    return {k: v for k, v in record.to_json().items() if not (v is None and k in optional)}


def method(run: AuditRun, shown: dict[str, str] | None = None) -> dict:
    shown = shown or {}
    settings, prov = _recorded(run.settings), _recorded(run.provenance)
    # one row per setting: provenance repeats the seed (and would repeat anything else settings holds)
    prov_rows = [(k, str(v)) for k, v in prov.items()
                 if k != "dataset_files" and not (k in settings and settings[k] == v)]
    prov_rows += [(f"dataset file {path}", sha) for path, sha in run.provenance.dataset_files.items()]
    models = [(shown.get(m.name, m.name), m.role, m.source, m.content_hash or "missing",
               num(m.n_params, ",.0f") if m.n_params is not None else "missing", m.dtype,
               "; ".join(m.notes)) for m in run.models]
    probes = []
    for p in run.probes:
        card = p.card
        sizes = f"{p.n_total} items, {p.n_skipped} skipped" + (f", limited to {p.limit}" if p.limit else "")
        text = " ".join(x for x in (sentence(card["measures"]) if card.get("measures") else "",
                                    f"Sample: {sizes}.",
                                    f"Data: {sentence(card['data'])}" if card.get("data") else "",
                                    f"License: {sentence(card['license'])}" if card.get("license") else "",
                                    f"Cite: {sentence(card['citation'])}" if card.get("citation") else "") if x)
        probes.append({"label": probe_label(p.probe), "title": card.get("title", p.probe), "text": text,
                       "caveats": [sentence(c) for c in card.get("caveats") or []], "sizes": sizes})
    s = run.settings
    return {"settings": [(k, str(v)) for k, v in settings.items()], "provenance": prov_rows, "models": models,
            "probes": probes, "errors": run_errors(run),
            "correction": s.correction, "alpha": s.alpha, "tolerance": s.tolerance, "n_boot": s.n_boot,
            "n_perm": s.n_perm, "min_clusters": s.min_clusters, **_levels(s.alpha_look or s.alpha)}


def _levels(alpha: float | None) -> dict:
    if missing(alpha):
        return {"level": "missing", "tost_level": "missing"}
    pct = lambda x: f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"  # noqa: E731
    return {"level": pct(1 - alpha), "tost_level": pct(1 - 2 * alpha)}


__all__ = ["probe_sections", "card_comparison", "method", "CONTENT_WARNING", "loss_svg", "used_hyperparameters"]
