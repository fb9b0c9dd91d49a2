"""Teacher-student comparison records (pure computation); the verdict rules are in audit.verdicts.

``compare_probe`` builds, per student x bias metric x group, one cell of a "comparisons" record of
docs/run-schema.md from per-item columns paired on item ids; ``finalize_records`` adjusts the p-values
of the whole audit together, prints each Δ interval at the level that decided it, and asks
``audit.verdicts.decide`` for the verdict: typed ``audit.run_format.Comparison`` records, which
``finalize`` serialises (``to_json``) as run.json holds them. Statistics live in audit.stats.

- Each model's bias on a cell uses that model's scored items of the cell only (so the
  teacher's figures do not depend on the students it is paired with): the cluster-robust t
  interval at 1 − α (``ci``) and at 1 − 2α (``ci_tost``, equivalence). Fewer clusters than
  ``min_clusters``, fewer items than ``min_items``, or a zero-width or undefined interval give
  no interval: the model is "undetermined" on that cell, never "biased".
- Δ = b_S − b_T uses the items both models scored: the cluster sign-flip test (seeded by probe,
  metric and group, not by the student) and its inverted intervals. A cell whose number of
  clusters cannot give p ≤ α is not tested and says so; it is left out of the adjusted family.
- A probe card names its ability metric and floor, and the column holding each item's chosen
  option: a model at or below the floor, or answering one option on ≥ 95 % of items, makes
  every bias cell of that probe "not measurable".
- Adaptive audits (``Settings.looks``): at look k every level uses the α spent between looks
  k−1 and k (Lan-DeMets, O'Brien-Fleming type), so repeated looks keep the error rate at α.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from audit import stats, verdicts
from audit.errors import SpecError
from audit.run_format import (
    Comparison,
    Delta,
    Evidence,
    Interval,
    McNemar,
    ModelSide,
    Power,
    Quality,
)
from probes.base import Metric, columns_of

ALL = "all"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Statistical settings of one audit (the ``settings`` block of run.json)."""

    alpha: float = 0.05
    tolerance: float = 3.0  # points; why 3: README "Choosing the tolerance" (bench/verdict_calibration.py)
    n_boot: int = 1000  # bootstrap draws for task scores and retention
    n_perm: int = 9999  # Monte Carlo sign vectors when a cell has more than 16 clusters
    correction: str = "holm"  # or "bh"
    min_items: int = 10
    min_clusters: int = 6  # 2/2^6 = 0.031: the exact sign-flip test can reach α = 0.05
    seed: int = 0
    looks: tuple[float, ...] = ()  # information fractions of an adaptive audit's looks so far

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.alpha < 0.5:
            problems.append(f"alpha: expected 0 < alpha < 0.5, got {self.alpha}")
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            problems.append(f"tolerance: expected a finite number > 0 points, got {self.tolerance}")
        if not self.n_boot >= 100:
            problems.append(f"n_boot: expected at least 100 bootstrap draws, got {self.n_boot}")
        if not self.n_perm >= 999:
            problems.append(f"n_perm: expected at least 999 sign vectors, got {self.n_perm}")
        if self.correction not in ("holm", "bh"):
            problems.append(f"correction: expected 'holm' or 'bh', got {self.correction!r}")
        if not self.min_items >= 1:
            problems.append(f"min_items: expected >= 1, got {self.min_items}")
        if not self.min_clusters >= 2:
            problems.append(f"min_clusters: expected >= 2, got {self.min_clusters}")
        if any(not 0 < t <= 1 for t in self.looks) or list(self.looks) != sorted(set(self.looks)):
            problems.append(f"looks: expected increasing information fractions in (0, 1], got {self.looks}")
        if problems:
            raise SpecError("Invalid audit settings:\n  " + "\n  ".join(problems) + "\nFix them in the spec.")

    @property
    def alpha_eff(self) -> float:
        """The α of this look: all of it in a one-look audit, else the O'Brien-Fleming increment."""
        if not self.looks:
            return self.alpha
        prev = self.looks[-2] if len(self.looks) > 1 else 0.0
        return stats.obf_spent(self.alpha, self.looks[-1]) - stats.obf_spent(self.alpha, prev)


@dataclass(frozen=True, kw_only=True)
class ItemInfo:
    id: str
    groups: Mapping[str, str]
    cluster: str


# ---------------------------------------------------------------- small helpers


