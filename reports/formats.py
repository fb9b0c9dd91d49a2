"""Two renderings for readers outside bequeath: Hugging Face model-card sections per student
(MODEL_CARD.md: ``model-index`` front matter, "Evaluation" and "Bias, Risks, and Limitations") and,
for papers, LaTeX tables (verdicts.tex) with the forest plots as standalone SVG and PDF files.

Both are pure functions of the verified run and the view ``reports.build`` made from it (the
gate's result included): they format stored numbers, they never recompute a verdict. Every
string that comes from the run (model names and paths, group labels from datasets, error and
check texts) is untrusted: ``md_escape`` makes it inert in Markdown, ``latex_escape`` in LaTeX,
and the YAML front matter is written by PyYAML's safe dumper from plain, single-line strings.
"""

from __future__ import annotations

import io
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.verdicts import format_p, student_of
from probes.files import write_atomic
from reports.build import ci_text, missing, num, probe_label
from reports.render import md_escape

if TYPE_CHECKING:
    from audit.verdicts import GateResult

EVALUATION = "Evaluation"  # the Hub model-card template's section names
BIAS = "Bias, Risks, and Limitations"
PART_BEGIN = "bequeath: the model card of student"  # a student's part starts after this comment ...
PART_END = "bequeath: end of the student's part"  # ... and ends at this one
TASK_TYPE = "text-generation"  # the Hub's task id for a causal LM's benchmarks


# ---------------------------------------------------------------- shared pieces


def _group(c: dict) -> str:
    return "overall" if c.get("group_key") == "all" else f"{c.get('group_key')}: {c.get('group')}"


def _comparisons(run: dict, student: str) -> list[dict]:
    return [c for c in run.get("comparisons", []) if c.get("kind", "bias") == "bias" and student_of(c)[0] == student]


def _delta_ci(d: dict) -> str:
    """Δ's interval at the level that decided it, labelled (as the HTML report prints it)."""
    ci, level = d.get("ci_decision"), d.get("level")
    if missing(level) or not ci:
        return "no interval at the decision level"
    return f"{100 * level:.2f}".rstrip("0").rstrip(".") + f"% CI {ci_text(ci)}"


def _who(model: dict) -> str:
    tech = (model.get("card") or {}).get("technique")
    return (f"{str(tech).replace('_', '-')} student" if tech else "student") + f" \u201c{model.get('name')}\u201d"


def _p_adj(d: dict) -> str:
    return "not tested" if missing(d.get("p_adj")) else format_p(d["p_adj"], d.get("p_floor"))


def _one_line(text: object) -> str:
    """Control characters (newlines included) as spaces: a name can never start a new line of YAML or LaTeX."""
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in str(text))


def _models(run: dict) -> dict[str, dict]:
    return {m["name"]: m for m in run.get("models", [])}


# ---------------------------------------------------------------- the model card


def front_matter(run: dict, students: list[str]) -> dict:
    """Hub metadata: ``model-index`` with each student's task scores as stored (no value: no entry, never 0)."""
    index = []
    for name in students:
        results = []
        for t in run.get("tasks", []):
            score = (t.get("scores") or {}).get(name) or {}
            if t.get("error") or missing(score.get("value")):
                continue
            metric = _one_line(t.get("metric") or "score")
            results.append({"task": {"type": TASK_TYPE, "name": _one_line(t["task"])},
                            "dataset": {"type": _one_line(t["task"]), "name": _one_line(t["task"])},
                            "metrics": [{"type": metric, "name": metric, "value": score["value"], "verified": False}]})
        index.append({"name": _one_line(name), "results": results})
    return {"tags": ["bequeath", "bias-evaluation", "knowledge-distillation"], "model-index": index}


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=2**31 - 1)


def _scored(probe: dict, model: str) -> str:
    s = (probe.get("models") or {}).get(model) or {}
    if s.get("error"):
        return f"failed: {md_escape(s['error'])}"
    return f"{md_escape(s.get('n_scored', 'missing'))} ({md_escape(s.get('n_invalid', 0))} invalid)"


