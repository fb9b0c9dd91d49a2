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


def _loop_ratio_draws(t, s, clusters, rng, n_boot):
    """Direct cluster bootstrap of mean(s) / mean(t), one draw per loop turn (same draws as the code)."""
    codes, k = stats.cluster_codes(clusters)
    draws = stats.draw_clusters(k, n_boot, rng)
    out = []
    for row in draws:
        idx = np.concatenate([np.flatnonzero(codes == g) for g in row])
        out.append(s[idx].mean() / t[idx].mean())
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_percentile_ci_of_mean_matches_direct_loop(seed):
    rng, clusters = _clustered(seed)
    x = rng.normal(size=len(clusters))
    loop = _loop_draw_means(x, clusters, np.random.default_rng(99), 500)
    lo, hi = np.quantile(loop, [0.025, 0.975])
    est = stats.mean_bootstrap(x, clusters, n_boot=500, rng=np.random.default_rng(99))
    assert est.value == pytest.approx(x.mean())
    assert est.ci == pytest.approx((lo, hi), rel=1e-12)


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


def test_ratio_bootstrap_matches_loop_and_known_case():
    rng, clusters = _clustered(7, n_clusters=20)
    t = (rng.random(len(clusters)) < 0.7).astype(float)
    s = t * (rng.random(len(clusters)) < 0.8)
    got = stats.paired_ratio_bootstrap(t, s, clusters, n_boot=400, rng=np.random.default_rng(3))
    r = _loop_ratio_draws(t, s, clusters, np.random.default_rng(3), 400)
    assert got.value == pytest.approx(s.mean() / t.mean())
    assert got.ci == pytest.approx(tuple(np.quantile(r, [0.025, 0.975])))
    # every cluster: teacher 2 right, student 1 -> the ratio is exactly 0.5 in every draw
    cl = [c for c in "abcdef" for _ in range(4)]
    t2, s2 = np.tile([1.0, 1, 0, 0], 6), np.tile([1.0, 0, 0, 0], 6)
    half = stats.paired_ratio_bootstrap(t2, s2, cl, n_boot=200, rng=np.random.default_rng(0))
    assert half.value == 0.5 and half.ci == pytest.approx((0.5, 0.5))
    zero = stats.paired_ratio_bootstrap(np.zeros(24), s2, cl, n_boot=200, rng=np.random.default_rng(0))
    assert math.isnan(zero.value) and zero.ci is None


# ---------------------------------------------------------------- linearisation and model intervals


def _lin(stat, cols, clusters):
    codes, k = stats.cluster_codes(clusters)
    return stats.contributions(stat, cols, codes, k), codes, k


@pytest.mark.parametrize("seed", range(3))
def test_contributions_of_a_mean_are_cluster_sums_over_n(seed):
    rng, clusters = _clustered(seed, n_clusters=15)
    x = rng.random(len(clusters))
    lin, codes, k = _lin(lambda c: float(np.mean(c["x"])), {"x": x}, clusters)
    np.testing.assert_allclose(lin.contrib, np.bincount(codes, weights=x, minlength=k) / len(x), rtol=1e-10)
    assert lin.value == pytest.approx(x.mean()) and lin.contrib.sum() == pytest.approx(x.mean())
    np.testing.assert_allclose(lin.weights, np.bincount(codes, minlength=k) / len(x))


def test_contributions_of_a_ratio_match_the_delta_method():
    rng, clusters = _clustered(3, n_clusters=40)
    a, b = rng.random(len(clusters)), 1 + rng.random(len(clusters))
    lin, codes, k = _lin(lambda c: float(c["a"].sum() / c["b"].sum()), {"a": a, "b": b}, clusters)
    r = a.sum() / b.sum()
    ag, bg = np.bincount(codes, weights=a, minlength=k), np.bincount(codes, weights=b, minlength=k)
    delta_method = (ag - r * bg) / b.sum()  # STATS.md: u_g = (a_g − R̂·b_g) / B
    # the jackknife influence equals the delta-method term up to the (N − n_g)/(B − b_g) factor
    exact = (ag - r * bg) / (b.sum() - bg) * (1 - lin.weights)
    exact -= lin.weights * exact.sum()  # centred, so the contributions add up to the estimate
    np.testing.assert_allclose(lin.residuals, exact, rtol=1e-10)
    np.testing.assert_allclose(lin.residuals, delta_method, atol=0.2 * np.abs(delta_method).max())
    assert lin.contrib.sum() == pytest.approx(r)


