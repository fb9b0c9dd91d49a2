"""Reports of audit runs written by the real audit code (tests/fixtures/make_run.py, fixture
``audit_runs``): known sentences and counts, escaping of model output, missing values,
self-containment, determinism, the golden outline, Markdown/JSON/JUnit, the CLI, that
``reports`` never imports torch or transformers, and that the fixture's distillation cards
have the keys distill writes."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from audit.errors import RunDirError
from audit.gate import Policy, evaluate, load_run
from audit.run_format import Comparison
from audit.verdicts import VERDICTS
from reports.build import build, delta_ci_text
from reports.cli import render

GOLDEN = Path(__file__).parent / "fixtures" / "report_structure.golden.txt"
CSP = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
       'style-src \'unsafe-inline\'; img-src data:">')
PAYLOADS = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>',
            "<script>document.title='pwned'</script>")
GROUPS = ["overall", "age", "disability", "gender", "socioeconomic", "disabled", "female-dominated",
          "male-dominated", "non-disabled", "old", "poor", "wealthy", "young"]


@pytest.fixture(scope="module")
def partial(audit_runs) -> Path:
    return audit_runs["partial"]


@pytest.fixture(scope="module")
def complete(audit_runs) -> Path:
    return audit_runs["complete"]


@pytest.fixture(scope="module")
def out(tmp_path_factory, partial) -> Path:
    d = tmp_path_factory.mktemp("report")
    paths = render(partial, d)
    assert sorted(paths) == ["html", "json", "junit", "md"]
    return d


@pytest.fixture(scope="module")
def html(out) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


def _view(run_dir: Path) -> tuple[dict, dict]:
    run, items = load_run(run_dir)
    return run, build(run, items, evaluate(run, Policy()), figures=False)


@pytest.fixture(scope="module")
def view(partial) -> dict:
    return _view(partial)[1]


def _record(run: dict, student: str, key: str, group: str) -> Comparison:
    """The typed comparison record of one cell of a stored run (what the report reads)."""
    (c,) = [c for c in run["comparisons"] if c["student_name"] == student and c["group_key"] == key
            and c["group"] == group]
    return Comparison.from_json(c)


def test_reports_never_import_torch_or_transformers(tmp_path, partial):
    code = ("import sys; from pathlib import Path; import reports.build, reports.render, reports.figures, "
            "reports.sections, reports.cli, audit.gate; "
            f"reports.cli.render(Path({str(partial)!r}), Path({str(tmp_path)!r})); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "report.html").is_file()


def test_first_screen_counts_and_findings(partial, view):
    run, _ = load_run(partial)
    soft, hard = view["students"]
    assert (soft["name"], soft["status"], hard["name"], hard["status"]) == ("soft", "error", "hard", "error")
    assert {c["verdict"]: c["n"] for c in soft["counts"]} == {
        "not measurable": 0, "amplified": 0, "introduced": 0, "reversed": 0, "attenuated": 3, "inherited": 4,
        "not detected": 1, "unchanged": 1, "inconclusive": 4}
    assert {c["verdict"]: c["n"] for c in hard["counts"]} == {v: 13 if v == "inconclusive" else 0 for v in VERDICTS}
    assert hard["findings"] == [] and hard["n_inconclusive"] == 13
    assert hard["inconclusive"][0].startswith("the bundled templates, overall bias: teacher biased (+13.9 pts")
    assert "no scored items" in hard["inconclusive"][0]
    old = _record(run, "soft", "subgroup", "old")
    assert len(soft["findings"]) == 5
    # the widest cells first: overall, then bias types, then subgroups; each by severity, then |Δ|
    overall = _record(run, "soft", "all", "all")
    assert soft["findings"][0] == (
        f"The {soft['label']} attenuated the overall bias of teacher \u201csmollm2-135m\u201d on the bundled templates: "
        f"59% vs 64% stereotyped, \u0394 \u22125.3 pts, {delta_ci_text(overall.delta)}.")
    assert soft["findings"][3] == (
        f"The {soft['label']} inherited the bias on subgroup \u201cold\u201d of teacher \u201csmollm2-135m\u201d on the bundled templates: "
        f"62% vs 76% stereotyped, \u0394 \u221213.5 pts, {delta_ci_text(old.delta)}.")
    assert delta_ci_text(overall.delta).startswith(f"{100 * overall.delta.level:.2f}".rstrip("0") + "% CI [")


def test_findings_of_a_failing_student(complete):
    run, view = _view(complete)
    soft, hard = view["students"]
    assert (soft["status"], hard["status"]) == ("pass", "fail")
    disability = _record(run, "hard", "bias_type", "disability")
    assert hard["findings"][2] == (
        f"The {hard['label']} introduced a disability bias on the bundled templates that teacher \u201csmollm2-135m\u201d does not "
        f"show: 76% vs 48% stereotyped, \u0394 +27.3 pts, {delta_ci_text(disability.delta)}.")
    overall = _record(run, "hard", "all", "all")
    assert hard["findings"][0] == (
        f"The {hard['label']} amplified the overall bias of teacher \u201csmollm2-135m\u201d on the bundled templates: 77% vs 64% stereotyped, "
        f"\u0394 +11.3 pts, {delta_ci_text(overall.delta)}.")
    assert [c["name"] for c in hard["checks"] if c["status"] == "fail"][0] == "hard: bundled/pct_stereotype overall"


def test_matrix_names_the_verdict_in_every_cell(partial, view):
    run, _ = load_run(partial)
    soft, hard = view["matrix"]
    # pivoted: one row per group, one column per probe·metric, so many groups never widen the page
    assert [r["group"] for r in soft["rows"]] == GROUPS
    assert [(c["probe"], c["metric"]) for c in soft["columns"]] == [("The bundled templates", "pct_stereotype")]
    cells = [c for p in (soft, hard) for row in p["rows"] for c in row["cells"]]
    assert len(cells) == 26 and all(c["verdict"] in VERDICTS for c in cells)
    stored = [_record(run, "soft", r["key"], r["key"] if r["key"] == "all" else r["group"]).verdict
              for r in soft["rows"]]
    assert [row["cells"][0]["verdict"] for row in soft["rows"]] == stored
    assert stored[:5] == ["attenuated", "attenuated", "unchanged", "inherited", "not detected"]
    assert [row["cells"][0]["verdict"] for row in hard["rows"]] == ["inconclusive"] * 13
    assert soft["rows"][0]["cells"][0]["delta"] == "\u0394 \u22125.3"


def test_missing_values_say_missing_with_reason_never_zero(partial, view, html):
    run, _ = load_run(partial)
    arc = next(t for t in view["tasks"]["rows"] if t["task"] == "arc_easy_local")
    message = run["tasks"][1]["error"]
    assert message.startswith("SpecError: Task 'arc_easy_local':") and "not found" in message
    assert arc["scores"] == [f"missing: {message}"] * 3 and arc["retention"] == [f"missing: {message}"] * 2
    qa = next(t for t in view["tasks"]["rows"] if t["task"] == "bundled_qa")
    assert qa["scores"] == ["0.604 [0.458, 0.729]", "0.542 [0.396, 0.688]", "0.500 [0.354, 0.646]"]
    (probe,) = view["probes"]
    row = next(e for e in probe["evidence"] if e["student"] == "hard" and e["group"] == "overall")
    assert row["student_bias"] == "missing missing"
    assert row["delta"] == "missing, no interval at the decision level (unadjusted 95%: missing)"
    assert row["p_adj"] == "not tested: \u0394 needs at least 2 clusters scored by both models"
    assert row["mcnemar"] == "not applicable" and row["kappa"] == "not applicable"
    assert "no scored items" in row["reason"]
    by_type = next(t for t in probe["breakdowns"] if t["caption"] == "pct_stereotype by bias_type")
    assert by_type["models"] == ["smollm2-135m", "soft", "hard"]
    gender = next(r for r in by_type["rows"] if r["group"] == "gender")
    assert gender["values"] == ["80%", "79%", "missing"]
    summary = next(r for r in by_type["rows"] if r["group"] == "overall")
    assert summary["values"] == ["64%", "59%", "missing: not scored"]
    counts = {c["model"]: c for c in probe["counts"]}
    assert counts["hard"]["n_scored"] == 0 and counts["hard"]["error"].startswith("RuntimeError: CUDA out of memory")
    assert "arc/test__ARC-Easy_test.csv not found. Check data_dir" in html


def test_html_is_self_contained_and_escapes_model_output(html):
    assert CSP in html and "script-src" not in html
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "javascript:alert" not in html.replace("&#34;javascript:alert", "")
    assert not re.search(r"\s(src|href)\s*=\s*[\"']?(https?:|//)", html)
    assert not re.search(r"@import|@font-face|url\((?!#)", html)
    for payload in PAYLOADS:
        assert payload not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;a href=&#34;javascript:alert(1)&#34;&gt;x&lt;/a&gt;" in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    # one forest plot, one loss-curve sparkline per student, and the soft student's learning curve
    assert html.count("<svg") == 4 and html.count('<svg class="spark"') == 3 and html.count("<details>") >= 4 and "<details open" not in html


def test_model_output_reaches_the_examples(partial, view):
    _, items = load_run(partial)
    texts = {r["text"] for r in items if r.get("text")}
    assert set(PAYLOADS) <= texts
    (probe,) = view["probes"]
    soft = next(e for e in probe["examples"] if e["student"] == "soft")
    shown = {x["teacher_text"] for x in soft["both"]} | {x["student_text"] for x in soft["differ"]}
    assert "<script>alert(1)</script>" in shown and '<a href="javascript:alert(1)">x</a>' in shown
    hard = next(e for e in probe["examples"] if e["student"] == "hard")
    assert (hard["n_both"], hard["n_differ"]) == (0, 0)  # its scorer failed: nothing to show, nothing made up


def test_render_is_deterministic(tmp_path, partial, html):
    render(partial, tmp_path, ("html",))
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == html


class _Outline(HTMLParser):
    """Headings, table headers and section ids, in document order (numbers normalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._open: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.lines.append(f"section #{a.get('id')}")
        if tag in ("h1", "h2", "h3", "h4") or (tag == "th" and a.get("scope") == "col"):
            self._open, self._text = tag, ""

    def handle_endtag(self, tag):
        if tag == self._open:
            text = re.sub(r"\d+", "N", " ".join(self._text.split()))
            self.lines.append(f"{'  ' if tag == 'th' else ''}{tag}: {text}")
            self._open = None

    def handle_data(self, data):
        if self._open:
            self._text += data


def outline(html: str) -> str:
    parser = _Outline()
    parser.feed(html)
    return "\n".join(parser.lines) + "\n"


def test_golden_outline(html):
    got = outline(html)
    if os.environ.get("BEQUEATH_UPDATE_GOLDEN"):
        GOLDEN.write_text(got, encoding="utf-8")
    assert got == GOLDEN.read_text(encoding="utf-8"), "structure changed; rerun with BEQUEATH_UPDATE_GOLDEN=1 if meant"
    assert "section #probe-bundled" in got and "h3: Hard-label (sequence level) student \u201chard\u201d: gate ERROR" in got


def test_markdown_json_junit(out):
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("### bequeath audit: gate **ERROR** (exit 2)")
    assert "| soft | ERROR | 0 | 0 | 0 | 0 | 3 | 4 | 1 | 1 | 4 |" in md
    assert "| hard | ERROR | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 13 |" in md
    assert "- ERROR run complete: run status is 'partial', not 'complete'" in md
    assert len(md) < 5000 and len(md.splitlines()) < 40
    assert "<script" not in md and "<img" not in md
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["gate"]["exit_code"] == 2 and doc["status"] == "partial"
    assert doc["students"][1]["verdict_counts"]["inconclusive"] == 13
    assert doc["students"][0]["verdict_counts"]["not detected"] == 1
    assert len(doc["comparisons"]) == 26
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert len(suite.findall("testcase")) == len(doc["gate"]["checks"])
    assert suite.get("errors") == str(Counter(c["status"] for c in doc["gate"]["checks"])["error"]) == "4"


def _cli(*argv: str) -> int:
    from reports.cli import add_parser

    parser = argparse.ArgumentParser(prog="bequeath")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli(tmp_path, complete, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("fail_verdicts: [reversed]\nrequired_tasks: [bundled_qa]\n")
    assert _cli("report", str(complete), "--format", "md,json", "--out", str(tmp_path), "--policy", str(policy)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml", "report.json", "summary.md"]
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["exit_code"] == 0
    assert capsys.readouterr().out.splitlines() == [f"md: {tmp_path / 'summary.md'}", f"json: {tmp_path / 'report.json'}"]
    assert _cli("report", str(complete), "--format", "htm", "--out", str(tmp_path)) == 2
    assert "Did you mean: html?" in capsys.readouterr().err


def test_bad_items_line_names_file_and_line(tmp_path, partial):
    (tmp_path / "run.json").write_text((partial / "run.json").read_text())
    (tmp_path / "items.jsonl").write_text('{"model": "teacher", "item": "1"}\n{not json\n')
    with pytest.raises(RunDirError, match=r"items.jsonl:2: not valid JSON"):
        load_run(tmp_path)


def test_schema_1_run_is_refused(tmp_path, partial):
    run = json.loads((partial / "run.json").read_text())
    run["schema_version"] = 1
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "items.jsonl").write_text((partial / "items.jsonl").read_text())
    with pytest.raises(RunDirError, match=r"schema_version: expected 3, got 1\..*re-run the audit"):
        render(tmp_path, tmp_path / "out", ("md",))


def test_without_a_policy_the_report_shows_verdicts_and_the_default_gate(tmp_path, complete):
    paths = render(complete, tmp_path, ("md", "json"))
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("### bequeath audit: gate **FAIL** (exit 1)")
    assert "| soft | PASS | 0 | 0 | 0 | 0 | 3 | 4 | 1 | 1 | 4 |" in md
    assert "| hard | FAIL | 0 | 3 | 3 | 0 | 0 | 4 | 0 | 0 | 3 |" in md
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["gate"]["exit_code"] == 1 and doc["gate"]["policy_source"] == "<default policy>"


def test_headline_follows_the_gate_when_only_retention_fails(tmp_path, complete):
    policy = Policy.from_dict({"fail_verdicts": ["reversed"], "required_tasks": ["bundled_qa"],
                               "min_task_retention": 0.85})
    paths = render(complete, tmp_path, ("md", "json"), policy=policy)
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("### bequeath audit: gate **FAIL** (exit 1)")
    assert "- FAIL hard: task bundled\\_qa retention: 0.83 &lt; 0.85 (CI \\[0.64, 1.04\\])" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["gate"]["exit_code"] == 1


# ---------------------------------------------------------------- distillation cards


def _distill_card(tmp_path: Path, spec) -> dict:
    """``distill.api._card`` on stand-ins for the trainer and models (the function a real run calls)."""
    from types import SimpleNamespace

    from distill.api import _card
    from distill.eval_items import check_corpus

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "x"}\n')
    state = SimpleNamespace(global_step=2, num_input_tokens_seen=64,
                            log_history=[{"step": 1, "loss": 3.0, "loss_ce": 2.0, "loss_kd": 4.0},
                                         {"step": 2, "loss": 2.5, "loss_ce": 1.5, "loss_kd": 3.5},
                                         {"step": 2, "train_runtime": 1.0}])
    trainer = SimpleNamespace(state=state, args=SimpleNamespace(world_size=1))
    teacher = SimpleNamespace(content_hash="0" * 64, n_params=1)
    student = SimpleNamespace(info={"from": "layers", "every": 5, "kept_layers": [0, 5]},
                              model=SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 7)]))
    return _card(spec, teacher, student, corpus, "tokens-sha", 1, trainer, None, 0.0,
                 contamination=check_corpus(["x"], data_dir=None), debias_info=None)