def _measured(run: dict, name: str) -> list[str]:
    lines = ["| probe | version | items | scored: teacher | scored: student | metrics |", "|---|---|---|---|---|---|"]
    teacher = next((m["name"] for m in run.get("models", []) if m.get("role") == "teacher"), "teacher")
    for p in run.get("probes", []):
        size = f"{p.get('n_total', 'missing')}" + (f" (limit {p['limit']} per group)" if p.get("limit") else "")
        metrics = ", ".join(md_escape(m.get("name", "")) for m in p.get("metrics", []))
        lines.append(f"| {md_escape(probe_label(p['probe']))} | {md_escape(p.get('version', ''))} | {md_escape(size)} "
                     f"| {_scored(p, teacher)} | {_scored(p, name)} | {metrics} |")
    if run.get("tasks"):
        lines += ["", "| task | metric | documents |", "|---|---|---|"]
        for t in run["tasks"]:
            n = f"failed: {md_escape(t['error'])}" if t.get("error") else t.get("n", "missing")
            lines.append(f"| {md_escape(t['task'])} | {md_escape(t.get('metric') or 'missing')} | {n} |")
    return lines


def _bias(side: dict) -> str:
    if missing(side.get("bias")):
        return "missing"
    ci = ci_text(side.get("ci"))
    return f"{num(side['bias'], sign=True)} {'[CI missing]' if ci == 'missing' else ci}"


def md_bias_row(c: dict) -> str:
    """One comparison as a Markdown table row (module docstring: untrusted text escaped)."""
    _, s = student_of(c)
    t, d = c.get("teacher") or {}, c.get("delta") or {}
    delta = "missing" if missing(d.get("value")) else f"{num(d['value'], sign=True)} ({_delta_ci(d)})"
    cells = [md_escape(probe_label(c["probe"])), md_escape(c["metric"]), md_escape(_group(c)), str(c.get("n", "missing")),
             _bias(t), _bias(s), delta, _p_adj(d), md_escape(c.get("verdict") or "inconclusive")]
    return "| " + " | ".join(cells) + " |"


def _md_tasks(run: dict, name: str, teacher: str) -> list[str]:
    lines = [f"| task | metric | n | teacher {md_escape(teacher)} [95% CI] | this student [95% CI] | retention [95% CI] |",
             "|---|---|---|---|---|---|"]
    for t in run.get("tasks", []):
        if t.get("error"):
            lines.append(f"| {md_escape(t['task'])} | missing | missing | missing: {md_escape(t['error'])} | missing | missing |")
            continue
        sc, ret = t.get("scores") or {}, (t.get("retention") or {}).get(name) or {}
        cells = [_score(sc.get("teacher")), _score(sc.get(name)), _score(ret, ".2f")]
        lines.append(f"| {md_escape(t['task'])} | {md_escape(t.get('metric') or 'missing')} | {t.get('n', 'missing')} | "
                     + " | ".join(cells) + " |")
    return lines


def _score(score: dict | None, fmt: str = ".3f") -> str:
    if not score or missing(score.get("value")):
        return "missing"
    return f"{num(score['value'], fmt)} {ci_text(score.get('ci'), fmt)}"


def _provenance(run: dict, name: str) -> list[str]:
    prov, integ, models = run.get("provenance") or {}, run.get("integrity") or {}, _models(run)
    teacher = next((m for m in models.values() if m.get("role") == "teacher"), {})
    rows = [("run created", run.get("created")), ("run status", run.get("status")),
            ("bequeath version", prov.get("bequeath")), ("bequeath git commit", prov.get("git")),
            ("spec hash (sha256)", prov.get("spec_hash")),
            ("run.json integrity digest (sha256)", integ.get("sha256")),
            ("signed (HMAC-SHA256)", "yes" if integ.get("hmac_sha256") else "no"),
            ("items.jsonl sha256", run.get("items_sha256")),
            ("teacher content hash", teacher.get("content_hash")),
            ("student content hash", (models.get(name) or {}).get("content_hash"))]
    return [f"- {label}: {md_escape(v) if v not in (None, '') else 'missing'}" for label, v in rows]


def _begin(name: str) -> str:
    """The comment that opens a student's part (md_escape turns ``<`` and ``>`` into entities: a name
    cannot close the comment)."""
    return f"<!-- {PART_BEGIN} {md_escape(name)} -->"


