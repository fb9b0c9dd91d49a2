"""audit.stats against references (scipy, statsmodels, sklearn) and direct loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from audit import stats


def _loop_draw_means(x, clusters, rng, n_boot):
    """Direct, unvectorised cluster bootstrap of a mean: one cluster draw per loop turn."""
    labels = sorted(set(clusters))
    members = {c: [i for i, ci in enumerate(clusters) if ci == c] for c in labels}
    out = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(labels), size=len(labels))
        idx = [i for k in picked for i in members[labels[k]]]
        out.append(float(np.mean(x[idx])))
    return np.array(out)


def _clustered(seed, n_clusters=12, max_size=6):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=n_clusters)
    clusters = [f"t{k:02d}" for k, s in enumerate(sizes) for _ in range(s)]
    return rng, clusters


# ---------------------------------------------------------------- McNemar


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_exact_binomial_test(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    t = (rng.random(n) < 0.6).astype(float)
    s = np.where(rng.random(n) < 0.3, 1 - t, t)
    got = stats.mcnemar_exact(t, s)
    b, c = int(np.sum((t == 1) & (s == 0))), int(np.sum((t == 0) & (s == 1)))
    assert (got.b, got.c) == (b, c)
    ref = sps.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert got.p == pytest.approx(ref, rel=1e-12, abs=1e-15)
    table = [[np.sum((t == 1) & (s == 1)), b], [c, np.sum((t == 0) & (s == 0))]]
    assert got.p == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_mcnemar_known_counts_and_nan_pairs_left_out():
    t = np.array([1, 1, 1, 1, 1, 0, 0, np.nan, 1])
    s = np.array([0, 0, 0, 0, 0, 1, 0, 1, np.nan])
    got = stats.mcnemar_exact(t, s)
    assert (got.b, got.c) == (5, 1)
    assert got.p == pytest.approx(sps.binomtest(1, 6, 0.5).pvalue)  # 0.21875
    assert got.p == pytest.approx(0.21875)
    same = stats.mcnemar_exact(np.ones(5), np.ones(5))
    assert (same.b, same.c, same.p) == (0, 0, 1.0)


# ---------------------------------------------------------------- Holm / BH


@pytest.mark.parametrize("method,sm_name", [("holm", "holm"), ("bh", "fdr_bh")])
@pytest.mark.parametrize("seed", range(5))
def test_adjustment_matches_statsmodels(method, sm_name, seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.random(15) ** 3, rng.random(5), [0.01, 0.01, 1.0]])  # ties included
    rng.shuffle(p)
    ref = multipletests(p, method=sm_name)[1]
    np.testing.assert_allclose(stats.adjust_pvalues(p, method), ref, rtol=1e-12)


@pytest.mark.parametrize("method,sm_name", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjustment_leaves_nan_out_of_the_family(method, sm_name):
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan, 0.5])
    got = stats.adjust_pvalues(p, method)
    assert np.isnan(got[[1, 4]]).all()
    ok = ~np.isnan(p)
    np.testing.assert_allclose(got[ok], multipletests(p[ok], method=sm_name)[1], rtol=1e-12)
    assert np.isnan(stats.adjust_pvalues([np.nan], method)).all()


def test_adjustment_known_holm_values_and_bad_method():
    np.testing.assert_allclose(stats.adjust_pvalues([0.01, 0.04, 0.03], "holm"), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(stats.adjust_pvalues([0.01, 0.04, 0.03], "bh"), [0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="holm"):
        stats.adjust_pvalues([0.1], "bonferoni")


# ---------------------------------------------------------------- kappa and evidence


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2 + seed % 2, size=60).astype(float)  # binary and 3-class
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 2 + seed % 2, size=60)).astype(float)
    assert stats.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), rel=1e-12)


def test_kappa_degenerate_is_nan_and_nan_pairs_dropped():
    assert math.isnan(stats.cohen_kappa(np.ones(8), np.ones(8)))
    assert math.isnan(stats.cohen_kappa(np.array([np.nan]), np.array([1.0])))
    a = np.array([1, 0, 1, 1, np.nan, 0])
    b = np.array([1, 0, 0, 1, 1, np.nan])
    assert stats.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score([1, 0, 1, 1], [1, 0, 0, 1]))


def test_inheritance_evidence_known_values():
    t = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], float)
    s = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], float)
    tm = np.array([3.0, 2.0, 1.0, 0.5, -0.1, -1.0, -2.0, -3.0, -4.0, -5.0])
    sm = tm * 2 + 0.1  # same ranks
    ev = stats.inheritance_evidence(t, s, tm, sm)
    assert ev["p_s_given_t"] == pytest.approx(3 / 4)
    assert ev["p_s_given_not_t"] == pytest.approx(1 / 6)
    assert ev["kappa"] == pytest.approx(cohen_kappa_score(t, s))
    assert ev["margin_corr"] == pytest.approx(1.0)
    ev = stats.inheritance_evidence(np.zeros(5), np.ones(5))
    assert math.isnan(ev["p_s_given_t"]) and ev["p_s_given_not_t"] == 1.0 and math.isnan(ev["margin_corr"])
    rho = stats.spearman(tm, tm[::-1] + np.arange(10) * 0.01)
    assert rho == pytest.approx(sps.spearmanr(tm, tm[::-1] + np.arange(10) * 0.01).statistic)


# ---------------------------------------------------------------- bootstrap


def test_draw_helpers_match_loops():
    rng, clusters = _clustered(1)
    codes, k = stats.cluster_codes(clusters)
    draws = stats.draw_clusters(k, 50, rng)
    w = stats.cluster_weights(draws, codes, k)
    for b, idx in enumerate(stats.draw_item_indices(draws, codes, k)):
        expected = [i for kk in draws[b] for i in np.flatnonzero(codes == kk)]
        assert sorted(idx.tolist()) == sorted(expected)
        np.testing.assert_array_equal(np.bincount(idx, minlength=len(codes)), w[b])


@pytest.mark.parametrize("seed", range(3))
def test_percentile_ci_of_mean_matches_direct_loop(seed):
    rng, clusters = _clustered(seed)
    x = rng.normal(size=len(clusters))
    loop = _loop_draw_means(x, clusters, np.random.default_rng(99), 500)
    lo, hi = np.quantile(loop, [0.025, 0.975])
    generic = stats.cluster_bootstrap(lambda c: float(np.mean(c["x"])), {"x": x}, clusters, n_boot=500,
                                      rng=np.random.default_rng(99))
    vectorised = stats.mean_bootstrap(x, clusters, n_boot=500, rng=np.random.default_rng(99))
    for est in (generic, vectorised):
        assert est.value == pytest.approx(x.mean())
        assert est.ci == pytest.approx((lo, hi), rel=1e-12)


def test_paired_generic_and_vectorised_paths_agree_and_share_draws():
    rng, clusters = _clustered(4, n_clusters=30)
    t = (rng.random(len(clusters)) < 0.7).astype(float)
    s = (rng.random(len(clusters)) < 0.6).astype(float)

    def stat(c):
        return (np.mean(c["x"]) - 0.5) * 100

    a = stats.paired_cluster_bootstrap(stat, {"x": t}, {"x": s}, clusters, n_boot=300, rng=np.random.default_rng(5))
    b = stats.paired_mean_bootstrap(t, s, clusters, n_boot=300, rng=np.random.default_rng(5), neutral=0.5, scale=100)
    assert a == b
    assert a.delta.value == pytest.approx((s.mean() - t.mean()) * 100)
    # the same draws for both models: the teacher's CI equals its own unpaired bootstrap with that seed
    alone = stats.mean_bootstrap((t - 0.5) * 100, clusters, n_boot=300, rng=np.random.default_rng(5))
    assert a.teacher.ci == pytest.approx(alone.ci)
    # Δ from shared draws: loop over the same draws by hand
    codes, k = stats.cluster_codes(clusters)
    draws = stats.draw_clusters(k, 300, np.random.default_rng(5))
    d = [(s[idx].mean() - t[idx].mean()) * 100 for idx in stats.draw_item_indices(draws, codes, k)]
    assert a.delta.ci == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
    assert a.p == pytest.approx(2 * sps.norm.sf(abs(a.delta.value) / np.std(d, ddof=1)), rel=1e-12)


def test_bootstrap_p_known_cases():
    pct = {"method": "percentile"}
    assert stats.bootstrap_p(np.full(99, 3.0), **pct) == pytest.approx(2 / 100)
    assert stats.bootstrap_p(np.zeros(99), **pct) == 1.0
    d = np.concatenate([np.full(10, -1.0), np.full(89, 1.0)])
    assert stats.bootstrap_p(d, **pct) == pytest.approx(2 * 11 / 100)
    assert math.isnan(stats.bootstrap_p(np.full(10, np.nan), **pct))
    # normal approximation: the estimate 1.96 bootstrap standard errors from 0 -> p = 0.05
    draws = np.random.default_rng(0).normal(size=1000)
    se = np.std(draws, ddof=1)
    assert stats.bootstrap_p(draws, 1.959963984540054 * se) == pytest.approx(0.05, rel=1e-9)
    assert stats.bootstrap_p(draws, 0.0) == 1.0
    assert stats.bootstrap_p(np.full(50, 2.0), 2.0) == 0.0 and stats.bootstrap_p(np.zeros(50), 0.0) == 1.0
    assert math.isnan(stats.bootstrap_p(draws, math.nan)) and math.isnan(stats.bootstrap_p(draws))
    assert stats.bootstrap_p(draws, 40.0) < 1e-100  # no 2/(B+1) floor: survives audit-wide adjustment
    with pytest.raises(ValueError, match="percentile"):
        stats.bootstrap_p(draws, 1.0, method="exact")


def test_nan_handling_never_becomes_zero():
    vals = np.concatenate([np.ones(90), np.full(10, np.nan)])  # 10 % undefined draws
    assert stats.percentile_ci(vals, 0.95) is None
    vals = np.concatenate([np.arange(99.0), [np.nan]])  # 1 % undefined: dropped
    assert stats.percentile_ci(vals, 0.95) == pytest.approx(tuple(np.quantile(np.arange(99.0), [0.025, 0.975])))
    x = np.array([1.0, np.nan, 0.0, 1.0])
    est = stats.mean_bootstrap(x, ["a", "a", "b", "b"], n_boot=200, rng=np.random.default_rng(0))
    assert est.value == pytest.approx(2 / 3)
    allnan = stats.mean_bootstrap(np.full(4, np.nan), ["a", "a", "b", "b"], n_boot=200, rng=np.random.default_rng(0))
    assert math.isnan(allnan.value) and allnan.ci is None
    one = stats.paired_mean_bootstrap(np.ones(4), np.zeros(4), ["a"] * 4, n_boot=200, rng=np.random.default_rng(0))
    assert one.delta.value == -1.0 and one.delta.ci is None and math.isnan(one.p)


def test_ratio_bootstrap_matches_loop_and_known_case():
    rng, clusters = _clustered(7, n_clusters=20)
    t = (rng.random(len(clusters)) < 0.7).astype(float)
    s = t * (rng.random(len(clusters)) < 0.8)
    got = stats.paired_ratio_bootstrap(t, s, clusters, n_boot=400, rng=np.random.default_rng(3))
    codes, k = stats.cluster_codes(clusters)
    draws = stats.draw_clusters(k, 400, np.random.default_rng(3))
    r = [s[idx].mean() / t[idx].mean() for idx in stats.draw_item_indices(draws, codes, k)]
    assert got.value == pytest.approx(s.mean() / t.mean())
    assert got.ci == pytest.approx(tuple(np.quantile(r, [0.025, 0.975])))
    # every cluster: teacher 2 right, student 1 -> the ratio is exactly 0.5 in every draw
    cl = [c for c in "abcdef" for _ in range(4)]
    t2, s2 = np.tile([1.0, 1, 0, 0], 6), np.tile([1.0, 0, 0, 0], 6)
    half = stats.paired_ratio_bootstrap(t2, s2, cl, n_boot=200, rng=np.random.default_rng(0))
    assert half.value == 0.5 and half.ci == pytest.approx((0.5, 0.5))
    zero = stats.paired_ratio_bootstrap(np.zeros(24), s2, cl, n_boot=200, rng=np.random.default_rng(0))
    assert math.isnan(zero.value) and zero.ci is None


# ---------------------------------------------------------------- calibration by simulation


def _simulate(n_audits, true_cut_t, true_cut_s, seed, *, k=300, m=2, sigma_u=0.6, rho=0.6, n_boot=400):
    """Paired clustered binary audits from a latent model whose true Δ is known in closed form.

    Item i in template c: teacher stereotyped = 1{u_c + e_i > cut_T}, student = 1{u_c + e'_i > cut_S},
    u_c ~ N(0, σ_u²), corr(e, e') = ρ. P(stereotyped) = Φ(−cut / sqrt(1 + σ_u²)).
    Sizes: the percentile bootstrap is slightly narrow with few clusters (its variance has a
    (K−1)/K factor and ignores the t-vs-normal gap; with K = 60 it covered ~93.7 % here), so
    the check uses K = 300 templates of 2 items, where it measured 94.5 % over 5 x 1100 audits.
    """
    rng = np.random.default_rng(seed)
    sd = math.sqrt(1 + sigma_u**2)
    truth = 100 * (sps.norm.cdf(-true_cut_s / sd) - sps.norm.cdf(-true_cut_t / sd))
    clusters = [f"t{c}" for c in range(k) for _ in range(m)]
    covered, rejected = 0, 0
    for _ in range(n_audits):
        u = np.repeat(rng.normal(0, sigma_u, k), m)
        e = rng.normal(size=k * m)
        e2 = rho * e + math.sqrt(1 - rho**2) * rng.normal(size=k * m)
        t = (u + e > true_cut_t).astype(float)
        s = (u + e2 > true_cut_s).astype(float)
        res = stats.paired_mean_bootstrap(t, s, clusters, n_boot=n_boot, rng=rng, neutral=0.5, scale=100)
        covered += res.delta.ci[0] <= truth <= res.delta.ci[1]
        rejected += res.p < 0.05
    return truth, covered / n_audits, rejected / n_audits


def test_paired_bootstrap_ci_covers_true_difference_95_percent():
    truth, coverage, _ = _simulate(1000, -0.3, -0.45, seed=2024)
    assert truth == pytest.approx(100 * (sps.norm.cdf(0.45 / 1.1662) - sps.norm.cdf(0.3 / 1.1662)), rel=1e-3)
    assert 0.93 <= coverage <= 0.97, coverage


def test_bootstrap_p_rejects_about_5_percent_under_the_null():
    truth, coverage, rejected = _simulate(600, -0.3, -0.3, seed=7)
    assert truth == 0.0
    assert 0.03 <= rejected <= 0.07, rejected
    assert 0.93 <= coverage <= 0.97, coverage