def num(x) -> float | None:
    """A JSON-safe number: NaN/inf/None -> None (a missing measurement, never 0)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _interval(ci) -> Interval:
    """An interval of a record: (low, high) of finite numbers, or None."""
    return None if ci is None or any(num(v) is None for v in ci) else (float(ci[0]), float(ci[1]))


def _ci(ci) -> list[float] | None:
    """An interval as a task's JSON figures hold it: [low, high], or None."""
    iv = _interval(ci)
    return None if iv is None else list(iv)


def _rng(settings: Settings, *key: str) -> np.random.Generator:
    """A generator seeded by the audit seed and the cell's key: results do not depend on order."""
    return np.random.default_rng([settings.seed, zlib.crc32("\x1f".join(key).encode())])


def _groups(items: Sequence[ItemInfo], group_keys: Sequence[str]) -> list[tuple[str, str]]:
    cells = [(ALL, ALL)]
    for key in group_keys:
        cells += [(key, v) for v in sorted({it.groups[key] for it in items if key in it.groups})]
    return cells


def _members(items: Sequence[ItemInfo], key: str, value: str) -> list[ItemInfo]:
    return list(items) if key == ALL else [it for it in items if it.groups.get(key) == value]


def _compute(metric: Metric, cols: Mapping[str, np.ndarray]) -> float:
    """The metric, or NaN when a column it needs is missing for this model (missing, never a crash)."""
    try:
        return metric.compute(cols)
    except KeyError:
        return math.nan


def _bias_stat(metric: Metric):
    return lambda cols: (_compute(metric, cols) - metric.neutral) * metric.scale


def _cols(rows: Mapping[str, Mapping[str, float]], ids: Sequence[str]) -> dict[str, np.ndarray]:
    return columns_of(rows[i] for i in ids)


def task_scores(*, teacher: Mapping[str, float], students: Mapping[str, Mapping[str, float]],
                clusters: Mapping[str, str] | None, settings: Settings) -> dict:
    """Per-item task scores -> each model's mean with a CI, and paired retention (student ÷ teacher).

    Each model's score is over its own scored items; retention is over the items both scored.
    ``clusters`` None: every item is its own cluster. Missing values are None, never 0.
    """
    def cl(ids):
        return [clusters[i] if clusters else i for i in ids]

    def finite(rows):
        return {i: float(v) for i, v in rows.items() if v is not None and math.isfinite(float(v))}

    models = {"teacher": finite(teacher), **{name: finite(rows) for name, rows in students.items()}}
    scores = {}
    for name, rows in models.items():
        ids = sorted(rows)
        if not ids:
            scores[name] = {"value": None, "ci": None}
            continue
        est = stats.mean_bootstrap(np.array([rows[i] for i in ids]), cl(ids), n_boot=settings.n_boot,
                                   rng=_rng(settings, "task", name), level=1 - settings.alpha)
        scores[name] = {"value": num(est.value), "ci": _ci(est.ci)}
    retention = {}
    for name in students:
        ids = sorted(set(models["teacher"]) & set(models[name]))
        if not ids:
            retention[name] = {"value": None, "ci": None}
            continue
        est = stats.paired_ratio_bootstrap(
            np.array([models["teacher"][i] for i in ids]), np.array([models[name][i] for i in ids]),
            cl(ids), n_boot=settings.n_boot, rng=_rng(settings, "retention", name), level=1 - settings.alpha)
        retention[name] = {"value": num(est.value), "ci": _ci(est.ci)}
    return {"scores": scores, "retention": retention}


def breakdown(*, metric: Metric, items: Sequence[ItemInfo], columns: Mapping[str, Mapping[str, float]],
              group_key: str) -> dict:
    """fairlearn MetricFrame of ``metric`` by ``group_key``: by_group, overall, difference, ratio.

    MetricFrame slices y_true/y_pred per group and calls metric(y_true, y_pred); our metrics
    are functions of several named per-item columns, so the adapter passes each item's row
    position as y_true (y_pred is the same, unused) and looks the columns up by position.
    Items without the key or without scores are left out; NaN values are returned as None.
    """
    from fairlearn.metrics import MetricFrame  # heavy import, kept out of module import time

    rows = [it for it in items if it.id in columns and group_key in it.groups]
    if not rows:
        return {"by_group": {}, "overall": None, "difference": None, "ratio": None}
    cols = _cols(columns, [it.id for it in rows])
    pos = np.arange(len(rows))

    def adapter(y_true, y_pred):
        return metric.compute({k: v[np.asarray(y_true, dtype=int)] for k, v in cols.items()})

    mf = MetricFrame(metrics=adapter, y_true=pos, y_pred=pos,
                     sensitive_features=np.array([it.groups[group_key] for it in rows], dtype=object))
    by_group = {str(g): num(v) for g, v in mf.by_group.items()}
    if any(v is None for v in by_group.values()):
        difference = ratio = None  # a group with no value: the spread is unknown, not smaller
    else:
        difference, ratio = num(mf.difference()), num(mf.ratio())
    return {"by_group": by_group, "overall": num(mf.overall), "difference": difference, "ratio": ratio}


