"""Files of a run: atomic writes, the results cache, provenance. Side effects live here."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from audit.errors import RunDirError
from probes.files import write_atomic

SCHEMA_VERSION = 3  # 3: provenance typed, an integrity block (sha256 and optional HMAC) over run.json
CACHE_FORMAT = 3  # 3: chunks carry their key and rows sha256; 2: bare lists keyed by item id; 1: by position


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class CacheIntegrityWarning(UserWarning):
    """A results-cache file failed its check: it was moved to quarantine and its items are recomputed."""


KEY_FILE = "key.json"
LAST_USED = "last_used"
QUARANTINE = "quarantine"
_LEGACY_FORMATS = (2,)  # folders named by sha256({**key, "cache_format": n}): moved aside on first use


def _normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON, so that what is hashed is exactly what is stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _is_row(row: Any) -> bool:
    return isinstance(row, dict) and isinstance(row.get("item"), str | int) and not isinstance(row.get("item"), bool)


def _read_json(path: Path) -> Any:
    """The parsed file; raises FileNotFoundError if it vanished, ValueError (naming why) if it is not JSON."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text (garbage)") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON, truncated or garbage ({exc})") from None


def chunk_problem(data: Any, key_ok: Callable[[Any], bool]) -> str | None:
    """Why a parsed chunk cannot be trusted, or None. ``key_ok(key_sha256)`` says whether its key hash fits."""
    if isinstance(data, list):
        return "old cache format (a bare list of rows, from before chunks carried hashes): stale"
    if not isinstance(data, dict):
        return f"not a cache chunk (a JSON {type(data).__name__}, expected an object)"
    if data.get("format") != CACHE_FORMAT:
        return f"cache format {data.get('format')!r}, expected {CACHE_FORMAT}: stale"
    if not key_ok(data.get("key_sha256")):
        return "key hash does not match this folder's key (rows of another model, probe, dataset or setting)"
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(_is_row(r) for r in rows):
        return "rows are not a list of objects each with an 'item' id"
    if digest(rows) != data.get("rows_sha256"):
        return "content hash does not match the rows (changed after they were written)"
    return None


def key_problem(data: Any, folder: str, key_sha256: str | None = None) -> str | None:
    """Why a parsed key.json does not describe its folder (named by ``digest(key)[:32]``), or None."""
    if not isinstance(data, dict) or "format" not in data:
        return "old cache format (key.json without a format): stale"
    if data.get("format") != CACHE_FORMAT:
        return f"cache format {data.get('format')!r}, expected {CACHE_FORMAT}: stale"
    key = data.get("key")
    if not isinstance(key, dict) or digest(key) != data.get("key_sha256"):
        return "key hash does not match the key it records"
    if digest(key)[:32] != folder or (key_sha256 is not None and digest(key) != key_sha256):
        return "records another key than this folder's"
    return None