@pytest.mark.parametrize("seed", range(3))
def test_t_interval_matches_statsmodels_cluster_robust_ols(seed):
    """Equal cluster sizes: CR2 for an intercept-only model equals statsmodels' CR1 (G/(G−1) factor)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(seed)
    k, m = 9, 5
    clusters = np.repeat(np.arange(k), m)
    x = rng.normal(size=k)[clusters] + rng.normal(size=k * m)
    lin, _, _ = _lin(lambda c: float(np.mean(c["x"])), {"x": x}, [str(c) for c in clusters])
    fit = sm.OLS(x, np.ones_like(x)).fit(cov_type="cluster", cov_kwds={"groups": clusters, "df_correction": True},
                                         use_t=True)
    lo, hi = fit.conf_int(alpha=0.05)[0]
    assert stats.t_interval(lin, 0.95) == pytest.approx((lo, hi), rel=1e-9)


def test_degenerate_and_undefined_give_no_interval():
    ones = {"x": np.ones(12)}
    lin, _, _ = _lin(lambda c: float(np.mean(c["x"])), ones, [str(i // 3) for i in range(12)])
    assert stats.t_interval(lin, 0.95) is None  # zero-width: every cluster gives the same value
    one, _, _ = _lin(lambda c: float(np.mean(c["x"])), {"x": np.arange(4.0)}, ["a"] * 4)
    assert one is None and stats.t_interval(one, 0.95) is None
    undefined, _, _ = _lin(lambda c: float(np.nanmean(c["x"])) if np.isfinite(c["x"]).any() else math.nan,
                           {"x": np.array([1.0, np.nan, np.nan, 0.0])}, ["a", "b", "b", "c"])
    assert undefined is not None  # leaving any one cluster out still leaves a defined mean
    gone, _, _ = _lin(lambda c: float(np.nanmean(c["x"])) if np.isfinite(c["x"]).any() else math.nan,
                      {"x": np.array([1.0, np.nan, np.nan])}, ["a", "b", "b"])
    assert gone is None  # leaving out cluster a leaves nothing: no linearisation, never 0


# ---------------------------------------------------------------- the sign-flip test


@pytest.mark.parametrize("seed", range(4))
def test_exact_sign_flip_p_matches_scipy_permutation_test(seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(0.3, 1, size=10)
    w = np.full(10, 0.1)
    sf = stats.SignFlip(d, w, n_perm=999, rng=rng)
    ref = sps.permutation_test((d,), np.sum, permutation_type="samples", n_resamples=np.inf,
                               alternative="two-sided").pvalue
    assert sf.exact and sf.p() == pytest.approx(ref, rel=1e-12)
    assert sf.p_floor == 2 / 2**10


def test_sampled_sign_flip_p_is_never_below_its_resolution():
    d = np.full(40, 1.0)  # every cluster moves the same way: the strongest possible evidence
    sf = stats.SignFlip(d, np.full(40, 1 / 40), n_perm=999, rng=np.random.default_rng(0))
    assert not sf.exact and sf.p() == pytest.approx(1 / 1000) and sf.p_floor == 1 / 1000


@pytest.mark.parametrize("g", [6, 12, 40])
def test_inverted_interval_agrees_with_its_p_value(g):
    rng = np.random.default_rng(g)
    w = rng.integers(1, 8, size=g).astype(float)
    w /= w.sum()
    d = w * 3.0 + rng.normal(0, 0.05, size=g)
    sf = stats.SignFlip(d, w, n_perm=1999, rng=rng)
    for level in (0.9, 0.95):
        ci = sf.interval(level)
        assert ci is not None and ci[0] < sf.delta < ci[1]
        a = 1 - level
        assert sf.p(ci[0] - 1e-6) <= a and sf.p(ci[1] + 1e-6) <= a  # just outside: rejected
        assert sf.p(ci[0] + 1e-3 * (ci[1] - ci[0])) > a and sf.p(ci[1] - 1e-3 * (ci[1] - ci[0])) > a
        assert (ci[0] > 0) == (sf.p(0.0) <= a)  # the interval excludes 0 exactly when p rejects 0


def test_too_few_clusters_have_no_interval_at_that_level():
    sf = stats.SignFlip(np.array([1.0, 1.1, 0.9, 1.2, 1.0]), np.full(5, 0.2), n_perm=999,
                        rng=np.random.default_rng(0))
    assert sf.p_floor == 2 / 32 and sf.interval(0.95) is None and sf.interval(0.8) is not None


def test_obf_spending_known_values():
    assert stats.obf_spent(0.05, 1.0) == pytest.approx(0.05)
    assert stats.obf_spent(0.05, 0.5) == pytest.approx(2 - 2 * sps.norm.cdf(1.959963984540054 / math.sqrt(0.5)))
    assert stats.obf_spent(0.05, 0.0) == 0.0


# ---------------------------------------------------------------- calibration by simulation


def _simulate(n_audits, p_t, p_s, seed, *, k=30, m=6, icc=0.1, copy=0.6):
    """Paired clustered binary audits with a known Δ: cluster propensities a_g ~ Beta with the given ICC,
    the student copies the teacher's choice with probability ``copy`` and else draws at a_g + (p_s − p_t).
    The target is the finite-population Δ given the drawn propensities (what the test conditions on).
    """
    rng = np.random.default_rng(seed)
    conc = (1 - icc) / icc
    covered = rejected = 0
    for _ in range(n_audits):
        a = rng.beta(p_t * conc, (1 - p_t) * conc, size=k)
        shift = p_s - p_t
        t = (rng.random((k, m)) < a[:, None]).astype(float)
        own = (rng.random((k, m)) < np.clip(a + shift, 0, 1)[:, None]).astype(float)
        s = np.where(rng.random((k, m)) < copy, t, own)
        truth = 100 * (1 - copy) * (np.clip(a + shift, 0, 1) - a).mean()
        codes = np.repeat(np.arange(k), m)
        lt = stats.contributions(lambda c: 100 * (c["x"].mean() - 0.5), {"x": t.ravel()}, codes, k)
        ls = stats.contributions(lambda c: 100 * (c["x"].mean() - 0.5), {"x": s.ravel()}, codes, k)
        sf = stats.SignFlip(ls.contrib - lt.contrib, lt.weights, n_perm=999, rng=rng)
        ci = sf.interval(0.95)
        covered += ci[0] <= truth <= ci[1]
        rejected += sf.p() <= 0.05
    return covered / n_audits, rejected / n_audits


def test_sign_flip_interval_covers_the_true_change():
    coverage, _ = _simulate(300, 0.6, 0.7, seed=2024)
    assert 0.92 <= coverage <= 0.985, coverage


def test_sign_flip_test_rejects_about_5_percent_under_the_null():
    coverage, rejected = _simulate(400, 0.6, 0.6, seed=7)
    assert rejected <= 0.07, rejected
    assert coverage >= 0.93, coverage