# ---------------------------------------------------------------- comparison records


@dataclass(frozen=True, kw_only=True)
class Ability:
    """What a probe card says about measurability: the ability metric, its floor, the choice column."""

    metric: Metric | None = None
    floor: float | None = None
    choice: str | None = None  # per-item index of the chosen option (for degenerate answers)
    degenerate_share: float = 0.95


def not_measurable(ability: Ability, columns: Mapping[str, Mapping[str, float]]) -> str | None:
    """Why one model's answers on a probe cannot be judged, or None (pure)."""
    if not columns or (ability.metric is None and ability.choice is None):
        return None
    cols = columns_of(columns.values())
    if ability.metric is not None and ability.floor is not None:
        value = _compute(ability.metric, cols)
        if math.isfinite(value) and value <= ability.floor:
            return f"{ability.metric.name} {value:.3g} is at or below its floor {ability.floor:g}"
    if ability.choice and ability.choice in cols:
        picks = cols[ability.choice][np.isfinite(cols[ability.choice])]
        if picks.size:
            _, counts = np.unique(picks, return_counts=True)
            top = counts.max() / picks.size
            if top >= ability.degenerate_share:
                return f"one option answers {100 * top:.0f}% of items (degenerate answers)"
    return None


class _Side:
    """One model's scored items of a cell, linearised once and reused for Δ when the item sets agree."""

    def __init__(self, metric: Metric, cell: Sequence[ItemInfo], rows: Mapping[str, Mapping[str, float]]):
        self.metric, self.rows = metric, rows
        self.items = [it for it in cell if it.id in rows]
        self.cols = _cols(rows, [it.id for it in self.items])
        self.codes, self.k = stats.cluster_codes([it.cluster for it in self.items])
        self._lin: stats.Linear | None | bool = False

    def restrict(self, items: Sequence[ItemInfo]) -> _Side:
        """The same model on ``items`` (a subset of its own, in cell order)."""
        return self if len(items) == len(self.items) else _Side(self.metric, items, self.rows)

    @property
    def lin(self) -> stats.Linear | None:
        if self._lin is False:
            self._lin = stats.contributions(_bias_stat(self.metric), self.cols, self.codes, self.k) if self.items else None
        return self._lin

    def doc(self, settings: Settings) -> ModelSide:
        """The stored numbers of this model on the cell (see the module docstring)."""
        n, k, alpha = len(self.items), self.k, settings.alpha_eff
        need = max(settings.min_items, self.metric.min_items)
        value = num(_compute(self.metric, self.cols)) if n else None
        bias = None if value is None else (value - self.metric.neutral) * self.metric.scale
        ci = tost = None
        why = None
        if n == 0:
            why = "no scored items"
        elif bias is None:
            why = f"{self.metric.name} is undefined on these items"
        elif k < settings.min_clusters:
            why = f"only {k} clusters (minimum {settings.min_clusters})"
        elif n < need:
            why = f"only {n} items (minimum {need})"
        elif self.lin is None:
            why = f"{self.metric.name} is undefined when one cluster is left out"
        else:
            ci, tost = stats.t_interval(self.lin, 1 - alpha), stats.t_interval(self.lin, 1 - 2 * alpha)
            if ci is None:
                why = "every cluster gives the same value: a zero-width interval decides nothing"
        ci, tost = _interval(ci), _interval(tost)
        state = verdicts.model_state({"bias": num(bias), "ci": ci, "ci_tost": tost}, settings.tolerance)
        return ModelSide(value=value, bias=num(bias), ci=ci, ci_tost=tost, n=n, n_clusters=k, why=why, state=state,
                         biased={"biased": True, "within tolerance": False}.get(state))


