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


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write ``text`` (or bytes, as they are) so that readers see the old file or the new one, never half of it.

    One permission policy for everything bequeath writes (runs, reports, cache chunks, exports):
    the usual umask-governed mode, as ``open`` would give (``mkstemp`` alone makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_lm_eval_task(out_dir: str | Path, source: str, data: str | Path, *, task: str, fmt: str = "json",
                       utils_module: str = "utils") -> str:
    """The one writer of lm-eval task YAML: lm-eval's own config ``source`` (relative to its tasks
    folder, e.g. ``"bbq/bbq_multiple_choice.yaml"``), renamed ``task``, without its tags, reading
    the local ``data`` file (loaded by the ``datasets`` builder ``fmt``: json, csv) as its test
    split; the folder's ``utils.py`` is copied beside it as ``utils_module``. Every other line of
    the config (prompts, choices, metrics, filters) is lm-eval's, unchanged, so the task scores as
    lm-eval does. Returns the task name (for ``TaskManager(include_path=out_dir)``).
    """
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lm-eval is not installed; install lm-eval==0.4.13 to write an lm-eval task.")
    src = Path(list(spec.submodule_search_locations)[0]) / "tasks" / source
    out = [f"task: {task}", f"dataset_path: {fmt}", "dataset_kwargs:", "  data_files:",
           f"    test: {Path(data).resolve()}", "test_split: test"]
    in_tag = False
    for line in src.read_text(encoding="utf-8").splitlines():
        key = line.split(":")[0]
        in_tag = key == "tag" or (in_tag and line.startswith("  - "))
        if not in_tag and key not in {"task", "dataset_path", "dataset_name", "dataset_kwargs", "test_split"}:
            out.append(line.replace("!function utils.", f"!function {utils_module}."))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (src.parent / "utils.py").is_file():
        shutil.copy(src.parent / "utils.py", out_dir / f"{utils_module}.py")
    (out_dir / f"{task}.yaml").write_text("\n".join(out) + "\n", encoding="utf-8")
    return task


__all__ = ["cache_dir", "sha256_file", "write_atomic", "write_lm_eval_task"]