class ResultsCache:
    """Per-model results keyed by content: model hash, probe/task version, data hashes, settings.

    Rows are stored per item id, in chunks each written atomically, so an interrupted audit
    resumes where it stopped, a second audit against an audited teacher does not run it again,
    and a larger ``limit`` (or a different sample) scores only the items not yet stored. The key
    holds the data files' sha256, not their paths, so a moved checkout keeps its cache. The
    keys do not include the scoring backend: backends give the same numbers.

    Layout: ``root/<model hash[:16]>/<sha256(key)[:32]>/`` holds ``key.json`` (the key and its
    sha256), ``last_used`` (touched on every use; ``prune`` reads it) and chunks
    ``{"format", "key_sha256", "rows_sha256", "rows"}``. A chunk is used only if its format is
    current, its key hash is the caller's and its rows hash matches its rows; any other chunk
    (torn, garbage, edited, another key's, an older format) is moved to ``root/quarantine/``
    (same relative path, a timestamp appended), named in a :class:`CacheIntegrityWarning` and in
    :attr:`quarantined`, and its items are recomputed. The hashes catch corruption and edits
    made without recomputing them; they are not a signature against someone who recomputes both.
    """

    def __init__(self, root: Path, *, writer: bool = True) -> None:
        self.root = Path(root)
        # a data-parallel audit's ranks other than 0 only read: rank 0 has the same rows (gathered) and
        # writes each chunk once, atomically, so a reader sees a whole chunk or none (audit.parallel)
        self.writer = writer
        self.quarantined: list[str] = []  # "path: why" of each file this instance moved aside

    def folder(self, key: dict[str, Any]) -> Path:
        return self.root / str(key["model"])[:16] / digest(_normal(key))[:32]

    def rows(self, key: dict[str, Any], ids: list[str], compute: Callable[[list[int]], list[dict]],
             *, chunk: int = 256, agree: Callable[[list[int]], list[int]] | None = None) -> tuple[list[dict], int]:
        """Rows for ``ids`` in their order, computing those not stored; returns (rows, n_computed).

        ``compute(positions)`` scores ``ids[p] for p in positions`` and returns one row per
        position, each with ``"item"`` set to its id. ``agree(missing)``: the positions to compute,
        agreed by every rank of a data-parallel audit (each must make the same scoring calls).
        """
        key = _normal(key)
        key_hash = digest(key)
        base = self.folder(key)
        if self.writer:
            for old in _LEGACY_FORMATS:
                legacy = base.with_name(digest({**key, "cache_format": old})[:32])
                if legacy.is_dir():
                    self.quarantine(legacy, f"cache format {old} (chunks without hashes): stale")
            base.mkdir(parents=True, exist_ok=True)
            (base / LAST_USED).touch()
            self._check_key_file(base, key, key_hash)
        stored: dict[str, dict] = {}
        for path in sorted(base.glob("*.json")):
            if path.name == KEY_FILE:
                continue
            try:
                data = _read_json(path)
                why = chunk_problem(data, lambda h: h == key_hash)
            except FileNotFoundError:
                continue  # moved aside by another user of the cache meanwhile
            except ValueError as exc:
                why = str(exc)
            if why:
                if self.writer:
                    self.quarantine(path, why)
                continue
            for row in data["rows"]:
                stored.setdefault(row["item"], row)
        missing = [p for p, i in enumerate(ids) if i not in stored]
        if agree is not None:
            missing = agree(missing)
        for start in range(0, len(missing), chunk):
            positions = missing[start:start + chunk]
            part = compute(positions)
            got = [r.get("item") if isinstance(r, dict) else None for r in part]
            if got != [ids[p] for p in positions]:
                raise ValueError(f"results cache: computed rows are for items {got[:3]}..., "
                                 f"expected {[ids[p] for p in positions][:3]}...")
            part = _normal(part)
            doc = {"format": CACHE_FORMAT, "key_sha256": key_hash, "rows_sha256": digest(part), "rows": part}
            if self.writer:
                write_atomic(base / f"{digest(got)[:24]}.json", json.dumps(doc))
            stored.update((r["item"], r) for r in part)
        return [stored[i] for i in ids], len(missing)

    def _check_key_file(self, base: Path, key: dict[str, Any], key_hash: str) -> None:
        """key.json records the folder's key; a damaged or foreign one is moved aside and written again."""
        meta = base / KEY_FILE
        try:
            doc = _read_json(meta)
            why = key_problem(doc, base.name, key_hash) or (
                "unknown field(s): not a key.json this cache wrote" if set(doc) != {"format", "key_sha256", "key"}
                else None)
        except FileNotFoundError:
            why = None
        except ValueError as exc:
            why = str(exc)
        if why:
            self.quarantine(meta, why, then="written again from the key", stacklevel=4)
        if why or not meta.exists():
            write_atomic(meta, json.dumps({"format": CACHE_FORMAT, "key_sha256": key_hash, "key": key},
                                          indent=1, sort_keys=True))

    def quarantine(self, path: Path, why: str, *, warn: bool = True, then: str = "its items are recomputed",
                   stacklevel: int = 3) -> Path | None:
        """Move ``path`` (a file or a key folder) under ``root/quarantine/``, keeping its relative path
        and appending a UTC timestamp; never overwrites. Returns where it went (None if it vanished)."""
        rel = Path(path).resolve().relative_to(self.root.resolve())
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.root / QUARANTINE / rel.parent / f"{rel.name}.{stamp}"
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{rel.name}.{stamp}-{n}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return None  # another user of the cache moved it first
        self.quarantined.append(f"{path}: {why}")
        if warn:
            warnings.warn(f"results cache: {path}: {why}; moved to {dest}, {then}",
                          CacheIntegrityWarning, stacklevel=stacklevel)
        return dest

    # ------------------------------------------------------------------ maintenance (bequeath cache)

    def key_folders(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for model in sorted(self.root.iterdir()):
            if model.name == QUARANTINE or not model.is_dir():
                continue
            yield from (d for d in sorted(model.iterdir()) if d.is_dir())

    def verify(self, *, fix: bool = False) -> VerifyReport:
        """Check every key folder and chunk; with ``fix`` move each bad one to quarantine.

        A folder whose key.json is missing or bad cannot be tied to a recorded key: with ``fix`` the
        whole folder is moved aside (its items are recomputed on next use).
        """
        report = VerifyReport(root=self.root)
        for base in self.key_folders():
            report.folders += 1
            meta = base / KEY_FILE
            try:
                key_data = _read_json(meta)
                meta_why = key_problem(key_data, base.name)
            except FileNotFoundError:
                meta_why = "key.json missing: the folder's key is unrecorded"
            except ValueError as exc:
                meta_why = str(exc)
            if meta_why:
                report.problems.append((meta, meta_why))
                key_hash = None
            else:
                key_hash = key_data["key_sha256"]
            bad: list[tuple[Path, str]] = []
            for path in sorted(base.glob("*.json")):
                if path.name == KEY_FILE:
                    continue
                report.chunks += 1
                try:
                    why = chunk_problem(_read_json(path), lambda h, k=key_hash, b=base.name: isinstance(h, str) and (
                        h == k if k else (len(h) == 64 and h[:32] == b)))
                except FileNotFoundError:
                    continue
                except ValueError as exc:
                    why = str(exc)
                if why:
                    bad.append((path, why))
            report.problems.extend(bad)
            if fix and meta_why:
                report.moved.append(self.quarantine(base, meta_why, warn=False))
            elif fix:
                report.moved.extend(self.quarantine(p, why, warn=False) for p, why in bad)
        report.moved = [m for m in report.moved if m is not None]
        return report

    def prune(self, *, older_than_days: float, dry_run: bool = False) -> list[tuple[Path, int]]:
        """Remove key folders not used for ``older_than_days`` days (0: all) and everything in
        quarantine; returns (path, bytes) of each removed (with ``dry_run``: would be removed)."""
        if older_than_days < 0:
            raise ValueError("older_than_days must be >= 0")
        now = time.time()
        gone: list[tuple[Path, int]] = []
        for base in list(self.key_folders()):
            stamp = base / LAST_USED
            try:  # folders from before last_used was recorded: their newest file
                used = stamp.stat().st_mtime if stamp.exists() else max(
                    (p.stat().st_mtime for p in base.iterdir()), default=base.stat().st_mtime)
            except FileNotFoundError:
                continue
            if older_than_days == 0 or now - used >= older_than_days * 86400:
                gone.append((base, _size(base)))
        quarantine = self.root / QUARANTINE
        if quarantine.is_dir():
            gone.extend((p, _size(p)) for p in sorted(quarantine.iterdir()))
        if not dry_run:
            for path, _ in gone:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for model in {p.parent for p, _ in gone}:
                if model != self.root and model.is_dir() and not any(model.iterdir()):
                    model.rmdir()
        return gone


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class VerifyReport:
    root: Path
    folders: int = 0
    chunks: int = 0
    problems: list[tuple[Path, str]] = field(default_factory=list)
    moved: list[Path | None] = field(default_factory=list)


def prepare_run_dir(out: Path, spec_hash: str, *, force: bool, create: bool = True) -> None:
    """Refuse a directory that holds a different run (unless ``force``); never delete anything.
    ``create=False``: only the check (a data-parallel audit's ranks other than 0 write nothing)."""
    run = out / "run.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"Output {out} is a file; give a directory for the run.")
    if run.exists() and not force:
        try:
            old = json.loads(run.read_text()).get("provenance", {}).get("spec_hash")
        except ValueError:
            old = None
        if old != spec_hash:
            raise RunDirError(
                f"{out} already holds a different audit run (spec hash {str(old)[:12]} vs {spec_hash[:12]}). "
                "Choose another --out, or pass --force to overwrite run.json and items.jsonl there."
            )
    if create:
        out.mkdir(parents=True, exist_ok=True)


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def provenance(*, seed: int, spec_hash: str, dataset_files: dict[str, str]) -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        git = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        git = None
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        **{k.replace("-", "_"): _version(k) for k in ("torch", "transformers", "lm-eval", "fairlearn", "bequeath")},
        "git": git, "seed": seed, "spec_hash": spec_hash, "dataset_files": dataset_files,
    }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