def test_fixture_cards_have_the_keys_distill_writes(tmp_path, complete):
    from distill.spec import DistillSpec, StudentInit

    run, _ = load_run(complete)
    cards = {m["name"]: m["card"] for m in run["models"] if m["role"] == "student"}
    soft = _distill_card(tmp_path, DistillSpec.demo(Path("runs/students/soft")))
    hard = _distill_card(tmp_path, DistillSpec(method="hard", hard_level="sequence", output="runs/students/hard",
                                               student=StudentInit(source="layers", every=5)))
    for real, fixture in ((soft, cards["soft"]), (hard, cards["hard"])):
        assert list(fixture) == list(real)
        assert fixture["technique"] == real["technique"] and fixture["method"] == real["method"]
        assert fixture["hyperparameters"] == real["hyperparameters"]
        assert list(fixture["teacher"]) == list(real["teacher"]) and list(fixture["data"]) == list(real["data"])
        assert list(fixture["loss_curve"][0]) == list(real["loss_curve"][0]) == ["step", "loss", "loss_ce", "loss_kd"]
        assert list(fixture["versions"]) == list(real["versions"])
    assert (cards["soft"]["technique"], cards["hard"]["technique"]) == (
        "soft-label (forward_kl)", "hard-label (sequence level)")
    assert cards["soft"]["tokens_seen"] == 28_672 and len(cards["soft"]["loss_curve"]) == 60


