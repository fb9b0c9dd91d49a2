"""The results cache proves its integrity (issue 15): every chunk carries the sha256 of its key and of
its rows; a chunk that fails either check, cannot be parsed, is not a chunk, or is of an older format
is named in a warning, moved into ``quarantine/`` (never deleted) and its items are recomputed.
``bequeath cache verify`` and ``bequeath cache prune`` check and clean the cache.

The fake ``compute`` functions are deterministic: no model is loaded except in the last test.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path

import pytest

from audit.cli import main
from audit.store import CACHE_FORMAT, CacheIntegrityWarning, ResultsCache, digest

KEY = {"model": "a" * 64, "dtype": "float32", "probe": "p", "version": "1", "data": ["d" * 64], "options": {}}
IDS = [f"item-{k}" for k in range(6)]


def score(positions: list[int], ids: list[str] = IDS, offset: float = 0.0) -> list[dict]:
    """Deterministic rows: what a scorer would return for ``ids[p]``."""
    return [{"item": ids[p], "columns": {"stereotyped": float(p % 2), "margin": 0.25 * p + offset},
             "invalid": False} for p in positions]


def fill(root: Path, key: dict = KEY, *, offset: float = 0.0) -> tuple[ResultsCache, list[dict]]:
    """A cache at ``root`` holding ``IDS`` for ``key`` in three chunks of two."""
    cache = ResultsCache(root)
    rows, computed = cache.rows(key, IDS, lambda pos: score(pos, offset=offset), chunk=2)
    assert computed == len(IDS)
    return cache, rows


def chunks(cache: ResultsCache, key: dict = KEY) -> list[Path]:
    return sorted(p for p in cache.folder(key).glob("*.json") if p.name != "key.json")


def chunk_of(cache: ResultsCache, item: str, key: dict = KEY) -> Path:
    """The chunk file holding ``item``."""
    (path,) = [p for p in chunks(cache, key) if item in {r["item"] for r in json.loads(p.read_text())["rows"]}]
    return path


def quarantined_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "quarantine").rglob("*") if p.is_file())


def reread(root: Path) -> tuple[list[dict], int, list[str], list[warnings.WarningMessage]]:
    """A fresh cache user reads ``IDS`` again: (rows, n computed, its quarantine notes, warnings)."""
    cache = ResultsCache(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, computed = cache.rows(KEY, IDS, score, chunk=2)
    return rows, computed, cache.quarantined, [w for w in caught if issubclass(w.category, CacheIntegrityWarning)]


# ---------------------------------------------------------------- chunk format


def test_chunk_records_format_key_hash_and_rows_hash(tmp_path):
    cache, rows = fill(tmp_path)
    assert rows == score(list(range(6)))
    files = chunks(cache)
    assert len(files) == 3
    for path in files:
        doc = json.loads(path.read_text())
        assert set(doc) == {"format", "key_sha256", "rows_sha256", "rows"}
        assert doc["format"] == CACHE_FORMAT == 3
        assert doc["key_sha256"] == digest(KEY)
        assert doc["rows_sha256"] == digest(doc["rows"])
    meta = json.loads((cache.folder(KEY) / "key.json").read_text())
    assert meta == {"format": 3, "key_sha256": digest(KEY), "key": KEY}
    assert cache.folder(KEY).name == digest(KEY)[:32]
    # a clean reread computes nothing and warns about nothing
    again, computed, notes, warned = reread(tmp_path)
    assert again == rows and computed == 0 and notes == [] and warned == []


# ---------------------------------------------------------------- tampering


def test_tampered_chunk_is_quarantined_and_recomputed(tmp_path):
    """A changed column value (content hash not updated) was used silently before; now it is caught."""
    cache, original = fill(tmp_path)
    path = chunk_of(cache, "item-3")
    doc = json.loads(path.read_text())
    doc["rows"][1]["columns"]["stereotyped"] = 0.0  # item-3: 1.0 -> 0.0, as an edit that flips a verdict would
    tampered = json.dumps(doc)
    path.write_text(tampered)

    rows, computed, notes, warned = reread(tmp_path)
    assert rows == original and rows[3]["columns"]["stereotyped"] == 1.0
    assert computed == 2  # the two items of the bad chunk, nothing else
    assert len(warned) == 1 and str(path) in str(warned[0].message)
    assert "content hash does not match" in str(warned[0].message)
    assert notes == [f"{path}: content hash does not match the rows (changed after they were written)"]
    # moved aside, never deleted: same relative path under quarantine/, a timestamp appended
    (moved,) = quarantined_files(tmp_path)
    rel = path.relative_to(tmp_path)
    assert moved.parent == tmp_path / "quarantine" / rel.parent
    assert moved.name.startswith(rel.name + ".") and moved.name.endswith("Z")
    assert moved.read_text() == tampered
    # the recomputed chunk is sound: a third user computes nothing
    assert reread(tmp_path)[1:] == (0, [], [])


def test_chunk_of_another_key_with_consistent_hash_is_caught_by_the_key_hash(tmp_path):
    """Rows whose content hash matches them, but written for another model: the key hash refuses them."""
    other = {**KEY, "model": "b" * 64}
    cache, original = fill(tmp_path)
    fill(tmp_path, other, offset=100.0)  # another model: margins 100 higher
    mine, foreign = chunk_of(cache, "item-0"), chunk_of(cache, "item-0", other)
    assert mine.name == foreign.name  # the same items: the same chunk name
    foreign_doc = json.loads(foreign.read_text())
    assert foreign_doc["rows_sha256"] == digest(foreign_doc["rows"])  # internally consistent
    mine.write_text(foreign.read_text())

    rows, computed, notes, warned = reread(tmp_path)
    assert rows == original and rows[0]["columns"]["margin"] == 0.0
    assert computed == 2
    assert len(warned) == 1 and str(mine) in str(warned[0].message) and "key hash" in str(warned[0].message)
    assert notes == [f"{mine}: key hash does not match this folder's key "
                     "(rows of another model, probe, dataset or setting)"]


def test_edited_rows_with_recomputed_rows_hash_but_another_key_hash_are_caught(tmp_path):
    cache, original = fill(tmp_path)
    path = chunk_of(cache, "item-4")
    doc = json.loads(path.read_text())
    doc["rows"][0]["columns"]["margin"] = -5.0
    doc["rows_sha256"] = digest(doc["rows"])
    doc["key_sha256"] = digest({**KEY, "version": "2"})
    path.write_text(json.dumps(doc))
    rows, computed, notes, warned = reread(tmp_path)
    assert rows == original and rows[4]["columns"]["margin"] == 1.0
    assert computed == 2 and len(notes) == 1 and notes[0].startswith(f"{path}: key hash")


GARBAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "garbage bytes": lambda text: b"\x00\xff\xfe garbage \x9c",
    "empty": lambda text: "",
    "json number": lambda text: "42",
    "json string": lambda text: '"rows"',
    "json object, not a chunk": lambda text: json.dumps({"item-0": {"margin": 0}}),
    "rows not a list": lambda text: json.dumps({**json.loads(text), "rows": {"item": "item-0"}}),
    "rows without item": lambda text: json.dumps(
        {**json.loads(text), "rows": [{"margin": 1}], "rows_sha256": digest([{"margin": 1}])}),
    "rows of numbers": lambda text: json.dumps({**json.loads(text), "rows": [1, 2], "rows_sha256": digest([1, 2])}),
    "old format (a bare list)": lambda text: json.dumps(json.loads(text)["rows"]),
    "format 2 object": lambda text: json.dumps({**json.loads(text), "format": 2}),
    "no format": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "format"}),
}
WHY = {
    "truncated": "not valid JSON, truncated or garbage", "garbage bytes": "not UTF-8 text",
    "empty": "not valid JSON", "json number": "not a cache chunk (a JSON int",
    "json string": "not a cache chunk (a JSON str", "json object, not a chunk": "cache format None, expected 3",
    "rows not a list": "rows are not a list of objects", "rows without item": "rows are not a list of objects",
    "rows of numbers": "rows are not a list of objects", "old format (a bare list)": "old cache format",
    "format 2 object": "cache format 2, expected 3: stale", "no format": "cache format None, expected 3",
}


@pytest.mark.parametrize("damage", sorted(GARBAGE))
def test_damaged_chunk_is_named_quarantined_and_recomputed(tmp_path, damage):
    """Before: a raw error without the file name (or a silently used old chunk), on every rerun."""
    cache, original = fill(tmp_path)
    path = chunk_of(cache, "item-2")
    bad = GARBAGE[damage](path.read_text())
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())

    rows, computed, notes, warned = reread(tmp_path)  # no exception, whatever the damage
    assert rows == original
    assert computed == 2
    assert len(warned) == 1
    message = str(warned[0].message)
    assert str(path) in message and WHY[damage] in message and "quarantine" in message
    assert len(notes) == 1 and notes[0].startswith(f"{path}: {WHY[damage]}")
    (moved,) = quarantined_files(tmp_path)
    assert moved.read_bytes() == (bad if isinstance(bad, bytes) else bad.encode())
    # repaired for good: the next run neither warns nor computes
    assert reread(tmp_path)[1:] == (0, [], [])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not an object", "another key", "old format"])
def test_damaged_key_json_is_named_moved_aside_and_written_again(tmp_path, damage):
    cache, original = fill(tmp_path)
    meta = cache.folder(KEY) / "key.json"
    good = meta.read_text()
    bad = {"truncated": good[:10], "garbage": "\x00\x01{{{", "not an object": "[1, 2, 3]",
           "another key": json.dumps({"format": 3, "key_sha256": digest({**KEY, "probe": "q"}),
                                      "key": {**KEY, "probe": "q"}}),
           "old format": json.dumps({**KEY, "cache_format": 2})}[damage]
    meta.write_text(bad)

    rows, computed, notes, warned = reread(tmp_path)
    assert rows == original
    assert computed == 0  # the chunks carry their own key hash: they stay trusted, only key.json is rewritten
    assert len(warned) == 1 and str(meta) in str(warned[0].message)
    assert "written again from the key" in str(warned[0].message)
    assert len(notes) == 1 and notes[0].startswith(f"{meta}: ")
    assert meta.read_text() == good
    (moved,) = quarantined_files(tmp_path)
    assert moved.read_text() == bad and moved.name.startswith("key.json.")


def test_old_format_folder_is_moved_aside_and_never_read(tmp_path):
    """A format-2 cache (folder named by the key with cache_format 2, bare-list chunks) is stale."""
    cache = ResultsCache(tmp_path)
    old_key = {**KEY, "cache_format": 2}
    legacy = tmp_path / KEY["model"][:16] / digest(old_key)[:32]
    legacy.mkdir(parents=True)
    (legacy / "key.json").write_text(json.dumps(old_key))
    wrong = [{**r, "columns": {"stereotyped": 1.0, "margin": 9.0}} for r in score(list(range(6)))]
    (legacy / f"{digest(IDS)[:24]}.json").write_text(json.dumps(wrong))

    with pytest.warns(CacheIntegrityWarning, match="cache format 2") as record:
        rows, computed = cache.rows(KEY, IDS, score)
    assert rows == score(list(range(6))) and computed == 6
    assert str(legacy) in str(record[0].message)
    assert not legacy.exists()
    moved = quarantined_files(tmp_path)
    assert [p.name for p in moved] == [f"{digest(IDS)[:24]}.json", "key.json"]
    assert json.loads(moved[0].read_text()) == wrong
    assert moved[0].parent.name.startswith(legacy.name + ".")


def test_quarantine_never_overwrites(tmp_path):
    cache, _ = fill(tmp_path)
    path = chunk_of(cache, "item-0")
    contents = []
    for k in range(3):  # the same chunk goes bad three times within the same clock tick, perhaps
        path.write_text(f"broken {k}")
        contents.append(f"broken {k}")
        cache.quarantine(path, "test", warn=False)
    assert sorted(p.read_text() for p in quarantined_files(tmp_path)) == contents


def test_two_users_computing_the_same_key_at_once_store_identical_rows(tmp_path):
    """Both find nothing stored (a barrier holds each compute until the other is computing too),
    both compute and write every chunk; the rows stored and returned are the same, nothing is quarantined."""
    barrier = threading.Barrier(2, timeout=60)
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def user(n: int) -> None:
        cache = ResultsCache(tmp_path)

        def compute(positions):
            barrier.wait()
            return score(positions)
        try:
            results[n] = (*cache.rows(KEY, IDS, compute, chunk=2), cache.quarantined)
        except BaseException as exc:  # reported below, with the thread's exception
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=user, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results[0] == results[1] == (score(list(range(6))), 6, [])
    cache = ResultsCache(tmp_path)
    stored = sorted(r["item"] for p in chunks(cache) for r in json.loads(p.read_text())["rows"])
    assert stored == sorted(IDS)  # each chunk once: the same name, replaced atomically by equal content
    assert reread(tmp_path)[:3] == (score(list(range(6))), 0, [])
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 0


# ---------------------------------------------------------------- bequeath cache verify / prune


def test_cache_verify_exit_codes_output_and_fix(tmp_path, capsys):
    cache, original = fill(tmp_path)
    fill(tmp_path, {**KEY, "model": "c" * 64})
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"6 chunk(s) in 2 key folder(s) under {tmp_path}: all pass their checks"

    edited, torn = chunk_of(cache, "item-1"), chunk_of(cache, "item-5")
    doc = json.loads(edited.read_text())
    doc["rows"][0]["columns"]["margin"] = 3.5
    edited.write_text(json.dumps(doc))
    torn.write_text(torn.read_text()[:-7])
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert f"{edited}: content hash does not match the rows (changed after they were written)" in lines
    assert any(line.startswith(f"{torn}: not valid JSON, truncated or garbage") for line in lines)
    assert lines[-1].startswith(f"6 chunk(s) in 2 key folder(s) under {tmp_path}: 2 problem(s); run again with --fix")
    assert edited.exists() and torn.exists()  # verify alone changes nothing

    assert main(["cache", "verify", "--cache", str(tmp_path), "--fix"]) == 2  # problems were found
    out = capsys.readouterr().out
    assert not edited.exists() and not torn.exists()
    moved = quarantined_files(tmp_path)
    assert len(moved) == 2 and all(f"moved to {p}" in out for p in moved)
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 0  # clean now
    assert "4 chunk(s) in 2 key folder(s)" in capsys.readouterr().out
    rows, computed, notes, _ = reread(tmp_path)  # the moved chunks' items are recomputed on next use
    assert rows == original and computed == 4 and notes == []


def test_cache_verify_flags_foreign_chunks_bad_key_json_and_old_format_folders(tmp_path, capsys):
    cache, _ = fill(tmp_path)
    other = {**KEY, "probe": "other"}
    fill(tmp_path, other)
    foreign = chunk_of(cache, "item-0", other)
    mine = chunk_of(cache, "item-0")
    mine.write_text(foreign.read_text())  # a consistent chunk, but another key's
    legacy = tmp_path / ("f" * 16) / ("0" * 32)
    legacy.mkdir(parents=True)
    (legacy / "key.json").write_text(json.dumps({"model": "f" * 64, "cache_format": 2}))
    (legacy / "x.json").write_text(json.dumps([{"item": "a"}]))
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert f"{mine}: key hash does not match this folder's key (rows of another model, probe, dataset or setting)" in lines
    assert f"{legacy / 'key.json'}: old cache format (key.json without a format): stale" in lines
    assert any(line.startswith(f"{legacy / 'x.json'}: old cache format") for line in lines)
    assert lines[-1].startswith("7 chunk(s) in 3 key folder(s)") and "3 problem(s)" in lines[-1]
    # --fix: the bad chunk alone; the old folder whole (its key is unrecorded in this format)
    assert main(["cache", "verify", "--cache", str(tmp_path), "--fix"]) == 2
    capsys.readouterr()
    assert not mine.exists() and not legacy.exists() and foreign.exists()
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 0


def test_cache_verify_uses_bequeath_cache_and_refuses_a_missing_folder(tmp_path, cache, capsys):
    results = cache / "results"
    fill(results)
    assert main(["cache", "verify"]) == 0
    assert f"under {results}: all pass" in capsys.readouterr().out
    assert main(["cache", "verify", "--cache", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: No results cache at {tmp_path / 'nope'}; "
                                                "give its folder with --cache DIR.")


def _age(folder: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    os.utime(folder / "last_used", (stamp, stamp))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_cache_prune_dry_run_lists_and_keeps_then_removes_old_folders_and_quarantine(tmp_path, capsys):
    old_key, new_key = {**KEY, "model": "0" * 64}, {**KEY, "model": "1" * 64}
    cache, _ = fill(tmp_path, old_key)
    fill(tmp_path, new_key)
    old, new = cache.folder(old_key), cache.folder(new_key)
    _age(old, 10)
    _age(new, 2)
    bad = chunk_of(cache, "item-0", new_key)
    bad.write_text("garbage")
    moved = cache.quarantine(bad, "test", warn=False)
    old_bytes, q_bytes = _size(old), moved.stat().st_size
    _age(new, 2)

    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    q_entry = tmp_path / "quarantine" / new.parent.name
    assert out == [f"would remove {old} ({old_bytes} bytes)", f"would remove {q_entry} ({q_bytes} bytes)",
                   f"would free {old_bytes + q_bytes} bytes (0.0 MiB) in {tmp_path}"]
    assert old.exists() and moved.exists()

    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"freed {old_bytes + q_bytes} bytes (0.0 MiB) in {tmp_path}"
    assert not old.exists() and not old.parent.exists() and not moved.exists() and new.exists()

    # a use refreshes last_used: an aged folder that is read again is not pruned
    _age(new, 10)
    ResultsCache(tmp_path).rows(new_key, IDS, score)
    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"freed 0 bytes (0.0 MiB) in {tmp_path}"
    assert new.exists()

    new_bytes = _size(new)
    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "0"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed {new} ({new_bytes} bytes)",
                                                    f"freed {new_bytes} bytes (0.0 MiB) in {tmp_path}"]
    assert not new.exists() and list(tmp_path.iterdir()) == []
    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "-1"]) == 2
    assert "--older-than must be 0 or more days, got -1" in capsys.readouterr().err


# ---------------------------------------------------------------- through the audit


def test_tampered_cache_between_two_audits_changes_nothing(tmp_path, tiny_model_dir, teacher_dir):
    """Before: flipping the student's cached 'stereotyped' columns changed the second run's numbers
    and verdicts silently. Now the chunk is caught, named, moved aside and recomputed."""
    from audit.harness import run_audit
    from audit.spec import AuditSpec
    from tests.conftest import build_tiny_model

    student_dir = build_tiny_model(tmp_path / "student", teacher_dir, seed=1)
    base = dict(teacher={"name": "teacher", "path": str(tiny_model_dir)},
                students=[{"name": "student", "path": str(student_dir)}],
                probes=[{"name": "bundled", "limit": 8}], tasks=[], n_boot=200,
                cache=str(tmp_path / "cache"), backend="hflm")
    out1, code1 = run_audit(AuditSpec.from_dict({**base, "out": str(tmp_path / "run1")}), progress=False)
    assert code1 == 0
    run1 = json.loads((out1 / "run.json").read_text())
    student_hash = run1["models"][1]["content_hash"]
    (chunk,) = (tmp_path / "cache" / student_hash[:16]).glob("*/[!k]*.json")
    doc = json.loads(chunk.read_text())
    for row in doc["rows"]:
        row["columns"]["stereotyped"] = 1.0 - row["columns"]["stereotyped"]
        row["columns"]["margin"] = -row["columns"]["margin"]
    chunk.write_text(json.dumps(doc))
    n = len(doc["rows"])
    share = sum(r["columns"]["stereotyped"] for r in doc["rows"]) / n  # what the tampered chunk claims
    overall1 = next(c for c in run1["comparisons"] if c["group_key"] == "all" and c["metric"] == "pct_stereotype")
    assert overall1["student"]["value"] == pytest.approx(1.0 - share) and share != pytest.approx(1.0 - share)

    with pytest.warns(CacheIntegrityWarning) as record:
        out2, code2 = run_audit(AuditSpec.from_dict({**base, "out": str(tmp_path / "run2")}), progress=False)
    assert code2 == 0
    mine = [str(w.message) for w in record if issubclass(w.category, CacheIntegrityWarning)]
    assert len(mine) == 1 and str(chunk) in mine[0] and "content hash does not match" in mine[0]
    run2 = json.loads((out2 / "run.json").read_text())
    assert run2["comparisons"] == run1["comparisons"]
    assert [c["verdict"] for c in run2["comparisons"]] == [c["verdict"] for c in run1["comparisons"]]
    assert (out2 / "items.jsonl").read_text() == (out1 / "items.jsonl").read_text()
    assert json.loads(chunk.read_text())["rows_sha256"] == digest(json.loads(chunk.read_text())["rows"])
