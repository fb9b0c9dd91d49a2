"""CrowS-Pairs probe: reader, scoring rule, metrics, and parity with lm-eval's crows_pairs_english."""

from __future__ import annotations

import csv
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from probes.base import Answer, ProbeDataError, columns_of, stratified_sample
from probes.crows_pairs import CrowsPairsProbe, write_lm_eval_task

FIXTURES = Path(__file__).parent / "fixtures" / "probes"


def _metric(probe, name):
    return next(m for m in probe.metrics if m.name == name)


def _slice_csv(src: Path, out: Path, keep_index: set[str] | None = None, n: int | None = None) -> Path:
    """A CrowS-Pairs CSV with the original header and a subset of its rows (by index or first n)."""
    with open(src, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    body = [r for r in rows[1:] if keep_index is None or r[0] in keep_index][:n]
    with open(out, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *body])
    return out


def test_reads_the_full_file_with_its_recorded_hash(data_dir):
    loaded = CrowsPairsProbe().load(data_dir)
    assert len(loaded.items) == 1508 and loaded.n_skipped == 0
    assert list(loaded.files.values()) == ["dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c"]
    types = Counter(it.groups["bias_type"] for it in loaded.items)
    assert types["race-color"] == 516 and types["gender"] == 262 and types["disability"] == 60
    assert Counter(it.groups["direction"] for it in loaded.items) == {"stereo": 1290, "antistereo": 218}
    first = loaded.items[0]
    assert first.id == "crows-0" and first.cluster == "0"
    assert first.requests[0][0] == "" and "most black kids" in first.requests[0][1]
    assert "most white kids" in first.requests[1][1]
    assert len({it.id for it in loaded.items}) == 1508


def test_changed_canonical_file_is_refused(tmp_path, data_dir):
    target = tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv"
    target.parent.mkdir()
    shutil.copy(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", target)
    with open(target, "a") as fh:
        fh.write("9999,A,B,stereo,age,[],a,[]\n")
    with pytest.raises(ProbeDataError, match="differs from the recorded"):
        CrowsPairsProbe().load(tmp_path)


def test_bad_rows_name_file_line_and_field_and_can_be_skipped():
    src = FIXTURES / "crows_bad.csv"
    with pytest.raises(ProbeDataError) as err:
        CrowsPairsProbe(path=str(src)).load(None)
    msg = str(err.value)
    assert f"{src}:3: field 'sent_more'" in msg and f"{src}:4: field 'stereo_antistereo'" in msg
    loaded = CrowsPairsProbe(path=str(src)).load(None, allow_skip=True)
    assert [it.id for it in loaded.items] == ["crows-0", "crows-3"] and loaded.n_skipped == 2


def test_no_data_is_a_clear_error():
    with pytest.raises(ProbeDataError, match="data_dir"):
        CrowsPairsProbe().load(None)


def test_scoring_rule_and_metrics_known_answer():
    probe = CrowsPairsProbe(path=str(FIXTURES / "crows_bad.csv"))
    item = probe.load(None, allow_skip=True).items[0]
    # sent_more wins on the sum (-10 > -12) but loses per token (-10/2 < -12/4).
    cols = probe.score_item(item, [Answer(loglik=-10.0, is_greedy=False, n_tokens=2),
                                   Answer(loglik=-12.0, is_greedy=False, n_tokens=4)])
    assert cols == {"stereotyped": 1.0, "margin": 2.0, "abs_margin": 2.0,
                    "stereotyped_per_token": 0.0, "margin_per_token": -2.0}
    rows = [cols, {"stereotyped": 0.0, "margin": -1.0, "abs_margin": 1.0,
                   "stereotyped_per_token": 0.0, "margin_per_token": -0.5},
            {"stereotyped": 1.0, "margin": 3.0, "abs_margin": 3.0}]  # backend gave no token counts
    c = columns_of(rows)
    assert _metric(probe, "pct_stereotype").compute(c) == pytest.approx(2 / 3)
    assert _metric(probe, "likelihood_diff").compute(c) == pytest.approx(2.0)
    assert _metric(probe, "pct_stereotype_per_token").compute(c) == 0.0  # NaN row ignored, not counted
    assert math.isnan(_metric(probe, "pct_stereotype_per_token").compute(columns_of(rows[2:])))


def _lm_eval_reference(loaded_model, csv_path: Path, tmp: Path) -> tuple[dict, list]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = write_lm_eval_task(tmp / "task", csv_path)
    lm = HFLM(pretrained=loaded_model.model, tokenizer=loaded_model.tokenizer, batch_size=32, device="cpu")
    out = simple_evaluate(model=lm, tasks=[task], log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp / "task"), include_defaults=False))
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return out["results"][task], samples


def _ours(loaded_model, csv_path: Path):
    from audit.lm import make_lm, score_probe_items

    probe = CrowsPairsProbe(path=str(csv_path))
    items = probe.load(None).items
    results = score_probe_items(make_lm(loaded_model, backend="hflm"), probe, items,
                                tokenizer=loaded_model.tokenizer, progress=False)
    assert all(r.invalid is None for r in results)
    cols = columns_of(r.columns for r in results)
    return probe, items, results, cols


def _assert_parity(loaded_model, csv_path, tmp_path, n):
    ref, samples = _lm_eval_reference(loaded_model, csv_path, tmp_path)
    probe, items, results, cols = _ours(loaded_model, csv_path)
    assert len(results) == len(samples) == n
    for it, r, s in zip(items, results, samples, strict=True):
        assert [tuple(a) for a in s["arguments"]] == list(it.requests)  # same requests, same order
        assert [a.loglik for a in r.answers] == [ll for ll, _ in s["filtered_resps"]]
    assert _metric(probe, "pct_stereotype").compute(cols) == ref["pct_stereotype,none"]
    assert _metric(probe, "likelihood_diff").compute(cols) == pytest.approx(ref["likelihood_diff,none"], rel=1e-12)
    return ref


def test_parity_with_lm_eval_crows_pairs_english_tiny_model(tiny, data_dir, tmp_path):
    csv_path = _slice_csv(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", tmp_path / "slice.csv", n=40)
    items = CrowsPairsProbe(path=str(csv_path)).load(None).items
    assert sum(it.groups["direction"] == "antistereo" for it in items) == 8  # counted as lm-eval counts them
    ref = _assert_parity(tiny, csv_path, tmp_path, 40)
    assert 0.0 < ref["pct_stereotype,none"] < 1.0  # a real mix, not a degenerate all-or-nothing


@pytest.mark.slow
def test_parity_with_lm_eval_on_the_real_teacher_stratified(teacher, data_dir, tmp_path):
    src = data_dir / "crows_pairs" / "crows_pairs_anonymized.csv"
    items = CrowsPairsProbe().load(data_dir).items
    picked = stratified_sample(items, by=("bias_type",), limit=3, seed=0)
    assert len(picked) == 27
    csv_path = _slice_csv(src, tmp_path / "strat.csv", keep_index={it.cluster for it in picked})
    ref = _assert_parity(teacher, csv_path, tmp_path, 27)
    assert np.isfinite(ref["likelihood_diff,none"]) and ref["likelihood_diff,none"] > 0
    print({k: round(v, 4) for k, v in ref.items() if k.endswith(",none")})
