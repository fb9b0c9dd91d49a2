"""The gate on audit runs written by the real audit code (tests/fixtures/make_run.py, fixture
``audit_runs``): the planted verdicts, exit codes and every check's reason, the default policy,
required probes and groups, undecided and tampered cells, run status and schema, tolerance
recomputed with audit.verdicts.decide, policy validation, JUnit/JSON outputs and the CLI."""

from __future__ import annotations

import argparse
import copy
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from audit.errors import RunDirError, SpecError
from audit.gate import Policy, add_parser, evaluate, format_table, load_run_json, to_json, to_junit
from audit.verdicts import decide

SOFT, HARD = "soft", "hard"
NO_FAIL = {"fail_verdicts": ["reversed"]}  # nothing in the fixture is reversed: only errors can stop it

# every verdict of the complete run at its own settings (tolerance 2, alpha 0.05, Holm)
VERDICTS = {
    SOFT: {"overall": "attenuated", "bias_type=age": "attenuated", "bias_type=disability": "unchanged",
           "bias_type=gender": "inherited", "bias_type=socioeconomic": "not detected",
           "subgroup=disabled": "inconclusive", "subgroup=female-dominated": "inherited",
           "subgroup=male-dominated": "inherited", "subgroup=non-disabled": "inconclusive",
           "subgroup=old": "inherited", "subgroup=poor": "inconclusive", "subgroup=wealthy": "inconclusive",
           "subgroup=young": "attenuated"},
    HARD: {"overall": "amplified", "bias_type=age": "inherited", "bias_type=disability": "introduced",
           "bias_type=gender": "amplified", "bias_type=socioeconomic": "inconclusive",
           "subgroup=disabled": "introduced", "subgroup=female-dominated": "inherited",
           "subgroup=male-dominated": "amplified", "subgroup=non-disabled": "introduced",
           "subgroup=old": "inherited", "subgroup=poor": "inconclusive", "subgroup=wealthy": "inconclusive",
           "subgroup=young": "inherited"},
}
HARD_FAILS = sorted(f"hard: bundled/pct_stereotype {w}" for w, v in VERDICTS[HARD].items()
                    if v in ("amplified", "introduced", "reversed"))
UNDECIDED = sorted(f"{s}: bundled/pct_stereotype {w}" for s in (SOFT, HARD) for w, v in VERDICTS[s].items()
                   if v == "inconclusive")


def check_name(student: str, where: str) -> str:
    return f"{student}: bundled/pct_stereotype {where}"


def where_of(c: dict) -> str:
    return "overall" if c["group_key"] == "all" else f"{c['group_key']}={c['group']}"


def cell(run: dict, student: str, where: str) -> dict:
    (c,) = [c for c in run["comparisons"] if c["student_name"] == student and where_of(c) == where]
    return c


@pytest.fixture(scope="module")
def stored(audit_runs) -> dict[str, dict]:
    return {k: json.loads((d / "run.json").read_text(encoding="utf-8")) for k, d in audit_runs.items()}


@pytest.fixture
def run(stored) -> dict:
    """The complete run, a fresh copy per test (tests change it)."""
    return copy.deepcopy(stored["complete"])


@pytest.fixture
def partial(stored) -> dict:
    return copy.deepcopy(stored["partial"])


def by_status(result, status: str) -> list[str]:
    return sorted(c.name for c in result.checks if c.status == status)


def reasons(result) -> dict[str, str]:
    return {c.name: c.reason for c in result.checks}


