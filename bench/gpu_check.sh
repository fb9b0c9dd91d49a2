#!/usr/bin/env bash
# GPU check (issue 17): the teacher and a student scored through lm-eval's `vllm` model type and through
# lm-eval's `hf` model type on the same probe requests, as bequeath's `backend: {name: vllm}` and
# `backend: {name: hf, args: {device: cuda}}` build them (audit.lm.make_lm). Prints
#
#     max_loglik_diff = X       largest |log-likelihood(vllm) - log-likelihood(hf)| over every request
#     vllm_over_hf_speed = R    hf's scoring seconds / vllm's (both warmed up; loading not counted)
#
# Without a GPU (nvidia-smi missing or listing none) it prints "no GPU: skipped" and exits 0; with a GPU
# but without vllm importable it says so and exits 0 (pip install "lm-eval[vllm]").
#
# Usage:  bench/gpu_check.sh
# Environment: PYTHON (default: the repo's .venv/bin/python, else python3); TEACHER (default the alias
# smollm2-135m, prepared with `bequeath models prepare`); STUDENT (a student folder; default: one
# distilled here for DISTILL_STEPS steps, 20); N_REQUESTS (default 400, from the bundled probe);
# DTYPE (default float32, both backends); VLLM_MEMORY (gpu_memory_utilization per model, default 0.35).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "no GPU: skipped"
  exit 0
fi
if ! "$PYTHON" -c "import vllm" >/dev/null 2>&1; then
  echo "vllm is not importable by $PYTHON: skipped (pip install \"lm-eval[vllm]\")"
  exit 0
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
TEACHER="${TEACHER:-smollm2-135m}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
bequeath() { "$PYTHON" -c 'import sys; from audit.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

if [[ "$TEACHER" == "smollm2-135m" ]]; then
  bequeath models prepare smollm2-135m >/dev/null
fi
if [[ -z "${STUDENT:-}" ]]; then
  STUDENT="$WORK/student"
  echo "distilling a student for ${DISTILL_STEPS:-20} steps into $STUDENT ..." >&2
  "$PYTHON" -m distill.cli --teacher "$TEACHER" --out "$STUDENT" --max-steps "${DISTILL_STEPS:-20}" \
    --no-progress >"$WORK/distill.log" 2>&1 || { tail -20 "$WORK/distill.log" >&2; exit 1; }
fi

# a file, not stdin: vLLM may start its engine with multiprocessing "spawn", which re-imports __main__
cat >"$WORK/gpu_check.py" <<'PY'
import gc
import os
import time
from dataclasses import replace

from audit.lm import loglikelihoods, make_lm
from audit.models import ModelRef, load_model
from probes.registry import get_probe


def main() -> None:
    n = int(os.environ.get("N_REQUESTS", "400"))
    dtype = os.environ.get("DTYPE", "float32")
    requests = [r for item in get_probe("bundled").load(None).items for r in item.requests][:n]
    backends = {  # vllm first: before anything in this process has initialised CUDA
        "vllm": {"name": "vllm", "args": {"gpu_memory_utilization": float(os.environ.get("VLLM_MEMORY", "0.35")),
                                          "enforce_eager": True, "seed": 0}},
        "hf": {"name": "hf", "args": {"device": "cuda"}},
    }
    refs = [replace(ModelRef.parse(os.environ["TEACHER"]), dtype=dtype),
            replace(ModelRef.parse({"name": "student", "path": os.environ["STUDENT"]}), dtype=dtype)]
    loaded = [load_model(ref) for ref in refs]  # on the CPU, for path, dtype and hash; backends load their own
    logliks, seconds = {}, {name: 0.0 for name in backends}
    for name, backend in backends.items():
        for model in loaded:
            lm = make_lm(model, backend=backend, batch_size=64)
            loglikelihoods(lm, requests[:32])  # warm-up: kernels, caches
            start = time.perf_counter()
            logliks[name, model.ref.name] = [a.loglik for a in loglikelihoods(lm, requests)]
            seconds[name] += time.perf_counter() - start
            del lm
            gc.collect()
    worst = 0.0
    for model in loaded:
        pairs = zip(logliks["vllm", model.ref.name], logliks["hf", model.ref.name], strict=True)
        diff = max(abs(a - b) for a, b in pairs)
        print(f"{model.ref.name}: {len(requests)} requests, max |vllm - hf| = {diff:.3g}", flush=True)
        worst = max(worst, diff)
    print(f"max_loglik_diff = {worst:.6g}")
    print(f"vllm_over_hf_speed = {seconds['hf'] / seconds['vllm']:.3g}")


if __name__ == "__main__":
    main()
PY
TEACHER="$TEACHER" STUDENT="$STUDENT" "$PYTHON" "$WORK/gpu_check.py"