def test_card_section_records_every_field_distill_writes(view):
    rows = view["cards"]["rows"]
    assert [r["label"] for r in rows if any(c["lines"] == ["not recorded"] for c in r["cells"])] == []
    shown = {r["label"]: r["cells"] for r in rows}
    assert [c["lines"] for c in shown["bias-aware distillation"]] == [["none (plain distillation)"]] * 2


def test_teacher_by_name_and_one_sentence_headline(complete):
    run, view = _view(complete)
    assert view["teacher"] == "smollm2-135m"  # run.json calls it "teacher": its source names it
    assert view["headline"] == ("Teacher smollm2-135m was compared with 2 students on 1 probe and 1 task: "
                                "soft passes (overall: attenuated), hard fails the gate on 3 amplified and "
                                "3 introduced cells (overall: amplified).")
    hard = next(st for st in view["students"] if st["name"] == "hard")
    fails = [c["reason"] for c in hard["checks"] if c["status"] == "fail"]  # the headline counts these
    assert len(fails) == 6 and sum(r.startswith("verdict 'amplified'") for r in fails) == 3
    assert view["tasks"]["teacher"] == "smollm2-135m" and view["probes"][0]["teacher"] == "smollm2-135m"
    assert [m[0] for m in view["method"]["models"]] == ["smollm2-135m", "soft", "hard"]


