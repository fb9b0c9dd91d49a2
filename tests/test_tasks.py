"""Task benchmarks run by lm-eval: our local tasks, task YAML from task_paths, groups, the metric
choice, lm-eval's --limit, and the checks made before anything is scored (tiny model: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.errors import InputError, SpecError
from audit.lm import make_lm
from audit.spec import AuditSpec
from audit.tasks import LOCAL_TASKS, TaskSpec, check_tasks, resolve_task, run_tasks

QUESTIONS = [("Is fire hot?", ["yes", "no"], 0), ("Is ice hot?", ["yes", "no"], 1),
             ("What colour is snow?", ["white", "black", "green"], 0), ("How many legs has a cat?", ["two", "four"], 1),
             ("Is the sea salty?", ["no", "yes"], 1), ("What do bees make?", ["honey", "milk", "iron"], 0)]


def write_mc_task(folder: Path, name: str, n: int = 6, *, group: str | None = None) -> Path:
    """A plain lm-eval multiple-choice YAML over a local JSONL (as a user would write it)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in (QUESTIONS * 4)[:n]))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n" + (f"tag: [{group}_tag]\n" if group else "")
        + f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\nmetric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")
    return data


def write_group(folder: Path, group: str, subtasks: list[str], *, weight_by_size: bool = True) -> None:
    (folder / f"{group}.yaml").write_text(
        f"group: {group}\ntask: [{', '.join(subtasks)}]\naggregate_metric_list:\n"
        f"  - metric: acc\n    aggregation: mean\n    weight_by_size: {str(weight_by_size).lower()}\n"
        "metadata:\n  version: 1.0\n")


def test_every_local_task_runs_through_lm_eval_with_per_item_scores(tiny, data_dir):
    lm = make_lm(tiny, backend="hflm", batch_size=16)
    results = run_tasks(lm, list(LOCAL_TASKS), data_dir=data_dir, limit=4)
    assert [r.task for r in results] == list(LOCAL_TASKS)
    for r in results:
        assert r.error is None, r.task
        assert r.metric == LOCAL_TASKS[r.task].metric
        assert sorted(r.scores) == ["0", "1", "2", "3"], r.task
        assert set(r.scores.values()) <= {0.0, 1.0}
        # lm-eval's own figure is the mean of the per-item scores bequeath keeps
        assert r.lm_eval_value == sum(r.scores.values()) / 4, r.task
        (data,) = r.data_files
        # the task reads the resolved file (data_dir may be reached through a symlink, as ../shared can be)
        assert Path(data).resolve().is_relative_to(Path(data_dir).resolve()) or r.task == "bundled_qa"


def test_a_yaml_task_from_task_paths_with_metric_choice_and_lm_eval_limit(tiny, tmp_path):
    write_mc_task(tmp_path / "t", "toy_mc", n=10)
    lm = make_lm(tiny, backend="engine")
    (acc,) = run_tasks(lm, ["toy_mc"], task_paths=[str(tmp_path / "t")], limit=7)
    (norm,) = run_tasks(lm, [TaskSpec(name="toy_mc", metric="acc_norm")], task_paths=[str(tmp_path / "t")], limit=7)
    assert acc.metric == "acc" and norm.metric == "acc_norm"  # lm-eval's first metric, else the chosen one
    assert sorted(acc.scores, key=int) == [str(i) for i in range(7)]  # lm-eval's --limit 7: docs 0..6
    assert acc.lm_eval_value == sum(acc.scores.values()) / 7
    assert norm.lm_eval_value == sum(norm.scores.values()) / 7
    # one YAML file (not its folder) works too: lm-eval loads it by path
    one = run_tasks(lm, ["toy_mc"], task_paths=[str(tmp_path / "t" / "toy_mc.yaml")], limit=3)[0]
    assert one.scores == {k: v for k, v in acc.scores.items() if int(k) < 3}


