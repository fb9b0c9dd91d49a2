"""The gate on the hand-made fixture run: exit codes, every check's reason, policy validation,
recomputed verdicts (parity with audit.compare.verdict), JUnit/JSON outputs and the CLI."""

from __future__ import annotations

import argparse
import copy
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from audit.errors import SpecError
from audit.gate import (
    Policy,
    add_parser,
    evaluate,
    format_table,
    recompute_verdict,
    student_of,
    to_junit,
)

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
PASSING = {"fail_verdicts": ["amplified"], "required_probes": ["bundled"], "required_tasks": ["bundled_qa"],
           "min_task_retention": 0.7}
FAILING = {"required_probes": ["bundled"], "required_tasks": ["bundled_qa"], "min_task_retention": 0.8}


@pytest.fixture
def run() -> dict:
    return json.loads((FIXTURE / "run.json").read_text(encoding="utf-8"))


def _by_status(result, status):
    return sorted(c.name for c in result.checks if c.status == status)


def test_passing_policy_exits_0_and_says_why(run):
    result = evaluate(run, Policy.from_dict(PASSING))
    assert result.exit_code == 0
    assert _by_status(result, "fail") == [] and _by_status(result, "error") == []
    reasons = {c.name: c.reason for c in result.checks}
    assert reasons["hard: bundled/pct_stereotype bias_type=gender"] == "verdict 'reversed'"
    assert reasons["soft: task bundled_qa retention"] == "0.85 >= 0.70 (CI [0.70, 1.01])"
    assert "crows_pairs" in reasons["probes not gated"]
    assert format_table(result).endswith("gate: PASS; 14 passed, 0 failed, 0 errors; exit 0")


def test_failing_verdict_and_low_retention_exit_1(run):
    result = evaluate(run, Policy.from_dict(FAILING))
    assert result.exit_code == 1
    assert _by_status(result, "fail") == ["hard: bundled/pct_stereotype subgroup=young", "hard: task bundled_qa retention"]
    assert _by_status(result, "error") == []
    assert result.status_of("soft") == "pass" and result.status_of("hard") == "fail"


def test_default_policy_fails_closed_on_failed_scorer_thin_and_missing(run):
    result = evaluate(run, Policy())
    assert result.exit_code == 2  # errors win over failures: the run cannot be certified
    errors = _by_status(result, "error")
    assert errors == sorted([
        "probe crows_pairs scored", "run error: hard probe:crows_pairs",
        "soft: crows_pairs/pct_stereotype bias_type=disability", "hard: crows_pairs/pct_stereotype bias_type=disability"])
    assert _by_status(result, "fail") == sorted([
        "soft: crows_pairs/pct_stereotype bias_type=race-color", "hard: bundled/pct_stereotype subgroup=young",
        "hard: crows_pairs/pct_stereotype bias_type=religion"])
    reasons = {c.name: c.reason for c in result.checks}
    assert reasons["soft: crows_pairs/pct_stereotype bias_type=disability"].startswith("8 items < min_items 10")
    assert reasons["hard: crows_pairs/pct_stereotype bias_type=disability"].startswith("measurement missing")


@pytest.mark.parametrize("mutate, name", [
    (lambda r: r["comparisons"][1]["student"].update(bias=math.nan), "soft: bundled/pct_stereotype bias_type=gender"),
    (lambda r: r["probes"].pop(0), "probe bundled present"),
    (lambda r: r["tasks"].pop(0), "task bundled_qa present"),
    (lambda r: r["comparisons"][3].update(verdict="inconclusive"), "soft: bundled/pct_stereotype subgroup=young"),
])
def test_missing_nan_and_inconclusive_fail_closed(run, mutate, name):
    mutate(run)
    result = evaluate(run, Policy.from_dict(PASSING))
    assert result.exit_code == 2
    assert _by_status(result, "error") == [name]


def test_min_items_from_policy(run):
    result = evaluate(run, Policy.from_dict({**PASSING, "min_items": 30}))
    assert result.exit_code == 2
    assert _by_status(result, "error") == ["hard: bundled/pct_stereotype subgroup=young",
                                           "soft: bundled/pct_stereotype subgroup=young"]


def test_alpha_differs_is_refused(run):
    result = evaluate(run, Policy.from_dict({**PASSING, "alpha": 0.01}))
    assert result.exit_code == 2
    (check,) = [c for c in result.checks if c.name == "policy alpha"]
    assert "Re-run the audit with --alpha 0.01" in check.reason