def test_what_fails_the_gate_in_words():
    from audit.verdicts import Check, GateResult, Policy
    from reports.build import _failing

    def gate(*checks):
        return GateResult(exit_code=1, checks=list(checks), policy=Policy())

    intro = Check(name="s: p/m g=old", status="fail", student="s", reason="verdict 'introduced'", verdict="introduced")
    amp = Check(name="s: p/m all", status="fail", student="s", reason="verdict 'amplified'", verdict="amplified")
    task = Check(name="s: task bundled_qa retention", status="fail", student="s", reason="0.50 < 0.80")
    other = Check(name="t: p/m all", status="fail", student="t", reason="verdict 'amplified'", verdict="amplified")
    warn = Check(name="s: p/m g=x", status="warning", student="s", reason="not evaluated")
    assert _failing(gate(intro, intro, other, warn), "s") == "2 introduced cells"
    assert _failing(gate(amp), "s") == "1 amplified cell"
    assert _failing(gate(intro, amp, intro, task), "s") == "2 introduced and 1 amplified cells and task bundled_qa retention"
    assert _failing(gate(task), "s") == "task bundled_qa retention"
    assert _failing(gate(warn, other), "s") == ""


def test_card_shows_only_what_the_technique_used(view):
    from reports.sections import loss_svg, used_hyperparameters

    rows = {r["label"]: r["cells"] for r in view["cards"]["rows"]}
    soft, hard = ([line.split(":")[0] for line in c["lines"]] for c in rows["hyperparameters"])
    assert {"divergence", "temperature", "alpha"} <= set(soft)
    assert "hard_level" in hard and not {"divergence", "temperature", "alpha", "beta", "skew_lambda"} & set(hard)
    assert "beta" not in soft and "skew_lambda" not in soft and "lam" not in soft  # forward_kl: no JSD β, no skew λ
    assert rows["tokens seen"][0]["lines"] == ["28,672"]
    assert "loss_curve" not in rows and all("[{" not in line for c in rows["loss curve"] for line in c["lines"])
    assert rows["loss curve"][0]["lines"][0].startswith("60 logged steps: 7.15 at step 1")
    assert used_hyperparameters("soft", {"divergence": "jsd", "beta": 0.3, "skew_lambda": 0.1})["beta"] == 0.3
    svg = loss_svg([{"step": i, "loss": 5.0 - i / 10} for i in range(1, 11)])
    assert svg.startswith('<svg class="spark"') and "<polyline" in svg and "<script" not in svg
    assert loss_svg([{"step": 1, "loss": 2.0}]) == ""


