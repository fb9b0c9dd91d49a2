"""The whole path on the real SmolLM2 teacher, through the CLI, with a small budget."""

from __future__ import annotations

import json
import re

import pytest

from audit.cli import main

pytestmark = pytest.mark.slow


def test_demo_distills_audits_and_reports_on_the_real_teacher(demo_dir):
    out = demo_dir
    report = out / "report.html"
    assert report.is_file()

    card = json.loads((out / "student" / "distill_card.json").read_text())
    assert card["method"] == "soft" and card["technique"].startswith("soft-label")
    run = json.loads((out / "audit" / "run.json").read_text())
    assert run["status"] == "complete"
    teacher, student = run["models"]
    assert teacher["n_params"] == 134515008
    assert 0 < student["n_params"] < teacher["n_params"]
    assert student["card"] is not None
    (task,) = run["tasks"]
    t_acc, s_acc = task["scores"]["teacher"]["value"], task["scores"]["soft-student"]["value"]
    assert task["n"] == 48 and 0.0 <= s_acc <= 1.0
    # the teacher answers the easy bundled questions well above chance (0.25)
    assert t_acc > 0.5
    (probe,) = run["probes"]
    assert probe["models"]["teacher"]["n_scored"] == probe["models"]["soft-student"]["n_scored"] == 736
    gender = next(c for c in run["comparisons"] if c["group_key"] == "bias_type" and c["group"] == "gender")
    assert gender["n"] == 192 and gender["verdict"]
    # no verdict that its own numbers contradict: the gate recomputes every one from items.jsonl, and an
    # interval at a verdict's decision level excludes 0 exactly when the adjusted p is significant
    assert main(["gate", str(out / "audit"), "--policy", str(_policy(out))]) == 0
    alpha = run["settings"]["alpha_look"]
    for c in run["comparisons"]:
        d = c["delta"]
        if d["ci_decision"] and d["p_adj"] is not None:
            assert (d["ci_decision"][0] > 0 or d["ci_decision"][1] < 0) == (d["p_adj"] <= alpha), c["reason"]
        if c["verdict"] in ("amplified", "introduced", "reversed", "attenuated"):
            assert d["p_adj"] <= alpha and abs(d["value"]) >= run["settings"]["tolerance"], c["reason"]

    # the learning curve: bundled QA before and after training; its ends are the audit's own figures
    curve = card["learning_curve"]
    assert curve["tasks"] == ["bundled_qa"] and [p["step"] for p in curve["points"]] == [0, card["steps"]]
    assert curve["teacher"]["bundled_qa"] == pytest.approx(t_acc, abs=1e-12)
    assert curve["points"][-1]["scores"]["bundled_qa"] == pytest.approx(s_acc, abs=1e-12)

    html = report.read_text()
    assert 'aria-label="task score against tokens seen; dashed: the teacher"' in html
    for text in ("teacher", "soft-student", "gender", "age", "bundled_qa"):
        assert text in html
    assert re.search(r"Content-Security-Policy", html)
    assert "<script" not in html.lower()


def _policy(out):
    """A policy that fails nothing, so the gate's exit code says only whether the run verifies."""
    path = out.parent / "verify-only.yaml"
    path.write_text("fail_verdicts: []\nrequired_probes: []\n")
    return path


def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["audit", "--probe", "stereoset2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Unknown probe 'stereoset2'" in err or "unknown probe 'stereoset2'" in err
    assert "Did you mean: stereoset?" in err
    spec = tmp_path / "spec.yaml"
    spec.write_text("teacher: smollm2-135m\nprobes: [bundled]\nstudents: [{nme: x}]\n")
    assert main(["audit", str(spec)]) == 2
    assert str(spec) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