def write_run(folder: Path, run: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return folder


# ---------------------------------------------------------------- the fixture run itself


def test_the_fixture_is_a_real_schema_3_run(stored):
    run = stored["complete"]
    assert run["schema_version"] == 3 and run["status"] == "complete" and run["errors"] == []
    assert run["integrity"]["hmac_sha256"] is None and len(run["integrity"]["sha256"]) == 64  # unsigned
    assert [m["name"] for m in run["models"]] == ["teacher", SOFT, HARD]
    (probe,) = run["probes"]
    assert (probe["probe"], probe["n_total"], probe["group_keys"]) == ("bundled", 736, ["bias_type", "subgroup"])
    # the hard student's -inf log-likelihoods were marked invalid by the real scorer
    assert probe["models"][HARD] == {"n_scored": 656, "n_invalid": 80, "error": None}
    assert probe["models"][SOFT] == {"n_scored": 736, "n_invalid": 0, "error": None}
    assert len(run["comparisons"]) == 26
    assert run["settings"]["tolerance"] == 2.0 and run["settings"]["alpha"] == 0.05
    assert stored["partial"]["status"] == "partial"
    assert [(e["model"], e["stage"]) for e in stored["partial"]["errors"]] == [
        ("teacher", "task:arc_easy_local"), ("soft", "task:arc_easy_local"), ("hard", "probe:bundled"),
        ("hard", "task:arc_easy_local")]


def test_planted_verdicts_come_out(stored, make_run_module):
    run = stored["complete"]
    got = {(c["student_name"], c["group_key"], c["group"]): c["verdict"] for c in run["comparisons"]}
    assert {k: got[k] for k in make_run_module.EXPECTED} == make_run_module.EXPECTED
    assert {s: {where_of(c): c["verdict"] for c in run["comparisons"] if c["student_name"] == s}
            for s in (SOFT, HARD)} == VERDICTS
    thin = cell(run, HARD, "subgroup=wealthy")
    assert (thin["n"], thin["n_clusters"], thin["student"]["why"]) == (8, 4, "only 4 clusters (minimum 6)")
    assert thin["delta"]["tested"] is False and thin["delta"]["why"].startswith("only 4 clusters: the smallest")
    quiet = cell(run, SOFT, "bias_type=socioeconomic")
    assert (quiet["teacher"]["state"], quiet["student"]["state"]) == ("within tolerance", "within tolerance")


def test_teacher_figures_do_not_depend_on_the_student(stored):
    run = stored["complete"]
    for where in VERDICTS[SOFT]:
        assert cell(run, SOFT, where)["teacher"] == cell(run, HARD, where)["teacher"], where


def test_regenerating_gives_the_same_run(tmp_path, audit_runs, stored, make_run_module):
    again = make_run_module.make_run(tmp_path / "again")
    assert (again / "items.jsonl").read_bytes() == (audit_runs["complete"] / "items.jsonl").read_bytes()
    new = json.loads((again / "run.json").read_text(encoding="utf-8"))
    old = copy.deepcopy(stored["complete"])
    for doc in (new, old):
        doc.pop("created")
        doc["spec"].pop("out")
        doc.pop("integrity")  # over created and spec.out
    assert new == old


# ---------------------------------------------------------------- policies and exit codes


def test_no_policy_applies_the_default_policy(run):
    result = evaluate(run, Policy())
    assert result.policy.fail_verdicts == ("amplified", "introduced", "reversed")
    assert result.exit_code == 1
    assert by_status(result, "fail") == HARD_FAILS
    assert by_status(result, "error") == []
    assert by_status(result, "warning") == UNDECIDED
    assert result.status_of(SOFT) == "pass" and result.status_of(HARD) == "fail"
    r = reasons(result)
    assert r[check_name(HARD, "overall")].startswith("verdict 'amplified': teacher biased (+13.9 pts")
    assert r[check_name(SOFT, "overall")] == "verdict 'attenuated'"
    assert r[check_name(HARD, "subgroup=wealthy")] == "not evaluated: 8 items < min_items 10"
    assert r[check_name(SOFT, "subgroup=poor")].startswith("not evaluated: 'inconclusive': teacher undetermined")
    assert r["probe bundled scored"] == "scored by every model"
    assert format_table(result).endswith(
        "gate: FAILED (policy); 14 passed, 6 failed, 0 errors, 7 not evaluated, 0 not applicable; exit 1")


def test_passing_policy_exits_0_and_says_why(run):
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "required_tasks": ["bundled_qa"], "min_task_retention": 0.8}))
    assert result.exit_code == 0
    assert by_status(result, "fail") == [] and by_status(result, "error") == []
    r = reasons(result)
    assert r[check_name(HARD, "overall")] == "verdict 'amplified'"  # shown, not failed by this policy
    assert r["soft: task bundled_qa retention"] == "0.90 >= 0.80 (CI [0.78, 1.00])"
    assert r["hard: task bundled_qa retention"] == "0.83 >= 0.80 (CI [0.64, 1.04])"
    assert r["task bundled_qa"] == "scored on 48 items"
    assert format_table(result).endswith(
        "gate: PASS; 23 passed, 0 failed, 0 errors, 7 not evaluated, 0 not applicable; exit 0")


def test_low_retention_fails_only_that_student(run):
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "required_tasks": ["bundled_qa"], "min_task_retention": 0.85}))
    assert result.exit_code == 1
    assert by_status(result, "fail") == ["hard: task bundled_qa retention"]
    assert reasons(result)["hard: task bundled_qa retention"] == "0.83 < 0.85 (CI [0.64, 1.04])"
    assert result.status_of(SOFT) == "pass" and result.status_of(HARD) == "fail"


def test_required_probes_empty_means_none(run):
    result = evaluate(run, Policy.from_dict({"required_probes": []}))
    assert result.policy.required_probes == ()
    assert result.exit_code == 0
    assert [(c.name, c.status) for c in result.checks] == [("probes not gated", "pass")]
    assert reasons(result)["probes not gated"] == "not required by the policy: bundled (shown in the report only)"
    # absent means every probe of the run's spec
    assert Policy().required_probes is None and evaluate(run, Policy()).exit_code == 1


