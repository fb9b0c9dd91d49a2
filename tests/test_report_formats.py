"""``bequeath report --format model-card,latex`` on runs written by the real audit code
(tests/fixtures/make_run.py, fixture ``audit_runs``): the model card's rows and front matter
against run.json, the LaTeX rows against the comparisons, ``latex_escape`` by known answers and
exhaustively (every printable ASCII character and pair read back), untrusted names in both, and
the CI example's ``bequeath`` lines parsed by the real command-line parser."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from itertools import product
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.cli import build_parser, main
from audit.verdicts import Policy, evaluate
from audit.verify import load_run
from reports.formats import LATEX_UNICODE, figure_names, latex_escape, safe_stem, write_figures
from reports.render import check_formats, write

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "docs" / "ci" / "github-actions.yml"
NASTY = "ev|l <script>alert(1)</script> *x* _y_ [l](javascript:z) 50% & #1 $x$ {a} ~b ^c \\d\n---\nname: pwned"
BEGIN = "<!-- bequeath: the model card of student "
END = "<!-- bequeath: end of the student's part -->"
MINUS = "\u2212"


def _bias(run: dict, student: str) -> list[dict]:
    return [c for c in run["comparisons"] if c.get("kind", "bias") == "bias" and c["student_name"] == student]


def _shown(x: float, fmt: str = "+.1f") -> str:
    """A number as the card prints it (real minus sign), computed here rather than by reports.build."""
    return format(x, fmt).replace("-", MINUS)


def _split_card(text: str) -> tuple[dict, dict[str, str]]:
    """Front matter, and each student's part (from its opening comment to its closing one) by name."""
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    sections = {}
    for part in body.split(BEGIN)[1:]:
        name, rest = part.split(" -->\n", 1)
        assert rest.count(END) == 1 and rest.rstrip().endswith(END)  # closed, once, at its end
        sections[name] = rest
    return yaml.safe_load(head), sections


