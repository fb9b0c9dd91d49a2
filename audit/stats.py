"""Paired statistics for the audit: pure numpy/scipy, no model loading, no file I/O.

Everything here works on per-item arrays that are already paired on item ids (row i of
the teacher's columns and row i of the student's columns are the same item) and on the
items' cluster labels (template or question id).

- Cluster bootstrap. A draw resamples *clusters* with replacement and keeps every item of
  a drawn cluster (items of one template are not independent). The draws of one audit
  cell are one integer array of shape ``(n_boot, n_clusters)``; the teacher and the
  student are evaluated on the *same* rows, so the bootstrap of Δ = b_S − b_T is paired.
- Statistics are arbitrary functions of named columns (``probes.base.Metric.compute``),
  so the generic path expands each draw to item indices (vectorised) and calls the
  statistic once per draw. Means (task accuracy) take a fully vectorised path: each draw
  becomes a row of cluster counts and the means are one matrix product with cluster sums.
- CIs are percentile intervals. A draw on which the statistic is undefined (NaN, e.g. a
  ratio with an empty denominator) is dropped; when more than 5 % of the draws are
  undefined the CI itself is reported as missing (None), never filled in.
- The bootstrap p-value of Δ is two-sided against Δ = 0. By default it is the normal
  approximation with the paired bootstrap's standard error, ``p = 2·Φ(−|Δ̂| / sd(Δ*))``.
  Why not the percentile p-value (``2·min(#{Δ* ≤ 0} + 1, #{Δ* ≥ 0} + 1) / (B + 1)``, also
  available)? It cannot go below 2 / (B + 1), and p-values are adjusted across the whole
  audit: with B = 1000 draws Holm could never reject anything once an audit holds more than
  about 25 tests. The normal approximation has no such floor; its calibration under the
  null is checked by simulation in the tests.
- McNemar's exact test: the two-sided binomial test of b vs c on the discordant pairs.
- Holm and Benjamini-Hochberg adjustments (statsmodels is only a test dependency, and the
  two step-down/step-up formulas are a few lines; tests check parity with statsmodels).
- Cohen's κ, and the item-level inheritance evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Columns = Mapping[str, np.ndarray]
Stat = Callable[[Columns], float]

MIN_FINITE_DRAWS = 0.95  # below this share of defined bootstrap draws, the CI is missing
_CHUNK_ITEMS = 2_000_000  # expanded item indices held at once by the generic path


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A point estimate with its percentile CI (None when undefined); NaN stays NaN."""

    value: float
    ci: tuple[float, float] | None


@dataclass(frozen=True, kw_only=True)
class Paired:
    """Teacher, student and Δ = student − teacher from one shared set of cluster draws."""

    teacher: Estimate
    student: Estimate
    delta: Estimate
    p: float  # two-sided bootstrap p-value of Δ = 0; NaN when undefined


@dataclass(frozen=True, kw_only=True)
class McNemar:
    b: int  # teacher 1, student 0
    c: int  # teacher 0, student 1
    p: float


# ---------------------------------------------------------------- cluster draws


def cluster_codes(clusters: Sequence[str]) -> tuple[np.ndarray, int]:
    """Cluster labels -> integer codes 0..K-1 (in sorted label order) and K."""
    labels, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64), len(labels)


def draw_clusters(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_clusters)`` cluster indices drawn with replacement."""
    return rng.integers(0, n_clusters, size=(n_boot, n_clusters))


def cluster_counts(draws: np.ndarray, n_clusters: int) -> np.ndarray:
    """``(n_boot, n_clusters)``: how often each cluster was drawn in each draw."""
    n_boot = draws.shape[0]
    flat = (draws + n_clusters * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_clusters).reshape(n_boot, n_clusters).astype(float)


def cluster_weights(draws: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    """``(n_boot, n_items)`` item weights: how often each item's cluster was drawn."""
    return cluster_counts(draws, n_clusters)[:, codes]


