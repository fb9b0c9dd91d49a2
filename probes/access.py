"""Data access for probes: local files checked against their recorded sha256, hub ids
(``hf://OWNER/NAME[:CONFIG][@SPLIT]``) exported once to a local file in the probe's own format,
and readers that name the file, line and field of every bad row (split from probes.base, which
keeps the probe contract: items, answers, metrics, cards)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from probes.base import ProbeDataError
from probes.files import cache_dir, sha256_file, write_atomic

# ---------------------------------------------------------------- helpers for probes


def verify_file(path: Path, expected_sha256: str | None) -> str:
    """The file's sha256; a clear error when it is missing or differs from the recorded one."""
    if not path.is_file():
        raise ProbeDataError(f"{path}: file not found. Pass the folder that holds it (--data-dir).")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise ProbeDataError(
            f"{path}: sha256 {digest[:12]}... differs from the recorded {expected_sha256[:12]}...; "
            "the file was changed or is a different release. Restore the original file."
        )
    return digest


def data_file(path: str | Path | None, data_dir: Path | None, default: str, sha256: str | None,
              *, hub: HubAdapter | None = None) -> DataFile:
    """The file to read: ``path`` if given, else ``data_dir/default``; a hub id when ``hub`` is given.

    The recorded sha256 is checked whenever the file carries the default file name, so a
    renamed slice can be read but a changed release of the canonical file cannot. A ``path``
    of the form ``hf://OWNER/NAME[:CONFIG][@SPLIT]`` is exported once to a local file in the
    probe's own format (see ``hub_file``) and read by the same reader; a probe that passes no
    ``hub`` adapter refuses it, naming the local file to pass instead.
    """
    if path and is_hub_ref(path):
        if hub is None:
            _refuse_hub(path, Path(default).parts[0],
                        f"a local copy of {Path(default).name}, or data_dir= the folder holding {default}")
        return hub_file(HubRef.parse(str(path)), hub, local_hint=default)
    if path:
        src = Path(path).expanduser()
    elif data_dir:
        src = Path(data_dir).expanduser() / default
    else:
        raise ProbeDataError(
            f"No data for this probe: pass data_dir (the folder holding {default}) or path (the file)."
        )
    expected = sha256 if src.name == Path(default).name else None
    return DataFile(path=src, sha256=verify_file(src, expected), source=str(src))


def as_path(path: str | Path | None) -> str | Path | None:
    """A probe's ``path`` option: a hub id kept as the string, a local path as a Path, or None."""
    return path if is_hub_ref(path) else (Path(path) if path else None)


def local_path(path: str | Path | None, probe: str, expects: str) -> Path | None:
    """``path`` as a local Path (None if not given); a clear refusal of a hub id.

    For probes with no hub copy (the bundled templates).
    """
    if path and is_hub_ref(path):
        _refuse_hub(path, probe, expects)
    return as_path(path)


def _refuse_hub(path: str | Path, probe: str, expects: str) -> None:
    raise ProbeDataError(
        f"{path}: the {probe} probe reads local files only (it has no hub copy with confirmed columns). "
        f"Pass path= {expects}."
    )


# ---------------------------------------------------------------- hub ids: export once, then read locally

HUB_PREFIX = "hf://"
_OFF = ("1", "ON", "YES", "TRUE")


class DataFile(NamedTuple):
    """A data file to read, its sha256, and what it came from (for ``LoadedItems.files``)."""

    path: Path
    sha256: str
    source: str  # the path; for a hub export: the hub id, its revision/fingerprint, and the file


@dataclass(frozen=True, kw_only=True)
class HubRef:
    """``hf://OWNER/NAME[:CONFIG][@SPLIT]``: a dataset on the Hugging Face hub."""

    repo: str
    config: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubRef:
        body = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
        body, at, split = body.partition("@")
        repo, colon, config = body.partition(":")
        owner, slash, name = repo.partition("/")
        if not (slash and owner and name and "/" not in name and (config or not colon) and (split or not at)):
            raise ProbeDataError(
                f"'{text}' is not a hub dataset id; expected hf://OWNER/NAME[:CONFIG][@SPLIT], "
                "e.g. hf://oskarvanderwal/bbq:All@test."
            )
        return cls(repo=repo, config=config or None, split=split or None)

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo + (f":{self.config}" if self.config else "") + (
            f"@{self.split}" if self.split else "")


@dataclass(frozen=True, kw_only=True)
class HubAdapter:
    """How a probe reads a hub copy: the local format its reader parses, and column fixes.

    ``renames``: hub column -> the column the local file has. ``class_ids``: top-level
    ClassLabel columns whose integer is the value (e.g. an answer index); every other
    ClassLabel (nested ones too) is written as its name. ``confirmed_by``: where the hub
    copy's columns are documented (an lm-eval task config, the dataset's loading script), so
    a reader is never pointed at a guessed schema.

    A hub copy split into configs or splits (StereoSet's intra/intersentence, WinoBias's
    type1_pro...) lists them in ``configs`` / ``splits``: an id that names none reads them all,
    and each row carries ``_config`` / ``_split``. ``convert`` maps each (decoded, renamed) row
    to the row the local file has. ``layout`` turns all rows into the files of the probe's local
    folder ({relative name: text}); without it the rows are written as one ``fmt`` file.
    """

    probe: str
    example: str  # the canonical id of the confirmed copy, shown by `bequeath ls probes`
    confirmed_by: str
    fmt: Literal["csv", "jsonl"] = "jsonl"
    split: str = "test"
    renames: Mapping[str, str] = field(default_factory=dict)
    class_ids: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    layout: Callable[[Iterable[dict[str, Any]]], Mapping[str, str]] | None = None


