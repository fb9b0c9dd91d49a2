"""Fail closed: verify a stored run before any policy is applied (the gate and the report call it).

``load_run`` reads run.json and items.jsonl with messages naming the file and line; ``verify``
checks run.json's integrity block (its digest, and its HMAC signature when
``$BEQUEATH_SIGNING_KEY`` is set or a signature is required), items.jsonl against its recorded
sha256, every figure of run.json recomputed from the rows (``audit.compare.recompute``), run.json
against its own spec (``provenance.spec_hash``, settings, models, probes, tasks, derived notes and
error texts), and each probe's rows against the probe's data: its sample and requests rebuilt and
every row's columns re-derived from its answers by the probe's scoring rule. Each finding is a
``Check`` with status "error": the gate exits 2 on any.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from audit.verdicts import Check, is_missing


def load_run_json(run_dir: str | Path) -> dict:
    from audit.errors import RunDirError

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunDirError(f"{path}: not found. Pass the folder an audit wrote (it holds run.json).")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}). Re-run the audit or restore the file.") from exc
    from audit.store import SCHEMA_VERSION

    if not isinstance(run, dict) or run.get("schema_version") != SCHEMA_VERSION:
        got = run.get("schema_version") if isinstance(run, dict) else type(run).__name__
        hint = (" Runs of schema 1 were judged by earlier verdict rules (no equivalence tests, bootstrap p-values);"
                " re-run the audit: cached item results make it cheap." if got == 1 and type(got) is int else
                " Runs of schema 2 carry no integrity block (an edit that re-records items_sha256 goes unseen);"
                " re-run the audit: cached item results make it cheap." if got == 2 and type(got) is int else
                " Use the bequeath version that wrote the run.")
        raise RunDirError(f"{path}: schema_version: expected {SCHEMA_VERSION}, got {got!r}.{hint}")
    from audit.run_format import AuditRun, RunFormatError

    try:
        AuditRun.from_json(run)
    except RunFormatError as exc:
        raise RunDirError(f"{path}: {exc}\nA run that does not have the stored shape cannot be certified; "
                          "re-run the audit (cached results make it cheap).") from exc
    return run


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """run.json and items.jsonl of a run folder; clear errors naming file and line."""
    from audit.errors import RunDirError

    run = load_run_json(run_dir)
    path = Path(run_dir) / "items.jsonl"
    if not path.is_file():
        raise RunDirError(f"{path}: not found. The audit writes it next to run.json; re-run the audit.")
    items = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise RunDirError(f"{path}: not UTF-8 text ({exc.reason}). Restore the file or re-run the audit.") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RunDirError(f"{path}:{n}: not valid JSON ({exc}). Restore the file or re-run the audit.") from exc
        if not isinstance(row, dict) or "model" not in row or "item" not in row:
            raise RunDirError(f"{path}:{n}: expected an object with 'model' and 'item'. Re-run the audit.")
        items.append(row)
    return run, items


def _close(a: Any, b: Any) -> bool:
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    if math.isinf(float(a)) or math.isinf(float(b)):
        return float(a) == float(b)
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)), abs(float(b)))


REQUIRE_SIGNATURE_ENV = "BEQUEATH_REQUIRE_SIGNATURE"


def integrity_check(run: dict, key: bytes | None, *, require_signature: bool = False) -> Check:
    """run.json against its integrity block (audit.run_format.integrity_problems): its digest, and its
    signature when a key is given (a key makes the signature required)."""
    from audit.run_format import integrity_problems

    problems, what = integrity_problems(run, key, require_signature=require_signature)
    if problems:
        return Check(name="run.json integrity", status="error", reason=problems[0])
    if what == "digest and signature":
        return Check(name="run.json integrity", status="pass", reason="digest and signature of run.json verified")
    if what == "digest":
        return Check(name="run.json integrity", status="pass",
                     reason="digest of run.json verified; the run is not signed (an edit that re-records the digest "
                     "is caught only by the checks below; set BEQUEATH_SIGNING_KEY when auditing to sign runs)")
    return Check(name="run.json integrity", status="warning",
                 reason="digest of run.json verified; the run is signed but the signature was not checked: set "
                 "BEQUEATH_SIGNING_KEY to the audit's key (or pass --require-signature to refuse this)")


_FROM_ENV: Any = object()  # verify's default key: $BEQUEATH_SIGNING_KEY


def verify(run: dict, rows: list[dict], items_sha256: str | None, *, key: bytes | None = _FROM_ENV,
           require_signature: bool | None = None, data_dir: str | Path | None = None) -> list[Check]:
    """Every check the gate makes of the stored files: run.json's integrity block (``key``: the signing
    key, by default ``$BEQUEATH_SIGNING_KEY``; ``require_signature``, by default
    ``$BEQUEATH_REQUIRE_SIGNATURE``), items.jsonl against its sha256, every figure of run.json recomputed
    from the rows, run.json against its own spec, and each probe's rows against the probe's data
    (``data_dir``: where to read it, by default the spec's): the sample, the requests and the columns
    re-derived from the answers by the probe's scoring rule."""
    import os

    from audit.run_format import signing_key

    key = signing_key() if key is _FROM_ENV else key
    if require_signature is None:
        require_signature = os.environ.get(REQUIRE_SIGNATURE_ENV, "") not in ("", "0")
    checks = [integrity_check(run, key, require_signature=require_signature)]
    checks += verify_items(run, rows, items_sha256)
    if checks[-1].status == "pass":
        vouched = checks[0].status == "pass" and key is not None
        checks += probe_data_checks(run, rows, data_dir=data_dir, vouched=vouched)
    return checks


def verify_items(run: dict, rows: list[dict], items_sha256: str | None) -> list[Check]:
    """Recompute every verdict and figure from items.jsonl with the run's settings and compare with
    run.json; every disagreement is an error naming the cell (a doctored file cannot pass)."""
    from audit.compare import recompute

    if not run.get("items_sha256"):
        return [Check(name="items.jsonl verified", status="error",
                      reason="run.json records no items_sha256: it was not written by this bequeath; re-run the audit")]
    if items_sha256 != run["items_sha256"]:
        return [Check(name="items.jsonl verified", status="error",
                      reason=f"items.jsonl sha256 {str(items_sha256)[:12]}... differs from the "
                      f"{run['items_sha256'][:12]}... recorded in run.json: the items changed after the audit")]
    try:
        got = recompute(run, rows)
    except Exception as exc:  # a malformed run or row cannot be certified, whatever the error
        return [Check(name="items.jsonl verified", status="error",
                      reason=f"the run cannot be recomputed from its items ({type(exc).__name__}: {exc})")]
    problems = list(got["problems"]) + _consistency(run)

    def key(c: dict) -> str:
        return "/".join(str(c.get(k)) for k in ("student_name", "probe", "metric", "group_key", "group"))

    stored = [c for c in run.get("comparisons") or [] if isinstance(c, dict)]
    mine = {key(c): c for c in got["comparisons"]}
    if len({key(c) for c in stored}) != len(stored):
        problems.append("comparisons: a record appears twice")
    theirs = {key(c): c for c in stored}
    for k in sorted(set(mine) ^ set(theirs)):
        problems.append(f"{k}: {'missing from run.json' if k in mine else 'not in items.jsonl'}")
    for k in sorted(set(mine) & set(theirs)):
        _diff(json.loads(json.dumps(mine[k])), theirs[k], k, problems)
    stored_tasks = {t.get("task"): t for t in run.get("tasks") or []}
    for name, t in got["tasks"].items():
        for part in ("metric", "n", "scores", "retention"):
            _diff(t[part], (stored_tasks.get(name) or {}).get(part), f"task {name}.{part}", problems)
    for doc in run.get("probes") or []:
        want = got["probes"].get(doc.get("probe")) or {}
        for part, value in want.items():
            stored_part = doc.get(part)
            if part == "models":  # the error text comes from the audit's log, not from the items
                stored_part = {m: {k: v for k, v in (x or {}).items() if k != "error"}
                               for m, x in (stored_part or {}).items()}
            _diff(json.loads(json.dumps(value)), stored_part, f"probe {doc.get('probe')}.{part}", problems)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return [Check(name="items.jsonl verified", status="error", reason=f"run.json disagrees with its items: {shown}")]
    return [Check(name="items.jsonl verified", status="pass",
                  reason=f"{len(stored)} comparisons, {len(got['tasks'])} task(s) and {len(got['probes'])} probe(s) "
                  "recomputed from items.jsonl agree")]


COLUMN_REL_TOL = 1e-9  # a re-derived column may differ from the stored one by this share of it (another platform's
# float noise); relative only: a 0 must be re-derived as 0


def _same_columns(want: dict | None, have: Any) -> bool:
    if want is None or have is None:
        return want is None and have is None
    if not isinstance(have, dict) or set(want) != set(have):
        return False
    for k, a in want.items():
        b = have[k]
        if a is None or b is None:
            if not (a is None and b is None):
                return False
        elif isinstance(b, bool) or not isinstance(b, int | float) or not (float(a) == float(b) or (
                abs(float(a) - float(b)) <= COLUMN_REL_TOL * max(abs(float(a)), abs(float(b))))):
            return False
    return True


def _answers_of(row: dict, n: int) -> tuple[list | None, str | None]:
    """The row's answers as probes.base.Answer (``n`` of them, [loglik, is_greedy, n_tokens] each), or why not."""
    from probes.base import Answer

    raw = row.get("answers")
    if not isinstance(raw, list) or len(raw) != n:
        return None, f"answers: expected {n} answers [loglik, is_greedy, n_tokens], got {str(raw)[:60]}"
    out = []
    for a in raw:
        ok = (isinstance(a, list) and len(a) == 3 and isinstance(a[0], int | float) and not isinstance(a[0], bool)
              and isinstance(a[1], bool) and (a[2] is None or (isinstance(a[2], int) and not isinstance(a[2], bool))))
        if not ok:
            return None, f"answers: expected [loglik, is_greedy, n_tokens], got {str(a)[:60]}"
        out.append(Answer(loglik=float(a[0]), is_greedy=a[1], n_tokens=a[2]))
    return out, None


def rescore(probe: Any, item: Any, row: dict) -> tuple[dict | None, str | None, str | None]:
    """(columns, invalid, problem): what the probe's own scoring rule (``audit.lm._score_one``, the
    audit's) gives for the row's answers (a generation probe: its text), as the audit stores them
    (NaN as null); ``problem`` when the answers themselves are malformed."""
    from audit.lm import _score_one

    if probe.kind == "generation":
        text = row.get("text")
        if not isinstance(text, str):
            return None, None, f"text: expected the generated text, got {str(text)[:60]}"
        res = _score_one(probe, item, text, text=text)
    else:
        answers, why = _answers_of(row, len(item.requests))
        if why:
            return None, None, why
        res = _score_one(probe, item, answers, answers=answers)
    cols = None if res.columns is None else {
        k: None if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in res.columns.items()}
    return cols, res.invalid, None


def _data_dir(run: dict, data_dir: str | Path | None) -> Path | None:
    spec = run.get("spec") or {}
    where = data_dir or spec.get("data_dir")
    return Path(where) if isinstance(where, str | Path) and str(where) else None


def probe_data_checks(run: dict, rows: list[dict], *, data_dir: str | Path | None = None,
                      vouched: bool = False) -> list[Check]:
    """Each probe's rows against the probe's own data, prepared as the audit prepared it (the same
    options, data, limit and seed): the sample (n_total, n_skipped, sampled_ids_sha256, one row per
    sampled item for each model that scored it), each row's groups, cluster, requests and prompt, and its
    columns and invalid mark re-derived from its answers by the probe's scoring rule (to
    ``COLUMN_REL_TOL``); then the data files' sha256 against provenance.dataset_files. A probe whose
    data cannot be read here cannot be checked: an error, unless the run's signature was verified
    (``vouched``), then a warning."""
    from audit.store import digest
    from probes.base import stratified_sample
    from probes.registry import get_probe

    spec = run.get("spec") or {}
    options = {p.get("name"): p.get("options") or {} for p in spec.get("probes") or [] if isinstance(p, dict)}
    where = _data_dir(run, data_dir)
    errors = [e for e in run.get("errors") or [] if isinstance(e, dict)]
    loaded_models = [m["name"] for m in run.get("models") or [] if m.get("content_hash")]
    files_here: dict[str, str] = {}
    checks, unread = [], False
    for doc in run.get("probes") or []:
        name = doc.get("probe")
        label = f"probe {name} rows re-derived"
        try:
            probe = get_probe(name, **options.get(name, {}))
            data = probe.load(where, allow_skip=spec.get("allow_skip") is True)
        except Exception as exc:  # noqa: BLE001 - data that cannot be read here is reported, whatever the error
            unread = True
            reason = (f"its data cannot be read here ({type(exc).__name__}: {str(exc)[:200]}): the sample, requests "
                      "and columns of its rows were not checked against it; pass --data-dir with the audit's data")
            checks.append(Check(name=label, status="warning" if vouched else "error",
                                reason=reason + ("; the run's verified signature vouches for its items" if vouched
                                                 else " (or gate a signed run with its key)")))
            continue
        files_here.update(data.files)
        items = stratified_sample(data.items, by=probe.group_keys[:1], limit=doc.get("limit"), seed=spec.get("seed", 0))
        problems = []
        for part, want in (("n_total", len(data.items)), ("n_skipped", data.n_skipped),
                           ("sampled_ids_sha256", digest([it.id for it in items]))):
            if doc.get(part) != want:
                problems.append(f"{part} is {str(doc.get(part))[:70]!r} in run.json, {want!r} from the probe's data")
        by_id = {it.id: it for it in items}
        held: dict[str, list[str]] = {}
        for n, r in enumerate(rows, 1):
            if r.get("probe") != name:
                continue
            held.setdefault(str(r.get("model")), []).append(r.get("item"))
            it = by_id.get(r.get("item"))
            if it is None:
                problems.append(f"row {n}: item {str(r.get('item'))[:40]!r} is not in the probe's sample")
                continue
            where_row = f"row {n} ({r.get('model')}/{it.id})"
            for part, want in (("groups", dict(it.groups)), ("cluster", it.cluster),
                               ("requests", [list(q) for q in it.requests] or None), ("prompt", it.prompt)):
                if r.get(part) != want:
                    problems.append(f"{where_row}: {part} differ from the probe's data")
            cols, invalid, why = rescore(probe, it, r)
            if why:
                problems.append(f"{where_row}: {why}")
            elif not _same_columns(cols, r.get("columns")) or r.get("invalid") != invalid:
                problems.append(f"{where_row}: columns {str(r.get('columns'))[:80]} (invalid "
                                f"{str(r.get('invalid'))[:40]!r}) are not what its answers give: {str(cols)[:80]} "
                                f"(invalid {str(invalid)[:40]!r})")
        sampled = [it.id for it in items]
        for m in loaded_models:
            failed = any(e.get("model") == m and e.get("stage") in (f"probe:{name}", "interrupted") for e in errors)
            got = held.get(m, [])
            if not failed and sorted(map(str, got)) != sorted(sampled):
                problems.append(f"{m}: {len(got)} rows for the {len(sampled)} sampled items")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            checks.append(Check(name=label, status="error", reason=f"the rows disagree with the probe's data: {shown}"))
        else:
            checks.append(Check(name=label, status="pass", reason=f"{len(sampled)} sampled items; requests and "
                                "columns of every row re-derived from the probe's data and the answers agree"))
    if not unread:
        checks.append(_dataset_files_check(run, files_here, where))
    return checks


def _dataset_files_check(run: dict, probe_files: dict[str, str], where: Path | None) -> Check:
    """provenance.dataset_files against the data files read here: the probes' and those of the tasks
    that were scored (by path, or by content when the run was made where the paths differ)."""
    from audit.tasks import task_data_files
    from probes.files import sha256_file

    here = dict(probe_files)
    spec = run.get("spec") or {}
    paths = spec.get("task_paths") or ()
    for t in run.get("tasks") or []:
        if not t.get("scores"):
            continue
        try:
            files = task_data_files(str(t.get("task")), task_paths=tuple(map(str, paths)), data_dir=where)
            here.update({str(f): sha256_file(Path(f)) for f in files})
        except Exception as exc:  # noqa: BLE001 - a task that cannot be resolved here is reported, whatever the error
            return Check(name="dataset files", status="error",
                         reason=f"task {t.get('task')}: its data files cannot be read here ({str(exc)[:160]}); "
                         "pass --data-dir with the audit's data")
    recorded = (run.get("provenance") or {}).get("dataset_files")
    if recorded == here:
        return Check(name="dataset files", status="pass", reason=f"{len(here)} data file(s): sha256 as recorded")
    if isinstance(recorded, dict) and sorted(map(str, recorded.values())) == sorted(here.values()) \
            and not any(p in here and here[p] != h for p, h in recorded.items()):
        return Check(name="dataset files", status="pass",
                     reason=f"{len(here)} data file(s): the same contents as recorded, at other paths")
    return Check(name="dataset files", status="error",
                 reason=f"provenance.dataset_files {str(recorded)[:200]} is not the data read here {str(here)[:200]}")


def _diff(want: Any, have: Any, path: str, out: list[str]) -> None:
    """Every difference between a recomputed value and the stored one, by path (numbers to 1e-6 relative)."""
    if isinstance(want, dict) and isinstance(have, dict):
        for k in sorted(set(want) | set(have), key=str):
            if k not in want or k not in have:
                out.append(f"{path}.{k}: {'missing from run.json' if k in want else 'not recomputed'}")
            else:
                _diff(want[k], have[k], f"{path}.{k}", out)
    elif isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for i, (a, b) in enumerate(zip(want, have, strict=True)):
            _diff(a, b, f"{path}[{i}]", out)
    elif isinstance(want, float | int) and isinstance(have, float | int) and not isinstance(want, bool) \
            and not isinstance(have, bool):
        if not _close(want, have):
            out.append(f"{path} is {have!r} in run.json, {want!r} from items.jsonl")
    elif want != have:
        out.append(f"{path} is {str(have)[:80]!r} in run.json, {str(want)[:80]!r} from items.jsonl")


def _consistency(run: dict) -> list[str]:
    """run.json against its own spec: the models, probes, tasks and settings the spec asked for."""
    spec, settings, problems = run.get("spec") or {}, run.get("settings") or {}, []
    names = [m.get("name") for m in run.get("models") or []]
    if len(set(names)) != len(names):
        problems.append("models: a model appears twice")

    def name_of(x: Any, default: str) -> Any:
        return x.get("name", default) if isinstance(x, dict) else x

    def listed(part: str) -> list:
        value = spec.get(part) or []
        if not isinstance(value, list):
            problems.append(f"spec.{part}: expected a list, got {str(value)[:40]!r}")
            return []
        return value

    wanted = [name_of(spec.get("teacher"), "teacher")] + [name_of(s, None) for s in listed("students")]
    if [n for n in wanted if isinstance(n, str)] != names[: len(wanted)] or len(names) != len(wanted):
        problems.append(f"models: run.json holds {names}, the spec asked for {wanted}")
    for part, key in (("probes", "probe"), ("tasks", "task")):
        asked = [name_of(p, None) for p in listed(part)]
        held = [d.get(key) for d in run.get(part) or []]
        if asked != held:
            problems.append(f"{part}: run.json holds {held}, the spec asked for {asked}")
    for k in ("alpha", "tolerance", "n_boot", "n_perm", "correction", "min_items", "min_clusters", "seed", "backend"):
        if k in spec and spec[k] != settings.get(k):
            problems.append(f"settings.{k} is {settings.get(k)!r}, the spec's is {spec[k]!r}")
    prov = run.get("provenance") or {}
    if prov.get("seed") != settings.get("seed"):
        problems.append("provenance.seed differs from settings.seed")
    if prov.get("spec_hash") != spec_hash_of(spec):
        problems.append(f"provenance.spec_hash {str(prov.get('spec_hash'))[:12]}... is not the sha256 of the stored "
                        f"spec ({spec_hash_of(spec)[:12]}...)")
    problems += _settings_problems(spec, settings)
    problems += _record_problems(run, spec)
    return problems


def spec_hash_of(spec: dict) -> str:
    """``AuditSpec.spec_hash`` of a stored spec (``AuditSpec.to_dict()``): out and cache left out."""
    import hashlib

    body = {k: v for k, v in spec.items() if k not in ("out", "cache")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _settings_problems(spec: dict, settings: dict) -> list[str]:
    """looks, alpha_look and adaptive as the spec's adaptive plan gives them."""
    from audit.compare import Settings

    problems = []
    looks, adaptive = settings.get("looks"), settings.get("adaptive")
    if spec.get("until_decided") is not True and (looks or adaptive is not None):
        problems.append("settings.looks/adaptive are set, but the spec is not an adaptive audit (until_decided)")
    if spec.get("until_decided") is True and adaptive is None:
        problems.append("settings.adaptive is missing for an adaptive audit (until_decided)")
    try:
        names = ("alpha", "tolerance", "n_boot", "n_perm", "correction", "min_items", "min_clusters", "seed")
        want = Settings(**{n: settings[n] for n in names}, looks=tuple(looks or ())).alpha_eff
    except Exception as exc:  # noqa: BLE001 - settings that Settings refuses cannot be certified
        return [*problems, f"settings: {type(exc).__name__}: {str(exc)[:120]}"]
    if not _close(want, settings.get("alpha_look")):
        problems.append(f"settings.alpha_look is {settings.get('alpha_look')!r}, the looks give {want!r}")
    return problems


TOKENIZER_NOTE = "tokenizer differs from the teacher's: comparisons are within-model preferences"
NO_CARD_NOTE = "no distill_card.json next to this model: how it was made is unknown"


def _record_problems(run: dict, spec: dict) -> list[str]:
    """The records the audit derives from others: status from errors and loads, each model's dtype (the
    spec's), notes (from the tokenizer hashes, the card, a load error), each task's and probe's error
    text (the errors' messages)."""
    problems = []
    errors = [e for e in run.get("errors") or [] if isinstance(e, dict)]
    models = [m for m in run.get("models") or [] if isinstance(m, dict)]
    complete = not errors and all(m.get("content_hash") for m in models)
    if (run.get("status") == "complete") != complete:
        problems.append(f"status {run.get('status')!r} does not follow from errors and models")
    students = spec.get("students")
    refs = [spec.get("teacher")] + (list(students) if isinstance(students, list) else [])  # a doctored spec may hold anything
    teacher_tok = next((m.get("tokenizer_hash") for m in models if m.get("role") == "teacher"), None)
    for i, m in enumerate(models):
        ref = refs[i] if i < len(refs) and isinstance(refs[i], dict) else {}
        if "dtype" in ref and m.get("dtype") != ref["dtype"]:
            problems.append(f"models[{i}].dtype is {m.get('dtype')!r}, the spec's is {ref['dtype']!r}")
        load = next((e.get("message") for e in errors if e.get("model") == m.get("name") and e.get("stage") == "load"),
                    None)
        if load is not None or not m.get("content_hash"):
            want = [f"failed to load: {load}"]
        else:
            student = m.get("role") == "student"
            want = ([TOKENIZER_NOTE] if student and teacher_tok and m.get("tokenizer_hash") != teacher_tok else []) \
                + ([NO_CARD_NOTE] if student and m.get("card") is None else [])
        if m.get("notes") != want:
            problems.append(f"models[{i}].notes are {str(m.get('notes'))[:80]}, the run gives {str(want)[:80]}")
        for part in ("content_hash", "tokenizer_hash"):
            h = m.get(part)
            if h is not None and not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
                problems.append(f"models[{i}].{part}: expected 64 lowercase hex digits, got {str(h)[:70]!r}")
        if m.get("content_hash") and not (isinstance(m.get("n_params"), int) and m["n_params"] > 0):
            problems.append(f"models[{i}].n_params: expected a positive whole number, got {m.get('n_params')!r}")
    for t in run.get("tasks") or []:
        want = next((e.get("message") for e in errors if e.get("stage") == f"task:{t.get('task')}"), None)
        if t.get("error") != want:
            problems.append(f"task {t.get('task')}.error is {str(t.get('error'))[:60]!r}, the errors give {str(want)[:60]!r}")
    for doc in run.get("probes") or []:
        for m, rec in (doc.get("models") or {}).items():
            want = next((e.get("message") for e in errors if e.get("model") == m
                         and e.get("stage") == f"probe:{doc.get('probe')}"), None)
            if (rec or {}).get("error") != want:
                problems.append(f"probe {doc.get('probe')}.models.{m}.error does not match the errors")
    for h in ((run.get("provenance") or {}).get("dataset_files") or {}).values():
        if not (isinstance(h, str) and len(h) == 64):
            problems.append(f"provenance.dataset_files: expected sha256 values, got {str(h)[:70]!r}")
    return problems
