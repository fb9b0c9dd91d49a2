"""The evaluation items a distillation corpus must not contain, and the card's check against them.

Which items: every registered probe (built with its default options) and every task
(``audit.tasks``) whose data is on this machine. With no data directory that is what ships in
the package (the bundled probe and ``bundled_qa``); ``contamination_data: DIR`` in the distill
spec (e.g. ``../shared/data``) adds every probe and task whose files DIR holds. Each one not
checked is listed in the card with the reason.

An item's texts are what a model reads for it: for a probe item each request's context plus
continuation (and the generation prompt); for a task row every string field (each choice, the
question, the passage) on its own and all of them joined in the row's order. The comparison
itself is ``distill.contamination``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

from distill.contamination import CorpusIndex, EvalSet, card_block, check


def probe_texts(item: Any) -> tuple[str, ...]:
    """The texts of a ``probes.base.ProbeItem``: context + continuation per request, and the prompt."""
    texts = [context + continuation for context, continuation in item.requests]
    if item.prompt:
        texts.append(item.prompt)
    return tuple(dict.fromkeys(texts))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def row_texts(row: Any) -> tuple[str, ...]:
    """A task row's string fields, each on its own, and all of them joined (question then choices)."""
    fields = _strings(row)
    return tuple(dict.fromkeys([" ".join(fields), *fields])) if fields else ()


def task_items(path: Path) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(row index, texts) per record of a task's JSONL or CSV file; the index is lm-eval's doc_id."""
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            rows: list[Any] = list(csv.reader(fh))
        else:
            rows = [json.loads(line) for line in fh if line.strip()]
    return tuple((str(i), row_texts(row)) for i, row in enumerate(rows))


def load_eval_sets(data_dir: str | Path | None) -> tuple[list[EvalSet], list[dict[str, str]]]:
    """Every probe and task whose items can be read here, and the ones that cannot (with why)."""
    from audit.errors import SpecError
    from audit.tasks import all_tasks, task_data_file
    from probes.base import ProbeError
    from probes.registry import available, get_probe

    where = Path(data_dir) if data_dir else None
    sets, skipped = [], []
    for name in available():
        try:
            loaded = get_probe(name).load(where)
        except ProbeError as exc:
            skipped.append({"kind": "probe", "name": name, "reason": _why(exc, where)})
            continue
        sets.append(EvalSet(kind="probe", name=name, items=tuple((it.id, probe_texts(it)) for it in loaded.items)))
    for name in all_tasks():
        try:
            path = task_data_file(name, where)
        except SpecError as exc:
            skipped.append({"kind": "task", "name": name, "reason": _why(exc, where)})
            continue
        sets.append(EvalSet(kind="task", name=name, items=task_items(path)))
    return sets, skipped


def _why(exc: Exception, where: Path | None) -> str:
    if where is None:
        return "its data is not in the package; set data_dir (or contamination_data) to the folder that holds it"
    return str(exc).splitlines()[0]


def check_corpus(texts: list[str], *, data_dir: str | Path | None) -> dict[str, Any]:
    """The card's ``contamination`` block for a corpus; a warning names what overlaps."""
    index = CorpusIndex(texts)
    sets, skipped = load_eval_sets(data_dir)
    results = [check(index, s) for s in sets]
    block = {**card_block(index, results, skipped), "data_dir": str(data_dir) if data_dir else None}
    hit = [f"{r.name} ({r.overlapping}, e.g. {', '.join(r.examples)})" for r in results if r.overlapping]
    if hit:
        warnings.warn(f"{block['items_overlapping']} evaluation items share a {index.n}-gram with the distillation "
                      f"corpus: {'; '.join(hit)}. Their scores are not held out; remove those texts from the corpus "
                      "(see 'contamination' in distill_card.json).", stacklevel=2)
    return block


__all__ = ["probe_texts", "row_texts", "task_items", "load_eval_sets", "check_corpus"]