def test_unknown_required_probe_is_an_error_with_a_hint(run):
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "required_probes": ["bundeld"]}))
    assert result.exit_code == 2
    assert by_status(result, "error") == ["probe bundeld present"]
    assert reasons(result)["probe bundeld present"] == "required probe missing from the run Did you mean: bundled?"


def test_undecided_subgroup_is_a_warning_unless_require_groups(run):
    relaxed = evaluate(run, Policy.from_dict(NO_FAIL))
    assert relaxed.exit_code == 0 and by_status(relaxed, "warning") == UNDECIDED
    strict = evaluate(run, Policy.from_dict({**NO_FAIL, "require_groups": True}))
    assert strict.exit_code == 2
    assert by_status(strict, "error") == UNDECIDED and by_status(strict, "warning") == []
    assert reasons(strict)[check_name(HARD, "subgroup=wealthy")] == "not decided: 8 items < min_items 10"
    assert reasons(strict)[check_name(HARD, "bias_type=socioeconomic")].startswith(
        "not decided: 'inconclusive': teacher within tolerance")


def test_min_items_from_policy_marks_small_groups_not_evaluated(run):
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "min_items": 100}))
    assert result.exit_code == 0
    small = sorted(check_name(s, w) for s in (SOFT, HARD) for w in VERDICTS[s] if w.startswith("subgroup="))
    assert by_status(result, "warning") == sorted([*small, check_name(HARD, "bias_type=socioeconomic")])
    assert reasons(result)[check_name(SOFT, "subgroup=old")] == "not evaluated: 96 items < min_items 100"
    overall = evaluate(run, Policy.from_dict({**NO_FAIL, "min_items": 700}))
    assert overall.exit_code == 2
    assert reasons(overall)[check_name(HARD, "overall")] == "not decided: 656 items < min_items 700"


def test_undecided_overall_cell_is_an_error(run):
    c = cell(run, SOFT, "overall")
    c["student"].update(ci=None, ci_tost=None, state="undetermined", why="only 5 clusters (minimum 6)")
    c["delta"].update(p_adj=None, tested=False, ci_equiv=None)
    c["verdict"], c["reason"] = decide(c, tau=2.0, alpha=0.05)  # a run whose numbers are like this
    assert c["verdict"] == "inconclusive"
    result = evaluate(run, Policy.from_dict(NO_FAIL))
    assert result.exit_code == 2
    assert by_status(result, "error") == [check_name(SOFT, "overall")]
    assert reasons(result)[check_name(SOFT, "overall")].startswith(
        "not decided: 'inconclusive': teacher biased (+13.9 pts, 95% CI [9.6, 18.1]), student undetermined")


def test_fail_and_error_exit_1_listing_both_fail_first(run):
    result = evaluate(run, Policy.from_dict({"required_tasks": ["arc_easy_local"]}))
    assert result.exit_code == 1
    assert by_status(result, "fail") == HARD_FAILS
    assert by_status(result, "error") == ["task arc_easy_local present"]
    statuses = [c.status for c in result.checks]
    assert statuses[:7] == ["fail"] * 6 + ["error"]
    assert reasons(result)["task arc_easy_local present"] == "required task missing from the run"
    assert format_table(result).endswith(
        "gate: FAILED (policy); 14 passed, 6 failed, 1 errors, 7 not evaluated, 0 not applicable; exit 1")
    suite = ET.fromstring(to_junit(result)).find("testsuite")
    assert (suite.get("failures"), suite.get("errors")) == ("6", "1")


def test_tampered_verdict_is_an_error_naming_the_cell(run):
    cell(run, HARD, "overall")["verdict"] = "not detected"
    result = evaluate(run, Policy.from_dict(NO_FAIL))
    assert result.exit_code == 2
    assert by_status(result, "error") == [check_name(HARD, "overall")]
    assert reasons(result)[check_name(HARD, "overall")] == (
        "stored verdict 'not detected' is not what its own numbers give ('amplified'): "
        "the run was changed after the audit; re-run it")
    # under the default policy the other failures still win the exit code, and the tampering is listed
    default = evaluate(run, Policy())
    assert default.exit_code == 1
    assert by_status(default, "error") == [check_name(HARD, "overall")]
    assert by_status(default, "fail") == [n for n in HARD_FAILS if n != check_name(HARD, "overall")]


@pytest.mark.parametrize("mutate, name, reason", [
    (lambda r: cell(r, HARD, "overall")["delta"].update(value=None), check_name(HARD, "overall"),
     "stored verdict 'amplified' is not what its own numbers give ('inconclusive'): "
     "the run was changed after the audit; re-run it"),
    # a blanked student bias is missing evidence, whatever the other numbers say
    (lambda r: cell(r, SOFT, "overall")["student"].update(bias=None), check_name(SOFT, "overall"),
     "stored verdict 'attenuated' is not what its own numbers give ('inconclusive'): "
     "the run was changed after the audit; re-run it"),
    (lambda r: r["tasks"][0]["retention"][HARD].update(value=None), "hard: task bundled_qa retention",
     "retention missing"),
    (lambda r: r["probes"].pop(0), "probe bundled present", "required probe missing from the run"),
    (lambda r: r["tasks"].pop(0), "task bundled_qa present", "required task missing from the run"),
])
def test_missing_measurements_fail_closed(run, mutate, name, reason):
    mutate(run)
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "required_tasks": ["bundled_qa"], "min_task_retention": 0.5}))
    assert result.exit_code == 2
    assert by_status(result, "error") == [name]
    assert reasons(result)[name] == reason