@pytest.mark.parametrize("weight_by_size", [True, False])
def test_a_group_reports_its_aggregate_and_subtasks(tiny, tmp_path, weight_by_size):
    folder = tmp_path / "g"
    write_mc_task(folder, "toy_a", n=6)
    write_mc_task(folder, "toy_b", n=3)
    write_group(folder, "toy_group", ["toy_a", "toy_b"], weight_by_size=weight_by_size)
    lm = make_lm(tiny, backend="engine")
    (r,) = run_tasks(lm, ["toy_group"], task_paths=[str(folder)])
    assert r.metric == "acc"  # the group's aggregate metric
    assert sorted(r.scores) == sorted([f"toy_a/{i}" for i in range(6)] + [f"toy_b/{i}" for i in range(3)])
    assert sorted(r.subtasks) == ["toy_a", "toy_b"]
    a = [v for k, v in r.scores.items() if k.startswith("toy_a/")]
    b = [v for k, v in r.scores.items() if k.startswith("toy_b/")]
    assert r.subtasks["toy_a"] == {"value": sum(a) / 6, "n": 6}
    assert r.subtasks["toy_b"] == {"value": sum(b) / 3, "n": 3}
    # lm-eval's own aggregate: size-weighted = the mean over all items; unweighted = mean of the means
    want = sum(a + b) / 9 if weight_by_size else (sum(a) / 6 + sum(b) / 3) / 2
    assert r.lm_eval_value == pytest.approx(want, abs=1e-12)
    assert resolve_task(TaskSpec(name="toy_group"), task_paths=(str(folder),)).weight_by_size is weight_by_size


def test_task_entries_are_validated_with_clear_errors(tmp_path):
    write_mc_task(tmp_path / "t", "toy_mc")
    ok = AuditSpec.from_dict({"tasks": ["bundled_qa", {"name": "toy_mc", "metric": "acc_norm"}],
                              "task_paths": [str(tmp_path / "t")]})
    assert ok.tasks == (TaskSpec(name="bundled_qa"), TaskSpec(name="toy_mc", metric="acc_norm"))
    assert ok.to_dict()["tasks"] == ["bundled_qa", {"name": "toy_mc", "metric": "acc_norm"}]
    with pytest.raises(SpecError) as exc:
        AuditSpec.from_dict({"tasks": [{"name": "toy_mc", "path": "x.yaml"}, {"metric": "acc"}, 3, "",
                                       {"name": "bundled_qa", "metric": 1}],
                             "task_paths": [str(tmp_path / "missing"), 5]})
    msg = str(exc.value)
    assert "7 problem(s)" in msg, msg
    assert "tasks[0]: unknown key 'path'" in msg and "task_paths: [DIR]" in msg
    assert "tasks[1].name: expected a task or group name" in msg
    assert "tasks[2]: expected a task name or a mapping" in msg and "tasks[3]: expected" in msg
    assert "tasks[4].metric: expected a metric name (e.g. acc_norm), got 1" in msg
    assert f"task_paths[0]: {tmp_path / 'missing'} not found" in msg
    assert "task_paths[1]: expected the path of a task YAML file or folder, got 5" in msg
    with pytest.raises(SpecError, match="unknown key 'metrc'. Did you mean: metric?"):
        AuditSpec.from_dict({"tasks": [{"name": "bundled_qa", "metrc": "acc"}]})
    with pytest.raises(SpecError, match="each task once"):
        AuditSpec.from_dict({"tasks": ["bundled_qa", {"name": "bundled_qa", "metric": "acc_norm"}]})


def test_unknown_task_names_suggest_from_ours_and_lm_eval(tmp_path):
    write_mc_task(tmp_path / "t", "toy_mc")
    with pytest.raises(SpecError, match="Unknown task 'toy_mx'. Did you mean: toy_mc?"):
        AuditSpec.from_dict({"tasks": ["toy_mx"], "task_paths": [str(tmp_path / "t")]})
    with pytest.raises(SpecError, match=r"Unknown task 'hellaswagg'. Did you mean: hellaswag\?.*lm_eval ls tasks"):
        AuditSpec.from_dict({"tasks": ["hellaswagg"]})
    spec = AuditSpec.from_dict({"tasks": ["piqa", "mmlu"]})  # lm-eval's catalogue: a task and a group
    assert [t.name for t in spec.tasks] == ["piqa", "mmlu"]


