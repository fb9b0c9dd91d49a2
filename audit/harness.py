"""Run an audit: every model once through every probe and task, then paired statistics.

Models are loaded one at a time (at most one model's weights live at once) and shared by
the probes and tasks. Per-item results go through the results cache, so a re-run or a
second student against an audited teacher costs only the new model. ``run.json`` and
``items.jsonl`` are written atomically.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from audit import parallel
from audit.compare import ALL
from audit.errors import BequeathError, InputError
from audit.models import LoadedModel, ModelRef, cache_dir, load_model
from audit.spec import AuditSpec
from audit.store import (
    SCHEMA_VERSION,
    ResultsCache,
    digest,
    now,
    prepare_run_dir,
    provenance,
    write_atomic,
    write_jsonl,
)
from probes.base import ProbeError, ProbeItem, stratified_sample
from probes.files import sha256_file
from probes.registry import get_probe


@dataclass(frozen=True, kw_only=True)
class PreparedProbe:
    name: str
    probe: Any
    items: list[ProbeItem]
    n_total: int
    n_skipped: int
    files: dict[str, str]
    limit: int | None


def _prepare_probes(spec: AuditSpec, *, limit: int | None = None) -> list[PreparedProbe]:
    """Each probe's items, sampled at its own limit (or at ``limit``, an adaptive look's, when given)."""
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    out = []
    for ps in spec.probes:
        probe = get_probe(ps.name, **ps.options)
        loaded = probe.load(data_dir, allow_skip=spec.allow_skip)
        n = limit or ps.limit
        items = stratified_sample(loaded.items, by=probe.group_keys[:1], limit=n, seed=spec.seed)
        if not items:
            raise ProbeError(f"Probe '{ps.name}' yielded no items (after sampling with limit {n}).")
        out.append(PreparedProbe(name=ps.name, probe=probe, items=items, n_total=len(loaded.items),
                                 n_skipped=loaded.n_skipped, files=dict(loaded.files), limit=n))
    return out


def _tokenizer_hash(tok: Any) -> str:
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()


def _result_row(r: Any) -> dict[str, Any]:
    return {"item": r.item_id, "columns": r.columns, "text": r.text, "invalid": r.invalid,
            "answers": [[a.loglik, a.is_greedy, a.n_tokens] for a in (r.answers or [])]}


def _score_model(loaded: LoadedModel, spec: AuditSpec, probes: list[PreparedProbe], cache: ResultsCache,
                 errors: list[dict]) -> dict[str, Any]:
    """All probe and task results of one loaded model: {"probe:<n>": rows, "task:<n>": scores}."""
    from audit.lm import backend_key, make_lm, score_probe_items
    from audit.tasks import resolve_task, run_tasks

    lm = make_lm(loaded, backend=spec.backend, batch_size=spec.batch_size)
    served = backend_key(spec.backend)  # another lm-eval model type (vllm, a server): results of its own
    lm = parallel.shard_lm(lm)  # a data-parallel audit: this rank scores its share (one process: as is)
    name = loaded.ref.name
    found: dict[str, Any] = {}
    for pp in probes:
        # the dtype is part of the key: a bfloat16 copy of a model gives different results from its weights
        key = {"model": loaded.content_hash, "dtype": loaded.ref.dtype, "probe": pp.name, "version": pp.probe.version,
               "data": sorted(pp.files.values()), "options": _probe_options(spec, pp.name), **served}

        def compute(positions: list[int], pp=pp) -> list[dict]:
            items = [pp.items[p] for p in positions]
            return [_result_row(r) for r in score_probe_items(lm, pp.probe, items,
                                                              tokenizer=loaded.tokenizer, progress=True)]
        try:
            rows, _ = cache.rows(key, [it.id for it in pp.items], compute, agree=parallel.agree)
            found[f"probe:{pp.name}"] = rows
        except Exception as exc:  # a failing model or scorer: keep what we have, report it
            errors.append({"model": name, "stage": f"probe:{pp.name}", "message": f"{type(exc).__name__}: {exc}"})
    data_dir = str(spec.data_dir) if spec.data_dir else None
    for entry in spec.tasks:
        task = entry.name
        try:
            # resolved and loaded once per process (the preflight did it): config and data fingerprint
            res = resolve_task(entry, task_paths=spec.task_paths, data_dir=data_dir)
            random = spec.task_limit and spec.task_sampling == "random"
            key = {"model": loaded.content_hash, "dtype": loaded.ref.dtype, "task": task, "version": "2",
                   "metric": res.metric, "filter": res.filter, "limit": spec.task_limit, "data": res.fingerprint,
                   **({"sampling": "random", "seed": spec.seed} if random else {}), **served}

            def compute_task(_: list[int], entry=entry) -> list[dict]:
                with parallel.lm_eval_sees_one_process():
                    (r,) = run_tasks(lm, [entry], task_paths=spec.task_paths, data_dir=data_dir,
                                     limit=spec.task_limit, sampling=spec.task_sampling, seed=spec.seed)
                if r.error:
                    raise BequeathError(r.error)
                return [{"item": r.task, "metric": r.metric, "data_files": list(r.data_files), "scores": r.scores,
                         "lm_eval_value": r.lm_eval_value, "subtasks": r.subtasks}]
            rows, _ = cache.rows(key, [task], compute_task, agree=parallel.agree)
            found[f"task:{task}"] = rows[0]
        except Exception as exc:
            errors.append({"model": name, "stage": f"task:{task}", "message": f"{type(exc).__name__}: {exc}"})
    return found


def _probe_options(spec: AuditSpec, name: str) -> dict:
    return next((p.options for p in spec.probes if p.name == name), {})


LOOK_FRACTIONS = (0.25, 0.5, 1.0)  # an adaptive audit's looks, as shares of max_items (fixed in advance)


def run_audit(spec: AuditSpec, *, force: bool = False, progress: bool = True) -> tuple[Path, int]:
    """Run ``spec``; returns (run directory, exit code: 0 complete, 2 partial/insufficient).

    With ``until_decided`` the per-group limit of every probe rises through ``LOOK_FRACTIONS`` of
    ``max_items``; after each look the statistics are recomputed at that look's share of α
    (O'Brien-Fleming spending, see audit.compare), and the audit stops once every overall cell is
    decided. The nested samples and the per-item cache make each look score only the added items.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every rank runs this; each scores its share of the requests
    and gets all results back (audit.parallel), so every rank computes the same run; rank 0 alone writes
    it and the results cache, and every rank returns the same exit code once it is written.
    """
    started = parallel.init()
    try:
        return _run_audit(spec, force=force, progress=progress and parallel.is_main())
    finally:
        if started:
            parallel.shutdown()


def _run_audit(spec: AuditSpec, *, force: bool, progress: bool) -> tuple[Path, int]:
    out = Path(spec.out)
    spec_hash = spec.spec_hash()
    main = parallel.is_main()
    prepare_run_dir(out, spec_hash, force=force, create=main)
    preflight(spec)
    cache = ResultsCache(Path(spec.cache) if spec.cache else cache_dir() / "results", writer=main)
    plan = [(None, ())]
    if spec.until_decided:
        plan = [(max(1, math.ceil(f * spec.max_items)), LOOK_FRACTIONS[: i + 1]) for i, f in enumerate(LOOK_FRACTIONS)]
    looks_done = []
    for limit, looks in plan:
        probes = _prepare_probes(spec, limit=limit)
        models, results, errors = _score_models(spec, probes, cache, progress)
        run = build_run(spec, spec_hash, probes, models, results, errors, looks=looks)
        undecided = [c for c in run["comparisons"] if c["group_key"] == ALL and c["verdict"] == "inconclusive"]
        looks_done.append({"limit": limit, "information": looks[-1] if looks else 1.0,
                           "alpha_spent": run["settings"]["alpha_look"], "undecided_overall": len(undecided)})
        if progress and spec.until_decided:
            print(f"look {len(looks_done)}: limit {limit} per group, {len(undecided)} overall cell(s) undecided",
                  flush=True)
        if not undecided or run["status"] != "complete":
            break
    if progress and any(e["stage"] == "interrupted" for e in run["errors"]):
        print("interrupted: the results so far are cached and a partial run is written; rerun to resume",
              file=sys.stderr)
    if spec.until_decided:
        run["settings"]["adaptive"] = looks_done
    parallel.broadcast_outcome(lambda: write_run(out, run, _items_rows(probes, results)))
    return out, (0 if run["status"] == "complete" else 2)


def write_run(out: Path, run: dict[str, Any], rows: list[dict], *, signing_key: bytes | None = None) -> None:
    """items.jsonl, then run.json with the items' sha256 and, last, its ``integrity`` block: the sha256
    of run.json's canonical JSON (every field, items_sha256 included) and, with a signing key
    (``signing_key``, else ``$BEQUEATH_SIGNING_KEY``), its HMAC-SHA256 (see audit.run_format). The gate
    refuses a run whose items or run.json changed after this.

    The whole document is checked against the typed run format first, so what is written always reads
    back; nothing is written when it does not conform."""
    from audit.run_format import AuditRun, integrity_of
    from audit.run_format import signing_key as key_from_env

    key = signing_key if signing_key is not None else key_from_env()
    items_text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)  # what write_jsonl writes
    doc = json.loads(json.dumps(run, default=_json_default))
    doc.pop("integrity", None)
    doc["items_sha256"] = hashlib.sha256(items_text.encode("utf-8")).hexdigest()
    doc["integrity"] = integrity_of(doc, key)
    AuditRun.from_json(doc)
    write_jsonl(out / "items.jsonl", rows)
    if sha256_file(out / "items.jsonl") != doc["items_sha256"]:
        raise BequeathError(f"{out / 'items.jsonl'}: changed while the run was written; re-run the audit")
    run["items_sha256"], run["integrity"] = doc["items_sha256"], doc["integrity"]
    write_atomic(out / "run.json", json.dumps(doc, indent=1, allow_nan=False))


def preflight(spec: AuditSpec) -> None:
    """Check every input before anything is scored: each probe's data (read and validated), each
    task loaded by lm-eval (its datasets and metric), each model opened (config and tokenizer, not the
    weights). All problems are collected into one error naming each, so a bad input costs seconds, not
    an audit."""
    from audit.models import check_model
    from audit.tasks import check_tasks

    problems = []
    try:
        _prepare_probes(spec)
    except (ProbeError, BequeathError) as exc:
        problems.append(str(exc))
    # each task found and loaded by lm-eval (a dataset not on disk offline is named here), its metric checked
    problems += check_tasks(spec.tasks, task_paths=spec.task_paths, data_dir=spec.data_dir)
    for ref in [spec.teacher, *spec.students]:
        try:
            check_model(ref)
        except BequeathError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("Nothing was scored; fix these inputs first:\n  - " + "\n  - ".join(problems))


def _score_models(spec: AuditSpec, probes: list[PreparedProbe], cache: ResultsCache,
                  progress: bool) -> tuple[list[dict], dict[str, dict[str, Any]], list[dict]]:
    """Load each model once, score every probe and task through the cache: (models, results, errors)."""
    refs: list[tuple[str, ModelRef]] = [("teacher", spec.teacher)] + [("student", s) for s in spec.students]
    errors: list[dict] = []
    models: list[dict] = []
    results: dict[str, dict[str, Any]] = {}
    teacher_tok = None
    for role, ref in tqdm(refs, desc="models", unit="model", disable=not progress):
        if any(e["stage"] == "interrupted" for e in errors):
            break
        try:
            loaded = load_model(ref)
        except BequeathError as exc:
            errors.append({"model": ref.name, "stage": "load", "message": str(exc)})
            models.append({"role": role, "name": ref.name, "source": ref.source, "content_hash": None,
                           "n_params": None, "dtype": ref.dtype, "card": None, "notes": [f"failed to load: {exc}"]})
            continue
        notes = []
        tok_hash = _tokenizer_hash(loaded.tokenizer)
        if role == "teacher":
            teacher_tok = tok_hash
        elif teacher_tok and tok_hash != teacher_tok:
            notes.append("tokenizer differs from the teacher's: comparisons are within-model preferences")
        if role == "student" and loaded.card is None:
            notes.append("no distill_card.json next to this model: how it was made is unknown")
        models.append({"role": role, "name": ref.name, "source": str(loaded.directory or ref.source),
                       "content_hash": loaded.content_hash, "n_params": loaded.n_params, "dtype": ref.dtype,
                       "tokenizer_hash": tok_hash, "card": loaded.card, "notes": notes})
        try:
            results[ref.name] = _score_model(loaded, spec, probes, cache, errors)
        except KeyboardInterrupt:  # keep every chunk already cached and write a partial run
            errors.append({"model": ref.name, "stage": "interrupted",
                           "message": "interrupted (Ctrl-C); rerun the same command to resume from the cache"})
        del loaded
        gc.collect()
    return models, results, errors


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _items_rows(probes: list[PreparedProbe], results: dict[str, dict[str, Any]]) -> list[dict]:
    rows = []
    for model, found in results.items():
        for pp in probes:
            got = {r["item"]: r for r in found.get(f"probe:{pp.name}", [])}
            for it in pp.items:
                r = got.get(it.id)
                if r is None:
                    continue
                rows.append({"model": model, "probe": pp.name, "item": it.id, "groups": dict(it.groups),
                             "cluster": it.cluster, "columns": _clean(r["columns"]), "answers": r["answers"],
                             "text": r["text"], "invalid": r["invalid"],
                             "requests": [list(q) for q in it.requests] or None, "prompt": it.prompt})
        for key, val in found.items():
            if key.startswith("task:"):
                for item, score in val["scores"].items():
                    rows.append({"model": model, "task": key[5:], "item": item, "columns": {val["metric"]: score}})
    return rows


def _clean(cols: dict | None) -> dict | None:
    if cols is None:
        return None
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in cols.items()}


def build_run(spec: AuditSpec, spec_hash: str, probes: list[PreparedProbe], models: list[dict],
              results: dict[str, dict[str, Any]], errors: list[dict],
              looks: tuple[float, ...] = ()) -> dict[str, Any]:
    """The run.json document: statistics over the per-item results (pure).

    ``looks``: the information fractions of an adaptive audit's looks so far (the last is this one).
    """
    from audit.compare import (
        ItemInfo,
        columns_from_rows,
        finalize,
        probe_comparisons,
        probe_counts,
        probe_description,
        task_scores,
    )
    from audit.lm import redacted
    from audit.spec import settings_of

    settings = settings_of(spec, looks)
    teacher = spec.teacher.name
    students = [m["name"] for m in models if m["role"] == "student" and m["name"] in results]
    probe_docs, comparisons = [], []
    for pp in probes:
        infos = [ItemInfo(id=it.id, groups=dict(it.groups), cluster=it.cluster) for it in pp.items]
        cols = {m: columns_from_rows(found.get(f"probe:{pp.name}", [])) for m, found in results.items()}
        doc = {"probe": pp.name, **probe_description(pp.probe),
               "n_total": pp.n_total, "n_skipped": pp.n_skipped, "limit": pp.limit,
               "sampled_ids_sha256": digest([it.id for it in pp.items])}
        rows = {m: found.get(f"probe:{pp.name}") or [] for m, found in results.items()}
        doc.update(probe_counts(pp.probe, infos, rows))
        for m in results:
            err = next((e["message"] for e in errors if e["model"] == m and e["stage"] == f"probe:{pp.name}"), None)
            doc["models"][m]["error"] = err
        probe_docs.append(doc)
        comparisons += probe_comparisons(name=pp.name, probe=pp.probe, items=infos, cols=cols, teacher=teacher,
                                         students=students, settings=settings)
    comparisons = finalize(comparisons, settings)
    task_docs = []
    for task in (t.name for t in spec.tasks):
        per = {m: found[f"task:{task}"] for m, found in results.items() if f"task:{task}" in found}
        err = next((e["message"] for e in errors if e["stage"] == f"task:{task}"), None)
        doc = {"task": task, "metric": None, "n": None, "error": err, "scores": {}, "retention": {}}
        if teacher in per:
            t = per[teacher]
            doc.update(metric=t["metric"], n=len(t["scores"]))
            doc.update(task_scores(teacher=t["scores"], students={s: per[s]["scores"] for s in students if s in per},
                                   clusters=None, settings=settings))
        task_docs.append(doc)
    files = {f: h for pp in probes for f, h in pp.files.items()}
    for found in results.values():
        for key, val in found.items():
            if not key.startswith("task:"):
                continue
            legacy = [val["data_file"]] if val.get("data_file") else []  # the earlier row shape (make_run.py)
            for f in val.get("data_files") or legacy:
                files.setdefault(f, sha256_file(Path(f)))
    complete = not errors and len(results) == 1 + len(spec.students)
    return {
        "schema_version": SCHEMA_VERSION, "status": "complete" if complete else "partial", "created": now(),
        "provenance": provenance(seed=spec.seed, spec_hash=spec_hash, dataset_files=files),
        "settings": {"alpha": spec.alpha, "tolerance": spec.tolerance, "n_boot": spec.n_boot,
                     "n_perm": spec.n_perm, "correction": spec.correction, "min_items": spec.min_items,
                     "min_clusters": spec.min_clusters, "seed": spec.seed, "backend": redacted(spec.backend),
                     "looks": list(looks), "alpha_look": settings.alpha_eff},
        "spec": spec.to_dict(), "models": models, "tasks": task_docs, "probes": probe_docs,
        "comparisons": comparisons, "errors": errors,
    }


__all__ = ["run_audit", "build_run"]
