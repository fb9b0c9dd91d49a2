"""The probe contract: items with group labels, per-item scoring rules, metrics.

A probe turns a dataset into ``ProbeItem``s. Each item carries the requests a model
must answer (log-likelihood of continuations, or a generation prompt), its ``groups``
(e.g. ``{"bias_type": "gender"}``) and a ``cluster`` id (template or question id) for
resampling. After a model answered, ``Probe.score_item`` turns the answers into named
per-item numbers ("columns"); every ``Metric`` is a pure function of those columns, so
the audit can bootstrap it, pair teacher with student on item ids, and recompute it on
any group. Subgroups are data values, never new files or classes.

Reading the data (local files, hub ids, readers naming file, line and field) is in
``probes.access``; this module is the contract the audit relies on.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


class ProbeError(Exception):
    """Bad probe input: names the file, line and field, and says what to do."""

    exit_code = 2


class ProbeDataError(ProbeError):
    """A data file is missing, has the wrong hash, or holds malformed rows."""


@dataclass(frozen=True, kw_only=True)
class ProbeItem:
    """One unit of a probe, scored identically for every model and joined on ``id``.

    ``requests``: (context, continuation) pairs scored by log-likelihood, in a fixed order
    that ``score_item`` knows (e.g. [stereotype, anti-stereotype]). ``prompt``: the text to
    continue, for generation probes. ``meta``: JSON-able facts the scoring rule needs
    (gold label, which option is the biased answer...).
    """

    id: str
    groups: Mapping[str, str]
    cluster: str
    requests: tuple[tuple[str, str], ...] = ()
    prompt: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A model's answer to one log-likelihood request."""

    loglik: float
    is_greedy: bool
    n_tokens: int | None = None  # tokens in the continuation, when the backend can say


Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Metric:
    """A metric of a probe, computed from per-item columns of the items of one group.

    ``neutral``: the value that means no bias. The signed bias in points is
    ``(value - neutral) * scale`` (e.g. pct_stereotype 0.63 -> +13 points).
    ``binary``: the per-item 0/1 column ("stereotyped choice") used for McNemar's test
    and item-level inheritance evidence; ``margin``: the per-item continuous preference.
    ``kind``: "bias" metrics get verdicts; "quality" metrics (LMS, accuracy) are shown
    beside them so that a near-chance model is not read as unbiased. ``across``: the group
    key whose values the metric compares; within one value it is undefined, so the audit
    makes no comparison cell per value of that key.
    """

    name: str
    description: str
    compute: Callable[[Columns], float]
    neutral: float = 0.0
    scale: float = 1.0
    kind: Literal["bias", "quality"] = "bias"
    binary: str | None = None
    margin: str | None = None
    min_items: int = 10
    across: str | None = None  # a group key the metric contrasts (e.g. a gap between groups): no cells per its value


@dataclass(frozen=True, kw_only=True)
class ProbeCard:
    """What a probe measures and where its data come from; shown in every report."""

    title: str
    measures: str
    metrics: Mapping[str, str]  # metric name -> neutral value and direction, in words
    data: str  # provenance: repository, commit, files
    license: str
    caveats: Sequence[str]
    citation: str
    bundled: bool = False  # data written for this project and shipped in the package
    # Measurability: the quality metric that says the model can do the probe's task, the value at
    # or below which its bias numbers are not judged (chance), and the per-item column holding the
    # index of the option it chose (one option on >= 95% of items = degenerate answers).
    ability: str | None = None
    floor: float | None = None
    choice: str | None = None


@dataclass(frozen=True, kw_only=True)
class LoadedItems:
    """Items read from data, with what was skipped and the files read (path -> sha256)."""

    items: list[ProbeItem]
    n_skipped: int = 0
    skipped: tuple[str, ...] = ()  # "file:line: field: problem" per skipped row
    files: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Probe(Protocol):
    """What every registered probe provides."""

    name: str
    version: str
    kind: Literal["loglikelihood", "generation"]
    # the lm-eval request types the probe sends: ("loglikelihood",) or ("generate_until",); a backend
    # that lacks one is refused before scoring (audit.lm.check_needs)
    needs: tuple[str, ...]
    group_keys: tuple[str, ...]  # the keys of ProbeItem.groups the audit breaks down by
    metrics: tuple[Metric, ...]
    card: ProbeCard

    def load(self, data_dir: Path | None, *, allow_skip: bool = False) -> LoadedItems: ...

    def score_item(self, item: ProbeItem, answers: Sequence[Answer] | str) -> Mapping[str, float]: ...


# ---------------------------------------------------------------- per-item numbers


def stratified_sample(
    items: Sequence[ProbeItem], *, by: Sequence[str], limit: int | None, seed: int
) -> list[ProbeItem]:
    """At most ``limit`` items per combination of the ``by`` group keys, seeded; order kept.

    Samples are nested: the items kept at ``limit`` n are among those kept at any larger limit, so a
    larger limit scores only the added items (the results cache is keyed per item).
    """
    if not limit:
        return list(items)
    strata: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        strata[tuple(it.groups.get(k, "") for k in by)].append(i)
    keep: set[int] = set()
    for key in sorted(strata):
        idx = strata[key]
        order = list(idx)
        random.Random(f"{seed}:{'|'.join(key)}").shuffle(order)
        keep.update(order[:limit])  # a prefix of one seeded order: a larger limit keeps every item of a smaller one
    return [it for i, it in enumerate(items) if i in keep]


def share(col: np.ndarray) -> float:
    """Mean of a 0/1 column ignoring NaN; NaN when nothing is left (never 0)."""
    col = np.asarray(col, dtype=float)
    col = col[~np.isnan(col)]
    return float(col.mean()) if col.size else math.nan


def columns_of(rows: Iterable[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Per-item dicts -> arrays by column name (missing values become NaN)."""
    rows = list(rows)
    names = sorted({k for r in rows for k in r})
    return {n: np.array([float(r.get(n, math.nan)) for r in rows], dtype=float) for n in names}
