"""File helpers every layer shares, defined once: atomic writes, sha256 of files, the cache root.

They live in the lowest package so that probes, audit, distill and reports can all import them
without an import going back up the layers (probes <- audit <- distill; reports reads runs).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """``$BEQUEATH_CACHE`` or ``$XDG_CACHE_HOME/bequeath`` (default ``~/.cache/bequeath``)."""
    root = os.environ.get("BEQUEATH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bequeath"
    )
    return Path(root)


def sha256_file(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """The file's sha256, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of it.

    One permission policy for everything bequeath writes (runs, reports, cache chunks, exports):
    the usual umask-governed mode, as ``open`` would give (``mkstemp`` alone makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["cache_dir", "sha256_file", "write_atomic"]
