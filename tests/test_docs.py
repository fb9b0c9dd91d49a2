"""The scale-out page and the GPU check: docs/scale-out.md's sections and its backend examples
against lm-eval's own model classes (read from their source: vLLM is not installed here), and
bench/gpu_check.sh's skip paths (no GPU; a GPU but no vllm), run for real."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCALE_OUT = ROOT / "docs" / "scale-out.md"
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"


def _init_params(module: str, cls: str) -> set[str]:
    """The keyword parameters of an lm-eval model class's __init__, from its source (no import)."""
    spec = find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}


def _yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


def test_scale_out_page_has_its_sections_in_order():
    text = SCALE_OUT.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    want = ["One GPU", "Several GPUs", "Several machines", "Distillation at scale", "Data-parallel audit"]
    assert [h for h in headings if h in want] == want
    assert 'accelerate launch --config_file fsdp.yaml "$(command -v bequeath)" distill spec.yaml' in text
    assert "torchrun --nproc_per_node" in text and "untested here" in text


def test_scale_out_backend_examples_use_lm_evals_own_arguments():
    """Every `backend:` in the page names an lm-eval model type, with arguments its class takes
    (vLLM's own engine arguments, which lm-eval passes on to vllm.LLM, are allowed for vllm)."""
    from audit.lm import registry_names

    blocks = [b["backend"] for b in _yaml_blocks(SCALE_OUT.read_text(encoding="utf-8")) if "backend" in b]
    assert {b["name"] for b in blocks} == {"vllm", "local-completions"}
    known = set(registry_names())
    vllm = _init_params("lm_eval.models.vllm_causallms", "VLLM")
    api = _init_params("lm_eval.models.api_models", "TemplateAPI") | _init_params(
        "lm_eval.models.openai_completions", "LocalCompletionsAPI")
    vllm_engine_args = {"enforce_eager", "gpu_memory_utilization"}  # lm-eval passes **kwargs on to vllm.LLM
    for b in blocks:
        assert b["name"] in known
        allowed = vllm | vllm_engine_args if b["name"] == "vllm" else api
        assert set(b["args"]) <= allowed, (b["name"], set(b["args"]) - allowed)
    assert {"tensor_parallel_size", "data_parallel_size"} <= vllm
    assert any({"tensor_parallel_size", "data_parallel_size"} <= set(b["args"]) for b in blocks)


def test_scale_out_backend_examples_pass_the_spec_check(tmp_path):
    """The backend blocks as an audit spec's `backend:` (the teacher need not exist: parsing only)."""
    from audit.spec import AuditSpec

    checked = 0
    for block in _yaml_blocks(SCALE_OUT.read_text(encoding="utf-8")):
        if "backend" not in block or block["backend"]["name"] == "vllm" and find_spec("vllm") is None:
            continue  # lm-eval cannot import its vllm class here: the spec check rightly refuses it
        raw = {"teacher": "smollm2-135m", "students": ["s"], "probes": ["bundled"], "backend": block["backend"]}
        assert AuditSpec.from_dict(raw, source="scale-out.md").backend == block["backend"]
        checked += 1
    assert checked >= 1  # local-completions at least


def _fake_nvidia_smi(folder: Path, listing: str) -> dict[str, str]:
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n", encoding="utf-8")
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "PYTHON": sys.executable}


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    env = _fake_nvidia_smi(tmp_path / "bin", "")  # present, lists no GPU (as on a machine without one)
    done = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "no GPU: skipped\n", done.stderr
    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi at all
    done = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "no GPU: skipped\n", done.stderr


@pytest.mark.skipif(find_spec("vllm") is not None, reason="vllm is installed: the check would run for real")
def test_gpu_check_with_a_gpu_but_no_vllm_skips_and_says_why(tmp_path):
    env = _fake_nvidia_smi(tmp_path / "bin", "GPU 0: NVIDIA H200 (UUID: GPU-0)\\n")
    done = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vllm is not importable by ") and "skipped" in done.stdout
