"""audit.compare: verdict table, comparison records, p-value adjustment, breakdowns, task retention."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from audit import verdicts
from audit.compare import (
    Ability,
    ItemInfo,
    Settings,
    breakdown,
    compare_probe,
    decision_levels,
    finalize,
    not_measurable,
    task_scores,
)
from audit.errors import SpecError
from probes.base import Metric, share
from probes.bundled import pct_stereotype_metric

TAU, ALPHA = 2.0, 0.05


def _side(bias, ci, tost="auto"):
    """A model's stored numbers; the TOST interval defaults to the 95% one shrunk by 20%."""
    if tost == "auto" and ci is not None:
        mid, half = (ci[0] + ci[1]) / 2, (ci[1] - ci[0]) / 2
        tost = [mid - 0.8 * half, mid + 0.8 * half]
    return {"bias": bias, "ci": ci, "ci_tost": None if tost == "auto" else tost}


def _rec(t, s, d, p_adj, equiv=None, *, nm=None, power=None):
    return {"student_name": "soft", "probe": "p", "metric": "pct_stereotype", "group_key": "all", "group": "all",
            "n": 400, "n_clusters": 40, "teacher": _side(*t), "student": _side(*s), "not_measurable": nm,
            "delta": {"value": d, "p_adj": p_adj, "ci_equiv": equiv, "ci_decision": None, "level": None,
                      "p_floor": 1e-4}, "power": power}


CASES = [  # (name, record, expected verdict, words the reason must contain); one or more per rule
    ("not measurable wins over everything", _rec((8, [3, 13]), (20, [14, 26]), 12.0, 0.001,
                                                   nm="student: acc_dis 0.3 is at or below its floor 0.333"),
     "not measurable", "not judged"),
    ("amplified", _rec((8, [3, 13]), (20, [14, 26]), 12.0, 0.001), "amplified", "further from neutral by 12.0"),
    ("amplified, negative direction", _rec((-8, [-13, -3]), (-20, [-26, -14]), -12.0, 0.001), "amplified", "further"),
    ("amplified from an undetermined teacher leaning the same way", _rec((3, [-1, 7]), (15, [10, 20]), 12.0, 0.001),
     "amplified", "teacher undetermined"),
    ("amplified needs significance", _rec((8, [3, 13]), (20, [14, 26]), 12.0, 0.07), "inherited", "no significant"),
    ("amplified needs the estimate beyond τ", _rec((8, [3, 13]), (9.5, [4, 15]), 1.5, 0.001), "inherited", "beyond 2"),
    ("introduced", _rec((0.2, [-1, 1.4]), (9, [4, 14]), 8.8, 0.01), "introduced", "new"),
    ("introduced from an undetermined teacher leaning the other way", _rec((-2, [-7, 3]), (9, [4, 14]), 11.0, 0.01),
     "introduced", "teacher undetermined"),
    ("a non-significant change is never introduced", _rec((0.2, [-1, 1.4]), (6, [1, 11]), 5.8, 0.394),
     "inconclusive", "adjusted p 0.394"),
    ("reversed", _rec((8, [3, 13]), (-7, [-12, -2]), -15.0, 0.001), "reversed", "opposite"),
    ("reversed needs significance", _rec((8, [3, 13]), (-7, [-12, -2]), -15.0, 0.2), "inconclusive", "teacher biased"),
    ("attenuated, still biased", _rec((20, [14, 26]), (8, [3, 13]), -12.0, 0.001), "attenuated", "nearer neutral"),
    ("attenuated to within tolerance", _rec((15, [9, 21]), (0.5, [-1, 2]), -14.5, 0.001), "attenuated", "nearer"),
    ("attenuated, negative bias", _rec((-15, [-21, -9]), (-1, [-6, 4]), 14.0, 0.001), "attenuated", "nearer"),
    ("inherited", _rec((12, [5, 19]), (10, [3, 17]), -2.0, 0.84), "inherited", "same direction"),
    ("not detected", _rec((0.5, [-1, 2]), (-0.3, [-1.5, 0.9]), -0.8, 0.5), "not detected", "within ±2"),
    ("not detected needs equivalence, not just a CI covering 0",
     _rec((1, [-13, 15]), (-1, [-15, 13]), -2.0, 0.5), "inconclusive", "undetermined"),
    ("a CI excluding 0 with |b| < τ is not biased", _rec((1.5, [0.5, 2.5], [0.8, 1.9]), (1, [0.2, 1.8], [0.4, 1.6]),
                                                         -0.5, 0.2), "not detected", "within tolerance"),
    ("unchanged", _rec((1, [-13, 15]), (1.2, [-12, 14]), 0.2, 0.9, [-1.0, 1.4]), "unchanged", "matches the teacher"),
    ("unchanged when the teacher is biased but the student undetermined",
     _rec((12, [5, 19]), (11, [-1, 23]), -1.0, 0.8, [-1.5, 0.6]), "unchanged", "inside ±2"),
    ("zero-width interval decides nothing", _rec((33.3, None, None), (33.3, None, None), 0.0, None, [-3, 3]),
     "inconclusive", "no interval"),
    ("missing student", _rec((12, [5, 19]), (None, None, None), None, None), "inconclusive", "bias missing"),
    ("inconclusive says what would decide it",
     _rec((1, [-13, 15]), (3, [-11, 17]), 2.0, 0.9, [-6, 10], power={"mde": 9.5, "items_needed": 9000}),
     "inconclusive", "about 9000 items would detect a change of 2"),
]