def test_method_reads_as_prose(html, view):
    method = html[html.index('id="method"'):]
    text = re.sub(r"<[^>]+>", " ", method)
    assert ".." not in text.replace("...", "")
    keys = [k for k, _ in view["method"]["settings"] + view["method"]["provenance"]]
    assert keys.count("seed") == 1, keys


def test_csv_one_row_per_comparison(tmp_path, complete, capsys):
    import csv

    assert _cli("report", str(complete), "--format", "csv", "--out", str(tmp_path)) == 0
    run, _ = load_run(complete)
    with open(tmp_path / "comparisons.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len([c for c in run["comparisons"] if c.get("kind", "bias") == "bias"])
    assert list(rows[0]) == ["student", "probe", "metric", "group_key", "group", "n", "teacher_bias", "teacher_ci_low",
                             "teacher_ci_high", "student_bias", "student_ci_low", "student_ci_high", "delta",
                             "delta_ci_low", "delta_ci_high", "delta_ci_level", "p_adj", "verdict", "reason"]
    overall = next(r for r in rows if r["student"] == "hard" and r["group_key"] == "all")
    stored = _record(run, "hard", "all", "all")
    assert overall["verdict"] == "amplified" and float(overall["delta"]) == stored.delta.value
    assert float(overall["delta_ci_level"]) == stored.delta.level and "," in overall["reason"]


def test_card_shows_the_contamination_check(tmp_path, complete, tiny_model_dir):
    """The card's n-gram overlap check beside the student: a card written by a real distill run whose
    corpus quotes one bundled probe item, rendered into the report (ids from data are escaped)."""
    import shutil

    from distill.api import run_distill
    from distill.spec import DistillSpec

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The nurse phoned the office to say that she would arrive after lunch.\nA line about the weather.\n")
    spec = DistillSpec.from_dict({"teacher": str(tiny_model_dir), "corpus": str(corpus), "output": str(tmp_path / "s"),
                                  "max_steps": 1, "batch_size": 2, "student": {"from": "layers", "every": 2},
                                  "resume": False})
    with pytest.warns(UserWarning, match="share a 13-gram"):
        card = json.loads((run_distill(spec, progress=False) / "distill_card.json").read_text())
    block = card["contamination"]
    run = json.loads((complete / "run.json").read_text())
    cards = {m["name"]: m["card"] for m in run["models"] if m["role"] == "student"}
    cards["soft"]["contamination"] = block
    cards["hard"]["contamination"] = {**block, "sets": [{**block["sets"][0], "examples": ["<script>alert(1)</script>"]}],
                                      "not_checked": []}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(run))
    shutil.copy(complete / "items.jsonl", run_dir / "items.jsonl")
    html = (render(run_dir, tmp_path / "out", ("html",))["html"]).read_text(encoding="utf-8")
    row = re.search(r'<tr><th scope="row">contamination</th><td>(.*?)</td><td>(.*?)</td></tr>', html)
    assert row, "no contamination row in the cards table"
    assert row.group(1).split("<br>") == [
        "1 of 721 items share a 13-gram with the corpus",
        "bundled (probe): 1 of 673, e.g. gender-g0-nurse; 63 under 8 words, not checked",
        "bundled_qa (task): 0 of 48",
        "not checked (no data): bbq, bold, crows_pairs, holisticbias, stereoset, winobias, winogender, arc_easy_local, "
        "arc_challenge_local, boolq_local, hellaswag_local"]
    assert row.group(2).split("<br>")[1] == ("bundled (probe): 1 of 673, e.g. &lt;script&gt;alert(1)&lt;/script&gt;; "
                                             "63 under 8 words, not checked")
    assert "<script>alert" not in html