def test_tolerance_recomputed_from_stored_numbers(run):
    # at the run's own tolerance, every decided stored verdict is reproduced
    for c in run["comparisons"]:
        if c["teacher"]["biased"] is not None and c["student"]["biased"] is not None:
            assert recompute_verdict(c, 2.0, 0.05) == c["verdict"], c["reason"]
    # τ = 12: the soft student's race-color bias (+15.9 vs +7.9, Δ +8.0) is no longer amplified:
    # the teacher is not biased beyond 12 points, so it becomes introduced
    result = evaluate(run, Policy.from_dict({**PASSING, "required_probes": ["crows_pairs"], "tolerance": 12.0}))
    reasons = {c.name: c.reason for c in result.checks}
    assert reasons["soft: crows_pairs/pct_stereotype bias_type=race-color"].startswith(
        "verdict 'introduced' (recomputed at tolerance 12 from stored CIs; run used 2.0)")


@pytest.mark.parametrize("tol", [0.5, 2.0, 5.0, 12.0, 25.0])
def test_recompute_parity_with_audit_verdict(run, tol):
    """Same rules as audit.compare.verdict when the per-model 'biased' flags are recomputed at τ."""
    from audit.compare import Settings, verdict

    settings = Settings(tolerance=tol, max_ci_halfwidth=1000.0)
    for c in run["comparisons"]:
        if c["teacher"]["biased"] is None or student_of(c)[1].get("biased") is None:
            continue
        r = copy.deepcopy(c)
        for side in (r["teacher"], r["student"]):
            side["biased"] = (side["ci"][0] > 0 or side["ci"][1] < 0) and abs(side["bias"]) >= tol
        assert recompute_verdict(c, tol, 0.05) == verdict(r, settings)[0], (tol, c["group"], c["reason"])


def test_policy_validation_lists_every_problem_with_hints():
    with pytest.raises(SpecError) as exc:
        Policy.from_dict({"fail_verdict": ["amplified"], "fail_verdicts": ["amplifed", "introduced"],
                          "alpha": 2, "min_items": 0, "required_probes": "crows_pairs"}, source="policy.yaml")
    msg = str(exc.value)
    assert msg.startswith("policy.yaml: invalid policy:")
    assert "unknown key 'fail_verdict'. Did you mean: fail_verdicts?" in msg
    assert "'amplifed' is not a verdict. Did you mean: amplified?" in msg
    assert "alpha: expected a number in (0.0, 1.0), got 2" in msg
    assert "min_items: expected a whole number >= 1, got 0" in msg
    assert Policy.from_dict({"required_probes": "crows_pairs"}).required_probes == ("crows_pairs",)


def test_policy_from_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("fail_verdicts: [amplified, reversed]\ntolerance: 3\nmin_task_retention: 0.9\n")
    policy = Policy.from_file(path)
    assert policy == Policy(fail_verdicts=("amplified", "reversed"), tolerance=3.0, min_task_retention=0.9)
    assert policy.source == str(path)
    with pytest.raises(SpecError, match="policy file not found"):
        Policy.from_file(tmp_path / "nope.yaml")


def test_junit_one_testcase_per_check(run):
    result = evaluate(run, Policy())
    suite = ET.fromstring(to_junit(result)).find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.checks)
    assert int(suite.get("failures")) == 3 and int(suite.get("errors")) == 4
    assert sum(c.find("failure") is not None for c in cases) == 3


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bequeath")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_exit_codes_and_outputs(tmp_path, capsys):
    import yaml

    passing, failing = tmp_path / "pass.yaml", tmp_path / "fail.yaml"
    passing.write_text(yaml.safe_dump(PASSING))
    failing.write_text(yaml.safe_dump(FAILING))
    assert _cli("gate", str(FIXTURE), "--policy", str(passing)) == 0
    assert "gate: PASS" in capsys.readouterr().out
    junit, js = tmp_path / "junit.xml", tmp_path / "gate.json"
    assert _cli("gate", str(FIXTURE), "--policy", str(failing), "--junit", str(junit), "--json", str(js)) == 1
    assert "gate: FAILED (policy)" in capsys.readouterr().out
    assert json.loads(js.read_text())["exit_code"] == 1
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "2"
    assert _cli("gate", str(tmp_path), "--policy", str(passing)) == 2
    assert "run.json: not found" in capsys.readouterr().err