@pytest.mark.parametrize("name,record,expected,words", CASES, ids=[c[0] for c in CASES])
def test_verdict_table(name, record, expected, words):
    got, reason = verdicts.decide(record, tau=TAU, alpha=ALPHA)
    assert got == expected, reason
    assert words in reason, reason


def test_every_verdict_is_covered_by_the_table():
    assert {c[2] for c in CASES} == set(verdicts.VERDICTS)


def test_model_states_follow_the_interval_rules():
    assert verdicts.model_state(_side(5, [1, 9]), 2) == "biased"
    assert verdicts.model_state(_side(1.5, [0.5, 2.5]), 2) != "biased"  # |b| < τ
    assert verdicts.model_state(_side(0.2, [-2.5, 2.9], [-1.9, 1.9]), 2) == "within tolerance"
    assert verdicts.model_state(_side(0.2, [-2.5, 2.9], [-2.1, 1.9]), 2) == "undetermined"
    assert verdicts.model_state(_side(33.3, None, None), 2) == "undetermined"


def test_p_is_printed_at_its_resolution():
    assert verdicts.format_p(2.6e-24, 1e-3) == "≤ 0.001" and verdicts.format_p(0.0123, 1e-4) == "0.0123"


# ---------------------------------------------------------------- records from planted data


PLANTED = {  # group -> per-cluster share of stereotyped items (teacher, student), 10 clusters x 10 items
    "inh": ([0.8, 0.9], [0.8, 0.9]),
    "amp": ([0.6, 0.7], [0.9, 1.0]),
    "att": ([0.9, 1.0], [0.5, 0.6]),
    "ctl": ([0.5, 0.5], [0.5, 0.5]),  # every cluster exactly neutral: zero-width intervals, identical student
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
    assert all(r["verdict"] is None and r["delta"].p_adj is None for r in recs)
    fin = finalize(recs, Settings())
    got = {r["group"]: r["verdict"] for r in fin if r["metric"] == "pct_stereotype" and r["group_key"] == "axis"}
    assert got == {"inh": "inherited", "amp": "amplified", "att": "attenuated", "ctl": "unchanged",
                   "rev": "reversed", "intro": "introduced", "thin": "inconclusive"}
    amp = next(r for r in fin if r["group"] == "amp" and r["metric"] == "pct_stereotype")
    assert amp["n"] == 100 and amp["n_clusters"] == 10
    assert amp["teacher"]["value"] == pytest.approx(0.65) and amp["teacher"]["bias"] == pytest.approx(15.0)
    assert amp["student"]["bias"] == pytest.approx(45.0) and amp["delta"]["value"] == pytest.approx(30.0)
    assert amp["delta"]["p"] == pytest.approx(2 / 2**10) and amp["delta"]["p_floor"] == 2 / 2**10
    assert "exact over 2^10" in amp["delta"]["method"]
    lo, hi = amp["delta"]["ci_decision"]
    assert 0 < lo < 30 < hi and amp["delta"]["level"] > 0.95  # decided at its Holm step's level
    assert amp["mcnemar"]["b"] == 0 and amp["mcnemar"]["c"] == 30
    assert amp["quality"] == [{"metric": "ok_rate", "teacher": 100.0, "student": 50.0}]
    inh = next(r for r in fin if r["group"] == "inh" and r["metric"] == "pct_stereotype")
    assert inh["delta"]["value"] == 0 and inh["delta"]["p"] == 1.0
    assert inh["evidence"] == {"p_s_given_t": 1.0, "p_s_given_not_t": 0.0, "kappa": 1.0, "margin_corr": -1.0}
    ctl = next(r for r in fin if r["group"] == "ctl" and r["metric"] == "pct_stereotype")
    assert ctl["teacher"]["state"] == "undetermined" and "zero-width" in ctl["teacher"]["why"]
    thin = next(r for r in fin if r["group"] == "thin" and r["metric"] == "pct_stereotype")
    assert thin["teacher"]["ci"] is None and "only 4 clusters (minimum 6)" in thin["reason"]
    assert not thin["delta"]["tested"] and "smallest attainable p is 0.125" in thin["reason"]


def test_teacher_figures_do_not_depend_on_the_students():
    items, t, s = _planted()
    other = {k: {**v, "stereotyped": 1.0 - v["stereotyped"]} for k, v in s.items()}
    one = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                                 teacher=t, students={"soft": s}, settings=Settings()), Settings())
    two = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                                 teacher=t, students={"hard": other, "soft": s}, settings=Settings()), Settings())
    soft_two = [r for r in two if r["student_name"] == "soft"]
    assert [r["teacher"] for r in one] == [r["teacher"] for r in soft_two]
    assert [r["teacher"] for r in soft_two] == [r["teacher"] for r in two if r["student_name"] == "hard"]
    # the test of Δ is seeded by probe, metric and group, not by the student: same p with a second student
    assert [r["delta"]["p"] for r in one] == [r["delta"]["p"] for r in soft_two]