def test_metric_undefined_for_both_models_is_not_applicable(run):
    c = cell(run, SOFT, "subgroup=poor")
    for side in ("teacher", "student"):
        c[side].update(value=None, bias=None, ci=None, ci_tost=None, state="undetermined")
    c["delta"].update(value=None, p=None, p_adj=None, ci=None, ci_equiv=None, ci_decision=None, tested=False)
    c["verdict"], c["reason"] = decide(c, tau=2.0, alpha=0.05)
    result = evaluate(run, Policy.from_dict(NO_FAIL))
    assert by_status(result, "n/a") == [check_name(SOFT, "subgroup=poor")]
    assert reasons(result)[check_name(SOFT, "subgroup=poor")] == (
        "not applicable: the metric is undefined on these items for both models")
    assert result.exit_code == 0
    assert format_table(result).endswith("gate: PASS; 20 passed, 0 failed, 0 errors, 6 not evaluated, 1 not applicable; exit 0")


@pytest.mark.parametrize("status", ["partial", "running", None])
def test_a_run_that_is_not_complete_is_an_error(run, status):
    if status is None:
        del run["status"]
    else:
        run["status"] = status
    result = evaluate(run, Policy.from_dict(NO_FAIL))
    assert result.exit_code == 2
    assert by_status(result, "error") == ["run complete"]
    assert reasons(result)["run complete"] == (
        f"run status is {status!r}, not 'complete': a partial run cannot pass; re-run the audit (it resumes "
        "from the cache)")


def test_the_partial_run_is_an_error_with_the_failed_scorer(partial):
    result = evaluate(partial, Policy())
    assert result.exit_code == 2
    assert by_status(result, "fail") == []
    assert by_status(result, "error") == sorted(
        ["run complete", "probe bundled scored", "run error: hard probe:bundled", check_name(HARD, "overall")])
    r = reasons(result)
    oom = partial["errors"][2]["message"]
    assert oom.startswith("RuntimeError: CUDA out of memory")
    assert r["probe bundled scored"] == f"hard: {oom}" and r["run error: hard probe:bundled"] == oom
    assert r[check_name(HARD, "overall")] == "not decided: 0 items < min_items 10"
    # a task the policy leaves out does not stop the run; the same task required does
    assert r["run error: soft task:arc_easy_local"].endswith("; not required by the policy")
    required = evaluate(partial, Policy.from_dict({"required_tasks": ["arc_easy_local"]}))
    assert "run error: soft task:arc_easy_local" in by_status(required, "error")
    assert reasons(required)["task arc_easy_local"].startswith("task failed: SpecError: Task 'arc_easy_local'")
    assert result.status_of(SOFT) == "error"  # a run-wide error concerns every student


def test_alpha_differs_is_refused(run):
    result = evaluate(run, Policy.from_dict({**NO_FAIL, "alpha": 0.01}))
    assert result.exit_code == 2
    assert by_status(result, "error") == ["policy alpha"]
    assert reasons(result)["policy alpha"] == (
        "policy alpha 0.01 differs from the run's 0.05; stored CIs are at the run's level and cannot be "
        "recomputed. Re-run the audit with --alpha 0.01.")


def test_tolerance_recomputes_verdicts_with_decide(run):
    # at τ = 12 the hard student's overall Δ (+11.3) is no longer a significant change beyond τ: both
    # models are still biased beyond 12 points, so 'amplified' becomes 'inherited'; the soft student's
    # Δ −5.3 has its equivalence interval inside ±12 while it is no longer biased: 'unchanged'
    result = evaluate(run, Policy.from_dict({"tolerance": 12}))
    r = {c.name: c for c in result.checks}
    hard, soft = r[check_name(HARD, "overall")], r[check_name(SOFT, "overall")]
    assert (hard.status, soft.status) == ("pass", "pass")
    assert hard.reason == "verdict 'inherited' (at tolerance 12; the run used 2.0)"
    assert soft.reason == "verdict 'unchanged' (at tolerance 12; the run used 2.0)"
    for name, student in ((hard, HARD), (soft, SOFT)):
        expected = decide(cell(run, student, "overall"), tau=12.0, alpha=0.05)[0]
        assert name.reason.startswith(f"verdict '{expected}'")
    assert cell(run, HARD, "overall")["verdict"] == "amplified"  # the stored run is not changed
    assert by_status(result, "fail") == [n for n in HARD_FAILS if n != check_name(HARD, "overall")]
    assert reasons(result)[check_name(HARD, "bias_type=gender")].startswith(
        "verdict 'amplified' (at tolerance 12; the run used 2.0): teacher biased (+30.2 pts")


