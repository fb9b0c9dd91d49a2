"""The audit harness on tiny models: run.json structure, pairing, results cache, resume, bad input."""

from __future__ import annotations

import json

import pytest

from audit.errors import InputError, RunDirError, SpecError
from audit.harness import run_audit
from audit.lm import make_lm, score_probe_items
from audit.models import ModelRef, load_model
from audit.spec import AuditSpec
from audit.store import ResultsCache
from probes.registry import get_probe
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, teacher_dir):
    return build_tiny_model(tmp_path_factory.mktemp("student"), teacher_dir, seed=1)


def _spec(tmp_path, tiny_model_dir, student_dir, **kw):
    base = dict(teacher={"name": "teacher", "path": str(tiny_model_dir)},
                students=[{"name": "student", "path": str(student_dir)}],
                probes=[{"name": "bundled", "limit": 30}], tasks=["bundled_qa"], task_limit=20,
                out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), n_boot=200, backend="hflm")
    base.update(kw)
    return AuditSpec.from_dict(base)


def test_audit_run_is_paired_complete_and_cached(tmp_path, tiny_model_dir, student_dir, tiny):
    spec = _spec(tmp_path, tiny_model_dir, student_dir)
    out, code = run_audit(spec, progress=False)
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["schema_version"] == 3 and run["status"] == "complete"
    assert [m["role"] for m in run["models"]] == ["teacher", "student"]
    assert run["models"][1]["notes"] == ["no distill_card.json next to this model: how it was made is unknown"]
    assert run["provenance"]["spec_hash"] == spec.spec_hash()
    assert run["provenance"]["lm_eval"] == "0.4.13"
    (probe,) = run["probes"]
    # stratified limit: 30 per bias_type, four bias types
    assert probe["n_total"] == 736 and probe["models"]["teacher"]["n_scored"] == 120
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    probe_rows = [r for r in rows if r.get("probe") == "bundled"]
    t_ids = sorted(r["item"] for r in probe_rows if r["model"] == "teacher")
    s_ids = sorted(r["item"] for r in probe_rows if r["model"] == "student")
    assert t_ids == s_ids and len(t_ids) == 120
    # stored per-item numbers equal a direct scoring of the same items
    items = {it.id: it for it in get_probe("bundled").load(None).items}
    direct = score_probe_items(make_lm(tiny, backend="hflm"), get_probe("bundled"), [items[i] for i in t_ids[:5]],
                               progress=False)
    stored = {r["item"]: r for r in probe_rows if r["model"] == "teacher"}
    for d in direct:
        assert stored[d.item_id]["columns"]["margin"] == pytest.approx(d.columns["margin"], abs=1e-5)
    # the comparisons: overall + per bias_type + per subgroup, with p_adj and a verdict each
    comps = run["comparisons"]
    groups = {(c["group_key"], c["group"]) for c in comps}
    assert ("all", "all") in groups and ("bias_type", "gender") in groups and ("bias_type", "age") in groups
    for c in comps:
        assert c["verdict"] in {"inherited", "amplified", "attenuated", "introduced", "reversed",
                                "not detected", "inconclusive"}
        assert c["n"] >= 1
    overall = next(c for c in comps if c["group_key"] == "all")
    t_share = sum(stored[i]["columns"]["stereotyped"] for i in t_ids) / len(t_ids)
    assert overall["teacher"]["value"] == pytest.approx(t_share)
    assert overall["n"] == 120
    (task,) = run["tasks"]
    assert task["n"] == 20 and set(task["scores"]) == {"teacher", "student"}
    assert "student" in task["retention"]

    # a second audit of the same models computes nothing: every chunk comes from the cache
    calls = []
    original = ResultsCache.rows

    def spy(self, key, ids, compute, **kw):
        def wrapped(positions):
            calls.append(key.get("probe") or key.get("task"))
            return compute(positions)
        return original(self, key, ids, wrapped, **kw)

    ResultsCache.rows = spy
    try:
        out2, code2 = run_audit(_spec(tmp_path, tiny_model_dir, student_dir, out=str(tmp_path / "run2")), progress=False)
    finally:
        ResultsCache.rows = original
    assert code2 == 0 and calls == []
    run2 = json.loads((out2 / "run.json").read_text())
    assert run2["comparisons"] == run["comparisons"]


def test_different_run_in_out_dir_is_refused_and_kept(tmp_path, tiny_model_dir, student_dir):
    out, _ = run_audit(_spec(tmp_path, tiny_model_dir, student_dir, tasks=[]), progress=False)
    before = (out / "run.json").read_text()
    with pytest.raises(RunDirError, match="different audit run"):
        run_audit(_spec(tmp_path, tiny_model_dir, student_dir, tasks=[], seed=7), progress=False)
    assert (out / "run.json").read_text() == before


