"""Two prepares of the demo teacher at once give one, identical, complete result (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probes.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ("import json; from audit.models import prepare_demo_teacher; "
           "print(json.dumps(str(prepare_demo_teacher())))")


@pytest.mark.slow
def test_two_prepares_at_once_give_identical_results(tmp_path):
    env = dict(os.environ, BEQUEATH_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    # exactly one converted; the other waited on the lock and took its result
    assert sum("Preparing the demo teacher once" in err for _, err in outs) == 1, [e[-500:] for _, e in outs]
    paths = {json.loads(out.strip().splitlines()[-1]) for out, _ in outs}
    assert len(paths) == 1
    target = Path(paths.pop())
    files = sorted(f.name for f in target.iterdir())
    assert "model.safetensors" in files and "bequeath_source.json" in files
    # the second prepare waited for the first and returned its files: nothing half-written or left over
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".prep-")]
    source = json.loads((target / "bequeath_source.json").read_text())
    assert len(source["gguf_sha256"]) == 64
    # a third prepare finds the same files and leaves them untouched (same bytes, same mtimes)
    before = {f.name: (sha256_file(f), f.stat().st_mtime_ns) for f in target.iterdir() if f.is_file()}
    again = subprocess.run([sys.executable, "-c", PREPARE], cwd=ROOT, env=env, text=True, capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert Path(json.loads(again.stdout.strip().splitlines()[-1])) == target
    after = {f.name: (sha256_file(f), f.stat().st_mtime_ns) for f in target.iterdir() if f.is_file()}
    assert after == before
    assert "Preparing the demo teacher once" not in again.stderr