# ---------------------------------------------------------------- the policy file


def test_policy_validation_lists_every_problem_with_hints():
    with pytest.raises(SpecError) as exc:
        Policy.from_dict({"fail_verdict": ["amplified"], "fail_verdicts": ["amplifed", "introduced"],
                          "alpha": 2, "min_items": 0, "require_groups": "yes", "required_probes": [3]},
                         source="policy.yaml")
    msg = str(exc.value)
    assert msg.startswith("policy.yaml: invalid policy:")
    assert "unknown key 'fail_verdict'. Did you mean: fail_verdicts?" in msg
    assert "'amplifed' is not a verdict. Did you mean: amplified?" in msg
    assert "alpha: expected a number in (0.0, 1.0), got 2" in msg
    assert "min_items: expected a whole number >= 1, got 0" in msg
    assert "require_groups: expected true or false, got 'yes'" in msg
    assert "required_probes: expected a list of names, got [3]" in msg
    assert msg.count("\n  - ") == 6
    assert Policy.from_dict({"required_probes": "bundled"}).required_probes == ("bundled",)
    assert Policy.from_dict({"fail_verdicts": ["not detected"]}).fail_verdicts == ("not detected",)


def test_policy_from_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("fail_verdicts: [amplified, reversed]\ntolerance: 3\nmin_task_retention: 0.9\n"
                    "required_probes: []\nrequire_groups: true\n")
    policy = Policy.from_file(path)
    assert policy == Policy(fail_verdicts=("amplified", "reversed"), tolerance=3.0, min_task_retention=0.9,
                            required_probes=(), require_groups=True)
    assert policy.source == str(path)
    with pytest.raises(SpecError, match="policy file not found"):
        Policy.from_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("fail_verdicts: [amplified\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        Policy.from_file(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- outputs and the CLI


def test_junit_and_json_one_entry_per_check(run):
    result = evaluate(run, Policy())
    suite = ET.fromstring(to_junit(result)).find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.checks) == 27
    assert (suite.get("failures"), suite.get("errors")) == ("6", "0")
    failed = sorted(c.get("name") for c in cases if c.find("failure") is not None)
    assert failed == HARD_FAILS
    assert {c.get("classname") for c in cases} == {"bequeath.gate.run", "bequeath.gate.soft", "bequeath.gate.hard"}
    doc = to_json(result)
    assert doc["exit_code"] == 1 and doc["policy_source"] == "<default policy>"
    assert Counter(c["status"] for c in doc["checks"]) == {"pass": 14, "fail": 6, "warning": 7}


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bequeath")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_exit_codes_and_outputs(tmp_path, audit_runs, capsys):
    import yaml

    complete = str(audit_runs["complete"])
    junit, js = tmp_path / "junit.xml", tmp_path / "gate.json"
    assert _cli("gate", complete, "--junit", str(junit), "--json", str(js)) == 1  # no --policy: the default
    assert "gate: FAILED (policy)" in capsys.readouterr().out
    assert json.loads(js.read_text())["policy_source"] == "<default policy>"
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "6"
    passing = tmp_path / "pass.yaml"
    passing.write_text(yaml.safe_dump(NO_FAIL))
    assert _cli("gate", complete, "--policy", str(passing)) == 0
    assert "gate: PASS" in capsys.readouterr().out
    assert _cli("gate", str(audit_runs["partial"]), "--policy", str(passing)) == 2
    assert "gate: ERROR / insufficient evidence (fail closed)" in capsys.readouterr().out
    assert _cli("gate", str(tmp_path), "--policy", str(passing)) == 2
    assert "run.json: not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("fail_verdicts: [amplifed]\n")
    assert _cli("gate", complete, "--policy", str(bad)) == 2
    assert "Did you mean: amplified?" in capsys.readouterr().err


def test_schema_1_run_is_refused_with_a_re_run_hint(tmp_path, run, capsys):
    run["schema_version"] = 1
    folder = write_run(tmp_path / "old", run)
    with pytest.raises(RunDirError) as exc:
        load_run_json(folder)
    msg = str(exc.value)
    assert "schema_version: expected 3, got 1" in msg and "re-run the audit" in msg
    assert _cli("gate", str(folder)) == 2
    assert "schema_version: expected 3, got 1" in capsys.readouterr().err
    run["schema_version"] = 2
    write_run(folder, run)
    with pytest.raises(RunDirError, match=r"schema_version: expected 3, got 2\. Runs of schema 2 carry no "
                       r"integrity block.*re-run the audit"):
        load_run_json(folder)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_run_json(folder)