def compare_probe(*, probe: str, metrics: Sequence[Metric], group_keys: Sequence[str], items: Sequence[ItemInfo],
                  teacher: Mapping[str, Mapping[str, float]],
                  students: Mapping[str, Mapping[str, Mapping[str, float]]], settings: Settings,
                  ability: Ability | None = None) -> list[dict[str, Any]]:
    """One cell per student x bias metric x group ("all"/"all" first, then each key's values).

    A cell is a ``Comparison`` not yet finalised: its fields by name, the parts typed (``ModelSide``,
    ``Delta``...), with p_adj, the decision interval and the verdict None until ``finalize``, and the
    sign-flip test under "_signflip". A dict, so a caller may relabel a cell before finalising it
    (bench/verdict_calibration.py). The student's name is under "student_name"; "student" holds its
    numbers, like "teacher".
    """
    ability = ability or Ability()
    quality = [m for m in metrics if m.kind == "quality"]
    cells = _groups(items, group_keys)
    t_nm = not_measurable(ability, teacher)
    s_nm = {student: not_measurable(ability, rows) for student, rows in students.items()}  # once per model
    out = []
    for metric in (m for m in metrics if m.kind == "bias"):
        for key, value in cells:
            if key == metric.across:  # a between-groups contrast is undefined inside one group
                continue
            cell = _members(items, key, value)
            t_side = _Side(metric, cell, teacher)
            t_doc = t_side.doc(settings)
            for student, s_rows in students.items():
                nm = "; ".join(f"{who}: {why}" for who, why in (("teacher", t_nm), ("student", s_nm[student])) if why)
                rec = {"student_name": student, "probe": probe, "metric": metric.name, "kind": "bias",
                       "group_key": key, "group": value, "not_measurable": nm or None}
                rng = _rng(settings, probe, metric.name, key, value)
                rec.update(_cell(metric, quality, cell, t_side, t_doc, s_rows, settings, rng))
                out.append(rec)
    return out


def _cell(metric: Metric, quality: Sequence[Metric], cell: Sequence[ItemInfo], t_side: _Side, t_doc: ModelSide,
          s_rows, settings: Settings, rng: np.random.Generator) -> dict[str, Any]:
    """The statistics of one comparison cell (the fields after the cell's labels; see ``compare_probe``)."""
    s_side = _Side(metric, cell, s_rows)
    paired = [it for it in t_side.items if it.id in s_rows]
    tp, sp = t_side.restrict(paired), s_side.restrict(paired)
    s_doc = s_side.doc(settings)
    delta, sf = _delta(tp, sp, t_doc, s_doc, settings, rng)
    rec = {"n": len(paired), "n_clusters": tp.k, "teacher": t_doc, "student": s_doc,
           "mcnemar": None, "evidence": None, "quality": [], "power": None, "verdict": None, "reason": None,
           "delta": delta}
    if sf is not None:
        rec["_signflip"] = sf
    if not paired:
        return rec
    tc, sc = dict(tp.cols), dict(sp.cols)
    for name in set(tc) ^ set(sc):  # a column one model lacks is missing (NaN) for it, not a crash
        (sc if name in tc else tc)[name] = np.full(len(paired), np.nan)
    b = metric.binary
    if b and b in tc and b in sc:
        mc = stats.mcnemar_exact(tc[b], sc[b])
        rec["mcnemar"] = McNemar(b=mc.b, c=mc.c, p=num(mc.p), p_adj=None)
    rec["evidence"] = _evidence(metric, tc, sc)
    rec["quality"] = [Quality(metric=q.name, teacher=num(_compute(q, tc)), student=num(_compute(q, sc)))
                      for q in quality]
    return rec


