"""A data-parallel audit (2 CPU processes over gloo, launched as torchrun launches them) writes the run
a one-process audit writes: the same items.jsonl byte for byte, the same figures and verdicts, and a
run the gate verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import build_tiny_model, free_port

BEQUEATH = str(Path(sys.executable).with_name("bequeath"))
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, teacher_dir):
    return build_tiny_model(tmp_path_factory.mktemp("student"), teacher_dir, seed=1)


def _audit(where: Path, spec: dict, launcher: list[str]) -> subprocess.CompletedProcess:
    """One audit in its own folder; ``out`` and ``cache`` are relative, so both runs record the same spec
    and neither reads the other's cached results."""
    where.mkdir()
    (where / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([*launcher, BEQUEATH, "audit", "spec.yaml"], cwd=where, env=env, capture_output=True,
                          text=True, timeout=600)


def _gate(run_dir: Path) -> tuple[int, dict]:
    """The gate on ``run_dir`` with no probe required: a tiny audit decides nothing, and what is checked
    here is that the gate verifies the run (integrity, items re-derived), not the verdicts."""
    policy = run_dir.parent / "policy.yaml"
    policy.write_text("required_probes: []\n")
    out = subprocess.run([BEQUEATH, "gate", str(run_dir), "--policy", str(policy), "--json",
                          str(run_dir.parent / "gate.json")],
                         env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    return out.returncode, json.loads((run_dir.parent / "gate.json").read_text())


def test_two_process_audit_equals_one_process_audit(tmp_path, tiny_model_dir, student_dir):
    spec = {"teacher": {"name": "teacher", "path": str(tiny_model_dir)},
            "students": [{"name": "student", "path": str(student_dir)}],
            "probes": [{"name": "bundled", "limit": 6}], "tasks": ["bundled_qa"], "task_limit": 12,
            "out": "run", "cache": "cache", "n_boot": 200, "backend": "engine"}
    one = _audit(tmp_path / "one", spec, [sys.executable])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _audit(tmp_path / "two", spec, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                          f"--master_port={free_port()}"])
    assert two.returncode == 0, two.stderr[-3000:]

    run1, run2 = (json.loads((tmp_path / d / "run" / "run.json").read_text()) for d in ("one", "two"))
    assert (tmp_path / "one/run/items.jsonl").read_bytes() == (tmp_path / "two/run/items.jsonl").read_bytes()
    for field in ("comparisons", "probes", "tasks", "models", "errors", "status", "settings", "spec",
                  "items_sha256"):
        assert run2[field] == run1[field], field
    # nothing else differs but when it was made (and so the integrity hash over it)
    assert {k for k in run1 if run1[k] != run2.get(k)} <= {"created", "integrity"}
    assert run1["probes"][0]["models"]["teacher"]["n_scored"] == 24  # 6 per bias type, four types
    assert run1["tasks"][0]["n"] == 12
    # rank 1 wrote nothing: one run folder, one cache, no stray files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["cache", "run", "spec.yaml"]
    assert sorted(p.name for p in (tmp_path / "two/run").iterdir()) == ["items.jsonl", "run.json"]

    # the cache rank 0 wrote holds whole chunks: a rerun (one process) scores nothing and writes the same items
    chunks = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two/cache").rglob("*.json"))
    assert chunks and chunks == sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one/cache").rglob("*.json"))

    code1, gate1 = _gate(tmp_path / "one/run")
    code2, gate2 = _gate(tmp_path / "two/run")
    assert code2 == code1 == 0  # 2 would be an error: a run the gate could not verify
    assert [(c["name"], c["status"]) for c in gate2["checks"]] == [(c["name"], c["status"]) for c in gate1["checks"]]
    status = {c["name"]: c["status"] for c in gate2["checks"]}
    assert status["run.json integrity"] == status["items.jsonl verified"] == "pass"


def test_engine_shards_by_pass_and_each_answer_is_the_one_process_float(tiny, monkeypatch):
    """Each rank runs every n-th forward pass of the plan made over all requests: the shares are
    disjoint, cover every request, and merged give exactly (==) the one-process answers."""
    import audit.parallel
    from audit.lm import loglikelihoods, make_lm
    from probes.registry import get_probe

    items = get_probe("bundled").load(None, allow_skip=False).items[:40]
    requests = [r for it in items for r in it.requests]
    lm = make_lm(tiny, backend="engine", batch_size=8)
    lm.max_pass_tokens = 256  # several passes, so that both ranks get some
    full = loglikelihoods(lm, requests)
    shares = []
    monkeypatch.setattr(audit.parallel, "gather", lambda mine, n, error=None: shares.append(dict(mine)) or [
        mine.get(i, (float("nan"), False)) for i in range(n)])
    for rank in (0, 1):
        lm.shard = (rank, 2)
        loglikelihoods(lm, requests)
    assert all(shares) and not set(shares[0]) & set(shares[1])
    merged = {**shares[0], **shares[1]}
    assert sorted(merged) == list(range(len(requests)))
    assert [merged[i][0] for i in range(len(requests))] == [a.loglik for a in full]