def test_a_model_that_cannot_be_opened_is_refused_before_anything_is_scored(tmp_path, tiny_model_dir, monkeypatch):
    import audit.lm

    monkeypatch.setattr(audit.lm, "score_probe_items", lambda *a, **k: pytest.fail("scored before the check"))
    spec = AuditSpec.from_dict(dict(teacher={"name": "teacher", "path": str(tiny_model_dir)},
                                    students=[{"name": "ghost", "path": str(tmp_path / "missing")}],
                                    probes=[{"name": "bundled", "limit": 12}], tasks=["bundled_qa", "arc_easy_local"],
                                    out=str(tmp_path / "r"), cache=str(tmp_path / "c"), backend="hflm"))
    with pytest.raises(InputError) as err:
        run_audit(spec, progress=False)
    msg = str(err.value)
    assert "Nothing was scored" in msg and "Model 'ghost'" in msg and "does not exist" in msg
    assert "task arc_easy_local" in msg  # every problem at once: no data_dir for the ARC task either
    assert not (tmp_path / "r" / "run.json").exists() and not (tmp_path / "c").exists()


def test_a_model_failing_at_its_turn_keeps_results_and_reports_partial(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for w in broken.glob("*.safetensors"):  # config and tokenizer open; the weights do not load
        w.write_bytes(b"not a safetensors file")
    spec = AuditSpec.from_dict(dict(teacher={"name": "teacher", "path": str(tiny_model_dir)},
                                    students=[{"name": "broken", "path": str(broken)}],
                                    probes=[{"name": "bundled", "limit": 12}], tasks=[], n_boot=200,
                                    out=str(tmp_path / "r"), cache=str(tmp_path / "c"), backend="hflm"))
    out, code = run_audit(spec, progress=False)
    assert code == 2
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "partial"
    assert run["errors"][0]["model"] == "broken" and run["errors"][0]["stage"] == "load"
    assert run["probes"][0]["models"]["teacher"]["n_scored"] == 48  # 12 per bias type, 4 types


def test_ctrl_c_writes_a_partial_run_and_a_rerun_resumes(tmp_path, tiny_model_dir, student_dir, monkeypatch):
    import audit.lm

    real = audit.lm.score_probe_items
    calls = []

    def interrupted(lm, probe, items, **kw):
        calls.append(len(items))
        if len(calls) == 2:  # the student's turn
            raise KeyboardInterrupt
        return real(lm, probe, items, **kw)

    monkeypatch.setattr(audit.lm, "score_probe_items", interrupted)
    spec = _spec(tmp_path, tiny_model_dir, student_dir, tasks=[])
    out, code = run_audit(spec, progress=False)
    run = json.loads((out / "run.json").read_text())
    assert code == 2 and run["status"] == "partial"
    assert run["errors"] == [{"model": "student", "stage": "interrupted",
                              "message": "interrupted (Ctrl-C); rerun the same command to resume from the cache"}]
    monkeypatch.setattr(audit.lm, "score_probe_items", real)
    calls.clear()
    counted = []
    monkeypatch.setattr(audit.lm, "score_probe_items", lambda lm, p, items, **kw: counted.append(len(items))
                        or real(lm, p, items, **kw))
    out, code = run_audit(spec, progress=False, force=True)
    assert code == 0 and counted == [120]  # only the student is scored; the teacher comes from the cache


def test_resume_after_interruption_recomputes_only_missing_chunks(tmp_path):
    cache = ResultsCache(tmp_path)
    key = {"model": "m" * 64, "probe": "p"}
    ids = [f"i{k}" for k in range(10)]
    done = []

    def compute(positions):
        if positions[0] >= 4 and not done:
            done.append("crash")
            raise KeyboardInterrupt
        return [{"item": ids[p], "score": p * 10} for p in positions]

    with pytest.raises(KeyboardInterrupt):
        cache.rows(key, ids, compute, chunk=2)
    seen = []

    def again(positions):
        seen.append(positions)
        return compute(positions)

    rows, computed = cache.rows(key, ids, again, chunk=2)
    assert [r["item"] for r in rows] == ids and [r["score"] for r in rows] == list(range(0, 100, 10))
    assert seen == [[4, 5], [6, 7], [8, 9]] and computed == 6


def test_cache_scores_only_items_a_larger_sample_adds(tmp_path):
    """A run with a larger limit (or another sample) reuses every item already scored."""
    cache = ResultsCache(tmp_path)
    key = {"model": "m" * 64, "probe": "p"}
    scored = []

    def compute(ids):
        def f(positions):
            scored.extend(ids[p] for p in positions)
            return [{"item": ids[p], "v": ids[p].upper()} for p in positions]
        return f

    small = ["b", "d", "f"]
    cache.rows(key, small, compute(small))
    big = ["a", "b", "c", "d", "e", "f", "g"]
    rows, computed = cache.rows(key, big, compute(big), chunk=3)
    assert computed == 4 and scored == ["b", "d", "f", "a", "c", "e", "g"]
    assert [r["v"] for r in rows] == ["A", "B", "C", "D", "E", "F", "G"]
    # another key (a different model or data hash) shares nothing
    assert cache.rows({**key, "data": ["x"]}, small, compute(small))[1] == 3

    def wrong(positions):
        return [{"item": "zz"} for _ in positions]
    with pytest.raises(ValueError, match="expected"):
        cache.rows({**key, "probe": "q"}, small, wrong)


def test_spec_errors_are_collected_with_did_you_mean(tmp_path):
    bad = tmp_path / "spec.yaml"
    bad.write_text("teacher: smollm2-135m\nprobes: [bundle]\ntaks: [bundled_qa]\nalpha: 3\n")
    with pytest.raises(SpecError) as err:
        AuditSpec.from_file(bad)
    msg = str(err.value)
    assert str(bad) in msg and "3 problem(s)" in msg
    assert "Did you mean: bundled?" in msg and "Did you mean: tasks?" in msg and "alpha" in msg
    broken = tmp_path / "broken.yaml"
    broken.write_text("teacher: [unclosed\n")
    with pytest.raises(SpecError, match="line"):
        AuditSpec.from_file(broken)
    with pytest.raises(SpecError, match="not found"):
        AuditSpec.from_file(tmp_path / "nope.yaml")


def test_model_errors_are_clear(tmp_path):
    from audit.errors import ModelError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="no .safetensors"):
        load_model(ModelRef(name="x", path=str(tmp_path)))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(ModelRef(name="x", path=str(tmp_path / "nope")))