def test_audit_prints_a_one_screen_verdict_summary(audit_runs):
    from audit.cli import verdict_summary

    run = json.loads((audit_runs["complete"] / "run.json").read_text())
    text = verdict_summary(run).splitlines()
    assert text[0].startswith("verdicts")
    soft = next(line for line in text if line.strip().startswith("soft / bundled"))
    hard = next(line for line in text if line.strip().startswith("hard / bundled"))
    assert "pct_stereotype attenuated" in soft and "pct_stereotype amplified" in hard
    n_soft = sum(1 for c in run["comparisons"] if c["student_name"] == "soft")
    counts = [int(part.rsplit(" ", 1)[1]) for part in soft.split("(", 1)[1].rstrip(")").split(", ")]
    assert sum(counts) == n_soft  # every cell counted once
    assert len(text) == 3


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _gate_json(tmp_path, folder, *extra):
    out = tmp_path / f"gate-{folder.name}.json"
    code = _cli("gate", str(folder), "--policy", str(_no_fail_policy(tmp_path)), "--json", str(out), *extra)
    return code, {c["name"]: c for c in json.loads(out.read_text())["checks"]} if out.exists() else {}


def _no_fail_policy(tmp_path):
    import yaml

    path = tmp_path / "no_fail.yaml"
    path.write_text(yaml.safe_dump(NO_FAIL))
    return path


def test_an_untouched_run_is_verified_from_its_items(tmp_path, audit_runs):
    code, checks = _gate_json(tmp_path, _copy_run(audit_runs["complete"], tmp_path / "ok"))
    assert code == 0
    assert checks["items.jsonl verified"]["status"] == "pass"
    assert "recomputed from items.jsonl agree" in checks["items.jsonl verified"]["reason"]


def test_a_changed_items_file_is_caught_by_its_hash(tmp_path, audit_runs):
    folder = _copy_run(audit_runs["complete"], tmp_path / "items-changed")
    lines = (folder / "items.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["columns"]["stereotyped"] = 1.0 - row["columns"]["stereotyped"]
    (folder / "items.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    code, checks = _gate_json(tmp_path, folder)
    assert code == 2 and checks["items.jsonl verified"]["status"] == "error"
    assert "differs from the" in checks["items.jsonl verified"]["reason"]


def test_items_changed_with_a_matching_hash_are_caught_by_recomputation(tmp_path, audit_runs):
    """A doctored file whose author also updated the recorded hash: the numbers no longer agree."""
    from probes.files import sha256_file

    folder = _copy_run(audit_runs["complete"], tmp_path / "doctored")
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    for r in rows:  # the hard student now copies the teacher's choices on every gender item
        if r["model"] == HARD and r.get("groups", {}).get("bias_type") == "gender":
            r["columns"]["stereotyped"] = 0.0
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = json.loads((folder / "run.json").read_text())
    run["items_sha256"] = sha256_file(folder / "items.jsonl")
    (folder / "run.json").write_text(json.dumps(run))
    code, checks = _gate_json(tmp_path, folder)
    assert code == 2
    reason = checks["items.jsonl verified"]["reason"]
    assert "run.json disagrees with its items" in reason and "hard/bundled/pct_stereotype/" in reason


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "items.jsonl").unlink(), "items.jsonl: not found"),
    (lambda f: (f / "items.jsonl").write_text("{not json\n"), "items.jsonl:1: not valid JSON"),
    (lambda f: (f / "items.jsonl").write_bytes(b"\xff\xfe garbage\n"), "not UTF-8"),
])
def test_a_missing_or_garbage_items_file_is_exit_2_with_a_message(tmp_path, audit_runs, capsys, damage, message):
    folder = _copy_run(audit_runs["complete"], tmp_path / "damaged")
    damage(folder)
    assert _cli("gate", str(folder), "--policy", str(_no_fail_policy(tmp_path))) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- issue 15: tampered or incomplete runs


def _redigest(folder: Path) -> None:
    """run.json's integrity digest recomputed (audit.run_format.integrity_of), as an editor who knows the
    format would: what catches the edit is then the gate's own checks, not the digest."""
    from audit.run_format import integrity_of

    doc = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    doc["integrity"] = integrity_of(doc)
    (folder / "run.json").write_text(json.dumps(doc), encoding="utf-8")