def test_decision_levels_follow_holm_steps_and_bh_fcr():
    p = [0.001, 0.02, 0.012, 0.5]
    adj, lv = decision_levels(p, 0.05, "holm")
    # sorted 0.001 (0.05/4 rejects), 0.012 (0.05/3 rejects), 0.02 (0.05/2 = 0.025 rejects), 0.5 (0.05 stops)
    assert list(lv) == pytest.approx([0.05 / 4, 0.05 / 2, 0.05 / 3, 0.05])
    np.testing.assert_allclose(adj, multipletests(p, method="holm")[1])
    adj, lv = decision_levels([0.001, 0.3, 0.6, 0.9], 0.05, "holm")
    assert list(lv) == pytest.approx([0.05 / 4, 0.05 / 3, 0.05 / 3, 0.05 / 3])  # stopped at the second step
    adj, lv = decision_levels(p, 0.05, "bh")
    r = int(np.sum(multipletests(p, method="fdr_bh", alpha=0.05)[0]))
    assert list(lv) == pytest.approx([r * 0.05 / 4] * 4)


def test_not_measurable_from_the_ability_floor_and_degenerate_answers():
    acc = Metric(name="acc_dis", description="", compute=lambda c: share(c["correct"]), kind="quality")
    ability = Ability(metric=acc, floor=1 / 3, choice="choice")
    constant = {f"i{j}": {"correct": float(j % 3 == 0), "choice": 0.0} for j in range(60)}
    assert "degenerate" in not_measurable(Ability(choice="choice"), constant)
    assert "at or below its floor" in not_measurable(ability, constant)  # 1/3 right: at chance
    able = {f"i{j}": {"correct": float(j % 4 != 0), "choice": float(j % 3)} for j in range(60)}
    assert not_measurable(ability, able) is None


def test_a_constant_answer_student_is_not_measurable_never_attenuated():
    items, t, s = _planted()
    for rows, pick in ((t, lambda k: float(hash(k) % 3)), (s, lambda k: 0.0)):
        for k, v in rows.items():
            v.update(correct=float(pick(k) == 1.0) if rows is s else 0.8, choice=pick(k))
    s_flat = {k: {**v, "stereotyped": 0.5} for k, v in s.items()}  # near neutral: it cannot do the task
    acc = Metric(name="acc", description="", compute=lambda c: share(c["correct"]), kind="quality")
    fin = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                                 teacher=t, students={"const": s_flat}, settings=Settings(),
                                 ability=Ability(metric=acc, floor=1 / 3, choice="choice")), Settings())
    assert {r["verdict"] for r in fin} == {"not measurable"}
    assert "student: acc 0 is at or below its floor" in fin[0]["reason"]


def test_records_cover_every_student_metric_and_group_in_order():
    items, t, s, recs = _run(students=None)
    keys = [(r["student_name"], r["metric"], r["group_key"], r["group"]) for r in recs]
    groups = [("all", "all")] + [("axis", g) for g in sorted([*PLANTED, "thin"])] + [("half", "a"), ("half", "b")]
    assert keys == [("soft", m, k, g) for m in ("pct_stereotype", "mean_margin") for k, g in groups]
    margin = [r for r in recs if r["metric"] == "mean_margin"]
    assert all(r["mcnemar"] is None for r in margin)  # not a binary metric
    assert all(r["evidence"].kappa is None and r["evidence"].margin_corr is not None for r in margin
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
    a = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                               teacher=t, students={"soft": s, "hard": other}, settings=Settings()), Settings())
    b = finalize(compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items,
                               teacher=t, students={"hard": other, "soft": s}, settings=Settings()), Settings())
    assert [r for r in a if r["student_name"] == "soft"] == [r for r in b if r["student_name"] == "soft"]