def test_documented_example_spec_and_policy_are_valid():
    from pathlib import Path

    from audit.gate import Policy

    docs = Path(__file__).resolve().parents[1] / "docs" / "examples"
    spec = AuditSpec.from_file(docs / "audit.yaml")
    assert [s.name for s in spec.students] == ["soft", "hard"]
    assert len(spec.probes) == 8 and spec.tasks == ("bundled_qa", "arc_easy_local")
    policy = Policy.from_file(docs / "policy.yaml")
    assert list(policy.required_probes) == ["bundled", "crows_pairs"]


def test_until_decided_stops_at_the_first_look_when_every_overall_cell_is_decided(tmp_path, tiny_model_dir):
    """The teacher against itself: every Δ is exactly 0, so the first look decides ('unchanged')."""
    spec = _spec(tmp_path, tiny_model_dir, tiny_model_dir, students=[{"name": "copy", "path": str(tiny_model_dir)}],
                 tasks=[], until_decided=True, max_items=40)
    out, code = run_audit(spec, progress=False)
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    looks = run["settings"]["adaptive"]
    assert len(looks) == 1 and looks[0]["limit"] == 10 and looks[0]["undecided_overall"] == 0
    assert run["settings"]["looks"] == [0.25]
    # the first look spends only the O'Brien-Fleming share of alpha, and every interval is at that level
    assert run["settings"]["alpha_look"] == pytest.approx(2 - 2 * __import__("scipy").stats.norm.cdf(1.959964 / 0.5),
                                                          rel=1e-4)
    overall = [c for c in run["comparisons"] if c["group_key"] == "all"]
    assert [c["verdict"] for c in overall] == ["unchanged"]
    assert run["probes"][0]["limit"] == 10 and run["probes"][0]["models"]["teacher"]["n_scored"] == 40


def test_until_decided_raises_the_limit_and_scores_only_added_items(tmp_path, tiny_model_dir, student_dir,
                                                                    monkeypatch):
    import audit.lm

    scored = []
    real = audit.lm.score_probe_items

    def counting(lm, probe, items, **kw):
        scored.append(len(items))
        return real(lm, probe, items, **kw)

    monkeypatch.setattr(audit.lm, "score_probe_items", counting)
    spec = _spec(tmp_path, tiny_model_dir, student_dir, tasks=[], until_decided=True, max_items=24)
    out, code = run_audit(spec, progress=False)
    run = json.loads((out / "run.json").read_text())
    looks = run["settings"]["adaptive"]
    assert [lk["limit"] for lk in looks] == [6, 12, 24][: len(looks)]
    if len(looks) < 3:  # stopped early: only because every overall cell was decided
        assert looks[-1]["undecided_overall"] == 0
    assert sum(lk["alpha_spent"] for lk in looks) <= 0.05 + 1e-12
    # each look scores only the items it adds (4 bias types x the limit's increase), per model
    final = looks[-1]["limit"]
    assert sum(scored) == 2 * 4 * final and run["probes"][0]["models"]["student"]["n_scored"] == 4 * final
    # a rerun of the same spec is served from the cache: nothing is scored again, the same verdicts
    scored.clear()
    out2, _ = run_audit(spec, progress=False, force=True)
    assert sum(scored) == 0
    run2 = json.loads((out2 / "run.json").read_text())
    assert [c["verdict"] for c in run2["comparisons"]] == [c["verdict"] for c in run["comparisons"]]


def test_until_decided_needs_max_items_and_strict_booleans():
    with pytest.raises(SpecError) as err:
        AuditSpec.from_dict({"until_decided": True})
    assert "max_items" in str(err.value)
    with pytest.raises(SpecError) as err:
        AuditSpec.from_dict({"until_decided": "yes", "max_items": 0})
    assert "until_decided: expected true or false, got 'yes'" in str(err.value) and "max_items" in str(err.value)