def _hub_sections(part: str) -> dict[str, str]:
    """A student's part cut at its level-2 headings: the Hub template's section names, in order."""
    chunks = re.split(r"^## (.+)$", part, flags=re.MULTILINE)
    assert not chunks[0].strip()
    return dict(zip(chunks[1::2], chunks[2::2], strict=True))


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells, split on pipes that are not escaped."""
    assert row.startswith("| ") and row.endswith(" |"), row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


def _bias_rows(section: str) -> list[list[str]]:
    table = section.split("| probe | metric | group | n |", 1)[1].split("\n\n", 1)[0]
    return [_cells(line) for line in table.split("\n")[2:]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, audit_runs) -> dict[str, Path]:
    """Both fixture runs rendered through the real CLI (load, verify, gate, write)."""
    out = {}
    for kind in ("complete", "partial"):
        d = tmp_path_factory.mktemp(f"formats-{kind}")
        assert main(["report", str(audit_runs[kind]), "--format", "model-card,latex", "--out", str(d)]) == 0
        assert sorted(p.name for p in d.iterdir()) == ["MODEL_CARD.md", "figures", "verdicts.tex"]
        out[kind] = d
    return out


# ---------------------------------------------------------------- model card


def test_model_card_front_matter_holds_the_stored_task_scores(audit_runs, rendered):
    run, _ = load_run(audit_runs["complete"])
    front, sections = _split_card((rendered["complete"] / "MODEL_CARD.md").read_text(encoding="utf-8"))
    students = [m["name"] for m in run["models"] if m["role"] == "student"]
    assert [e["name"] for e in front["model-index"]] == students == list(sections) == ["soft", "hard"]
    for entry in front["model-index"]:
        got = {(r["task"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
        want = {(t["task"], t["metric"]): t["scores"][entry["name"]]["value"] for t in run["tasks"]}
        assert got == want and want  # exactly as stored, every task
        assert all(m["verified"] is False for r in entry["results"] for m in r["metrics"])
        assert all(r["task"]["type"] == "text-generation" for r in entry["results"])


def test_model_card_rows_match_the_comparisons(audit_runs, rendered, make_run_module):
    run, _ = load_run(audit_runs["complete"])
    gate = evaluate(run, Policy())
    _, sections = _split_card((rendered["complete"] / "MODEL_CARD.md").read_text(encoding="utf-8"))
    seen = {}
    for student, section in sections.items():
        rows, comps = _bias_rows(section), _bias(run, student)
        assert len(rows) == len(comps) > 0
        for row, c in zip(rows, comps, strict=True):
            assert len(row) == 9
            group = "overall" if c["group_key"] == "all" else f"{c['group_key']}: {c['group']}".replace("_", "\\_")
            assert row[2] == group and row[3] == str(c["n"]) and row[8] == c["verdict"]
            d, ci = c["delta"], c["delta"]["ci_decision"]
            assert row[6].startswith(f"{_shown(d['value'])} (")
            assert row[6].endswith(f"% CI [{_shown(ci[0], '.1f')}, {_shown(ci[1], '.1f')}])" if ci
                                   else "(no interval at the decision level)")
            assert row[4].startswith(_shown(c["teacher"]["bias"])) and row[5].startswith(_shown(c["student"]["bias"]))
            seen[(student, c["group_key"], c["group"])] = row[8]
        assert f"**Gate: {gate.status_of(student).upper()}**" in section
    for key, verdict in make_run_module.EXPECTED.items():
        assert seen[key] == verdict
    assert seen[("hard", "all", "all")] == "amplified" and "**Gate: FAIL**" in sections["hard"]


def test_model_card_has_the_hub_sections_per_student(audit_runs, rendered):
    """Each student's part: "Evaluation" (what was measured, task results) then "Bias, Risks, and
    Limitations" (the teacher it was compared to, the gate, the verdict table), ready to paste."""
    run, _ = load_run(audit_runs["complete"])
    card = (rendered["complete"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    _, parts = _split_card(card)
    teacher = next(m["source"] for m in run["models"] if m["role"] == "teacher")  # as the report names it
    for student, part in parts.items():
        hub = _hub_sections(part)
        assert list(hub) == ["Evaluation", "Bias, Risks, and Limitations"]
        evaluation, bias = hub.values()
        assert "### Testing Data, Factors & Metrics" in evaluation and "### Results" in evaluation
        assert "| bundled\\_qa | acc | 48 | 0.604 [0.458, 0.729] | " in evaluation  # task results here
        assert "| probe | metric | group | n |" not in evaluation
        assert f"Compared to its teacher **{teacher}**" in bias
        assert len(_bias_rows(bias)) == len(_bias(run, student)) and "**Gate: " in bias
        assert f"“{student}”" in evaluation.split("\n\n", 2)[1]  # the part says whose it is
    assert card.count("\n## Evaluation\n") == card.count("\n## Bias, Risks, and Limitations\n") == len(parts) == 2


def test_model_card_names_the_run_it_came_from(audit_runs, rendered):
    run, _ = load_run(audit_runs["complete"])
    _, sections = _split_card((rendered["complete"] / "MODEL_CARD.md").read_text(encoding="utf-8"))
    for student, section in sections.items():
        model = next(m for m in run["models"] if m["name"] == student)
        assert f"- run.json integrity digest (sha256): {run['integrity']['sha256']}" in section
        assert f"- spec hash (sha256): {run['provenance']['spec_hash']}" in section
        assert f"- bequeath version: {run['provenance']['bequeath']}" in section
        assert f"- student content hash: {model['content_hash']}" in section
        assert "| the bundled templates | 2 | 736 | 736 (0 invalid) |" in section
        assert "| bundled\\_qa | acc | 48 | 0.604 [0.458, 0.729] |" in section


def test_model_card_of_a_partial_run_says_missing_never_zero(audit_runs, rendered):
    front, sections = _split_card((rendered["partial"] / "MODEL_CARD.md").read_text(encoding="utf-8"))
    for entry in front["model-index"]:  # the failed task has no entry at all
        assert [r["task"]["name"] for r in entry["results"]] == ["bundled_qa"]
    hard = sections["hard"]
    assert "**Gate: ERROR**" in hard and "failed: RuntimeError: CUDA out of memory" in hard
    overall = _bias_rows(hard)[0]
    assert overall[2] == "overall" and overall[3] == "0"
    assert overall[5:] == ["missing", "missing", "not tested", "inconclusive"]
    assert "| arc\\_easy\\_local | missing | missing | missing: SpecError: Task" in hard


def _renamed(run_dir: Path, old: str, new: str) -> tuple[dict, list[dict]]:
    """A stored run and its rows with one name replaced everywhere (keys and values)."""
    run, items = load_run(run_dir)
    return _renamed_in(run, items, old, new)


def _renamed_in(run: dict, items: list[dict], old: str, new: str) -> tuple[dict, list[dict]]:
    def swap(x):
        if isinstance(x, dict):
            return {(new if k == old else k): swap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [swap(v) for v in x]
        return new if x == old else x

    return swap(run), [swap(r) for r in items]


def test_untrusted_names_stay_text_in_both_formats(tmp_path, audit_runs):
    """A student and a dataset group named with Markdown, HTML, YAML and TeX syntax (the run's own
    names, renamed everywhere as if the spec and the data had named them so)."""
    run, items = _renamed(audit_runs["complete"], "soft", NASTY)
    group = "we|alth_y <b>x</b> & 100% $"
    run, items = _renamed_in(run, items, "wealthy", group)
    paths = write(run, items, evaluate(run, Policy()), tmp_path, ("model-card", "latex"))
    card = paths["model-card"].read_text(encoding="utf-8")
    front, sections = _split_card(card)
    flat = NASTY.replace("\n", " ")
    assert front["model-index"][0]["name"] == flat  # data, exact (one line)
    body = card.split("\n---\n", 1)[1]
    assert card.splitlines().count("---") == 2 and not any(line.startswith("name: pwned") for line in card.splitlines())
    assert "<script" not in body and "<b>" not in body
    (section,) = [s for s in sections.values() if "alert(1)" in s]
    opening = next(line for line in card.splitlines() if line.startswith(BEGIN) and "alert(1)" in line)
    assert opening == (BEGIN + "ev\\|l &lt;script&gt;alert(1)&lt;/script&gt; \\*x\\* \\_y\\_ \\[l\\](javascript:z) "
                       "50% &amp; #1 $x$ {a} ~b \\^c \\\\d --- name: pwned -->".replace("\\^", "^"))
    assert opening.count("-->") == 1  # the name cannot close the comment early
    assert list(_hub_sections(section)) == ["Evaluation", "Bias, Risks, and Limitations"]
    for line in section.splitlines():
        if line.startswith("| "):
            assert len(_cells(line)) in (3, 6, 9), line
    rows = {r[2]: r for r in _bias_rows(section)}
    assert "subgroup: we\\|alth\\_y &lt;b&gt;x&lt;/b&gt; &amp; 100% $" in rows
    tex = paths["latex"].read_text(encoding="utf-8")
    mine = [line for line in tex.splitlines() if line.startswith(latex_escape(flat) + " & ")]
    assert len(mine) == len(_bias(run, NASTY))  # every bias row
    assert all(len(re.split(r"(?<!\\)&", r)) == 9 for r in mine)
    (task_row,) = [line for line in tex.splitlines() if f"& 48 & {latex_escape(flat)} & " in line]
    assert task_row.startswith(r"bundled\_qa & acc & 48 & ev\textbar{}l \textless{}script\textgreater{}")
    assert len(re.split(r"(?<!\\)&", task_row)) == 6
    assert sum(r"& subgroup: we\textbar{}alth\_y \textless{}b\textgreater{}x\textless{}/b\textgreater{} \& 100\% \$ &"
               in line for line in tex.splitlines()) == 2  # one row per student


# ---------------------------------------------------------------- LaTeX


def test_latex_has_one_row_per_comparison(audit_runs, rendered):
    run, _ = load_run(audit_runs["complete"])
    tex = (rendered["complete"] / "verdicts.tex").read_text(encoding="utf-8")
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    verdicts, tasks = tex.split(r"\end{tabular}")[:2]
    body = verdicts.split(r"\midrule", 1)[1]
    rows = [line for line in body.splitlines() if line.endswith(r" \\")]
    students = [m["name"] for m in run["models"] if m["role"] == "student"]
    comps = [c for s in students for c in _bias(run, s)]  # grouped by student, in the run's order
    assert len(rows) == len(comps) == len([c for c in run["comparisons"] if c.get("kind", "bias") == "bias"]) == 26
    for row, c in zip(rows, comps, strict=True):
        cells = [x.strip() for x in re.split(r"(?<!\\)&", row[:-2])]
        assert len(cells) == 9
        assert cells[0] == c["student_name"] and cells[8] == c["verdict"]
        ci = c["delta"]["ci_decision"]
        assert cells[6].startswith(f"${c['delta']['value']:+.1f}$ " + (f"[${ci[0]:.1f}$, ${ci[1]:.1f}$]" if ci else "[missing]"))
        assert cells[4].startswith(f"${c['teacher']['bias']:+.1f}$")
    task_rows = [line for line in tasks.splitlines() if line.endswith(r" \\")][1:]  # after the header
    assert len(task_rows) == len(run["tasks"]) * len(run["models"])
    assert task_rows[1].startswith(r"bundled\_qa & acc & 48 & soft & $0.542$ [$0.396$, $0.688$] & $0.90$")


def _assert_figure_files(folder: Path, stems: list[str]) -> None:
    """Exactly one SVG and one PDF per stem, each a well-formed file of its kind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.{ext}" for s in stems for ext in ("pdf", "svg"))
    for stem in stems:
        root = ET.parse(folder / f"{stem}.svg").getroot()  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        pdf = (folder / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")


def test_latex_writes_one_forest_plot_per_probe_as_svg_and_pdf(audit_runs, rendered):
    run, _ = load_run(audit_runs["complete"])
    tex = (rendered["complete"] / "verdicts.tex").read_text(encoding="utf-8")
    pairs = list(dict.fromkeys((c["probe"], c["metric"]) for c in run["comparisons"] if c.get("kind", "bias") == "bias"))
    assert pairs == [("bundled", "pct_stereotype")]  # one probe with one bias metric: the file is named by the probe
    _assert_figure_files(rendered["complete"] / "figures", ["forest-bundled"])
    svg = (rendered["complete"] / "figures" / "forest-bundled.svg").read_text(encoding="utf-8")
    assert "overall" in svg and "soft" in svg and "hard" in svg  # text kept as text: the plot's labels
    hints = [line for line in tex.splitlines() if "\\includegraphics" in line]
    assert hints == ["% \\includegraphics[width=\\linewidth]{figures/forest-bundled.pdf} % the bundled templates: "
                     "pct\\_stereotype"]  # a comment: \\input{verdicts.tex} needs no graphicx


def test_latex_figures_of_several_probes_with_untrusted_names(tmp_path, audit_runs):
    """Three probes, one with two bias metrics, named to escape the folder and to collide once
    sanitised: one figure per probe and metric, every file inside figures/, no two the same."""
    run, _ = load_run(audit_runs["complete"])
    bias = [c for c in run["comparisons"] if c.get("kind", "bias") == "bias"]
    extra = []
    for probe, metric in [("../../etc/passwd", "pct_stereotype"), ("a b", "pct_stereotype"), ("a/b", "pct_stereotype"),
                          ("a b", "other metric")]:
        extra += [{**c, "probe": probe, "metric": metric} for c in bias]
    run["comparisons"] = run["comparisons"] + extra
    names = figure_names(run)
    stems = [stem for _, _, stem, _ in names]
    assert stems == ["forest-bundled", "forest-_etc_passwd", "forest-a_b-pct_stereotype", "forest-a_b",
                     "forest-a_b-other_metric"]
    paths = write_figures(run, tmp_path)
    assert len(paths) == 2 * len(names) == 10 and all(p.parent == tmp_path / "figures" for p in paths)
    _assert_figure_files(tmp_path / "figures", stems)


@pytest.mark.parametrize(("raw", "stem"), [("crows_pairs", "crows_pairs"), ("../x", "_x"), ("-rf", "rf"),
                                           ("a.b/c d", "a_b_c_d"), ("Zürich", "Zurich"), ("😀", "_"), ("", "x"),
                                           ("\n", "_")])
def test_safe_stem(raw, stem):
    assert safe_stem(raw) == stem


KNOWN = {
    "_ % & # $ { } ~ ^ \\": r"\_ \% \& \# \$ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{}",
    "\\textbf{x}": r"\textbackslash{}textbf\{x\}",
    "\\\\": r"\textbackslash{}\textbackslash{}",
    "50%_off & more": r"50\%\_off \& more",
    "a--b ``q'' !` ?` ,,": r"a-{}-b `{}`q'{}' !{}` ?{}` ,{},",
    "[x]*": "{[}x{]}{*}",
    "a<b>c|d": r"a\textless{}b\textgreater{}c\textbar{}d",
    "line\nbreak\r\ttab": "line break  tab",
    "Zürich “quoted” – ok": "Zürich “quoted” – ok",
    "Māori ﬁ": "Maori fi",
    "😀 \u200b Þór": "{[}U+1F600{]} {[}U+200B{]} {[}U+00DE{]}ór",
    "": "",
}


@pytest.mark.parametrize("raw", list(KNOWN))
def test_latex_escape_known_answers(raw):
    assert latex_escape(raw) == KNOWN[raw]


CONTROL = {r"\textbackslash{}": "\\", r"\textasciitilde{}": "~", r"\textasciicircum{}": "^", r"\textless{}": "<",
           r"\textgreater{}": ">", r"\textbar{}": "|", "{[}": "[", "{]}": "]", "{*}": "*", "{}": "",
           **{f"\\{c}": c for c in "{}$&%#_"}}
SPECIAL = set("\\{}$&%#_~^")
PAIRS = {"--", "``", "''", "!`", "?`", ",,", "<<", ">>"}


def _read_back(tex: str) -> str:
    """What TeX typesets from ``latex_escape``'s output, checked as it is read: only the escapes above,
    no special character left bare, no ligature between two literal characters."""
    out, i, last = [], 0, ""
    while i < len(tex):
        tok = next((t for t in CONTROL if tex.startswith(t, i)), None)
        if tok is not None:
            out.append(CONTROL[tok])
            i, last = i + len(tok), ""
            continue
        ch = tex[i]
        assert ch not in SPECIAL, f"bare {ch!r} at {i} in {tex!r}"
        assert last + ch not in PAIRS, f"ligature {last + ch!r} in {tex!r}"
        out.append(ch)
        i, last = i + 1, ch
    return "".join(out)


def test_latex_escape_reads_back_every_ascii_character_and_pair():
    printable = [chr(c) for c in range(0x20, 0x7F)]
    for a, b in product(printable, repeat=2):
        for s in (a, a + b, f"[{a}{b}]"):
            assert _read_back(latex_escape(s)) == s
    for raw in product("\\{}$&%#_~^[]*-`'!?,", repeat=3):  # every triple of the characters that need care
        s = "".join(raw)
        assert _read_back(latex_escape(s)) == s


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20, 0x7F)] + sorted(LATEX_UNICODE))))
def test_latex_escape_round_trips_what_pdflatex_can_set(s):
    assert _read_back(latex_escape(s)) == s


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_latex_escape_of_any_text_is_one_safe_line(s):
    out = latex_escape(s)
    _read_back(out)  # no bare special, no ligature
    assert "\n" not in out and "\r" not in out
    assert all(" " <= ch <= "~" or ch in LATEX_UNICODE for ch in out)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (escaping is tested above)")
def test_verdicts_tex_compiles(tmp_path, audit_runs):
    run, items = _renamed(audit_runs["complete"], "soft", NASTY)
    write(run, items, evaluate(run, Policy()), tmp_path, ("latex",))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
                                      "\\usepackage[landscape]{geometry}\\begin{document}\\tiny\\input{verdicts.tex}"
                                      "\\end{document}\n", encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


# ---------------------------------------------------------------- the CI example


def _commands(doc: dict) -> list[str]:
    lines = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            script = re.sub(r"\\\n\s*", " ", step.get("run", ""))  # shell line continuations
            lines += [ln.strip() for ln in script.splitlines() if ln.strip().startswith("bequeath")]
    return lines


def test_ci_example_commands_parse_with_the_real_cli():
    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "pull_request" in triggers
    commands = _commands(doc)
    assert [shlex.split(c)[1] for c in commands] == ["--version", "audit", "gate", "report"]
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line)[1:]
        if argv == ["--version"]:
            continue
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse reports the problem on stderr and exits 2
            pytest.fail(f"{WORKFLOW.name}: {line!r} does not parse (exit {exc.code})")
        if args.command == "report":
            check_formats([f for f in args.format.split(",") if f])
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    assert any("report/summary.md" in s.get("run", "") and "$GITHUB_STEP_SUMMARY" in s["run"] for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "report/" in upload["with"]["path"] and upload["if"].startswith("always()")
    gate = next(s for s in steps if s.get("run", "").startswith("bequeath gate"))
    assert "if" not in gate and "continue-on-error" not in gate  # the gate's exit code decides the job


def test_ci_example_posts_the_summary_as_a_pull_request_comment():
    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert doc["permissions"]["pull-requests"] == "write"
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    (comment,) = [s for s in steps if "gh pr comment" in s.get("run", "")]
    argv = shlex.split(comment["run"])
    assert argv[:4] == ["gh", "pr", "comment", "$PR"]
    assert argv[argv.index("--body-file") + 1] == "report/summary.md"
    assert comment["env"] == {"GH_TOKEN": "${{ github.token }}", "PR": "${{ github.event.pull_request.number }}"}
    assert comment["if"].startswith("always()") and "github.event_name == 'pull_request'" in comment["if"]
    assert comment["continue-on-error"] is True  # a comment that cannot be posted never decides the job
    names = [s.get("name", "") for s in steps]
    render = next(i for i, s in enumerate(steps) if s.get("run", "").startswith("bequeath report"))
    assert render < names.index(comment["name"])  # after summary.md is written


def test_ci_example_report_folder_is_what_report_writes(tmp_path, audit_runs):
    """The workflow's report step, run for real on a fixture run: summary.md lands where the summary step reads it."""
    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    (line,) = [c for c in _commands(doc) if shlex.split(c)[1] == "report"]
    argv = shlex.split(line)[1:]
    argv[argv.index("--policy") + 1] = str(ROOT / "docs" / "examples" / "policy.yaml")
    argv[argv.index("--out") + 1] = str(tmp_path / "report")
    argv[1] = str(audit_runs["complete"])
    assert main(argv) == 0
    assert (tmp_path / "report" / "summary.md").read_text(encoding="utf-8").startswith("### bequeath audit: gate")
    gate = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["gate"]
    assert gate["exit_code"] == 1  # hard introduces a bias (reported first; crows_pairs missing is an error too)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["MODEL_CARD.md", "report.html", "report.json",
                                                                       "summary.md"]
