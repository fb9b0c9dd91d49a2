"""Forest plots as inline SVG strings (matplotlib, Agg backend; pure apart from matplotlib).

Deterministic output: fixed ``svg.hashsalt``, no date metadata, text kept as text
(``svg.fonttype: none``, so no font files are embedded or fetched), math parsing off (group
names are data and may hold "$"). Element ids are prefixed per figure so that several SVGs
can sit in one HTML page without clashing ids.
"""

from __future__ import annotations

import io
import re
from typing import Any

from audit.run_format import AuditRun, ModelSide

TEACHER_STYLE = {"color": "#222222", "marker": "s"}
# Okabe-Ito colours (colour-blind safe), each with its own marker so colour is never the only cue
STUDENT_STYLES = [{"color": "#0072B2", "marker": "o"}, {"color": "#D55E00", "marker": "^"},
                  {"color": "#009E73", "marker": "D"}, {"color": "#CC79A7", "marker": "v"}]
RC = {"svg.fonttype": "none", "svg.hashsalt": "bequeath", "text.parse_math": False,
      "font.family": "sans-serif", "font.size": 10}


def forest_rows(run: AuditRun, probe: str, metric: str) -> list[tuple[str, list[tuple[str, ModelSide]]]]:
    """[(group label, [(model, measurement)...])...]: teacher first, then each student."""
    groups: dict[tuple[str, str], list[tuple[str, ModelSide]]] = {}
    for c in run.comparisons:
        if c.probe != probe or c.metric != metric:
            continue
        entry = groups.setdefault((c.group_key, c.group), [("teacher", c.teacher)])
        entry.append((c.student_name, c.student))
    ordered = sorted(groups, key=lambda k: (k[0] != "all", k[0], k[1]))
    return [("overall" if k[0] == "all" else f"{k[0]}: {k[1]}", groups[k]) for k in ordered]


def forest_figure(rows: list[tuple[str, list[tuple[str, ModelSide]]]], *, tolerance: float | None,
                  title: str) -> Any:
    """One forest plot as a matplotlib Figure: each model's bias (points) with its CI per group,
    neutral line at 0 (the report inlines it as SVG; ``--format latex`` also saves it as PDF)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state or GUI backend

    models = list(dict.fromkeys(name for _, entries in rows for name, _ in entries))
    styles = {m: TEACHER_STYLE if m == "teacher" else STUDENT_STYLES[(i - 1) % len(STUDENT_STYLES)]
              for i, m in enumerate(models)}
    step = 1.0 / (len(models) + 1)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(7.0, 0.9 + 0.3 * len(rows) * len(models)))
        ax = fig.subplots()
        if tolerance:
            ax.axvspan(-tolerance, tolerance, color="#dddddd", label=f"\u00b1{tolerance:g} pts tolerance")
        ax.axvline(0, color="#555555", linewidth=1, linestyle="--", label="neutral (0)")
        for r, (_, entries) in enumerate(rows):
            for name, m in entries:
                y = r + step * (models.index(name) + 1) - 0.5
                st = styles[name]
                if m.bias is None or not m.ci:
                    ax.text(0, y, f"{name}: missing", va="center", ha="center", fontsize=8, color=st["color"])
                    continue
                lo, hi = m.ci
                ax.errorbar([m.bias], [y], xerr=[[m.bias - lo], [hi - m.bias]], fmt=st["marker"],
                            color=st["color"], capsize=3, markersize=5)
        for name in models:
            ax.plot([], [], styles[name]["marker"], color=styles[name]["color"], label=name)
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("bias, points from neutral (95% CI); + = toward the stereotype")
        ax.set_title(title, loc="left", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        ax.grid(axis="x", color="#eeeeee")
        fig.tight_layout()
    return fig


def forest_svg(rows: list[tuple[str, list[tuple[str, ModelSide]]]], *, tolerance: float | None,
               title: str, fig_id: str) -> str:
    """:func:`forest_figure` as inline SVG, its ids prefixed with ``fig_id``."""
    import matplotlib

    fig = forest_figure(rows, tolerance=tolerance, title=title)
    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return _inline(buf.getvalue(), fig_id)


def _inline(svg: str, prefix: str) -> str:
    """Strip the XML prolog and make ids unique to this figure."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'id="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r'(href|xlink:href)="#([^"]+)"', rf'\1="#{prefix}-\2"', svg)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)


def forest_plots(run: AuditRun) -> list[dict]:
    """One figure per probe and bias metric: {"id", "title", "svg", "description"}."""
    tol = run.settings.tolerance
    seen = dict.fromkeys((c.probe, c.metric) for c in run.comparisons if c.kind == "bias")
    out = []
    from reports.build import probe_label

    for i, (probe, metric) in enumerate(seen):
        rows = forest_rows(run, probe, metric)
        title = f"{probe_label(probe)}: {metric}"
        fig_id = f"fig{i}"
        out.append({"id": fig_id, "title": title, "svg": forest_svg(rows, tolerance=tol, title=title, fig_id=fig_id),
                    "description": f"Forest plot of {title}: teacher and student bias with 95% CIs for "
                                   f"{len(rows)} groups against the neutral line at 0; the same numbers are "
                                   "in the evidence table of the probe's section."})
    return out
