"""View-model pieces for the detail sections: per-probe tables and evidence, example items,
distillation cards and method/provenance (pure; see reports.build)."""

from __future__ import annotations

from typing import Any

from audit.gate import student_of
from reports.build import ci_text, delta_ci_text, metric_value, missing, num, probe_label

CONTENT_WARNING = ("Content warning: these items contain social stereotypes (some offensive) and raw "
                   "model outputs, shown as plain text.")


def _breakdowns(p: dict, models: list[str]) -> list[dict]:
    """fairlearn MetricFrame breakdowns as tables: rows groups, columns models."""
    tables = []
    for metric in p.get("metrics", []):
        for key in p.get("group_keys", []):
            per_model = {m: ((p.get("breakdown") or {}).get(m) or {}).get(metric["name"], {}).get(key) for m in models}
            groups = sorted({g for b in per_model.values() if b for g in (b.get("by_group") or {})})
            rows = [{"group": g, "summary": False, "values": [metric_value(((per_model[m] or {}).get("by_group") or {}).get(g), metric)
                                            for m in models]} for g in groups]
            for label, field in (("overall", "overall"), ("difference (max \u2212 min)", "difference"),
                                 ("ratio (min / max)", "ratio")):
                fmt = (lambda v, m=metric: metric_value(v, m)) if field == "overall" else (lambda v: num(v, ".3f"))
                rows.append({"group": label, "summary": True,
                             "values": [fmt((per_model[m] or {}).get(field)) if per_model[m] else "missing: not scored"
                                        for m in models]})
            tables.append({"caption": f"{metric['name']} by {key}", "models": models, "rows": rows})
    return tables


def _evidence_rows(comps: list[dict]) -> list[dict]:
    rows = []
    for c in comps:
        name, s = student_of(c)
        ev, mc, d = c.get("evidence") or {}, c.get("mcnemar") or {}, c["delta"]
        rows.append({
            "student": name, "group": "overall" if c["group_key"] == "all" else f"{c['group_key']}: {c['group']}",
            "n": c.get("n") if c.get("n") is not None else "missing",
            "teacher": f"{num(c['teacher'].get('bias'), sign=True)} {ci_text(c['teacher'].get('ci'))}",
            "student_bias": f"{num(s.get('bias'), sign=True)} {ci_text(s.get('ci'))}",
            "delta": f"{num(d.get('value'), sign=True)}, {delta_ci_text(d)} (unadjusted 95%: {ci_text(d.get('ci'))})",
            "p_adj": _p_text(d),
            "mcnemar": (f"b={mc.get('b')}, c={mc.get('c')}, p_adj {num(mc.get('p_adj'), '.3g')}"
                        if mc else "not applicable"),
            "p_s_t": num(ev.get("p_s_given_t"), ".2f") if ev else "not applicable",
            "p_s_not_t": num(ev.get("p_s_given_not_t"), ".2f") if ev else "not applicable",
            "kappa": num(ev.get("kappa"), ".2f") if ev else "not applicable",
            "margin_corr": num(ev.get("margin_corr"), ".2f") if ev else "not applicable",
            "verdict": c.get("verdict") or "inconclusive", "cls": (c.get("verdict") or "inconclusive").replace(" ", "-"),
            "reason": c.get("reason") or "no reason stored",
        })
    return rows


def _p_text(d: dict) -> str:
    """The adjusted p, never below its resolution; why Δ was not tested otherwise."""
    from audit.verdicts import format_p

    if missing(d.get("p_adj")):
        return "not tested" + (f": {d['why']}" if d.get("why") else "")
    return format_p(d["p_adj"], d.get("p_floor"))


def _examples(p: dict, items: list[dict], students: list[str], n_max: int) -> list[dict]:
    """Items where teacher and student both chose the stereotype, and where they disagree."""
    binary = next((m.get("binary") for m in p.get("metrics", []) if m.get("binary")), None)
    if not binary:
        return []
    rows = {(r["model"], r["item"]): r for r in items if r.get("probe") == p["probe"]}
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


