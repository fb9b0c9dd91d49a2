"""The audit spec: flat YAML of names and numbers, validated at the edge with all errors at once."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean, read_yaml, shown
from audit.lm import BACKENDS, redacted
from audit.models import ModelRef
from audit.tasks import SAMPLING, TaskSpec


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    name: str
    limit: int | None = None  # items per group (stratified on the probe's first group key), seeded
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AuditSpec:
    teacher: ModelRef
    students: tuple[ModelRef, ...] = ()
    probes: tuple[ProbeSpec, ...] = (ProbeSpec(name="bundled"),)
    tasks: tuple[TaskSpec, ...] = (TaskSpec(name="bundled_qa"),)
    task_limit: int | None = None  # lm-eval's --limit: the first N documents of each task (each subtask of a group)
    task_paths: tuple[str, ...] = ()  # lm-eval task YAML files or folders (lm-eval's --include_path)
    task_sampling: str = "first"  # with task_limit: "first" (lm-eval's --limit) or "random" (seeded, per subtask)
    data_dir: str | None = None
    out: str = "bequeath-out/audit"
    seed: int = 0
    n_boot: int = 1000
    alpha: float = 0.05
    tolerance: float = 3.0  # points; why 3: README "Choosing the tolerance" (bench/verdict_calibration.py)
    correction: str = "holm"
    min_items: int = 10
    min_clusters: int = 6
    n_perm: int = 9999
    until_decided: bool = False  # raise each probe's limit in steps until every required cell is decided
    max_items: int | None = None  # the largest per-group limit an adaptive audit may reach
    backend: str | dict[str, Any] = "engine"  # ours by name, or any lm-eval model type {name:, args:}
    batch_size: int = 32
    allow_skip: bool = False
    cache: str | None = None  # results cache directory; default $BEQUEATH_CACHE/results

    def __post_init__(self) -> None:  # code may give tasks as names, task_paths as a list
        object.__setattr__(self, "tasks", tuple(TaskSpec(name=t) if isinstance(t, str) else t for t in self.tasks))
        object.__setattr__(self, "task_paths", tuple(self.task_paths))

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(asdict(self), default=str))
        d["backend"] = redacted(self.backend)  # as run.json's settings record it: no api keys or tokens
        # a task without a chosen metric is written as its name, as users write it (and as before)
        d["tasks"] = [t["name"] if t["metric"] is None else t for t in d["tasks"]]
        return d

    def spec_hash(self) -> str:
        d = self.to_dict()
        d.pop("out", None)
        d.pop("cache", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> AuditSpec:
        raw = read_yaml(path, kind="spec",
                        missing=f"Spec file {path} not found. Give the path of a YAML audit spec (see README).")
        if raw is None:  # an empty file (or a bare null): every field's default
            raw = {}
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: the top level must be a mapping of fields (teacher:, students:, ...), "
                            f"got {type(raw).__name__} {shown(raw)}.")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "<flags>") -> AuditSpec:
        known = {f for f in cls.__dataclass_fields__}
        errors: list[str] = []
        for key in raw:
            if key not in known:
                errors.append(f"unknown field '{key}'.{did_you_mean(key, known)}")  # a key: bounded by the file
        kw: dict[str, Any] = {}
        try:
            kw["teacher"] = ModelRef.parse(raw.get("teacher", "smollm2-135m"), default_name="teacher")
        except SpecError as exc:  # ModelError is a BequeathError; collect it
            errors.append(f"teacher: {exc}")
        except Exception as exc:
            errors.append(f"teacher: {exc}")
        students = raw.get("students")
        if students is None:
            students = []
        if not isinstance(students, list):
            errors.append(f"students: expected a list of model directories or mappings, got {shown(students)}")
            students = []
        parsed = []
        for i, s in enumerate(students):
            try:
                parsed.append(ModelRef.parse(s))
            except Exception as exc:
                errors.append(f"students[{i}]: {exc}")
        names = [p.name for p in parsed] + ([kw["teacher"].name] if "teacher" in kw else [])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"students: model names must be unique, got {shown(dupes)} twice; give each a 'name'")
        kw["students"] = tuple(parsed)
        kw["probes"] = tuple(_probe_specs(raw.get("probes", ["bundled"]), errors))
        kw["task_paths"] = _task_paths(raw.get("task_paths"), errors)
        kw["tasks"] = tuple(_task_specs(raw.get("tasks", ["bundled_qa"]), errors))
        if raw.get("task_sampling") is not None:
            if raw["task_sampling"] not in SAMPLING:
                errors.append(f"task_sampling: expected one of {', '.join(SAMPLING)} (with task_limit: the first N "
                              f"documents, as lm-eval's --limit, or a seeded random N per task), got "
                              f"{shown(raw['task_sampling'])}.{did_you_mean(raw['task_sampling'], SAMPLING)}")
            else:
                kw["task_sampling"] = raw["task_sampling"]
        # strict types: a count is a whole number (true/1.5/"3" are refused), a rate a number
        for name, lo in (("task_limit", 1), ("seed", 0), ("n_boot", 1), ("min_items", 1), ("min_clusters", 1),
                         ("n_perm", 1), ("max_items", 1), ("batch_size", 1)):
            if raw.get(name) is not None:
                v = raw[name]
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    errors.append(f"{name}: expected a whole number >= {lo}, got {shown(v)}")
                else:
                    kw[name] = v
        for name in ("alpha", "tolerance"):
            if raw.get(name) is not None:
                v = raw[name]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    errors.append(f"{name}: expected a number, got {shown(v)}")
                elif isinstance(v, float) and not math.isfinite(v):
                    errors.append(f"{name}: expected a finite number, got {v!r}")
                else:
                    kw[name] = float(v)
        for name in ("data_dir", "out", "cache", "correction"):
            if raw.get(name) is not None:
                if not isinstance(raw[name], str) or not raw[name]:
                    errors.append(f"{name}: expected a non-empty text value, got {shown(raw[name])}")
                else:
                    kw[name] = raw[name]
        for name in ("allow_skip", "until_decided"):
            if name in raw:
                if not isinstance(raw[name], bool):
                    errors.append(f"{name}: expected true or false, got {shown(raw[name])}")
                else:
                    kw[name] = raw[name]
        if kw.get("until_decided") and not kw.get("max_items"):
            errors.append("max_items: until_decided needs the largest per-group limit, e.g. max_items: 400")
        if not kw.get("probes") and not kw.get("tasks") and "probes" not in [e.split(":")[0] for e in errors]:
            errors.append("probes, tasks: nothing to run; name at least one probe or task (e.g. probes: [bundled])")
        try:  # the statistical settings are checked here, before anything is scored
            settings_of(kw)
        except SpecError as exc:
            errors += [line.strip() for line in str(exc).splitlines()[1:-1]]
        if raw.get("backend") is not None:
            if (backend := _backend(raw["backend"], errors)) is not None:
                kw["backend"] = backend
        _check_names(kw, errors)
        if not errors and not isinstance(kw.get("backend", "engine"), str):
            errors += _backend_problems(kw, raw.get("data_dir"))
        if errors:
            raise SpecError(f"{source}: {len(errors)} problem(s) in the audit spec:\n  - " + "\n  - ".join(errors))
        return cls(**kw)


def settings_of(spec: AuditSpec | dict[str, Any], looks: tuple[float, ...] = ()) -> Any:
    """The audit.compare.Settings of a spec (or of the keyword arguments of one)."""
    from audit.compare import Settings

    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k)
    names = ("alpha", "tolerance", "n_boot", "n_perm", "correction", "min_items", "min_clusters", "seed")
    defaults = AuditSpec.__dataclass_fields__
    return Settings(**{n: get(n, defaults[n].default) for n in names}, looks=looks)


def _probe_specs(raw: Any, errors: list[str]) -> list[ProbeSpec]:
    if isinstance(raw, str):
        raw = [p.strip() for p in raw.split(",") if p.strip()]
    if not isinstance(raw, list):
        errors.append(f"probes: expected a list of probe names or mappings {{name:, limit:, ...}}, got {shown(raw)}")
        return []
    out = []
    for i, p in enumerate(raw):
        if isinstance(p, str):
            out.append(ProbeSpec(name=p))
        elif isinstance(p, dict) and isinstance(p.get("name"), str):
            opts = {k: v for k, v in p.items() if k not in ("name", "limit")}
            limit = p.get("limit")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                errors.append(f"probes[{i}].limit: expected a positive integer, got {shown(limit)}")
                limit = None
            if problems := _option_problems(p["name"], opts):
                errors += [f"probes[{i}]: {problem}" for problem in problems]
            out.append(ProbeSpec(name=p["name"], limit=limit, options=opts))
        else:
            errors.append(f"probes[{i}]: expected a name or a mapping with 'name', got {shown(p)}")
    names = [p.name for p in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"probes: each probe once, got {shown(dupes)} more than once (their comparisons would "
                      "share one key in run.json)")
    return out


_TASK_KEYS = ("name", "metric")


def _task_specs(raw: Any, errors: list[str]) -> list[TaskSpec]:
    """``tasks:``: names, or mappings {name:, metric:}; every malformed entry named, all at once."""
    if isinstance(raw, str):
        raw = [t.strip() for t in raw.split(",") if t.strip()]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        errors.append(f"tasks: expected a list of task names or mappings {{name:, metric:}}, got {shown(raw)}")
        return []
    out = []
    for i, t in enumerate(raw):
        if isinstance(t, str) and t:
            out.append(TaskSpec(name=t))
            continue
        if not isinstance(t, dict):
            errors.append(f"tasks[{i}]: expected a task name or a mapping {{name: hellaswag, metric: acc_norm}}, "
                          f"got {shown(t)}")
            continue
        bad = False
        for key in t:
            if key not in _TASK_KEYS:
                hint = (" A task's YAML file or folder goes in task_paths: [DIR] (lm-eval's --include_path), "
                        "its name in tasks." if key in ("path", "paths", "include_path", "yaml", "file") else "")
                errors.append(f"tasks[{i}]: unknown key {shown(key)}.{did_you_mean(key, _TASK_KEYS)} "
                              f"A task entry takes {', '.join(_TASK_KEYS)}.{hint}")
                bad = True
        name, metric = t.get("name"), t.get("metric")
        if not isinstance(name, str) or not name:
            errors.append(f"tasks[{i}].name: expected a task or group name (e.g. hellaswag), got {shown(name)}")
            bad = True
        if metric is not None and (not isinstance(metric, str) or not metric):
            errors.append(f"tasks[{i}].metric: expected a metric name (e.g. acc_norm), got {shown(metric)}")
            bad = True
        if not bad:
            out.append(TaskSpec(name=name, metric=metric))
    names = [t.name for t in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"tasks: each task once, got {shown(dupes)} more than once")
    return out


def _task_paths(raw: Any, errors: list[str]) -> tuple[str, ...]:
    """``task_paths:``: lm-eval task YAML files or folders that exist."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        errors.append(f"task_paths: expected a list of task YAML files or folders, got {shown(raw)}")
        return ()
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, str) or not p:
            errors.append(f"task_paths[{i}]: expected the path of a task YAML file or folder, got {shown(p)}")
        elif not Path(p).exists():
            errors.append(f"task_paths[{i}]: {p} not found (from {Path.cwd()}). Give an existing folder of "
                          "lm-eval task YAML files, or one .yaml file.")
        elif Path(p).is_file() and Path(p).suffix not in (".yaml", ".yml"):
            errors.append(f"task_paths[{i}]: {p} is not a .yaml file. Give a folder of lm-eval task YAML files, "
                          "or one .yaml file.")
        else:
            out.append(p)
    return tuple(out)


