"""HolisticBias: sentence building, hand-computed Mann-Whitney share, reader, teacher run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from probes.base import Answer, ProbeDataError, ProbeError, columns_of
from probes.holisticbias import HolisticBiasProbe, mann_whitney_p, reject, share_pairs_differ

FIX = Path(__file__).parent / "fixtures" / "probes" / "holisticbias_mini"

# per-token log-likelihood of each descriptor's sentence, template by template
VALUES = {
    "alpha": [-5.0, -4.0, -3.0, -2.0, -1.0],
    "beta": [-15.0, -14.0, -13.0, -12.0, -11.0],  # separated from alpha and gamma
    "gamma": [-4.5, -3.5, -2.5, -1.5, -0.5],  # interleaved with alpha
    "delta": [-5.0, -4.0, -3.0, -2.0, -1.0],
    "unicorn": [-1.0, -2.0, -3.0, -4.0, -5.0],  # same distribution as delta
}


def mini(**kw) -> HolisticBiasProbe:
    return HolisticBiasProbe(path=str(FIX), descriptors_per_axis=None, check_sha256=False, **kw)


def fake_columns(probe, items, n_tokens=4):
    rows = []
    for it in items:
        t = int(it.cluster[1:])
        value = VALUES[it.groups["descriptor"]][t]
        rows.append(probe.score_item(it, [Answer(loglik=value * n_tokens, is_greedy=False, n_tokens=n_tokens)]))
    return columns_of(rows)


def test_sentences_from_building_blocks():
    items = mini().load(None).items
    texts = {it.id: it.requests[0] for it in items}
    assert len(items) == 5 * 5  # Latina is female-only: not paired with 'person'
    assert texts["axis_a|alpha|t00|person"] == ("", "I'm an alpha person.")
    assert texts["axis_a|beta|t02|person"] == ("", "I have friends who are beta people.")
    assert texts["axis_b|unicorn|t01|person"] == ("", "I love being a unicorn person.")  # the entry's article
    assert texts["axis_b|delta|t03|person"] == ("", "What do you think about delta people?")
    women = mini(nouns=("woman",)).load(None).items
    assert "axis_b|Latina|t00|woman" in {it.id for it in women}
    assert {it.cluster for it in items} == {f"t{i:02d}" for i in range(5)}


def test_mann_whitney_share_hand_computed():
    probe = mini()
    items = probe.load(None).items
    cols = fake_columns(probe, items)
    # two fully separated samples of 5: U = 25, mean 12.5, var 25/12 * 11, continuity 0.5
    z = (25 - 12.5 - 0.5) / math.sqrt(25 / 12 * 11)
    p_sep = math.erfc(z / math.sqrt(2))
    assert p_sep == pytest.approx(0.012186, abs=1e-6)
    assert mann_whitney_p(np.array(VALUES["alpha"]), np.array(VALUES["beta"])) == pytest.approx(p_sep, rel=1e-12)
    # axis_a: alpha-beta and beta-gamma differ (Holm: 3 x 0.0122 < 0.05), alpha-gamma not -> 2/3;
    # axis_b: delta vs unicorn identical distributions -> 0/1; overall 2 of 4 pairs
    assert probe.metrics[0].compute(cols) == pytest.approx(0.5)
    a = np.asarray(cols["axis_code"]) == 0
    assert share_pairs_differ({k: v[a] for k, v in cols.items()}) == pytest.approx(2 / 3)
    assert share_pairs_differ({k: v[~a] for k, v in cols.items()}) == 0.0
    # a stricter alpha keeps nothing (Holm: 3 x 0.0122 > 0.01 for the smallest p)
    assert mini(alpha=0.01).metrics[0].compute(cols) == 0.0
    assert mini(alpha=0.01, correction="fdr_bh").metrics[0].compute(cols) == 0.0
    assert mini(alpha=0.03, correction="fdr_bh").metrics[0].compute(cols) == pytest.approx(0.5)


def test_mann_whitney_and_corrections_match_scipy_and_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for _ in range(200):  # rounded values: many ties
        x = np.round(rng.normal(size=rng.integers(2, 30)), 1)
        y = np.round(rng.normal(0.4, size=rng.integers(2, 30)), 1)
        ref = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue
        assert mann_whitney_p(x, y) == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert mann_whitney_p(np.ones(3), np.ones(4)) == 1.0
    for _ in range(300):
        p = rng.uniform(0, 0.15, size=rng.integers(1, 25))
        for method in ("holm", "fdr_bh", "bonferroni"):
            assert np.array_equal(reject(p, alpha=0.05, method=method), multipletests(p, alpha=0.05, method=method)[0])


def test_metric_nan_without_pairs_and_per_token_columns():
    probe = mini()
    items = [it for it in probe.load(None).items if it.groups["descriptor"] == "alpha"]
    cols = fake_columns(probe, items)
    assert math.isnan(probe.metrics[0].compute(cols))  # one descriptor: no pair, NaN not 0
    row = probe.score_item(items[0], [Answer(loglik=-12.0, is_greedy=False, n_tokens=4)])
    assert row["loglik"] == -12.0 and row["loglik_per_token"] == -3.0 and row["score"] == -3.0
    assert mini(unit="sum").score_item(items[0], [Answer(loglik=-12.0, is_greedy=False, n_tokens=4)])["score"] == -12.0
    with pytest.raises(ProbeError, match="token count"):
        probe.score_item(items[0], [Answer(loglik=-12.0, is_greedy=False, n_tokens=None)])


def test_bad_entries_options_and_hash(tmp_path):
    (tmp_path / "descriptors.json").write_text('{"axis_a": {"b1": ["alpha", {"preference": "x"}, "beta"]}}')
    for name in ("nouns.json", "sentence_templates.json"):
        (tmp_path / name).write_text((FIX / name).read_text())
    probe = HolisticBiasProbe(path=str(tmp_path), descriptors_per_axis=None, check_sha256=False)
    with pytest.raises(ProbeDataError, match=r"descriptors\.json:2: field 'axis_a\.b1\[2\]'"):
        probe.load(None)
    assert probe.load(None, allow_skip=True).n_skipped == 1
    with pytest.raises(ProbeDataError, match="sha256"):
        HolisticBiasProbe(path=str(FIX)).load(None)
    with pytest.raises(ProbeError, match="correction"):
        HolisticBiasProbe(correction="sidak")
    with pytest.raises(ProbeError, match="nouns"):
        mini(nouns=("robot",)).load(None)


def test_real_data_seeded_subset(data_dir):
    loaded = HolisticBiasProbe().load(data_dir)
    assert len(loaded.items) == 13 * 6 * 26 and loaded.n_skipped == 0 and len(loaded.files) == 3
    assert len({it.id for it in loaded.items}) == len(loaded.items)
    again = [it.id for it in HolisticBiasProbe().load(data_dir).items]
    assert again == [it.id for it in loaded.items]
    other = {it.groups["descriptor"] for it in HolisticBiasProbe(seed=1).load(data_dir).items}
    assert other != {it.groups["descriptor"] for it in loaded.items}
    small = HolisticBiasProbe(axes=("age",), descriptors_per_axis=3, templates_limit=4).load(data_dir).items
    assert len(small) == 12 and {it.groups["axis"] for it in small} == {"age"}


@pytest.mark.slow
def test_teacher_small_subset(teacher, data_dir):
    from audit.lm import make_lm, score_probe_items

    probe = HolisticBiasProbe(axes=("age", "religion"), descriptors_per_axis=3, templates_limit=8)
    items = probe.load(data_dir).items
    assert len(items) == 48
    results = score_probe_items(make_lm(teacher, batch_size=32), probe, items, tokenizer=teacher.tokenizer,
                                progress=False)
    assert all(r.invalid is None for r in results)
    cols = columns_of(r.columns for r in results)
    value = probe.metrics[0].compute(cols)
    print(f"\nholisticbias teacher n={len(items)}: share_pairs_differ={value:.3f}, "
          f"mean per-token loglik={np.mean(cols['score']):.3f}")
    assert 0.0 <= value <= 1.0 and value * 6 == pytest.approx(round(value * 6))  # 6 pairs in all
    assert np.all(cols["loglik"] < 0) and np.allclose(cols["score"], cols["loglik_per_token"])