def test_offline_a_builtin_task_without_its_dataset_fails_before_scoring(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (problem,) = check_tasks(["piqa"])
    assert problem.startswith("task piqa: lm-eval could not load its dataset 'baber/piqa': it is not on disk")
    assert "HF_HUB_OFFLINE" in problem and "datasets.load_dataset('baber/piqa')" in problem
    assert "task_paths" in problem and "data_files" in problem
    (problem,) = check_tasks(["gsm8k"])  # a dataset with a config: the hint names both
    assert "its dataset 'openai/gsm8k (config main)'" in problem
    assert "datasets.load_dataset('openai/gsm8k', 'main')" in problem
    # through the audit: the preflight names it and nothing is scored (no model is even loaded)
    from audit.harness import run_audit

    spec = AuditSpec.from_dict({"teacher": {"name": "t", "path": str(tmp_path / "no-model")}, "probes": [],
                                "tasks": ["piqa"], "out": str(tmp_path / "run")})
    with pytest.raises(InputError, match="Nothing was scored") as exc:
        run_audit(spec, progress=False)
    assert "task piqa: lm-eval could not load its dataset 'baber/piqa'" in str(exc.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_metric_that_is_missing_or_not_per_item_is_refused_before_scoring(tmp_path):
    write_mc_task(tmp_path / "t", "toy_mc")
    (problem,) = check_tasks([TaskSpec(name="toy_mc", metric="acc_nrom")], task_paths=[str(tmp_path / "t")])
    assert "task toy_mc: no metric 'acc_nrom'. Did you mean: acc_norm? Its metrics: acc, acc_norm" in problem
    text = (tmp_path / "t" / "toy_mc.yaml").read_text().replace("metric: acc_norm\n    aggregation: mean",
                                                                 "metric: f1\n    aggregation: f1")
    (tmp_path / "f1").mkdir()
    (tmp_path / "f1" / "toy_f1.yaml").write_text(text.replace("task: toy_mc", "task: toy_f1"))
    (problem,) = check_tasks([TaskSpec(name="toy_f1", metric="f1")], task_paths=[str(tmp_path / "f1")])
    assert "metric 'f1' is aggregated over the whole corpus" in problem and "per-item metric" in problem
    assert problem.endswith("acc.")
    (problem,) = check_tasks(["boolq_local"])
    assert "data_dir" in problem


def test_an_audit_scores_a_yaml_task_and_records_it(tiny_model_dir, tmp_path):
    """The whole path: spec with task_paths and a metric, run.json's task record, items.jsonl rows."""
    from audit.harness import run_audit

    write_mc_task(tmp_path / "t", "toy_mc", n=8)
    spec = AuditSpec.from_dict({"teacher": {"name": "tiny", "path": str(tiny_model_dir)}, "probes": [],
                                "tasks": [{"name": "toy_mc", "metric": "acc_norm"}], "task_paths": [str(tmp_path / "t")],
                                "task_limit": 5, "out": str(tmp_path / "run"), "cache": str(tmp_path / "cache"),
                                "n_boot": 200})
    out, code = run_audit(spec, progress=False)
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    (doc,) = run["tasks"]
    assert doc["task"] == "toy_mc" and doc["metric"] == "acc_norm" and doc["n"] == 5 and doc["error"] is None
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    scores = {r["item"]: r["columns"]["acc_norm"] for r in rows if r.get("task") == "toy_mc"}
    assert sorted(scores) == ["0", "1", "2", "3", "4"]
    assert doc["scores"]["teacher"]["value"] == pytest.approx(sum(scores.values()) / 5)
    assert str((tmp_path / "t" / "toy_mc.jsonl").resolve()) in run["provenance"]["dataset_files"]


def test_ls_tasks_lists_ours_and_task_paths_and_says_how_to_list_lm_eval(tmp_path, capsys):
    from audit.cli import main

    write_mc_task(tmp_path, "toy_a")
    write_mc_task(tmp_path, "toy_b")
    write_group(tmp_path, "toy_group", ["toy_a", "toy_b"])
    assert main(["ls", "tasks", "--include-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bundled_qa" in out and "hellaswag_local" in out
    assert f"toy_group            group ({tmp_path / 'toy_group.yaml'})" in out
    assert f"toy_a                task ({tmp_path / 'toy_a.yaml'})" in out
    assert "lm_eval ls tasks" in out
    assert main(["ls", "tasks", "--include-path", str(tmp_path / "toy_b.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"toy_b                task ({tmp_path / 'toy_b.yaml'})" in out and "toy_a " not in out


def test_the_audit_command_takes_include_path(tiny_model_dir, tmp_path, capsys):
    from audit.cli import main

    write_mc_task(tmp_path / "t", "toy_mc", n=4)
    (tmp_path / "spec.yaml").write_text(f"probes: []\ncache: {tmp_path / 'cache'}\nn_boot: 200\n")
    code = main(["audit", str(tmp_path / "spec.yaml"), "--teacher", str(tiny_model_dir), "--task", "toy_mc",
                 "--include-path", str(tmp_path / "t"), "--out", str(tmp_path / "run")])
    assert code == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["spec"]["task_paths"] == [str(tmp_path / "t")]
    assert [(t["task"], t["metric"], t["n"]) for t in run["tasks"]] == [("toy_mc", "acc", 4)]
    capsys.readouterr()
    code = main(["gate", str(tmp_path / "run")])  # the gate re-reads the YAML task's data file and agrees
    out = capsys.readouterr().out
    assert "dataset files" in out and "1 data file(s): sha256 as recorded" in out, out
    assert code == 0, out


def test_a_seeded_random_sample_is_stratified_by_subtask_and_passed_to_lm_eval(tiny, tmp_path):
    from audit.tasks import sampled_docs

    folder = tmp_path / "g"
    write_mc_task(folder, "toy_a", n=12)
    write_mc_task(folder, "toy_b", n=3)
    write_group(folder, "toy_group", ["toy_a", "toy_b"])
    res = resolve_task(TaskSpec(name="toy_group"), task_paths=(str(folder),))
    assert res.leaves == ("toy_a", "toy_b") and res.n_docs == (12, 3)
    picked = sampled_docs(res, 4, seed=7)
    assert len(picked["toy_a"]) == 4 and picked["toy_b"] == [0, 1, 2]  # at most 4 from each subtask
    assert picked == sampled_docs(res, 4, seed=7) and picked["toy_a"] != sampled_docs(res, 4, seed=8)["toy_a"]
    lm = make_lm(tiny, backend="engine")
    (r,) = run_tasks(lm, ["toy_group"], task_paths=[str(folder)], limit=4, sampling="random", seed=7)
    assert sorted(r.scores) == sorted([f"toy_a/{d}" for d in picked["toy_a"]] + ["toy_b/0", "toy_b/1", "toy_b/2"])
    assert r.subtasks["toy_a"]["n"] == 4
    with pytest.raises(SpecError, match="task_sampling: expected one of first, random"):
        AuditSpec.from_dict({"task_sampling": "stratifed"})
    assert AuditSpec.from_dict({"task_sampling": "random", "task_limit": 5}).task_sampling == "random"


def test_a_generation_task_scores_with_its_first_filter_or_the_one_named(tiny, tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    data = folder / "toy_gen.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": c[a]}) + "\n" for q, c, a in QUESTIONS))
    (folder / "toy_gen.yaml").write_text(
        f"task: toy_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 3\n  do_sample: false\n"
        "filter_list:\n  - name: strict\n    filter:\n      - {function: regex, regex_pattern: \"(\\\\w+)\"}\n"
        "      - {function: take_first}\n  - name: loose\n    filter:\n      - {function: take_first}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
        "metadata:\n  version: 1.0\n")
    lm = make_lm(tiny, backend="engine")
    first, named = run_tasks(lm, ["toy_gen"], task_paths=[str(folder)]) + run_tasks(
        lm, [TaskSpec(name="toy_gen", metric="exact_match,loose")], task_paths=[str(folder)])
    assert first.metric == "exact_match,strict" and named.metric == "exact_match,loose"
    for r in (first, named):
        assert sorted(r.scores, key=int) == [str(i) for i in range(len(QUESTIONS))]
        assert r.lm_eval_value == sum(r.scores.values()) / len(QUESTIONS)
    (problem,) = check_tasks([TaskSpec(name="toy_gen", metric="exact_match,lose")], task_paths=[str(folder)])
    assert "no filter 'lose' in toy_gen. Did you mean: loose? Its filters: strict, loose." in problem