def probe_sections(run: dict, items: list[dict], students: list[str], n_examples: int = 5) -> list[dict]:
    models = ["teacher", *students]
    out = []
    for p in run.get("probes", []):
        comps = [c for c in run.get("comparisons", []) if c["probe"] == p["probe"]]
        counts = [{"model": m, "n_scored": r.get("n_scored"), "n_invalid": r.get("n_invalid"),
                   "error": r.get("error") or ""} for m, r in (p.get("models") or {}).items()]
        out.append({"id": f"probe-{p['probe']}", "name": p["probe"], "label": probe_label(p["probe"]),
                    "title": (p.get("card") or {}).get("title", p["probe"]), "version": p.get("version"),
                    "n_total": p.get("n_total"), "n_skipped": p.get("n_skipped"), "limit": p.get("limit"),
                    "counts": counts, "breakdowns": _breakdowns(p, models),
                    "evidence": _evidence_rows(comps), "examples": _examples(p, items, students, n_examples)})
    return out


def _flat(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), "missing" if d is None else str(d))]


CARD_ROWS = (("technique", "technique"), ("hyperparameters", "hyperparameters"), ("student init", "student_init"),
             ("data", "data"), ("steps", "steps"), ("tokens seen", "tokens_seen"), ("wall time (s)", "wall_time_s"),
             ("final loss", "final_loss"), ("teacher", "teacher"), ("versions", "versions"))


def card_comparison(models: list[dict]) -> dict:
    """Distillation cards side by side: rows are card fields, columns students."""
    students = [m for m in models if m.get("role") == "student"]
    rows = []
    for label, key in CARD_ROWS:
        cells = []
        for m in students:
            card = m.get("card")
            if not card:
                cells.append(["missing: no distill_card.json was found for this student"])
            elif key not in card:
                cells.append(["not recorded"])
            else:
                v = card[key]
                cells.append([f"{k}: {x}" for k, x in _flat(v)] if isinstance(v, dict) else
                             ["missing" if v is None else str(v)])
        rows.append({"label": label, "cells": cells})
    extra = sorted({k for m in students for k in (m.get("card") or {}) if k not in dict(CARD_ROWS).values()})
    for key in extra:
        rows.append({"label": key, "cells": [[str((m.get("card") or {}).get(key, "not recorded"))] for m in students]})
    return {"students": [m["name"] for m in students], "rows": rows}


def method(run: dict) -> dict:
    settings = run.get("settings") or {}
    prov = run.get("provenance") or {}
    prov_rows = [(k, str(v)) for k, v in prov.items() if k != "dataset_files"]
    prov_rows += [(f"dataset file {path}", sha) for path, sha in (prov.get("dataset_files") or {}).items()]
    models = [(m["name"], m.get("role", ""), m.get("source", ""), m.get("content_hash") or "missing",
               num(m.get("n_params"), ",.0f") if m.get("n_params") is not None else "missing", m.get("dtype", ""),
               "; ".join(m.get("notes") or [])) for m in run.get("models", [])]
    probes = [{"label": probe_label(p["probe"]), "card": p.get("card") or {},
               "sizes": f"{p.get('n_total')} items, {p.get('n_skipped')} skipped"
                        + (f", limited to {p['limit']}" if p.get("limit") else "")} for p in run.get("probes", [])]
    return {"settings": [(k, str(v)) for k, v in settings.items()], "provenance": prov_rows, "models": models,
            "probes": probes, "errors": [f"{e.get('model') or 'run'} / {e.get('stage')}: {e.get('message')}"
                                         for e in run.get("errors") or []],
            "correction": settings.get("correction", "missing"), "alpha": settings.get("alpha"),
            "tolerance": settings.get("tolerance"), "n_boot": settings.get("n_boot"),
            "n_perm": settings.get("n_perm", "missing"), "min_clusters": settings.get("min_clusters", "missing"),
            **_levels(settings.get("alpha_look") or settings.get("alpha"))}


def _levels(alpha: float | None) -> dict:
    if missing(alpha):
        return {"level": "missing", "tost_level": "missing"}
    pct = lambda x: f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"  # noqa: E731
    return {"level": pct(1 - alpha), "tost_level": pct(1 - 2 * alpha)}


__all__ = ["probe_sections", "card_comparison", "method", "CONTENT_WARNING"]