_PATH_OPTIONS = ("path", "data_dir", "stats")  # probe options that are file or directory paths


def _option_problems(name: str, opts: dict[Any, Any]) -> list[str]:
    """What is wrong with a probe entry's options, checked now rather than when the audit reaches the
    probe: unknown options, paths that are not text, values that cannot be recorded in run.json
    (a recursive YAML alias), and whatever the probe's constructor refuses (constructing reads no data)."""
    from audit.registry import available

    if name not in available("probes"):
        return []  # reported by _check_names
    problems = []
    for key, value in opts.items():
        if not isinstance(key, str):
            problems.append(f"unknown option '{key}' for probe '{name}'")
        elif key in _PATH_OPTIONS and value is not None and not (isinstance(value, str) and value):
            problems.append(f"option '{key}' of probe '{name}': expected a non-empty path, got {shown(value)}")
        else:
            try:
                json.dumps(value, default=str)
            except (ValueError, RecursionError):
                problems.append(f"option '{key}' of probe '{name}': recursive value (a YAML alias that "
                                "contains itself)")
    if problems:
        return problems
    import inspect

    from probes.registry import get_probe

    try:
        get_probe(name, **opts)
    except Exception as exc:  # noqa: BLE001 - any refusal of the options is the spec's problem
        cause = exc.__cause__ if isinstance(exc.__cause__, TypeError) else exc
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            factory = type(get_probe(name)).__init__
            params = [p for p in inspect.signature(factory).parameters if p != "self"]
            bad = [k for k in opts if k not in params]
            return [f"unknown option '{k}' for probe '{name}'.{did_you_mean(k, params)} "
                    f"Options: {', '.join(params) or '(none)'}" for k in bad]
        return [f"options of probe '{name}' refused: {str(exc)[:200]}"]
    return []