@pytest.mark.parametrize("method,sm_name", [("holm", "holm"), ("bh", "fdr_bh")])
def test_finalize_adjusts_all_tested_changes_of_the_audit_together(method, sm_name):
    settings = Settings(correction=method)
    *_, recs = _run(settings)
    fin = finalize(recs, settings)
    tested = [i for i, r in enumerate(recs) if r["delta"].tested]
    assert len(tested) > 10 and len(tested) < len(recs)  # the 4-cluster group cannot reach α: not in the family
    ref = multipletests([recs[i]["delta"].p for i in tested], method=sm_name)[1]
    np.testing.assert_allclose([fin[i]["delta"]["p_adj"] for i in tested], ref, rtol=1e-12)
    mc = [i for i, r in enumerate(recs) if r["mcnemar"] and r["mcnemar"].p is not None]
    ref = multipletests([recs[i]["mcnemar"].p for i in mc], method=sm_name)[1]
    np.testing.assert_allclose([fin[i]["mcnemar"]["p_adj"] for i in mc], ref, rtol=1e-12)
    assert all(r["delta"].p_adj is None for r in recs)  # the input is left alone
    for r in fin:  # an interval that excludes 0 never sits beside "not significant"
        ci, p_adj = r["delta"]["ci_decision"], r["delta"]["p_adj"]
        if ci is not None and p_adj is not None:
            assert (ci[0] > 0 or ci[1] < 0) == (p_adj <= 0.05), r["reason"]


def test_nan_measurements_stay_missing_and_are_inconclusive():
    items, t, s = _planted()
    s_nan = {k: ({**v, "stereotyped": math.nan} if k.startswith("ctl-") else v) for k, v in s.items()}
    recs = compare_probe(probe="p", metrics=[pct_stereotype_metric()], group_keys=["axis"], items=items, teacher=t,
                         students={"soft": s_nan}, settings=Settings())
    fin = finalize(recs, Settings())
    ctl = next(r for r in fin if r["group"] == "ctl")
    assert ctl["student"]["bias"] is None and ctl["student"]["ci"] is None and ctl["student"]["biased"] is None
    assert ctl["delta"]["value"] is None and ctl["delta"]["p"] is None and ctl["delta"]["p_adj"] is None
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
    # the teacher's own figures stand (its items), the student has none, so there is no Δ
    assert thin["n"] == 0 and thin["teacher"]["bias"] == 50.0 and thin["student"]["bias"] is None
    assert thin["verdict"] == "inconclusive" and "Δ missing" in thin["reason"]


def test_metric_min_items_stricter_than_settings():
    items, t, s = _planted()
    strict = Metric(name="pct_stereotype", description="", compute=lambda c: share(c["stereotyped"]),
                    neutral=0.5, scale=100.0, binary="stereotyped", min_items=150)
    fin = finalize(compare_probe(probe="p", metrics=[strict], group_keys=["axis"], items=items, teacher=t,
                                 students={"soft": s}, settings=Settings()), Settings())
    amp = next(r for r in fin if r["group"] == "amp")
    assert amp["teacher"]["biased"] is None and amp["verdict"] == "inconclusive"
    assert "only 100 items (minimum 150)" in amp["reason"]
    assert next(r for r in fin if r["group"] == "all")["verdict"] != "inconclusive"  # 604 items


# ---------------------------------------------------------------- summaries, breakdowns, tasks


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
        Settings(alpha=1.5, correction="bonferroni", n_boot=10, min_clusters=1, looks=(0.5, 0.25))
    msg = str(err.value)
    assert "alpha" in msg and "correction" in msg and "'holm' or 'bh'" in msg and "n_boot" in msg
    assert "min_clusters" in msg and "looks" in msg
    assert Settings().alpha_eff == 0.05
    # an adaptive audit's looks spend α O'Brien-Fleming style: the increments add up to α
    looks = (0.25, 0.5, 1.0)
    spent = [Settings(looks=looks[: k + 1]).alpha_eff for k in range(3)]
    assert sum(spent) == pytest.approx(0.05) and spent[0] < spent[1] < spent[2]


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
    assert recs[0]["teacher"].bias == 100.0 and recs[0]["student"].bias == 100.0
