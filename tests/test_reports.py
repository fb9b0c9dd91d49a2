"""Reports of the hand-made fixture run: known sentences and counts, escaping, missing values,
self-containment, determinism, the golden outline, Markdown/JSON/JUnit, the CLI, and that
``reports`` never imports torch or transformers."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from audit.errors import RunDirError
from audit.gate import Policy, evaluate
from reports.build import build, load_run
from reports.render import render

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
GOLDEN = Path(__file__).parent / "fixtures" / "report_structure.golden.txt"
CSP = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
       'style-src \'unsafe-inline\'; img-src data:">')
PAYLOADS = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>')


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report")
    paths = render(FIXTURE, d)
    assert sorted(paths) == ["html", "json", "junit", "md"]
    return d


@pytest.fixture(scope="module")
def html(out) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def view() -> dict:
    run, items = load_run(FIXTURE)
    return build(run, items, evaluate(run, Policy()), figures=False)


def test_reports_never_import_torch_or_transformers(tmp_path):
    code = ("import sys; from pathlib import Path; import reports.build, reports.render, reports.figures, "
            "reports.sections, reports.cli, audit.gate; "
            f"reports.render.render(Path({str(FIXTURE)!r}), Path({str(tmp_path)!r})); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "report.html").is_file()


def test_first_screen_sentences_and_counts(view):
    soft, hard = view["students"]
    assert soft["title"] == "Soft-label student \u201csoft\u201d" and soft["status"] == "error"
    assert {c["verdict"]: c["n"] for c in soft["counts"]} == {
        "inherited": 4, "amplified": 1, "attenuated": 1, "introduced": 0, "reversed": 0, "not detected": 2,
        "inconclusive": 1}
    assert {c["verdict"]: c["n"] for c in hard["counts"]} == {
        "inherited": 3, "amplified": 0, "attenuated": 0, "introduced": 2, "reversed": 1, "not detected": 0,
        "inconclusive": 1}
    assert soft["findings"][0] == ("The soft-label student \u201csoft\u201d amplified the teacher's race-color bias on "
                                   "CrowS-Pairs: 66% vs 58% stereotyped, \u0394 +8.0 pts [3.5, 12.4].")
    assert ("The soft-label student \u201csoft\u201d inherited the teacher's gender bias on CrowS-Pairs: "
            "61% vs 63% stereotyped, \u0394 \u22122.0 pts [\u22124.1, 0.3].") in soft["findings"]
    assert hard["findings"][1] == ("The hard-label student \u201chard\u201d introduced a religion bias on CrowS-Pairs "
                                   "that the teacher does not show: 61% vs 51% stereotyped, \u0394 +10.4 pts [2.9, 18.1].")


def test_matrix_names_the_verdict_in_every_cell(view):
    words = {"inherited", "amplified", "attenuated", "introduced", "reversed", "not detected", "inconclusive",
             "not measured"}
    (soft, hard) = view["matrix"]
    assert [h["group"] for h in soft["headers"]] == ["overall", "age", "disability", "gender", "race-color",
                                                     "religion", "young"]
    cells = [c for p in (soft, hard) for row in p["rows"] for c in row["cells"]]
    assert cells and all(c["verdict"] in words for c in cells)
    crows = next(r for r in hard["rows"] if r["probe"] == "CrowS-Pairs")
    assert [c["verdict"] for c in crows["cells"]] == ["inherited", "not measured", "inconclusive", "inherited",
                                                       "not measured", "introduced", "not measured"]


def test_missing_values_say_missing_with_reason_never_zero(view, html):
    arc = next(t for t in view["tasks"]["rows"] if t["task"] == "arc_easy")
    reason = "missing: lm-eval task arc_easy: dataset file not found: /data/arc_easy.jsonl"
    assert arc["scores"] == [reason] * 3 and arc["retention"] == [reason] * 2
    crows = next(p for p in view["probes"] if p["name"] == "crows_pairs")
    row = next(e for e in crows["evidence"] if e["student"] == "hard" and e["group"] == "bias_type: disability")
    assert row["student_bias"] == "missing missing" and row["delta"] == "missing missing"
    assert row["mcnemar"] == "not applicable" and "scorer failed" in row["reason"]
    table = next(b for b in crows["breakdowns"])
    disability = next(r for r in table["rows"] if r["group"] == "disability")
    assert disability["values"] == ["62%", "50%", "missing"]
    assert reason in html


def test_html_is_self_contained_and_escapes_untrusted_text(html):
    assert CSP in html and "script-src" not in html
    assert "<script" not in html.lower() and "<img" not in html.lower() and "javascript:alert" not in html.replace(
        "&#34;javascript:alert", "")
    assert not re.search(r"\s(src|href)\s*=\s*[\"']?(https?:|//)", html)
    assert not re.search(r"@import|@font-face|url\((?!#)", html)
    for payload in PAYLOADS:
        assert payload not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;a href=&#34;javascript:alert(1)&#34;&gt;x&lt;/a&gt;" in html
    assert html.count("<svg") == 2 and html.count("<details>") >= 4 and "<details open" not in html


def test_render_is_deterministic(tmp_path, html):
    render(FIXTURE, tmp_path, ("html",))
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


def test_markdown_json_junit(out):
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("### bequeath audit: gate **ERROR** (exit 2)")
    assert "| soft | ERROR | 4 | 1 | 1 | 0 | 0 | 2 | 1 |" in md
    assert len(md) < 5000 and len(md.splitlines()) < 40
    assert "<script" not in md and "<img" not in md
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["gate"]["exit_code"] == 2
    assert doc["students"][1]["verdict_counts"]["introduced"] == 2
    assert len(doc["comparisons"]) == 16
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert len(suite.findall("testcase")) == len(doc["gate"]["checks"])


def _cli(*argv: str) -> int:
    from reports.cli import add_parser

    parser = argparse.ArgumentParser(prog="bequeath")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("fail_verdicts: [amplified]\nrequired_probes: [bundled]\n")
    assert _cli("report", str(FIXTURE), "--format", "md,json", "--out", str(tmp_path), "--policy", str(policy)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml", "report.json", "summary.md"]
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["exit_code"] == 0
    capsys.readouterr()
    assert _cli("report", str(FIXTURE), "--format", "htm", "--out", str(tmp_path)) == 2
    assert "Did you mean: html?" in capsys.readouterr().err


def test_bad_items_line_names_file_and_line(tmp_path):
    (tmp_path / "run.json").write_text((FIXTURE / "run.json").read_text())
    (tmp_path / "items.jsonl").write_text('{"model": "teacher", "item": "1"}\n{not json\n')
    with pytest.raises(RunDirError, match=r"items.jsonl:2: not valid JSON"):
        load_run(tmp_path)


def test_headline_status_follows_the_gate_exit_code_when_only_a_student_fails(tmp_path):
    from audit.gate import Policy

    policy = Policy.from_dict({"required_probes": ["bundled"], "required_tasks": ["bundled_qa"],
                               "min_task_retention": 0.8})
    paths = render(FIXTURE, tmp_path, ("md", "json"), policy=policy)
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("### bequeath audit: gate **FAIL** (exit 1)")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["gate"]["exit_code"] == 1