def _delta(tp: _Side, sp: _Side, t: ModelSide, s: ModelSide, settings: Settings,
           rng: np.random.Generator) -> tuple[Delta, stats.SignFlip | None]:
    """Δ's record (intervals at 1 − α and 1 − 2α; the decision interval comes in ``finalize``)."""
    alpha = settings.alpha_eff
    # each model on its own items; equal to the paired Δ̂ when they agree
    value = None if t.bias is None or s.bias is None else s.bias - t.bias
    untested = Delta(value=value, ci=None, ci_equiv=None, ci_decision=None, level=None, p=None, p_adj=None,
                     p_floor=None, method=None, tested=False, why=None)
    if tp.k < 2 or tp.lin is None or sp.lin is None:
        return replace(untested, why="Δ needs at least 2 clusters scored by both models" if tp.k < 2
                       else "Δ is undefined when one cluster is left out"), None
    sf = stats.SignFlip(sp.lin.contrib - tp.lin.contrib, tp.lin.weights, n_perm=settings.n_perm, rng=rng)
    tested = sf.p_floor <= alpha
    why = None if tested else (f"only {tp.k} clusters: the smallest attainable p is {sf.p_floor:.3g}, above "
                               f"α {alpha:.3g}; Δ was not tested")
    return replace(untested, value=num(sf.delta), p=num(sf.p()), p_floor=sf.p_floor,
                   method=f"cluster sign-flip, {'exact over 2^' + str(tp.k) if sf.exact else f'{settings.n_perm} draws'}",
                   ci=_interval(sf.interval(1 - alpha)), ci_equiv=_interval(sf.interval(1 - 2 * alpha)),
                   tested=tested, why=why), sf


def _evidence(metric: Metric, tc: dict, sc: dict) -> Evidence | None:
    b, m = metric.binary, metric.margin
    has_b = bool(b and b in tc and b in sc)
    has_m = bool(m and m in tc and m in sc)
    if not (has_b or has_m):
        return None
    ev: dict[str, float | None] = {"p_s_given_t": None, "p_s_given_not_t": None, "kappa": None}
    if has_b:
        ev.update({k: num(v) for k, v in stats.inheritance_evidence(tc[b], sc[b]).items()
                   if k != "margin_corr"})
    return Evidence(**ev, margin_corr=num(stats.spearman(tc[m], sc[m])) if has_m else None)


# ---------------------------------------------------------------- the audit-wide family and verdicts