_BACKEND_KEYS = ("name", "args")


def _backend(raw: Any, errors: list[str]) -> str | dict[str, Any] | None:
    """``backend:``: ours by name (engine, hflm), or any lm-eval model type as a name or {name:, args:}.
    Ours stay a plain name; any other becomes {name, args}. The name is checked against lm-eval's registry."""
    from audit.lm import backend_class

    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        errors.append(f"backend: expected a name (engine, hflm, hf, vllm, ...) or a mapping {{name: hf, args: {{...}}}}, "
                      f"got {shown(raw)}")
        return None
    bad = False
    for key in raw:
        if key not in _BACKEND_KEYS:
            errors.append(f"backend: unknown key {shown(key)}.{did_you_mean(str(key), _BACKEND_KEYS)} A backend takes "
                          f"name (an lm-eval model type, or engine/hflm) and args (its model arguments).")
            bad = True
    name, args = raw.get("name"), raw.get("args")
    if not isinstance(name, str) or not name:
        errors.append(f"backend.name: expected a backend name (engine, hflm, or an lm-eval model type such as hf, "
                      f"vllm, local-completions), got {shown(name)}")
        return None
    if args is not None and not (isinstance(args, dict) and all(isinstance(k, str) and k for k in args)):
        errors.append(f"backend.args: expected a mapping of the model type's arguments (as lm-eval's --model_args), "
                      f"got {shown(args)}")
        return None
    if args and name in BACKENDS:
        errors.append(f"backend.args: '{name}' takes no args (it wraps the model bequeath loaded); for lm-eval's "
                      f"HFLM with arguments give {{name: hf, args: {{...}}}}")
        return None
    if name not in BACKENDS:
        try:
            backend_class(name)
        except SpecError as exc:
            errors.append(f"backend.name: {exc}")
            return None
    if bad:
        return None
    return name if name in BACKENDS else {"name": name, "args": dict(args or {})}