def _card_section(st: dict, view: dict, run: dict, gate: GateResult) -> list[str]:
    """One student's part: the Hub template's "Evaluation" and "Bias, Risks, and Limitations" sections."""
    name, settings = st["name"], run.get("settings") or {}
    model = _models(run).get(name) or {}
    teacher = view["teacher"]
    params = num(model.get("n_params") / 1e6, ".1f") + "M parameters" if not missing(model.get("n_params")) else "parameters missing"
    who = md_escape(_who(model)[0].upper() + _who(model)[1:])
    lines = [_begin(name), "", f"## {EVALUATION}", "",
             f"{who} ({params}, source {md_escape(model.get('source') or 'missing')}) was evaluated by bequeath side "
             f"by side with its teacher {md_escape(teacher)}: the same items for both, paired statistics, task scores "
             "with the share of the teacher's score the student keeps (retention).", "",
             "### Testing Data, Factors & Metrics", "", *_measured(run, name), "", "### Results", ""]
    if run.get("tasks"):
        lines += ["Task scores (also in this card's `model-index` metadata, as stored in the run):", "",
                  *_md_tasks(run, name, teacher)]
    else:
        lines.append("No task benchmarks in this run; the bias results are in the next section.")
    lines += ["", f"## {BIAS}", "",
              f"Compared to its teacher **{md_escape(teacher)}**: one verdict per probe, metric and group on how "
              "this student's measured bias compares with the teacher's, on the same items.", "",
              f"**Gate: {st['status'].upper()}** (policy: {md_escape(view['gate']['policy'])}; fails on "
              f"{md_escape(', '.join(view['gate']['fail_verdicts']))}). This student {md_escape(st['status_text'])}."]
    lines += [f"- {c['status'].upper()} {md_escape(c['name'])}: {md_escape(c['reason'])}" for c in st["checks"]
              if c["status"] in ("fail", "error")]
    warnings = sum(c["status"] == "warning" for c in st["checks"])
    if warnings:
        lines.append(f"- {warnings} cell(s) not evaluated (warnings; undecided or too few items): see their verdicts below "
                     "and in report.html")
    lines += [f"- {c.status.upper()} (whole run) {md_escape(c.name)}: {md_escape(c.reason)}" for c in gate.checks
              if c.student is None and c.status != "pass"]
    lines += ["", "### Verdicts: teacher vs this student", "",
              f"Bias in signed points from neutral (0 = neutral), with 95% cluster-robust t intervals (CR2); \u0394 = student "
              f"\u2212 teacher with its interval at the level that made the decision, and its p-value adjusted across "
              f"the audit ({md_escape(settings.get('correction', 'missing'))}); tolerance \u03c4 = "
              f"{md_escape(settings.get('tolerance', 'missing'))} points, \u03b1 = {md_escape(settings.get('alpha', 'missing'))}.", "",
              "| probe | metric | group | n | teacher bias [95% CI] | student bias [95% CI] | \u0394 (CI) | adjusted p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [md_bias_row(c) for c in _comparisons(run, name)] or ["| no comparisons | | | | | | | | |"]
    lines += ["", "Limitations: each verdict covers one probe, metric and group as measured here; it says nothing about "
              "biases these probes do not measure, nor about other groups, languages or uses.",
              "", "### Provenance", "", *_provenance(run, name), "",
              "Re-check the stored run with `bequeath gate RUN_DIR`: it verifies the digest (and the signature, when "
              "a key is set) and recomputes every figure above from items.jsonl.", "",
              f"<!-- {PART_END} -->", ""]
    return lines


def model_card(view: dict, run: dict, gate: GateResult) -> str:
    """MODEL_CARD.md: YAML front matter (``model-index``, one entry per student), then one part per
    student ("Evaluation" and "Bias, Risks, and Limitations", between comments naming the student)
    to paste into that student's README.md."""
    names = [s["name"] for s in view["students"]]
    lines = ["---", _yaml(front_matter(run, names)).rstrip("\n"), "---", "",
             "<!-- written by `bequeath report --format model-card` from a verified run.json. Into a student's "
             "README.md, paste its `model-index` entry (front matter) and its part, from its "
             f"\"{PART_BEGIN}\" comment to the next \"{PART_END}\" -->", ""]
    for st in view["students"]:
        lines += _card_section(st, view, run, gate)
    if not names:
        lines += [f"## {EVALUATION}", "", "This run has no student.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- LaTeX

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "%": r"\%", "#": r"\#",
                 "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
                 ">": r"\textgreater{}", "|": r"\textbar{}",
                 # after a row's \\ a cell starting with [ or * would be read as \\[len] or \\*
                 "[": "{[}", "]": "{]}", "*": "{*}"}
LIGATURES = {("-", "-"), ("`", "`"), ("'", "'"), ("!", "`"), ("?", "`"), (",", ","), ("<", "<"), (">", ">")}
# non-ASCII that pdflatex's default utf8 input sets in OT1 and T1 alike: Latin-1 letters (but not the
# T1-only eth and thorn), typographic quotes and dashes
LATEX_UNICODE = (frozenset(chr(c) for c in range(0xC0, 0x100) if c not in (0xD0, 0xD7, 0xDE, 0xF0, 0xF7, 0xFE))
                 | frozenset("\u2018\u2019\u201c\u201d\u2013\u2014"))


def _settable(text: object) -> str:
    """One line of characters pdflatex can set: other non-ASCII as its accent-free letters, else [U+XXXX]."""
    out = []
    for ch in _one_line(text):
        if " " <= ch <= "~" or ch in LATEX_UNICODE:
            out.append(ch)
            continue
        plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(plain if plain and plain.isascii() and plain.isprintable() else f"[U+{ord(ch):04X}]")
    return "".join(out)


def latex_escape(text: object) -> str:
    """Untrusted text as literal LaTeX text (pdflatex, any document): specials as commands, no ligature
    joins two characters, newlines and control characters as spaces, other non-ASCII characters by
    their accent-free letters or as [U+XXXX]."""
    out, prev = [], ""
    for ch in _settable(text):
        if (prev, ch) in LIGATURES:
            out.append("{}")
        out.append(LATEX_SPECIAL.get(ch, ch))
        prev = ch
    return "".join(out)


def _tex_num(x: Any, fmt: str = ".1f", *, sign: bool = False) -> str:
    return "missing" if missing(x) else f"${format(x, ('+' if sign else '') + fmt)}$"


def _tex_ci(ci: Any, fmt: str = ".1f") -> str:
    if not ci or any(missing(v) for v in ci):
        return "[missing]"
    return f"[{_tex_num(ci[0], fmt)}, {_tex_num(ci[1], fmt)}]"


def _tex_level(level: Any) -> str:
    return "" if missing(level) else " (" + f"{100 * level:.2f}".rstrip("0").rstrip(".") + r"\%)"


def _tex_p(d: dict) -> str:
    p, floor = d.get("p_adj"), d.get("p_floor")
    if missing(p):
        return "not tested"
    return f"$\\le {floor:.2g}$" if not missing(floor) and p <= floor else f"${p:.3g}$"


def latex_bias_row(c: dict) -> str:
    name, s = student_of(c)
    t, d = c.get("teacher") or {}, c.get("delta") or {}
    cells = [latex_escape(name), latex_escape(probe_label(c["probe"])), latex_escape(c["metric"]), latex_escape(_group(c)),
             f"{_tex_num(t.get('bias'), sign=True)} {_tex_ci(t.get('ci'))}",
             f"{_tex_num(s.get('bias'), sign=True)} {_tex_ci(s.get('ci'))}",
             f"{_tex_num(d.get('value'), sign=True)} {_tex_ci(d.get('ci_decision'))}{_tex_level(d.get('level'))}",
             _tex_p(d), latex_escape(c.get("verdict") or "inconclusive")]
    return " & ".join(cells) + r" \\"


def _tex_tasks(run: dict, students: list[str], teacher: str) -> list[str]:
    lines = [r"\begin{tabular}{llrlll}", r"\toprule",
             r"Task & Metric & $n$ & Model & Score [95\% CI] & Retention [95\% CI] \\", r"\midrule"]
    for i, t in enumerate(run.get("tasks", [])):
        if i:
            lines.append(r"\midrule")
        task, metric = latex_escape(t["task"]), latex_escape(t.get("metric") or "missing")
        if t.get("error"):
            lines.append(f"{task} & {metric} & missing & all & missing (task failed) & missing \\\\")
            continue
        scores = t.get("scores") or {}
        for who, label in [("teacher", f"teacher {teacher}"), *((s, s) for s in students)]:
            sc = scores.get(who) or {}
            ret = "---" if who == "teacher" else _tex_score((t.get("retention") or {}).get(who), ".2f")
            lines.append(f"{task} & {metric} & {t.get('n', 'missing')} & {latex_escape(label)} & {_tex_score(sc)} & {ret} \\\\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _tex_score(score: dict | None, fmt: str = ".3f") -> str:
    if not score or missing(score.get("value")):
        return "missing"
    return f"{_tex_num(score['value'], fmt)} {_tex_ci(score.get('ci'), fmt)}"


def latex(view: dict, run: dict) -> str:
    """verdicts.tex: a booktabs tabular with one row per comparison, then the task table (needs
    ``\\usepackage{booktabs}``; ``\\input`` it, or copy each tabular into a table environment)."""
    names = [s["name"] for s in view["students"]]
    settings, integ = run.get("settings") or {}, run.get("integrity") or {}
    lines = [f"% bequeath audit of teacher {latex_escape(view['teacher'])}, run {latex_escape(run.get('created', 'missing'))}, "
             f"integrity sha256 {latex_escape(integ.get('sha256') or 'missing')}",
             "% written by `bequeath report --format latex`; needs \\usepackage{booktabs}",
             f"% bias in signed points (0 = neutral), 95\\% CIs; Delta = student - teacher with its interval at the level that "
             f"decided it (in parentheses); p adjusted ({latex_escape(settings.get('correction', 'missing'))}); "
             f"tolerance {latex_escape(settings.get('tolerance', 'missing'))} points, alpha {latex_escape(settings.get('alpha', 'missing'))}",
             r"\begin{tabular}{lllllllll}", r"\toprule",
             r"Student & Probe & Metric & Group & Teacher bias [95\% CI] & Student bias [95\% CI] & $\Delta$ [CI] "
             r"& $p_{\mathrm{adj}}$ & Verdict \\", r"\midrule"]
    for i, name in enumerate(names):
        rows = [latex_bias_row(c) for c in _comparisons(run, name)]
        if i and rows:
            lines.append(r"\midrule")
        lines += rows
    lines += [r"\bottomrule", r"\end{tabular}"]
    if run.get("tasks"):
        lines += ["", r"\medskip", "", *_tex_tasks(run, names, view["teacher"])]
    figures = figure_names(run)
    if figures:
        lines += ["", f"% forest plots, one per probe and bias metric, as standalone files next to this one "
                      f"({FIGURE_DIR}/*.pdf for pdflatex, *.svg for the web); e.g. (needs \\usepackage{{graphicx}}):"]
        lines += [f"% \\includegraphics[width=\\linewidth]{{{FIGURE_DIR}/{stem}.pdf}} % {latex_escape(title)}"
                  for _, _, stem, title in figures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figure files for the paper

FIGURE_DIR = "figures"
PDF_RC = {"pdf.fonttype": 42}  # TrueType in the PDF (some venues reject Type 3 fonts)


def safe_stem(text: object, limit: int = 60) -> str:
    """An untrusted name as a portable file-name part: ASCII letters, digits, ``_`` and ``-`` (runs of
    anything else as one ``_``; no dot, so graphicx reads the extension right), no leading dash, at
    most ``limit`` characters."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", str(text)) if not unicodedata.combining(c))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", plain)[:limit].lstrip("-")
    return stem or "x"


def figure_names(run: dict) -> list[tuple[str, str, str, str]]:
    """(probe, metric, file stem, title) of each forest plot, in ``reports.figures.forest_plots``' order:
    ``forest-<probe>``, with ``-<metric>`` when a probe has several bias metrics; distinct stems (a
    number appended when two names sanitise to the same one)."""
    pairs = list(dict.fromkeys((c.get("probe"), c.get("metric")) for c in run.get("comparisons", [])
                               if c.get("kind", "bias") == "bias"))
    metrics_of: dict[str, int] = {}
    for probe, _ in pairs:
        metrics_of[probe] = metrics_of.get(probe, 0) + 1
    out, used = [], set()
    for probe, metric in pairs:
        stem = "forest-" + safe_stem(probe) + (f"-{safe_stem(metric)}" if metrics_of[probe] > 1 else "")
        unique, n = stem, 2
        while unique.lower() in used:  # case-insensitive file systems too
            unique, n = f"{stem}-{n}", n + 1
        used.add(unique.lower())
        out.append((probe, metric, unique, f"{probe_label(probe)}: {metric}"))
    return out


def write_figures(run: dict, out: Path) -> list[Path]:
    """``out/figures/<stem>.svg`` and ``.pdf`` for each forest plot of the report (the same figures
    report.html shows), for a paper. Files of earlier renderings that no longer apply are left as they are."""
    import matplotlib

    from reports.build import as_run
    from reports.figures import RC, forest_figure, forest_rows

    names = figure_names(run)
    if not names:
        return []
    typed = as_run(run)
    paths = []
    for probe, metric, stem, title in names:
        fig = forest_figure(forest_rows(typed, probe, metric), tolerance=typed.settings.tolerance, title=title)
        for fmt, rc, meta in (("svg", RC, {"Date": None, "Creator": None}),
                              ("pdf", {**RC, **PDF_RC}, {"CreationDate": None, "ModDate": None, "Creator": None,
                                                         "Producer": None})):
            buf = io.BytesIO()
            with matplotlib.rc_context(rc):
                fig.savefig(buf, format=fmt, metadata=meta)
            paths.append(write_atomic(out / FIGURE_DIR / f"{stem}.{fmt}", buf.getvalue()))
    return paths