def _edit(fn):
    def apply(folder: Path) -> None:
        doc = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        fn(doc)
        (folder / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    return apply


def _drop_student(run: dict, name: str) -> None:
    """A student removed from everywhere run.json names it (its rows stay in items.jsonl)."""
    from audit.gate import spec_hash_of

    run["models"] = [m for m in run["models"] if m["name"] != name]
    run["spec"]["students"] = [s for s in run["spec"]["students"] if s["name"] != name]
    run["provenance"]["spec_hash"] = spec_hash_of(run["spec"])
    run["comparisons"] = [c for c in run["comparisons"] if c["student_name"] != name]
    for p in run["probes"]:
        p["models"].pop(name)
        p["breakdown"].pop(name, None)
    for t in run["tasks"]:
        t["scores"].pop(name)
        t["retention"].pop(name)


def _all_verdicts(run: dict, verdict: str) -> None:
    for c in run["comparisons"]:
        c["verdict"] = verdict


TAMPERED = [  # (id, edit of the run folder, what the gate must say): issue 15's "gate exits 0 on 15 runs"
    ("status-partial", _edit(lambda r: r.update(status="partial")), "run status is 'partial', not 'complete'"),
    ("status-running", _edit(lambda r: r.update(status="running")), "status: expected one of 'complete', 'partial'"),
    ("status-removed", _edit(lambda r: r.pop("status")), "status: missing"),
    ("comparisons-removed", _edit(lambda r: r.update(comparisons=[])), "missing from run.json"),
    ("a-comparison-removed", _edit(lambda r: r["comparisons"].pop(0)), "missing from run.json"),
    ("a-students-comparisons-removed", _edit(lambda r: r.update(
        comparisons=[c for c in r["comparisons"] if c["student_name"] != HARD])), "hard/bundled/pct_stereotype/all/all: missing"),
    ("a-student-removed-from-models", _edit(lambda r: r["models"].pop(2)), "a row for hard/bundled, which this run does not hold"),
    ("a-student-removed-everywhere", _edit(lambda r: _drop_student(r, HARD)), "a row for hard/bundled, which this run does not hold"),
    ("a-verdict-not-detected", _edit(lambda r: cell(r, HARD, "overall").update(verdict="not detected")),
     "stored verdict 'not detected' is not what its own numbers give ('amplified')"),
    ("every-verdict-not-detected", _edit(lambda r: _all_verdicts(r, "not detected")),
     "stored verdict 'not detected' is not what its own numbers give"),
    ("an-unknown-verdict", _edit(lambda r: cell(r, SOFT, "overall").update(verdict="fine")), "verdict: expected one of"),
    ("an-empty-verdict", _edit(lambda r: cell(r, SOFT, "overall").update(verdict="")), "verdict: expected one of"),
    ("items-missing", lambda f: (f / "items.jsonl").unlink(), "items.jsonl: not found"),
    ("items-not-json", lambda f: (f / "items.jsonl").write_text("{not json\n"), "items.jsonl:1: not valid JSON"),
    ("items-not-utf8", lambda f: (f / "items.jsonl").write_bytes(b"\xff\xfe garbage\n"), "not UTF-8"),
]


@pytest.mark.parametrize("damage, says", [pytest.param(d, s, id=i) for i, d, s in TAMPERED])
@pytest.mark.parametrize("redigest", [False, True], ids=["as-edited", "digest-re-recorded"])
def test_a_tampered_or_incomplete_run_exits_2_saying_why(tmp_path, audit_runs, capsys, monkeypatch, damage, says,
                                                          redigest):
    """Issue 15's 15 runs the gate passed: each exits 2 naming what is wrong, both when the editor left
    the integrity digest as it was (the digest says so) and when it recomputed it (the gate's own checks
    say what); the passing policy is used so that only the tampering can stop the run."""
    monkeypatch.delenv("BEQUEATH_SIGNING_KEY", raising=False)
    folder = _copy_run(audit_runs["complete"], tmp_path / "tampered")
    damage(folder)
    if redigest:
        _redigest(folder)
    assert _cli("gate", str(folder), "--policy", str(_no_fail_policy(tmp_path))) == 2
    got = capsys.readouterr()
    text = got.out + got.err
    assert says in text or (not redigest and "is not the digest of run.json" in text), text[-3000:]


def test_an_untouched_run_passes_and_a_re_serialised_one_too(tmp_path, audit_runs, monkeypatch):
    """The digest is over the canonical JSON: the same document laid out otherwise still verifies."""
    monkeypatch.delenv("BEQUEATH_SIGNING_KEY", raising=False)
    folder = _copy_run(audit_runs["complete"], tmp_path / "layout")
    doc = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    (folder / "run.json").write_text(json.dumps(dict(reversed(list(doc.items()))), indent=4), encoding="utf-8")
    code, checks = _gate_json(tmp_path, folder)
    assert code == 0
    assert checks["run.json integrity"]["status"] == "pass"
    assert checks["run.json integrity"]["reason"].startswith("digest of run.json verified; the run is not signed")
    assert checks["probe bundled rows re-derived"]["status"] == "pass"
    assert checks["dataset files"]["status"] == "pass"


def test_a_changed_run_json_is_caught_by_its_digest(tmp_path, audit_runs, monkeypatch):
    monkeypatch.delenv("BEQUEATH_SIGNING_KEY", raising=False)
    folder = _copy_run(audit_runs["complete"], tmp_path / "edited")
    _edit(lambda r: r["models"][1].update(source="another/model"))(folder)
    code, checks = _gate_json(tmp_path, folder)
    assert code == 2
    assert checks["run.json integrity"]["status"] == "error"
    assert "is not the digest of run.json" in checks["run.json integrity"]["reason"]


@pytest.fixture(scope="module")
def signed_run(make_run_module, tmp_path_factory) -> Path:
    """The fixture run, signed by write_run with the key b"gate-test-key"."""
    return make_run_module.make_run(tmp_path_factory.mktemp("signed") / "run", signing_key=b"gate-test-key")


def test_a_signed_run_is_verified_with_its_key(tmp_path, signed_run, monkeypatch):
    doc = json.loads((signed_run / "run.json").read_text(encoding="utf-8"))
    assert len(doc["integrity"]["hmac_sha256"]) == 64
    monkeypatch.setenv("BEQUEATH_SIGNING_KEY", "gate-test-key")
    code, checks = _gate_json(tmp_path, _copy_run(signed_run, tmp_path / "ok"))
    assert code == 0 and checks["run.json integrity"]["reason"] == "digest and signature of run.json verified"
    monkeypatch.setenv("BEQUEATH_SIGNING_KEY", "another key")
    code, checks = _gate_json(tmp_path, _copy_run(signed_run, tmp_path / "other-key"))
    assert code == 2 and checks["run.json integrity"]["reason"].startswith("integrity.hmac_sha256 does not match")
    monkeypatch.delenv("BEQUEATH_SIGNING_KEY")
    code, checks = _gate_json(tmp_path, _copy_run(signed_run, tmp_path / "no-key"))
    assert code == 0 and checks["run.json integrity"]["status"] == "warning"
    assert "the signature was not checked" in checks["run.json integrity"]["reason"]
    code, checks = _gate_json(tmp_path, _copy_run(signed_run, tmp_path / "required"), "--require-signature")
    assert code == 2 and "no key is set" in checks["run.json integrity"]["reason"]


@pytest.mark.parametrize("edit", [
    lambda r: r["models"][1].update(content_hash="0" * 64),
    lambda r: r["models"][0].update(source="another/model"),
    lambda r: r["models"][2].update(n_params=1),
    lambda r: r["models"][1].update(card={}),
    lambda r: r["provenance"].update(python="3.99.0"),
    lambda r: r["integrity"].update(hmac_sha256=None),
], ids=["content_hash", "source", "n_params", "card", "provenance-python", "signature-removed"])
def test_what_only_the_signature_protects_is_caught_on_a_signed_run(tmp_path, signed_run, monkeypatch, edit):
    """An editor who recomputes the plain digest after changing a model's identity: with the key the gate
    refuses it; the signature it cannot forge is what tells."""
    from audit.run_format import integrity_of

    folder = _copy_run(signed_run, tmp_path / "forged")
    doc = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    hmac_before = doc["integrity"]["hmac_sha256"]
    edit(doc)
    if doc["integrity"]["hmac_sha256"] is not None:
        doc["integrity"] = {"sha256": integrity_of(doc)["sha256"], "hmac_sha256": hmac_before}
    else:
        doc["integrity"] = integrity_of(doc)  # an unsigned run made of a signed one
    (folder / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setenv("BEQUEATH_SIGNING_KEY", "gate-test-key")
    code, checks = _gate_json(tmp_path, folder)
    assert code == 2 and checks["run.json integrity"]["status"] == "error"
    assert checks["run.json integrity"]["reason"].startswith(
        ("integrity.hmac_sha256 does not match", "run.json is not signed, and BEQUEATH_SIGNING_KEY is set"))


def test_rows_whose_probe_data_cannot_be_read_fail_closed_unless_the_run_is_signed(tmp_path, monkeypatch, audit_runs,
                                                                                   signed_run):
    """Without the probe's data the rows' requests and columns cannot be re-derived: an error on an unsigned
    run (nothing vouches for its rows), a warning on a run whose signature the gate verified."""
    import audit.gate as gate
    from probes.bundled import BundledProbe

    def unreadable(self, data_dir, *, allow_skip=False):
        raise FileNotFoundError("bundled_templates.jsonl: gone")

    monkeypatch.setattr(BundledProbe, "load", unreadable)
    monkeypatch.delenv("BEQUEATH_SIGNING_KEY", raising=False)
    run, rows = gate.load_run(audit_runs["complete"])
    (check,) = [c for c in gate.verify(run, rows, run["items_sha256"]) if c.name == "probe bundled rows re-derived"]
    assert check.status == "error" and "its data cannot be read here (FileNotFoundError" in check.reason
    run, rows = gate.load_run(signed_run)
    checks = {c.name: c for c in gate.verify(run, rows, run["items_sha256"], key=b"gate-test-key")}
    assert checks["run.json integrity"].status == "pass"
    assert checks["probe bundled rows re-derived"].status == "warning"
    assert "the run's verified signature vouches for its items" in checks["probe bundled rows re-derived"].reason