def _backend_problems(kw: dict[str, Any], data_dir: str | None) -> list[str]:
    """The probes and tasks the chosen backend cannot answer (a request type its lm-eval class lacks)."""
    from audit.lm import check_needs, probe_needs, task_needs
    from probes.registry import get_probe

    needs = {f"probe {p.name}": probe_needs(get_probe(p.name, **p.options)) for p in kw.get("probes", ())}
    for t in kw.get("tasks", ()):
        if types := _task_output_types(t, kw.get("task_paths", ()), data_dir):
            needs[f"task {t.name}"] = task_needs(types)
    try:
        check_needs(kw["backend"]["name"], needs)
    except SpecError as exc:
        return [f"backend: {exc}"]
    return []


def _task_output_types(entry: TaskSpec, task_paths: tuple[str, ...], data_dir: str | None) -> list[str]:
    """The output_type of each of a task's leaves (ours: multiple_choice); [] when it cannot be loaded
    (the preflight names why)."""
    from audit.tasks import all_tasks, resolve_task, task_manager

    if entry.name in all_tasks():
        return ["multiple_choice"]
    try:
        res = resolve_task(entry, task_paths=tuple(task_paths), data_dir=data_dir)
        loaded = task_manager(tuple(task_paths), defaults=res.defaults).load([res.load_as])
    except Exception:  # noqa: BLE001 - reported by the preflight with its dataset
        return []
    return [getattr(t, "OUTPUT_TYPE", None) or t.config.output_type for t in loaded["tasks"].values()]


def _check_names(kw: dict[str, Any], errors: list[str]) -> None:
    from audit.registry import unknown

    for p in kw.get("probes", ()):
        if problem := unknown("probes", p.name):
            errors.append(f"probes: {problem}")
    from audit.tasks import unknown_task

    for t in kw.get("tasks", ()):
        if problem := unknown_task(t.name, kw.get("task_paths", ())):
            errors.append(f"tasks: {problem}")
