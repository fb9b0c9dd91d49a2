"""Files of a run: atomic writes, the results cache, provenance. Side effects live here."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from audit.errors import RunDirError

SCHEMA_VERSION = 2
CACHE_FORMAT = 2  # 2: rows keyed by item id (1 was by position in the sampled list)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class ResultsCache:
    """Per-model results keyed by content: model hash, probe/task version, data hashes, settings.

    Rows are stored per item id, in chunks each written atomically, so an interrupted audit
    resumes where it stopped, a second audit against an audited teacher does not run it again,
    and a larger ``limit`` (or a different sample) scores only the items not yet stored. The key
    holds the data files' sha256, not their paths, so a moved checkout keeps its cache. The
    keys do not include the scoring backend: backends give the same numbers.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def rows(self, key: dict[str, Any], ids: list[str], compute: Callable[[list[int]], list[dict]],
             *, chunk: int = 256) -> tuple[list[dict], int]:
        """Rows for ``ids`` in their order, computing those not stored; returns (rows, n_computed).

        ``compute(positions)`` scores ``ids[p] for p in positions`` and returns one row per
        position, each with ``"item"`` set to its id.
        """
        key = {**key, "cache_format": CACHE_FORMAT}
        base = self.root / key["model"][:16] / digest(key)[:32]
        base.mkdir(parents=True, exist_ok=True)
        meta = base / "key.json"
        if not meta.exists():
            write_atomic(meta, json.dumps(key, indent=1, sort_keys=True))
        stored: dict[str, dict] = {}
        for path in sorted(base.glob("*.json")):
            if path == meta:
                continue
            try:
                part = json.loads(path.read_text())
            except ValueError:
                path.unlink()  # a torn file from an old crash: compute again
                continue
            for row in part:
                stored.setdefault(row["item"], row)
        missing = [p for p, i in enumerate(ids) if i not in stored]
        for start in range(0, len(missing), chunk):
            positions = missing[start:start + chunk]
            part = compute(positions)
            got = [r["item"] for r in part]
            if got != [ids[p] for p in positions]:
                raise ValueError(f"results cache: computed rows are for items {got[:3]}..., "
                                 f"expected {[ids[p] for p in positions][:3]}...")
            write_atomic(base / f"{digest(got)[:24]}.json", json.dumps(part))
            stored.update((r["item"], r) for r in part)
        return [stored[i] for i in ids], len(missing)


def prepare_run_dir(out: Path, spec_hash: str, *, force: bool) -> None:
    """Refuse a directory that holds a different run (unless ``force``); never delete anything."""
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
