"""Writers: a stored run -> report.html, summary.md, report.json, junit.xml, comparisons.csv, and
(``reports.formats``) MODEL_CARD.md and verdicts.tex with figures/forest-*.svg and .pdf (atomic writes).

The HTML goes through a jinja2 Environment with autoescape and StrictUndefined: every
string from the run (model outputs, item ids, dataset text, card fields) is escaped; only
our own CSS and matplotlib's SVG (whose text matplotlib escapes) are marked safe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from audit.verdicts import to_json, to_junit
from probes.files import write_atomic

if TYPE_CHECKING:
    from audit.verdicts import GateResult

FORMATS = {"html": "report.html", "md": "summary.md", "json": "report.json", "junit": "junit.xml",
           "csv": "comparisons.csv", "model-card": "MODEL_CARD.md", "latex": "verdicts.tex"}
CSV_FIELDS = ("student", "probe", "metric", "group_key", "group", "n", "teacher_bias", "teacher_ci_low",
              "teacher_ci_high", "student_bias", "student_ci_low", "student_ci_high", "delta", "delta_ci_low",
              "delta_ci_high", "delta_ci_level", "p_adj", "verdict", "reason")
MD_MAX_FINDINGS = 3


def html(view: dict) -> str:
    import jinja2

    templates = resources.files("reports.templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    css = (templates / "report.css").read_text(encoding="utf-8")
    return env.get_template("report.html.j2").render(v=view, css=css)


def md_escape(text: object) -> str:
    """Untrusted text made inert in GitHub Markdown: HTML, emphasis, links and table pipes."""
    out = str(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "|*_`[]":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


def markdown(view: dict) -> str:
    """A summary short enough for a pull-request comment."""
    g = view["gate"]
    lines = [f"### bequeath audit: gate **{g['status'].upper()}** (exit {g['exit_code']})", "",
             f"Teacher `{md_escape(view['teacher'])}`, run {md_escape(view['created'])}, status {md_escape(view['status'])}.", "",
             "| student | gate | " + " | ".join(view["verdicts"]) + " |",
             "|---|---|" + "---|" * len(view["verdicts"])]
    for s in view["students"]:
        counts = " | ".join(str(c["n"]) for c in s["counts"])
        lines.append(f"| {md_escape(s['name'])} | {s['status'].upper()} | {counts} |")
    for s in view["students"]:
        if s["findings"]:
            lines += ["", f"**{md_escape(s['title'])}**"]
            lines += [f"- {md_escape(f)}" for f in s["findings"][:MD_MAX_FINDINGS]]
    bad = [c for c in g["checks"] if c["status"] != "pass"]
    if bad:
        lines += ["", f"Checks not passed ({len(bad)}):"]
        lines += [f"- {c['status'].upper()} {md_escape(c['name'])}: {md_escape(c['reason'])}" for c in bad[:10]]
        if len(bad) > 10:
            lines.append(f"- ... and {len(bad) - 10} more (see report.html)")
    return "\n".join(lines) + "\n"


def json_report(view: dict, run: dict, gate) -> str:
    """Verdicts and the numbers behind them (no SVG)."""
    doc = {"schema_version": 1, "created": view["created"], "status": view["status"], "teacher": view["teacher"],
           "gate": to_json(gate),
           "students": [{k: s[k] for k in ("name", "label", "status", "findings")}
                        | {"verdict_counts": {c["verdict"]: c["n"] for c in s["counts"]}} for s in view["students"]],
           "comparisons": run.get("comparisons", []), "tasks": run.get("tasks", []),
           "errors": run.get("errors") or []}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _cell(x: object) -> object:
    """Numbers as stored (full precision), missing as an empty cell, never 0."""
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return x


def csv_report(run: dict) -> str:
    """One row per bias comparison, for spreadsheets (written with the csv module: quoting is its job)."""
    import csv
    import io

    from audit.verdicts import student_of

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in run.get("comparisons", []):
        if c.get("kind", "bias") != "bias":
            continue
        name, s = student_of(c)
        t, d = c.get("teacher") or {}, c.get("delta") or {}
        tci, sci, dci = (list(x or [None, None]) for x in (t.get("ci"), s.get("ci"), d.get("ci_decision")))
        w.writerow([_cell(x) for x in (
            name, c.get("probe"), c.get("metric"), c.get("group_key"), c.get("group"), c.get("n"),
            t.get("bias"), tci[0], tci[1], s.get("bias"), sci[0], sci[1],
            d.get("value"), dci[0], dci[1], d.get("level"), d.get("p_adj"),
            c.get("verdict") or "inconclusive", c.get("reason") or "")])
    return buf.getvalue()


def check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        from audit.errors import SpecError, did_you_mean

        hints = "".join(did_you_mean(f, FORMATS) for f in unknown)
        raise SpecError(f"unknown report format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}.{hints}")


def write(run: dict, items: list[dict], gate: GateResult, out: Path,
          formats: Sequence[str] = ("html", "md", "json", "junit")) -> dict[str, Path]:
    """Write a verified run and the gate's result into ``out``; returns format -> path.

    Loading and verifying the run, and evaluating the policy, happen in the app layer
    (``reports.cli.render``): this package only renders what it is given.
    """
    from reports.build import build
    from reports.formats import latex, model_card

    check_formats(formats)
    view = build(run, items, gate, figures="html" in formats)
    writers = {"html": lambda: html(view), "md": lambda: markdown(view),
               "json": lambda: json_report(view, run, gate), "junit": lambda: to_junit(gate),
               "csv": lambda: csv_report(run), "model-card": lambda: model_card(view, run, gate),
               "latex": lambda: latex(view, run)}
    paths = {f: write_atomic(out / FORMATS[f], writers[f]()) for f in formats}
    if "latex" in formats:  # the forest plots as figure files next to verdicts.tex
        from reports.formats import write_figures

        write_figures(run, out)
    return paths
