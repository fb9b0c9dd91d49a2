"""An audit of the real teacher and its demo student on stratified subsets of every probe
and two task benchmarks, through the CLI, then report and gate on the stored run."""

from __future__ import annotations

import json

import pytest
import yaml

from audit.cli import main
from probes.registry import available

pytestmark = pytest.mark.slow

LIMITS = {"bundled": 6, "crows_pairs": 2, "stereoset": 3, "bbq": 2, "winobias": 3, "winogender": 3,
          "holisticbias": 4, "bold": 1}


def test_every_probe_and_two_tasks_on_the_real_teacher_and_student(tmp_path, demo_dir, data_dir, capsys):
    assert set(available()) <= set(LIMITS), "give every registered probe a small limit here"
    spec = {"teacher": {"name": "teacher", "path": "smollm2-135m"},
            "students": [{"name": "soft", "path": str(demo_dir / "student")}],
            "probes": [{"name": n, "limit": LIMITS[n]} for n in available()],
            "tasks": ["bundled_qa", "arc_easy_local"], "task_limit": 12, "data_dir": str(data_dir),
            "out": str(tmp_path / "run"), "n_boot": 300}
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(spec))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"fail_verdicts": ["amplified", "introduced"], "required_probes": ["bundled"],
                                      "required_tasks": ["bundled_qa"]}))
    code = main(["audit", str(path), "--policy", str(policy)])
    out = capsys.readouterr().out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    from audit.gate import Policy, evaluate

    assert code == evaluate(run, Policy.from_file(policy)).exit_code
    assert run["status"] == "complete", run["errors"]
    assert {p["probe"] for p in run["probes"]} == set(available())
    for p in run["probes"]:
        t, s = p["models"]["teacher"], p["models"]["soft"]
        assert t["error"] is None and s["error"] is None, p["probe"]
        assert t["n_scored"] + t["n_invalid"] >= 1 and s["n_scored"] >= 1, p["probe"]
    probes_compared = {c["probe"] for c in run["comparisons"]}
    assert probes_compared == set(available())
    for c in run["comparisons"]:
        assert c["student_name"] == "soft" and c["verdict"] and c["reason"]
    tasks = {t["task"]: t for t in run["tasks"]}
    assert tasks["bundled_qa"]["n"] == 12 and tasks["arc_easy_local"]["n"] == 12
    assert "soft" in tasks["arc_easy_local"]["retention"]
    # the gate printed its table, and its exit code is the audit's
    assert "gate:" in out
    # report from the stored run
    assert main(["report", str(tmp_path / "run"), "--format", "html,md,json,junit"]) == 0
    assert (tmp_path / "run" / "report.html").is_file()