def is_hub_ref(path: str | Path | None) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


def hub_file(ref: HubRef, adapter: HubAdapter, *, local_hint: str) -> DataFile:
    """The local export of a hub dataset, written once (atomically) and verified on reuse.

    The export lives in ``$BEQUEATH_CACHE/datasets/OWNER--NAME/CONFIG/SPLIT.PROBE.FMT`` (a
    folder ``SPLIT.PROBE`` for an adapter with a ``layout``) with a ``.source.json`` beside it
    (hub id, revision, fingerprint, sha256 of each file); a second load reads it without
    touching ``datasets``.
    """
    configs = (ref.config,) if ref.config else (adapter.configs or (None,))
    splits = (ref.split,) if ref.split else (adapter.splits or (adapter.split,))
    ref = HubRef(repo=ref.repo, config=ref.config, split=ref.split or (None if adapter.splits else adapter.split))
    folder = cache_dir() / "datasets" / _safe(ref.repo.replace("/", "--")) / _safe(
        ref.config or ("all" if adapter.configs else "default"))
    name = f"{_safe(ref.split or 'all')}.{adapter.probe}"
    out = folder / (name if adapter.layout else f"{name}.{adapter.fmt}")
    meta_path = out.with_name(out.name + ".source.json")
    if out.exists() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        digest = _export_digest(out)
        if digest != meta.get("sha256"):
            raise ProbeDataError(
                f"{out}: sha256 {digest[:12]}... differs from the {str(meta.get('sha256'))[:12]}... recorded "
                f"when {ref} was exported; the cached file was changed. Delete {out} to export it again."
            )
        return DataFile(path=out, sha256=digest, source=_hub_source(meta, out))
    loaded = [(c, sp, _load_hub(HubRef(repo=ref.repo, config=c, split=sp), local_hint))
              for c in configs for sp in splits]

    def rows() -> Iterator[dict[str, Any]]:
        for c, sp, ds in loaded:
            tags = {"_config": c} if adapter.configs else {}
            tags |= {"_split": sp} if adapter.splits else {}
            for row in _hub_rows(ds, adapter):
                row = {**row, **tags}
                yield adapter.convert(row) if adapter.convert else row

    folder.mkdir(parents=True, exist_ok=True)
    n_rows = _write_export(out, rows(), adapter)
    meta = {"hub_id": str(ref), "repo": ref.repo, "config": ref.config, "split": ref.split,
            "read": [f"{c or 'default'}@{sp}" for c, sp, _ in loaded],
            "revision": next((r for _, _, ds in loaded if (r := _revision(ds))), None),
            "fingerprint": ",".join(str(getattr(ds, "_fingerprint", None) or "") for _, _, ds in loaded) or None,
            "rows": n_rows, "probe": adapter.probe, "format": "folder" if adapter.layout else adapter.fmt,
            "columns_confirmed_by": adapter.confirmed_by, "sha256": _export_digest(out)}
    write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True))
    return DataFile(path=out, sha256=meta["sha256"], source=_hub_source(meta, out))


def _export_digest(out: Path) -> str:
    """sha256 of an export file, or of a folder's (name, sha256) list."""
    if out.is_dir():
        return hashlib.sha256(json.dumps([[p.relative_to(out).as_posix(), sha256_file(p)] for p in
                                          sorted(out.rglob("*")) if p.is_file()]).encode()).hexdigest()
    return sha256_file(out)


def _hub_source(meta: Mapping[str, Any], out: Path) -> str:
    facts = [f"{k} {meta[k]}" for k in ("revision", "fingerprint") if meta.get(k)]
    return f"{meta['hub_id']}" + (f" ({', '.join(facts)})" if facts else "") + f" -> {out}"