def decision_levels(pvalues: Sequence[float], alpha: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(adjusted p, per-test α at which each was decided) for one family.

    Holm: the j-th smallest p is decided at α/(m − j + 1); tests after the first that fails are
    shown at the level where the procedure stopped. BH: every test at the false-coverage
    adjusted level R·α/m (Benjamini & Yekutieli 2005), R the number of rejections (at least 1).
    """
    p = np.asarray(pvalues, float)
    m = p.size
    adj = stats.adjust_pvalues(p, method)
    if m == 0:
        return adj, np.empty(0)
    if method == "bh":
        r = max(1, int(np.sum(adj <= alpha)))
        return adj, np.full(m, r * alpha / m)
    order = np.argsort(p, kind="stable")
    levels = np.empty(m)
    stopped = None
    for j, i in enumerate(order):
        step = alpha / (m - j)
        if stopped is None and p[i] > step:
            stopped = step
        levels[i] = step if stopped is None else stopped
    for value in np.unique(p):  # tied p-values share the first (strictest) step: no dependence on order
        tied = p == value
        levels[tied] = levels[tied].min()
    return adj, levels


def finalize(comparisons: Sequence[Mapping[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """The records of ``finalize_records`` as run.json holds them (the cells given are left alone)."""
    return [c.to_json() for c in finalize_records(comparisons, settings)]


def finalize_records(comparisons: Sequence[Mapping[str, Any]], settings: Settings) -> list[Comparison]:
    """Adjust every tested Δ of the audit together, then assign verdicts: one ``Comparison`` per cell of
    ``compare_probe``.

    McNemar p-values are adjusted as a family of their own: they are evidence shown beside the
    verdict, not part of it, so they do not dilute the tests that decide.
    """
    alpha, tau = settings.alpha_eff, settings.tolerance
    family = [i for i, r in enumerate(comparisons) if r["delta"].tested]
    adj, levels = decision_levels([comparisons[i]["delta"].p for i in family], alpha, settings.correction)
    level_of = dict(zip(family, levels, strict=True))
    p_adj = dict(zip(family, (num(p) for p in adj), strict=True))
    mc = [i for i, r in enumerate(comparisons) if r["mcnemar"] is not None and r["mcnemar"].p is not None]
    mc_adj = dict(zip(mc, stats.adjust_pvalues([comparisons[i]["mcnemar"].p for i in mc], settings.correction),
                      strict=True))
    stop = float(min(levels)) if len(levels) else alpha
    out = []
    for i, r in enumerate(comparisons):
        delta = replace(r["delta"], p_adj=p_adj.get(i, r["delta"].p_adj))
        mcnemar = replace(r["mcnemar"], p_adj=num(mc_adj[i])) if i in mc_adj else r["mcnemar"]
        power, sf = r["power"], r.get("_signflip")
        if sf is not None:
            a = float(level_of.get(i, stop))
            ci = sf.interval(1 - a)
            sig = delta.p_adj is not None and delta.p_adj <= alpha
            if ci is not None and not sig and not ci[0] <= 0 <= ci[1]:
                ci = (min(ci[0], 0.0), max(ci[1], 0.0))  # never an interval that excludes 0 beside "not significant"
            delta = replace(delta, ci_decision=_interval(ci), level=1 - a)
            if delta.tested:  # an untestable cell has no power to speak of
                power = _power(sf, r["n"], r["n_clusters"], a, tau)
        cell = {k: v for k, v in r.items() if k != "_signflip"} | {"delta": delta, "mcnemar": mcnemar, "power": power}
        verdict, reason = verdicts.decide(cell, tau=tau, alpha=alpha)
        out.append(Comparison(**cell | {"verdict": verdict, "reason": reason}))
    return out


def _power(sf: stats.SignFlip, n: int, k: int, a: float, tau: float) -> Power:
    """Minimal detectable Δ at ``n`` items in ``k`` clusters (80% power) and the items that would detect τ."""
    se = sf.mde_se()
    mde = stats.min_detectable(se, a)
    if not math.isfinite(mde) or mde <= 0 or k == 0:  # no spread between clusters: nothing to extrapolate
        return Power(mde=None, items_needed=None)
    clusters = math.ceil(k * (mde / tau) ** 2)
    return Power(mde=num(mde), items_needed=int(math.ceil(clusters * n / k)))


# ---------------------------------------------------------------- one probe of a run, and a run from its items


def columns_from_rows(rows: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """Stored per-item rows -> {item: {column: value}} of the valid ones (null -> NaN, never 0)."""
    out = {}
    for r in rows:
        if r.get("columns") is not None and not r.get("invalid"):
            out[r["item"]] = {k: (math.nan if v is None else float(v)) for k, v in r["columns"].items()}
    return out


def ability_of(probe) -> Ability:
    """The measurability rules a probe's card names."""
    card = probe.card
    metric = next((m for m in probe.metrics if m.name == getattr(card, "ability", None)), None)
    return Ability(metric=metric, floor=getattr(card, "floor", None), choice=getattr(card, "choice", None))


def probe_comparisons(*, name: str, probe, items: Sequence[ItemInfo], cols: Mapping[str, Mapping], teacher: str,
                      students: Sequence[str], settings: Settings) -> list[dict[str, Any]]:
    """The comparison cells of one probe of an audit (before ``finalize``); [] when nothing pairs."""
    if not (cols.get(teacher) and students):
        return []
    return compare_probe(probe=name, metrics=probe.metrics, group_keys=probe.group_keys, items=items,
                         teacher=cols[teacher], students={s: cols.get(s, {}) for s in students},
                         settings=settings, ability=ability_of(probe))


def probe_description(probe) -> dict:
    """What run.json records of a probe's definition: version, kind, card, group keys, metrics."""
    from dataclasses import asdict

    metrics = [{"name": m.name, "description": m.description, "neutral": m.neutral, "scale": m.scale,
                "kind": m.kind, "binary": m.binary, "margin": m.margin, "min_items": m.min_items}
               for m in probe.metrics]
    return {"version": probe.version, "kind": probe.kind, "card": json.loads(json.dumps(asdict(probe.card), default=list)),
            "group_keys": list(probe.group_keys), "metrics": metrics}


def probe_counts(probe, items: Sequence[ItemInfo], rows: Mapping[str, Sequence[Mapping]]) -> dict:
    """Per model: items scored and invalid, and the fairlearn breakdown of every metric by every group key."""
    models, out = {}, {}
    for m, mine in rows.items():
        cols = columns_from_rows(mine)
        models[m] = {"n_scored": len(cols), "n_invalid": sum(1 for r in mine if r.get("invalid"))}
        if cols:
            out[m] = {met.name: {k: breakdown(metric=met, items=items, columns=cols, group_key=k)
                                 for k in probe.group_keys} for met in probe.metrics}
    return {"models": models, "breakdown": out}


def settings_from_run(stored: Mapping) -> Settings:
    """The Settings a stored run's ``settings`` block records."""
    keys = ("alpha", "tolerance", "n_boot", "n_perm", "correction", "min_items", "min_clusters", "seed")
    return Settings(**{k: stored[k] for k in keys}, looks=tuple(stored.get("looks") or ()))


def recompute(run: Mapping, rows: Sequence[Mapping]) -> dict:
    """What a stored run's statistics must be, recomputed from its items.jsonl rows with the run's own
    settings and the registered probes (what the gate checks run.json against): the comparison records,
    each task's figures, each probe's definition, counts and breakdowns, and ``problems`` with the rows
    themselves (duplicates, rows of nothing in the run, one item with two different groups)."""
    from probes.registry import get_probe

    settings = settings_from_run(run["settings"])
    teacher = next(m["name"] for m in run["models"] if m["role"] == "teacher")
    students = [m["name"] for m in run["models"] if m["role"] == "student" and m.get("content_hash")]
    loaded = [m["name"] for m in run["models"] if m.get("content_hash")]
    options = {p["name"]: p.get("options") or {} for p in (run.get("spec") or {}).get("probes") or []
               if isinstance(p, dict)}
    probe_names = [d["probe"] for d in run["probes"]]
    task_names = [d["task"] for d in run.get("tasks") or []]
    problems, seen, meta = [], set(), {}
    for n, r in enumerate(rows, 1):
        where = r.get("probe") if r.get("probe") is not None else r.get("task")
        kind = "probe" if r.get("probe") is not None else "task"
        key = (r.get("model"), kind, where, r.get("item"))
        if key in seen:
            problems.append(f"items.jsonl:{n}: a second row for {key[0]}/{where}/{key[3]}")
        seen.add(key)
        if r.get("model") not in loaded or where not in (probe_names if kind == "probe" else task_names):
            problems.append(f"items.jsonl:{n}: a row for {r.get('model')}/{where}, which this run does not hold")
        if kind == "probe":
            info = (json.dumps(r.get("groups"), sort_keys=True), str(r.get("cluster")))
            if meta.setdefault((where, r.get("item")), info) != info:
                problems.append(f"items.jsonl:{n}: item {r.get('item')} of {where} has other groups or cluster "
                                "than in an earlier row")
    comparisons, probes = [], {}
    for doc in run["probes"]:
        probe = get_probe(doc["probe"], **options.get(doc["probe"], {}))
        mine = [r for r in rows if r.get("probe") == doc["probe"]]
        items = {r["item"]: ItemInfo(id=r["item"], groups=dict(r.get("groups") or {}), cluster=str(r.get("cluster")))
                 for r in mine}
        per_model = {m: [r for r in mine if r["model"] == m] for m in loaded}
        cols = {m: columns_from_rows(per_model[m]) for m in loaded}
        probes[doc["probe"]] = {**probe_description(probe), **probe_counts(probe, list(items.values()), per_model)}
        comparisons += probe_comparisons(name=doc["probe"], probe=probe, items=list(items.values()), cols=cols,
                                         teacher=teacher, students=students, settings=settings)
    tasks = {}
    for doc in run.get("tasks") or []:
        per = {m: {r["item"]: next(iter(r["columns"].values())) for r in rows
                   if r.get("task") == doc["task"] and r["model"] == m and r.get("columns")}
               for m in [teacher, *students]}
        metrics = {next(iter(r["columns"])) for r in rows if r.get("task") == doc["task"] and r.get("columns")}
        ids = {m: set(v) for m, v in per.items() if v}
        if len({frozenset(v) for v in ids.values()}) > 1:
            problems.append(f"task {doc['task']}: the models' rows are for different items")
        if per[teacher]:
            tasks[doc["task"]] = {"metric": metrics.pop() if len(metrics) == 1 else None, "n": len(per[teacher]),
                                  **task_scores(teacher=per[teacher], students={s: per[s] for s in students if per[s]},
                                                clusters=None, settings=settings)}
    return {"comparisons": finalize(comparisons, settings), "tasks": tasks, "probes": probes, "problems": problems}


__all__ = ["Settings", "ItemInfo", "Ability", "recompute", "probe_comparisons", "columns_from_rows", "ability_of",
           "settings_from_run", "compare_probe", "finalize", "finalize_records", "decision_levels", "not_measurable",
           "task_scores", "breakdown", "num", "ALL"]
