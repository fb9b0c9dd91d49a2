"""Statistics of the audit: pure numpy/scipy, no model loading, no file I/O.

Everything works on per-item columns of one audit cell and the items' cluster labels
(template or question id): items of one cluster are not independent, so every interval and
test below works on per-cluster quantities.

- Linearisation (``contributions``). Any metric (a share, a ratio such as StereoSet's SS or
  BBQ's s_DIS, ICAT) is turned into per-cluster contributions c_g with Σ_g c_g = the estimate,
  by the delete-one-cluster jackknife: I_g = (θ̂ − θ̂_(−g))·(N − n_g)/N is cluster g's
  influence (exactly (s_g − n_g·θ̂)/N for a mean, the delta-method term (a_g − R̂·b_g)/B for a
  ratio), centred to sum to 0, and c_g = w_g·θ̂ + I_g with w_g = n_g/N. This replaces a per-metric delta-method
  derivation and works for every metric a probe defines.
- A model's own bias (``t_interval``): the cluster-robust t interval with G − 1 degrees of
  freedom and the CR2 small-sample correction (Bell & McCaffrey 2002: each residual divided by
  √(1 − h_g), h_g = w_g for an intercept). It depends only on that model's items: no random
  draws, so the teacher's figures are the same whichever students it is paired with.
- The paired change (``SignFlip``): d_g = c_S,g − c_T,g; under "the student behaves as the
  teacher" the labels of a cluster's items can be swapped, so flipping the sign of d_g is a
  valid randomisation. Exact over all 2^G sign vectors when G ≤ 16, else a seeded Monte Carlo
  sample; p = (1 + #{|Δ*| ≥ |Δ̂|}) / (1 + B), never below its resolution. The interval is the
  test inverted ({δ : the test of d_g − δ·w_g does not reject}, by bisection), so an interval
  never disagrees with its own p-value. Written here rather than with
  ``scipy.stats.permutation_test``: that draws new signs for every call, and inverting the test
  needs the same sign vectors for every δ (and the exact enumeration reused across cells).
- McNemar's exact test on discordant binary choices; Holm and Benjamini-Hochberg adjustment
  (parity with statsmodels' ``multipletests`` is tested; statsmodels is only a test dependency).
- Cohen's κ and the item-level inheritance evidence; task means and retention keep a cluster
  bootstrap (percentile CIs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

Columns = Mapping[str, np.ndarray]
Stat = Callable[[Columns], float]

MIN_FINITE_DRAWS = 0.95  # below this share of defined bootstrap draws, the CI is missing
EXACT_MAX_CLUSTERS = 16  # up to here the sign-flip test enumerates all 2^G sign vectors


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A point estimate with its percentile CI (None when undefined); NaN stays NaN."""

    value: float
    ci: tuple[float, float] | None


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


# ---------------------------------------------------------------- bootstraps


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


# ---------------------------------------------------------------- per-cluster linearisation


@dataclass(frozen=True, kw_only=True)
class Linear:
    """A statistic as per-cluster contributions: ``value == contrib.sum()``; weights sum to 1."""

    value: float
    contrib: np.ndarray  # c_g, one per cluster (cluster codes 0..G-1)
    weights: np.ndarray  # w_g = n_g / N

    @property
    def residuals(self) -> np.ndarray:
        return self.contrib - self.weights * self.value


def contributions(stat: Stat, columns: Columns, codes: np.ndarray, n_clusters: int) -> Linear | None:
    """``stat`` on all items, linearised by the delete-one-cluster jackknife (module docstring).

    None when the statistic or any delete-one value is undefined (then no interval exists).
    """
    value = float(stat(columns))
    if n_clusters < 2 or not math.isfinite(value):
        return None
    n = len(codes)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_clusters)
    ends = np.cumsum(sizes)
    influence = np.empty(n_clusters)
    for g in range(n_clusters):
        keep = np.concatenate([order[: ends[g] - sizes[g]], order[ends[g]:]])
        rest = float(stat({k: v[keep] for k, v in columns.items()}))
        if not math.isfinite(rest):
            return None
        influence[g] = (value - rest) * (n - sizes[g]) / n
    weights = sizes / n
    influence -= weights * influence.sum()  # centred, so that Σ c_g is exactly the estimate (a no-op for a mean)
    return Linear(value=value, contrib=weights * value + influence, weights=weights)