def _load_hub(ref: HubRef, local_hint: str) -> Any:
    """``datasets.load_dataset`` (never remote code), with errors that say what to do."""
    try:
        import datasets
    except ImportError as exc:
        raise ProbeDataError(f"{ref}: reading a hub id needs the 'datasets' package; pip install datasets, "
                             f"or pass a local copy of {local_hint} (path= or data_dir=).") from exc
    local = (f"Pass a local file instead: path= a copy of {Path(local_hint).name}, or data_dir= the folder "
             f"holding {local_hint}.")
    try:
        return datasets.load_dataset(ref.repo, ref.config, split=ref.split)
    except ValueError as exc:  # unknown config or split: datasets names the valid ones
        msg = str(exc).rstrip(".")
        valid = re.search(r"\[([^\]]*)\]", msg)
        what = next((w for w in ("split", "config") if w in msg.lower()), None)
        hint = f" Valid {what}s: {valid.group(1)}; write hf://{ref.repo}:CONFIG@SPLIT." if valid and what else ""
        raise ProbeDataError(f"{ref}: {msg}.{hint}") from exc
    except Exception as exc:
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").upper() in _OFF]
        net = (isinstance(exc, (ConnectionError, TimeoutError))
               or type(exc).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError",
                                         "ConnectTimeout"))
        if offline or net:
            why = f"the network is off ({offline[0]}=1)" if offline else "the hub could not be reached"
            raise ProbeDataError(
                f"{ref}: not in the local datasets cache and {why}. {local} Or load it once with the "
                f"network on; it is then exported to $BEQUEATH_CACHE/datasets. ({type(exc).__name__}: {exc})"
            ) from exc
        raise ProbeDataError(f"{ref}: could not load it ({type(exc).__name__}: {exc}). Check the id "
                             f"(private or gated datasets need a login). {local}") from exc


def _revision(ds: Any) -> str | None:
    """The hub commit the rows came from, when the datasets cache path names one."""
    for f in getattr(ds, "cache_files", None) or ():
        hit = re.search(r"/([0-9a-f]{40})/", str(f.get("filename", "")))
        if hit:
            return hit.group(1)
    return None


def _hub_rows(ds: Any, adapter: HubAdapter) -> Iterator[dict[str, Any]]:
    """Rows with ClassLabel ints as their names (but top-level ``class_ids``), columns renamed."""
    feats = {c: f for c, f in ds.features.items() if c not in adapter.class_ids}
    for row in ds:
        row = {c: _label_names(feats[c], v) if c in feats else v for c, v in row.items()}
        yield {adapter.renames.get(k, k): v for k, v in row.items()}


def _label_names(feat: Any, value: Any) -> Any:
    """``value`` with every ClassLabel int inside it (lists, dicts, sequences of dicts) as its name."""
    from datasets import ClassLabel, Sequence

    if isinstance(feat, ClassLabel):
        return feat.int2str(value) if isinstance(value, int) and value >= 0 else None
    if isinstance(feat, Sequence):
        inner = feat.feature
        if isinstance(inner, dict) and isinstance(value, dict):  # a sequence of dicts is a dict of lists
            return {k: [_label_names(inner[k], x) for x in v] if k in inner else v for k, v in value.items()}
        return [_label_names(inner, x) for x in value] if isinstance(value, list) else value
    if isinstance(feat, list) and feat and isinstance(value, list):
        return [_label_names(feat[0], x) for x in value]
    if isinstance(feat, dict) and isinstance(value, dict):
        return {k: _label_names(feat[k], v) if k in feat else v for k, v in value.items()}
    return value


def _write_export(out: Path, rows: Iterator[dict[str, Any]], adapter: HubAdapter) -> int:
    """Write rows as JSONL or CSV (nested values as JSON), or as the adapter's folder layout,
    atomically per file; returns the row count."""
    import csv
    import io

    if adapter.layout:  # files written in a temporary folder, which then replaces ``out`` in one rename
        got = list(rows)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, text in adapter.layout(got).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)  # no .source.json yet: a torn earlier export
        os.replace(tmp, out)
        return len(got)
    buf = io.StringIO(newline="")
    writer = None
    n = 0
    for row in rows:
        n += 1
        if adapter.fmt == "jsonl":
            buf.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            continue
        if writer is None:
            writer = csv.DictWriter(buf, fieldnames=list(row))
            writer.writeheader()
        writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list))
                         else ("" if v is None else v) for k, v in row.items()})
    write_atomic(out, buf.getvalue())
    return n


class RowErrors:
    """Collects malformed rows; raises once with all of them unless skipping is allowed."""

    def __init__(self, *, allow_skip: bool, limit_shown: int = 20) -> None:
        self.allow_skip = allow_skip
        self.problems: list[str] = []
        self.limit_shown = limit_shown

    def add(self, path: Path | str, line: int, fld: str, problem: str) -> None:
        self.problems.append(f"{path}:{line}: field '{fld}': {problem}")

    def finish(self) -> tuple[int, tuple[str, ...]]:
        if self.problems and not self.allow_skip:
            shown = "\n  ".join(self.problems[: self.limit_shown])
            more = len(self.problems) - self.limit_shown
            raise ProbeDataError(
                f"{len(self.problems)} malformed row(s):\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nFix the rows, or pass allow_skip: true to skip them (the count is recorded)."
            )
        return len(self.problems), tuple(self.problems)


def read_text(path: str | Path) -> str:
    """A data file's text; a file that is not UTF-8 is a ProbeDataError naming it and the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProbeDataError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason}). "
                             "Save the file as UTF-8, or pass the original dataset file.") from exc


def open_text(path: str | Path) -> io.StringIO:
    """``read_text`` as a file object (newlines kept as in the file, as csv wants)."""
    return io.StringIO(read_text(path), newline="")


def jsonl_rows(path: Path, errors: RowErrors) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for each non-blank line; bad JSON goes to ``errors``."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except ValueError as exc:
                errors.add(path, n, "<json>", f"not valid JSON ({exc})")