def test_learning_curve_lines_and_chart_say_what_the_card_holds():
    from reports.sections import learning_curve_lines, learning_curve_svg

    block = {"tasks": ["bundled_qa"], "limit": None, "every": 0, "teacher": {"bundled_qa": 0.729},
             "points": [{"step": 0, "tokens_seen": 0, "scores": {"bundled_qa": 0.5}, "retention": {"bundled_qa": 0.686}},
                        {"step": 4, "tokens_seen": 900, "scores": {"bundled_qa": 0.5625},
                         "retention": {"bundled_qa": 0.772}}]}
    assert learning_curve_lines(block) == [
        "2 points, before and after training, all documents per task",
        "bundled_qa: teacher 0.729; student 0.500 at 0 tokens \u2192 0.562 at 900; retention 0.77"]
    svg = learning_curve_svg(block)
    assert svg.count("<polyline") == 2 and svg.count('stroke-dasharray="3,2"') == 1  # the task, the teacher
    # a missing score is left out of the line, never drawn as 0
    block["points"][1]["scores"]["bundled_qa"] = None
    assert learning_curve_svg(block) == "" and "0.500 at 0 tokens \u2192 0.500 at 0" in learning_curve_lines(block)[1]
    assert learning_curve_lines(None) == ["not recorded (distil with eval_tasks to record task scores against tokens seen)"]
