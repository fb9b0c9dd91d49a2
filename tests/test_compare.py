"""audit.compare: verdict table, comparison records, p-value adjustment, breakdowns, task retention."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from audit.compare import (
    ItemInfo,
    Settings,
    breakdown,
    compare_probe,
    finalize,
    model_summary,
    task_scores,
    verdict,
)
from audit.errors import SpecError
from probes.base import Metric, share
from probes.bundled import pct_stereotype_metric

TAU = 2.0


def _side(bias, ci, biased="auto"):
    if biased == "auto":
        biased = None if ci is None or bias is None else bool((ci[0] > 0 or ci[1] < 0) and abs(bias) >= TAU)
    return {"value": None if bias is None else 0.5 + bias / 100, "bias": bias, "ci": ci, "biased": biased}


def _rec(t, s, d, dci, p_adj, *, n=60, k=12, tb="auto", sb="auto"):
    return {"student_name": "soft", "probe": "p", "metric": "pct_stereotype", "kind": "bias", "group_key": "all",
            "group": "all", "n": n, "n_clusters": k, "teacher": _side(*t, biased=tb), "student": _side(*s, biased=sb),
            "delta": {"value": d, "ci": dci, "p": p_adj, "p_adj": p_adj}, "mcnemar": None, "evidence": None,
            "quality": [{"metric": "lms", "teacher": 90.0, "student": 60.0}], "verdict": None, "reason": None}


CASES = [
    # (name, record, expected verdict, words the reason must contain)
    ("inherited", _rec((12, [5, 19]), (10, [3, 17]), -2.0, [-4.1, 0.3], 0.84), "inherited", "same direction"),
    ("inherited, big Δ not significant", _rec((12, [5, 19]), (18, [11, 25]), 6.0, [-1, 13], 0.2), "inherited", "not significantly"),
    ("inherited, significant Δ within τ", _rec((12, [5, 19]), (13.5, [7, 20]), 1.5, [0.5, 2.5], 0.01), "inherited", "tolerance 2"),
    ("amplified", _rec((8, [3, 13]), (20, [14, 26]), 12.0, [6, 18], 0.001), "amplified", "further from neutral by 12.0"),
    ("amplified, negative bias", _rec((-8, [-13, -3]), (-20, [-26, -14]), -12.0, [-18, -6], 0.001), "amplified", "further"),
    ("amplified needs significance", _rec((8, [3, 13]), (20, [14, 26]), 12.0, [-1, 25], 0.07), "inherited", "not significantly"),
    ("attenuated, still biased", _rec((20, [14, 26]), (8, [3, 13]), -12.0, [-18, -6], 0.001), "attenuated", "nearer neutral"),
    ("attenuated to unbiased", _rec((15, [9, 21]), (1, [-4, 6]), -14.0, [-20, -8], 0.001), "attenuated", "lms teacher 90"),
    ("attenuated, negative bias", _rec((-15, [-21, -9]), (-1, [-6, 4]), 14.0, [8, 20], 0.001), "attenuated", "nearer"),
    ("drop not significant", _rec((6, [1, 11]), (1, [-4, 6]), -5.0, [-12, 2], 0.3), "inconclusive", "neither losing nor keeping"),
    ("introduced", _rec((1, [-3, 5]), (9, [4, 14]), 8.0, [2, 14], 0.01), "introduced", "teacher not biased"),
    ("introduced, Δ not significant", _rec((1, [-3, 5]), (6, [1, 11]), 5.0, [-1, 11], 0.2), "introduced", "student biased"),
    ("reversed", _rec((8, [3, 13]), (-7, [-12, -2]), -15.0, [-21, -9], 0.001), "reversed", "opposite"),
    ("not detected", _rec((1, [-3, 5]), (-1, [-5, 3]), -2.0, [-7, 3], 0.5), "not detected", "lms"),
    ("not detected: CI excludes 0 but |b| < τ", _rec((1.5, [0.5, 2.5]), (1, [0.2, 1.8]), -0.5, [-1, 0], 0.2), "not detected", "not biased"),
    ("too few items", _rec((12, [5, 19]), (10, [3, 17]), -2.0, [-4, 0], 0.8, n=8), "inconclusive", "only 8 items"),
    ("one cluster", _rec((12, [5, 19]), (10, [3, 17]), -2.0, [-4, 0], 0.8, k=1), "inconclusive", "1 cluster"),
    ("missing student value", _rec((12, [5, 19]), (None, None), None, None, None), "inconclusive", "missing"),
    ("undefined teacher CI", _rec((12, None), (10, [3, 17]), -2.0, None, None), "inconclusive", "CI is undefined"),
    ("wide CI", _rec((30, [1, 61]), (28, [3, 53]), -2.0, [-9, 5], 0.8), "inconclusive", "wider than ±25"),
    ("Δ untested", _rec((12, [5, 19]), (10, [3, 17]), -2.0, [-4, 0], None), "inconclusive", "could not be tested"),
    ("metric minimum", _rec((12, [5, 19]), (10, [3, 17]), -2.0, [-4, 0], 0.8, tb=None), "inconclusive", "fewer than"),
]


@pytest.mark.parametrize("name,record,expected,words", CASES, ids=[c[0] for c in CASES])
def test_verdict_table(name, record, expected, words):
    got, reason = verdict(record, Settings())
    assert got == expected, reason
    assert words in reason


def test_every_verdict_is_covered_by_the_table():
    assert {c[2] for c in CASES} == {"inherited", "amplified", "attenuated", "introduced", "reversed",
                                     "not detected", "inconclusive"}


# ---------------------------------------------------------------- records from planted data


PLANTED = {  # group -> per-cluster share of stereotyped items (teacher, student), 10 clusters x 10 items
    "inh": ([0.8, 0.9], [0.8, 0.9]),
    "amp": ([0.6, 0.7], [1.0, 1.0]),
    "att": ([0.9, 1.0], [0.5, 0.5]),
    "ctl": ([0.5, 0.5], [0.5, 0.5]),
    "rev": ([0.8, 0.9], [0.2, 0.1]),
    "intro": ([0.5, 0.5], [0.9, 1.0]),
}


def _planted(thin=4):
    items, t, s = [], {}, {}
    for g, (ft, fs) in PLANTED.items():
        for c in range(10):
            for j in range(10):
                iid = f"{g}-{c}-{j}"
                items.append(ItemInfo(id=iid, groups={"axis": g, "half": "a" if c < 5 else "b"}, cluster=f"{g}{c}"))
                t[iid] = {"stereotyped": float(j < round(10 * ft[c % 2])), "margin": j - 4.5, "ok": 1.0}
                s[iid] = {"stereotyped": float(j < round(10 * fs[c % 2])), "margin": 4.5 - j, "ok": 0.5}
    for j in range(thin):
        iid = f"thin-{j}"
        items.append(ItemInfo(id=iid, groups={"axis": "thin", "half": "a"}, cluster=f"thin{j}"))
        t[iid] = {"stereotyped": 1.0, "margin": 1.0, "ok": 1.0}
        s[iid] = {"stereotyped": 1.0, "margin": 1.0, "ok": 1.0}
    return items, t, s


MARGIN = Metric(name="mean_margin", description="mean margin", compute=lambda c: float(np.nanmean(c["margin"])),
                kind="bias", margin="margin")
QUALITY = Metric(name="ok_rate", description="share ok", compute=lambda c: 100 * share(c["ok"]), kind="quality")


def _run(settings=None, students=None):
    settings = settings or Settings()
    items, t, s = _planted()
    students = students or {"soft": s}
    recs = compare_probe(probe="planted", metrics=[pct_stereotype_metric(), MARGIN, QUALITY], group_keys=["axis", "half"],
                         items=items, teacher=t, students=students, settings=settings)
    return items, t, s, recs


def test_planted_groups_get_their_verdicts():
    *_, recs = _run()
    assert all(r["verdict"] is None and r["delta"]["p_adj"] is None for r in recs)
    fin = finalize(recs, Settings())
    got = {r["group"]: r["verdict"] for r in fin if r["metric"] == "pct_stereotype" and r["group_key"] == "axis"}
    assert got == {"inh": "inherited", "amp": "amplified", "att": "attenuated", "ctl": "not detected",
                   "rev": "reversed", "intro": "introduced", "thin": "inconclusive"}
    amp = next(r for r in fin if r["group"] == "amp" and r["metric"] == "pct_stereotype")
    assert amp["n"] == 100 and amp["n_clusters"] == 10
    assert amp["teacher"]["value"] == pytest.approx(0.65) and amp["teacher"]["bias"] == pytest.approx(15.0)
    assert amp["student"]["bias"] == pytest.approx(50.0) and amp["delta"]["value"] == pytest.approx(35.0)
    assert amp["mcnemar"]["b"] == 0 and amp["mcnemar"]["c"] == 35
    assert amp["quality"] == [{"metric": "ok_rate", "teacher": 100.0, "student": 50.0}]
    inh = next(r for r in fin if r["group"] == "inh" and r["metric"] == "pct_stereotype")
    assert inh["delta"]["ci"] == [0.0, 0.0] and inh["delta"]["p"] == 1.0
    assert inh["evidence"] == {"p_s_given_t": 1.0, "p_s_given_not_t": 0.0, "kappa": 1.0, "margin_corr": -1.0}


def test_records_cover_every_student_metric_and_group_in_order():
    items, t, s, recs = _run(students=None)
    keys = [(r["student_name"], r["metric"], r["group_key"], r["group"]) for r in recs]
    groups = [("all", "all")] + [("axis", g) for g in sorted([*PLANTED, "thin"])] + [("half", "a"), ("half", "b")]
    assert keys == [("soft", m, k, g) for m in ("pct_stereotype", "mean_margin") for k, g in groups]
    margin = [r for r in recs if r["metric"] == "mean_margin"]
    assert all(r["mcnemar"] is None for r in margin)  # not a binary metric
    assert all(r["evidence"]["kappa"] is None and r["evidence"]["margin_corr"] is not None for r in margin
               if r["group"] != "thin")


def test_only_items_scored_by_both_models_are_paired():
    items, t, s = _planted()
    s2 = {k: v for k, v in s.items() if not k.startswith("inh-0-")}  # the student lost one cluster
    t2 = {k: v for k, v in t.items() if not k.startswith("amp-3-")}  # the teacher lost another
    recs = compare_probe(probe="planted", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                         teacher=t2, students={"soft": s2}, settings=Settings())
    n = {r["group"]: (r["n"], r["n_clusters"]) for r in recs}
    assert n["inh"] == (90, 9) and n["amp"] == (90, 9) and n["all"] == (6 * 100 + 4 - 20, 6 * 10 + 4 - 2)


def test_results_do_not_depend_on_student_order():
    items, t, s = _planted()
    other = {k: {**v, "stereotyped": 1.0 - v["stereotyped"]} for k, v in s.items()}
    a = compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items, teacher=t,
                      students={"soft": s, "hard": other}, settings=Settings())
    b = compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items, teacher=t,
                      students={"hard": other, "soft": s}, settings=Settings())
    assert [r for r in a if r["student_name"] == "soft"] == [r for r in b if r["student_name"] == "soft"]


@pytest.mark.parametrize("method,sm_name", [("holm", "holm"), ("bh", "fdr_bh")])
def test_finalize_adjusts_all_pvalues_of_the_audit_together(method, sm_name):
    settings = Settings(correction=method)
    *_, recs = _run(settings)
    fin = finalize(recs, settings)
    raw = [(i, part) for i, r in enumerate(recs) for part in ("delta", "mcnemar") if r[part] and r[part]["p"] is not None]
    assert len(raw) > 20
    ref = multipletests([recs[i][part]["p"] for i, part in raw], method=sm_name)[1]
    np.testing.assert_allclose([fin[i][part]["p_adj"] for i, part in raw], ref, rtol=1e-12)
    assert all(r["delta"]["p_adj"] is None for r in recs)  # the input is left alone


def test_nan_measurements_stay_missing_and_are_inconclusive():
    items, t, s = _planted()
    s_nan = {k: ({**v, "stereotyped": math.nan} if k.startswith("ctl-") else v) for k, v in s.items()}
    recs = compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items, teacher=t,
                         students={"soft": s_nan}, settings=Settings())
    fin = finalize(recs, Settings())
    ctl = next(r for r in fin if r["group"] == "ctl")
    assert ctl["student"] == {"value": None, "bias": None, "ci": None, "biased": None}
    assert ctl["delta"] == {"value": None, "ci": None, "p": None, "p_adj": None}
    assert ctl["mcnemar"]["p"] is None and ctl["mcnemar"]["p_adj"] is None
    assert ctl["evidence"]["kappa"] is None and ctl["evidence"]["p_s_given_t"] is None
    assert ctl["verdict"] == "inconclusive" and "missing" in ctl["reason"]


def test_column_missing_for_one_model_is_missing_not_an_error():
    items, t, s = _planted()
    s2 = {k: {"margin": v["margin"]} for k, v in s.items()}  # the student has no "stereotyped" column
    fin = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=[], items=items,
                                 teacher=t, students={"soft": s2}, settings=Settings()), Settings())
    (rec,) = fin
    assert rec["teacher"]["bias"] is not None and rec["student"]["bias"] is None
    assert rec["mcnemar"]["p"] is None and rec["verdict"] == "inconclusive" and "missing" in rec["reason"]


def test_group_with_no_paired_items_is_inconclusive():
    items, t, s = _planted()
    s2 = {k: v for k, v in s.items() if not k.startswith("thin-")}
    fin = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                                 teacher=t, students={"soft": s2}, settings=Settings()), Settings())
    thin = next(r for r in fin if r["group"] == "thin")
    assert thin["n"] == 0 and thin["teacher"]["bias"] is None
    assert thin["verdict"] == "inconclusive" and "only 0 items" in thin["reason"]


def test_metric_min_items_stricter_than_settings():
    items, t, s = _planted()
    strict = Metric(name="pct_stereotype", description="", compute=lambda c: share(c["stereotyped"]),
                    neutral=0.5, scale=100.0, binary="stereotyped", min_items=150)
    fin = finalize(compare_probe(probe="p", metrics=[strict], group_keys=["axis"], items=items, teacher=t,
                                 students={"soft": s}, settings=Settings()), Settings())
    amp = next(r for r in fin if r["group"] == "amp")
    assert amp["teacher"]["biased"] is None and amp["verdict"] == "inconclusive"
    assert "fewer than pct_stereotype needs" in amp["reason"]
    assert next(r for r in fin if r["group"] == "all")["verdict"] != "inconclusive"  # 604 items


# ---------------------------------------------------------------- summaries, breakdowns, tasks


def test_model_summary_known_values():
    items, t, _ = _planted()
    amp = [it for it in items if it.groups["axis"] == "amp"]
    got = model_summary(metric=pct_stereotype_metric(), items=amp, columns=t, settings=Settings())
    assert got["value"] == pytest.approx(0.65) and got["bias"] == pytest.approx(15.0)
    # clusters are 60 % or 70 % stereotyped, 5 of each: a draw's bias is 10 + X with X ~ Binomial(10, 1/2)
    # draws of 70 % clusters, whose 2.5 % and 97.5 % quantiles are 2 and 8
    assert got["ci"] == pytest.approx([12.0, 18.0]) and got["biased"] is True
    assert (got["n"], got["n_clusters"]) == (100, 10)
    thin = [it for it in items if it.groups["axis"] == "thin"]
    got = model_summary(metric=pct_stereotype_metric(), items=thin, columns=t, settings=Settings())
    assert got["bias"] == pytest.approx(50.0) and got["biased"] is None
    nan = {k: {"stereotyped": math.nan} for k in t}
    got = model_summary(metric=pct_stereotype_metric(), items=amp, columns=nan, settings=Settings())
    assert got["value"] is None and got["bias"] is None and got["ci"] is None and got["biased"] is None


def test_breakdown_equals_manual_groupby():
    items, t, _ = _planted()
    t = {k: ({**v, "stereotyped": math.nan} if k.startswith("thin") else v) for k, v in t.items()}
    got = breakdown(metric=pct_stereotype_metric(), items=items, columns=t, group_key="half")
    df = pd.DataFrame({"half": [it.groups["half"] for it in items], "x": [t[it.id]["stereotyped"] for it in items]})
    manual = df.groupby("half")["x"].mean()
    assert got["by_group"] == pytest.approx(manual.to_dict())
    assert got["overall"] == pytest.approx(df["x"].mean())
    assert got["difference"] == pytest.approx(manual.max() - manual.min())
    assert got["ratio"] == pytest.approx(manual.min() / manual.max())
    by_axis = breakdown(metric=pct_stereotype_metric(), items=items, columns=t, group_key="axis")
    assert by_axis["by_group"]["thin"] is None and by_axis["difference"] is None and by_axis["ratio"] is None
    assert by_axis["by_group"]["amp"] == pytest.approx(0.65)
    assert breakdown(metric=pct_stereotype_metric(), items=items, columns=t, group_key="nope")["overall"] is None


def test_task_scores_and_retention_known_case():
    ids = [f"q{i}" for i in range(24)]
    clusters = {i: f"c{n // 4}" for n, i in enumerate(ids)}
    teacher = {i: [1.0, 1.0, 0.0, 0.0][n % 4] for n, i in enumerate(ids)}
    half = {i: [1.0, 0.0, 0.0, 0.0][n % 4] for n, i in enumerate(ids)}
    same = dict(teacher)
    got = task_scores(teacher=teacher, students={"half": half, "same": same, "none": {}}, clusters=clusters,
                      settings=Settings())
    assert got["scores"]["teacher"] == {"value": 0.5, "ci": [0.5, 0.5]}
    assert got["scores"]["half"]["value"] == 0.25 and got["scores"]["none"] == {"value": None, "ci": None}
    assert got["retention"]["half"] == {"value": 0.5, "ci": [0.5, 0.5]}
    assert got["retention"]["same"] == {"value": 1.0, "ci": [1.0, 1.0]}
    assert got["retention"]["none"] == {"value": None, "ci": None}


def test_task_retention_undefined_when_teacher_scores_zero_and_nan_items_dropped():
    ids = [f"q{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    student = {i: float(rng.random() < 0.5) for i in ids}
    got = task_scores(teacher=dict.fromkeys(ids, 0.0), students={"s": student}, clusters=None, settings=Settings())
    assert got["retention"]["s"] == {"value": None, "ci": None}  # not 0, not inf
    teacher = {i: (math.nan if n < 10 else 1.0) for n, i in enumerate(ids)}
    got = task_scores(teacher=teacher, students={"s": student}, clusters=None, settings=Settings())
    assert got["scores"]["teacher"]["value"] == 1.0
    paired = [student[i] for i in ids[10:]]
    assert got["retention"]["s"]["value"] == pytest.approx(np.mean(paired))
    lo, hi = got["retention"]["s"]["ci"]
    assert lo < np.mean(paired) < hi


def test_settings_validation_lists_every_problem():
    with pytest.raises(SpecError) as err:
        Settings(alpha=1.5, correction="bonferroni", n_boot=10)
    msg = str(err.value)
    assert "alpha" in msg and "correction" in msg and "'holm' or 'bh'" in msg and "n_boot" in msg
    assert Settings().level == pytest.approx(0.95)


def test_a_between_groups_metric_gets_no_cell_per_value_of_the_key_it_contrasts():
    import numpy as np

    from audit.compare import ItemInfo, Settings, compare_probe
    from probes.base import Metric

    def gap(c):
        g, x = c["g"], c["x"]
        vals = [x[g == v].mean() for v in np.unique(g)]
        return float(max(vals) - min(vals)) if len(vals) >= 2 else float("nan")

    items = [ItemInfo(id=str(i), groups={"group": "ab"[i % 2], "domain": "d"}, cluster=str(i)) for i in range(40)]
    rows = {str(i): {"g": float(i % 2), "x": float(i % 2)} for i in range(40)}
    metric = Metric(name="gap", description="", compute=gap, scale=100.0, across="group")
    recs = compare_probe(probe="p", metrics=[metric], group_keys=["group", "domain"], items=items,
                         teacher=rows, students={"s": rows}, settings=Settings(n_boot=200))
    assert [(r["group_key"], r["group"]) for r in recs] == [("all", "all"), ("domain", "d")]
    assert recs[0]["teacher"]["bias"] == 100.0 and recs[0]["student"]["bias"] == 100.0