def draw_item_indices(draws: np.ndarray, codes: np.ndarray, n_clusters: int):
    """Yield, per draw, the item indices of its clusters (ragged; built vectorised in chunks)."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_clusters)
    starts = np.cumsum(sizes) - sizes
    per_draw = max(1, _CHUNK_ITEMS // max(1, len(codes)))
    for lo in range(0, draws.shape[0], per_draw):
        block = draws[lo : lo + per_draw]
        seg_len = sizes[block].ravel()
        seg_start = starts[block].ravel()
        offsets = np.cumsum(seg_len) - seg_len
        idx = np.repeat(seg_start - offsets, seg_len) + np.arange(seg_len.sum())
        bounds = np.cumsum(sizes[block].sum(axis=1))[:-1]
        yield from np.split(order[idx], bounds)


def _take(columns: Columns, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in columns.items()}


def stat_draws(stat: Stat, columns_list: Sequence[Columns], draws, codes, n_clusters) -> np.ndarray:
    """``(len(columns_list), n_boot)`` values of ``stat`` on each draw, for each column set.

    Every column set is evaluated on the same item indices, which is what pairs them.
    """
    out = np.full((len(columns_list), draws.shape[0]), np.nan)
    for b, idx in enumerate(draw_item_indices(draws, codes, n_clusters)):
        for m, cols in enumerate(columns_list):
            out[m, b] = stat(_take(cols, idx))
    return out


def mean_draws(x: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Vectorised bootstrap means of ``x`` (NaN entries ignored), one per row of ``counts``.

    Works on per-cluster sums, so a draw costs O(n_clusters): mean = counts·sums / counts·sizes.
    """
    x = np.asarray(x, dtype=float)
    ok = ~np.isnan(x)
    k = counts.shape[1]
    num = counts @ np.bincount(codes, weights=np.where(ok, x, 0.0), minlength=k)
    den = counts @ np.bincount(codes, weights=ok.astype(float), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ---------------------------------------------------------------- summaries of draws


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """Percentile CI of bootstrap values; None when too many draws are undefined."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if values.size == 0 or finite.size < MIN_FINITE_DRAWS * values.size:
        return None
    lo, hi = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_p(deltas: np.ndarray, estimate: float | None = None, *, method: str = "normal") -> float:
    """Two-sided bootstrap p-value of Δ = 0 (see the module docstring); NaN when undefined.

    ``method="normal"``: 2·Φ(−|estimate| / sd(draws)) (``estimate`` is required; with a zero
    standard error p is 1 when the estimate is 0, else 0). ``"percentile"``: from tail counts.
    """
    deltas = np.asarray(deltas, dtype=float)
    finite = deltas[np.isfinite(deltas)]
    if deltas.size == 0 or finite.size < MIN_FINITE_DRAWS * deltas.size:
        return math.nan
    if method == "percentile":
        k = min(np.sum(finite <= 0), np.sum(finite >= 0))
        return float(min(1.0, 2.0 * (k + 1) / (finite.size + 1)))
    if method != "normal":
        raise ValueError(f"Unknown p-value method {method!r}: expected 'normal' or 'percentile'.")
    if estimate is None or not math.isfinite(estimate):
        return math.nan
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    if not math.isfinite(se):
        return math.nan
    if se == 0.0:
        return 1.0 if estimate == 0 else 0.0
    return float(2.0 * sps.norm.sf(abs(estimate) / se))


# ---------------------------------------------------------------- bootstraps


def cluster_bootstrap(
    stat: Stat, columns: Columns, clusters: Sequence[str], *, n_boot: int, rng: np.random.Generator,
    level: float = 0.95,
) -> Estimate:
    """``stat`` on all items, with a percentile cluster-bootstrap CI."""
    value = float(stat(columns))
    codes, k = cluster_codes(clusters)
    if k < 2:
        return Estimate(value=value, ci=None)
    vals = stat_draws(stat, [columns], draw_clusters(k, n_boot, rng), codes, k)[0]
    return Estimate(value=value, ci=percentile_ci(vals, level))


def _paired(t_value, s_value, t_draws, s_draws, level) -> Paired:
    d = s_draws - t_draws
    return Paired(
        teacher=Estimate(value=t_value, ci=percentile_ci(t_draws, level)),
        student=Estimate(value=s_value, ci=percentile_ci(s_draws, level)),
        delta=Estimate(value=s_value - t_value, ci=percentile_ci(d, level)),
        p=bootstrap_p(d, s_value - t_value),
    )


def _no_draws(t_value: float, s_value: float) -> Paired:
    none = Estimate
    return Paired(teacher=none(value=t_value, ci=None), student=none(value=s_value, ci=None),
                  delta=none(value=s_value - t_value, ci=None), p=math.nan)


def paired_cluster_bootstrap(
    stat: Stat, teacher: Columns, student: Columns, clusters: Sequence[str], *, n_boot: int,
    rng: np.random.Generator, level: float = 0.95,
) -> Paired:
    """Teacher, student and Δ with CIs from the SAME cluster draws (fewer than 2 clusters: no CI)."""
    t_value, s_value = float(stat(teacher)), float(stat(student))
    codes, k = cluster_codes(clusters)
    if k < 2:
        return _no_draws(t_value, s_value)
    vals = stat_draws(stat, [teacher, student], draw_clusters(k, n_boot, rng), codes, k)
    return _paired(t_value, s_value, vals[0], vals[1], level)


def paired_mean_bootstrap(
    teacher: np.ndarray, student: np.ndarray, clusters: Sequence[str], *, n_boot: int,
    rng: np.random.Generator, level: float = 0.95, scale: float = 1.0, neutral: float = 0.0,
) -> Paired:
    """The vectorised special case for (mean − neutral)·scale; same draws as the generic path."""
    t, s = np.asarray(teacher, float), np.asarray(student, float)

    def pts(m):
        return (m - neutral) * scale

    t_value, s_value = pts(_nanmean(t)), pts(_nanmean(s))
    codes, k = cluster_codes(clusters)
    if k < 2:
        return _no_draws(t_value, s_value)
    w = cluster_counts(draw_clusters(k, n_boot, rng), k)
    return _paired(t_value, s_value, pts(mean_draws(t, codes, w)), pts(mean_draws(s, codes, w)), level)


def paired_ratio_bootstrap(
    teacher: np.ndarray, student: np.ndarray, clusters: Sequence[str], *, n_boot: int,
    rng: np.random.Generator, level: float = 0.95,
) -> Estimate:
    """mean(student) / mean(teacher) with a paired cluster-bootstrap CI (task retention).

    A draw whose teacher mean is 0 has no ratio (NaN), never 0 or inf.
    """
    t, s = np.asarray(teacher, float), np.asarray(student, float)
    value = _ratio(_nanmean(s), _nanmean(t))
    codes, k = cluster_codes(clusters)
    if k < 2:
        return Estimate(value=value, ci=None)
    w = cluster_counts(draw_clusters(k, n_boot, rng), k)
    ratios = _ratio(mean_draws(s, codes, w), mean_draws(t, codes, w))
    return Estimate(value=value, ci=percentile_ci(ratios, level))


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def mean_bootstrap(
    x: np.ndarray, clusters: Sequence[str], *, n_boot: int, rng: np.random.Generator,
    level: float = 0.95,
) -> Estimate:
    """Mean of ``x`` (NaN ignored) with a vectorised cluster-bootstrap CI."""
    x = np.asarray(x, float)
    codes, k = cluster_codes(clusters)
    if k < 2:
        return Estimate(value=_nanmean(x), ci=None)
    w = cluster_counts(draw_clusters(k, n_boot, rng), k)
    return Estimate(value=_nanmean(x), ci=percentile_ci(mean_draws(x, codes, w), level))


# ---------------------------------------------------------------- tests and agreement


def mcnemar_exact(teacher: np.ndarray, student: np.ndarray) -> McNemar:
    """McNemar's exact test on paired 0/1 choices (pairs with a NaN are left out).

    b = teacher 1 / student 0, c = teacher 0 / student 1; p = two-sided exact binomial
    test of b against Binomial(b + c, 1/2); p = 1 when there are no discordant pairs,
    NaN when no pair is left.
    """
    t, s = np.asarray(teacher, float), np.asarray(student, float)
    ok = ~(np.isnan(t) | np.isnan(s))
    t, s = t[ok] > 0.5, s[ok] > 0.5
    b, c = int(np.sum(t & ~s)), int(np.sum(~t & s))
    n = b + c
    if t.size == 0:  # no pair scored by both: no test, not p = 1
        return McNemar(b=0, c=0, p=math.nan)
    p = 1.0 if n == 0 else float(min(1.0, 2.0 * sps.binom.cdf(min(b, c), n, 0.5)))
    return McNemar(b=b, c=c, p=p)


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm (step-down FWER) or Benjamini-Hochberg (step-up FDR) adjusted p-values.

    NaN entries are not part of the family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    elif method == "bh":
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
        adj = np.minimum(1.0, adj)
    else:
        raise ValueError(f"Unknown correction {method!r}: expected 'holm' or 'bh'.")
    out[order] = adj
    return out


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two label arrays (pairs with a NaN left out); NaN when undefined.

    Written here rather than sklearn's so that a degenerate table (both raters constant,
    expected agreement 1) gives NaN without a warning, and NaN pairs are dropped.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size == 0:
        return math.nan
    labels = np.union1d(a, b)
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == v) * np.mean(b == v) for v in labels))
    return math.nan if pe >= 1.0 else (po - pe) / (1.0 - pe)


def inheritance_evidence(
    teacher: np.ndarray, student: np.ndarray, t_margin: np.ndarray | None = None,
    s_margin: np.ndarray | None = None,
) -> dict[str, float]:
    """Item-level evidence that a student copies its teacher's stereotyped choices.

    p_s_given_t = P(student stereotyped | teacher stereotyped), p_s_given_not_t the same
    given the teacher did not; κ of the two 0/1 choices; margin_corr = Spearman correlation
    of per-item preference margins (rank-based: log-likelihood margins are heavy-tailed).
    Anything undefined is NaN.
    """
    t, s = np.asarray(teacher, float), np.asarray(student, float)
    ok = ~(np.isnan(t) | np.isnan(s))
    t, s = t[ok] > 0.5, s[ok] > 0.5
    ev = {
        "p_s_given_t": float(s[t].mean()) if t.any() else math.nan,
        "p_s_given_not_t": float(s[~t].mean()) if (~t).any() else math.nan,
        "kappa": cohen_kappa(t.astype(float), s.astype(float)),
        "margin_corr": math.nan,
    }
    if t_margin is not None and s_margin is not None:
        ev["margin_corr"] = spearman(t_margin, s_margin)
    return ev


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ over pairs without NaN; NaN with < 3 pairs or a constant side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


__all__ = [
    "Estimate", "Paired", "McNemar", "cluster_codes", "draw_clusters", "cluster_counts", "cluster_weights",
    "draw_item_indices", "stat_draws", "mean_draws", "percentile_ci", "bootstrap_p",
    "cluster_bootstrap", "paired_cluster_bootstrap", "paired_mean_bootstrap",
    "paired_ratio_bootstrap", "mean_bootstrap", "mcnemar_exact", "adjust_pvalues",
    "cohen_kappa", "inheritance_evidence", "spearman",
]