def t_interval(lin: Linear | None, level: float) -> tuple[float, float] | None:
    """Cluster-robust (CR2) t interval with G − 1 df; None when degenerate (zero or undefined SE)."""
    if lin is None or lin.contrib.size < 2:
        return None
    se = math.sqrt(float(np.sum(lin.residuals**2 / np.clip(1.0 - lin.weights, 1e-12, None))))
    if not se > 0 or not math.isfinite(se):
        return None
    half = float(sps.t.ppf(0.5 + level / 2, lin.contrib.size - 1)) * se
    return lin.value - half, lin.value + half


@lru_cache(maxsize=4)
def _all_signs(n_clusters: int) -> np.ndarray:
    """Every sign vector of length G, shape (2^G, G)."""
    bits = (np.arange(2**n_clusters)[:, None] >> np.arange(n_clusters)) & 1
    return (1 - 2 * bits).astype(np.float64)


class SignFlip:
    """The cluster sign-flip test of Δ = Σ d_g and its inversion (module docstring).

    ``d``: per-cluster paired contributions; ``w``: cluster weights (Σ w = 1). The same sign
    vectors serve every δ, so ``p`` is one function of δ and the interval is its inversion.
    """

    def __init__(self, d: np.ndarray, w: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> None:
        self.d, self.w = np.asarray(d, float), np.asarray(w, float)
        self.delta = float(self.d.sum())
        g = self.d.size
        self.exact = g <= EXACT_MAX_CLUSTERS
        signs = _all_signs(g) if self.exact else rng.choice((-1.0, 1.0), size=(n_perm, g))
        self._x, self._y = signs @ self.d, signs @ self.w
        # p never below its resolution: 2/2^G exact (a vector and its negation), 1/(B+1) sampled
        self.p_floor = 2.0 / 2**g if self.exact else 1.0 / (n_perm + 1)
        self.scale = float(np.abs(self.d).sum()) or 1.0

    def p(self, delta0: float = 0.0) -> float:
        """Two-sided p of H: Δ = delta0."""
        obs = abs(self.delta - delta0)
        extreme = np.abs(self._x - delta0 * self._y) >= obs - 1e-12 * self.scale
        if self.exact:
            return float(np.mean(extreme))
        return float((1 + np.sum(extreme)) / (1 + extreme.size))

    def interval(self, level: float) -> tuple[float, float] | None:
        """{δ : p(δ) > 1 − level}, by bisection on each side; None when p can never get that small."""
        a = 1.0 - level
        if self.p_floor > a:
            return None
        span = 4.0 * self.mde_se() + 1e-6 * self.scale + 1e-9
        bounds = []
        for sign in (-1.0, 1.0):
            inner, outer = self.delta, self.delta + sign * span
            while self.p(outer) > a:  # widen until the test rejects
                inner, outer = outer, self.delta + 2 * (outer - self.delta)
                if abs(outer - self.delta) > 1e9:
                    return None
            for _ in range(60):
                mid = (inner + outer) / 2
                inner, outer = (mid, outer) if self.p(mid) > a else (inner, mid)
            bounds.append(outer)
        return bounds[0], bounds[1]

    def mde_se(self) -> float:
        """Cluster-robust standard error of Δ̂: √(G/(G−1) · Σ (d_g − Δ̂·w_g)²)."""
        g = self.d.size
        return math.sqrt(g / max(g - 1, 1) * float(np.sum((self.d - self.delta * self.w) ** 2)))


def min_detectable(se: float, alpha: float, power: float = 0.8) -> float:
    """Smallest |Δ| a two-sided level-``alpha`` test detects with ``power``: (z_{1−α/2} + z_power)·SE."""
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * se)


def obf_spent(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type α spent by information fraction t: 2 − 2Φ(z_{1−α/2}/√t)."""
    if t <= 0:
        return 0.0
    return float(min(alpha, 2.0 - 2.0 * sps.norm.cdf(sps.norm.ppf(1 - alpha / 2) / math.sqrt(min(t, 1.0)))))


__all__ = [
    "Estimate", "McNemar", "Linear", "SignFlip", "cluster_codes", "draw_clusters", "cluster_counts",
    "mean_draws", "percentile_ci", "paired_ratio_bootstrap", "mean_bootstrap", "mcnemar_exact",
    "adjust_pvalues", "cohen_kappa", "inheritance_evidence", "spearman", "contributions", "t_interval",
    "min_detectable", "obf_spent",
]
