"""The CrowS-Pairs probe vs lm-eval's own ``crows_pairs_english`` task, same model, same rows.

Both run in this process on one loaded model, on the first ``--rows`` pairs of the CrowS-Pairs
CSV. lm-eval's side is its unchanged task config pointed at that slice, scored by lm-eval's HFLM
(task setup counts in its time: it is what a user of lm-eval pays); ours is what ``bequeath audit``
runs: reading the probe's items and scoring them through ``audit.lm.score_probe_items`` with the
audit's default backend, the prefix-cache engine (``audit.engine.PrefixCacheLM``). So the numbers
compare the engine with HFLM (they agree up to float summation order, D ~ 1e-5), not HFLM with
itself.

First a warm-up (both sides once on the first 8 rows, untimed), then ``--repeats`` rounds, each
running both sides, ours first in even rounds and lm-eval first in odd ones, so load from other
processes hits both alike. A round's ratio is lm-eval's seconds / ours in that round; prints

    max_abs_loglik_diff = D                (over all 2 x rows log-likelihoods, every round)
    speed_ratio = R (min a, max b)         wall seconds, median over rounds and spread; target >= 1.0
    cpu_ratio = C (min a, max b)           the same with CPU seconds of this process
    setup_s                                each side's median wall seconds outside ``loglikelihood``

Usage (offline):
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/crows_vs_lm_eval.py --rows 100 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Timed:
    """Wraps an LM's ``loglikelihood`` to time the model work apart from each side's setup."""

    def __init__(self, lm) -> None:
        self.seconds = 0.0
        inner = lm.loglikelihood

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        lm.loglikelihood = timed  # an instance attribute: lm-eval's evaluator and audit.lm both find it


def _slice(src: Path, out: Path, rows: int) -> Path:
    with open(src, encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    with open(out, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(table[: rows + 1])
    return out


def run_lm_eval(loaded, csv_path: Path, tmp: Path, batch_size: int) -> tuple[tuple[float, float, float], dict, list[list[float]]]:
    """lm-eval's crows_pairs_english on ``csv_path``: seconds, its metrics, its log-likelihoods per doc."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from probes.crows_pairs import write_lm_eval_task

    t0, c0 = time.perf_counter(), time.process_time()
    task = write_lm_eval_task(tmp / "task", csv_path)
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device="cpu")
    timer = _Timed(lm)
    out = simple_evaluate(model=lm, tasks=[task], log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp / "task"), include_defaults=False))
    seconds = (time.perf_counter() - t0, time.process_time() - c0, timer.seconds)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return seconds, out["results"][task], [[ll for ll, _ in s["filtered_resps"]] for s in samples]


def run_ours(loaded, csv_path: Path, batch_size: int) -> tuple[tuple[float, float, float], dict, list[list[float]]]:
    """The probe through audit.lm with the engine: seconds, its metrics, its log-likelihoods per item."""
    from audit.engine import PrefixCacheLM
    from audit.lm import make_lm, score_probe_items
    from probes.base import columns_of
    from probes.crows_pairs import CrowsPairsProbe

    t0, c0 = time.perf_counter(), time.process_time()
    probe = CrowsPairsProbe(path=str(csv_path))
    items = probe.load(None).items
    lm = make_lm(loaded, backend="engine", batch_size=batch_size)
    assert isinstance(lm, PrefixCacheLM), type(lm)
    timer = _Timed(lm)
    results = score_probe_items(lm, probe, items, tokenizer=loaded.tokenizer, progress=False)
    seconds = (time.perf_counter() - t0, time.process_time() - c0, timer.seconds)
    cols = columns_of(r.columns for r in results if r.columns)
    metrics = {m.name: m.compute(cols) for m in probe.metrics}
    return seconds, metrics, [[a.loglik for a in r.answers] for r in results]


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--model", default="smollm2-135m", help="model directory or the demo alias")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds, at least 5 (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (0: torch default)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")

    import torch

    from audit.models import ModelRef, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelRef(name="model", path=args.model))
    with tempfile.TemporaryDirectory() as tmp_s, torch.inference_mode():
        tmp = Path(tmp_s)
        src = Path(args.data_dir) / "crows_pairs" / "crows_pairs_anonymized.csv"
        csv_path = _slice(src, tmp / "crows_slice.csv", args.rows)
        warm = _slice(src, tmp / "crows_warm.csv", min(8, args.rows))
        run_ours(loaded, warm, args.batch_size)  # warm-up: first calls and allocations, both sides
        run_lm_eval(loaded, warm, tmp / "warm", args.batch_size)
        ours, ref = [], []
        for k in range(args.repeats):
            runs = [lambda: ours.append(run_ours(loaded, csv_path, args.batch_size)),
                    lambda k=k: ref.append(run_lm_eval(loaded, csv_path, tmp / f"r{k}", args.batch_size))]
            for run in runs if k % 2 == 0 else runs[::-1]:
                run()
    (_, m_ours, ll_ours), (_, m_ref, ll_ref) = ours[0], ref[0]
    if any(len(r[2]) != len(ll_ref) for r in ours + ref):
        print(f"error: {len(ll_ours)} items scored by the probe, {len(ll_ref)} by lm-eval", file=sys.stderr)
        return 2
    diff = max(abs(a - b) for _, _, lls in ours + ref
               for xs, ys in zip(lls, ll_ref, strict=True) for a, b in zip(xs, ys, strict=True))
    wall = [r[0][0] / o[0][0] for r, o in zip(ref, ours, strict=True)]
    cpu = [r[0][1] / o[0][1] for r, o in zip(ref, ours, strict=True)]
    # wall time outside loglikelihood (task setup, evaluator / reading items)
    setup_ours = statistics.median(r[0][0] - r[0][2] for r in ours)
    setup_ref = statistics.median(r[0][0] - r[0][2] for r in ref)
    print(f"# rows = {len(ll_ours)}, ours: probe + engine, lm-eval: its task + HFLM, batch_size = {args.batch_size}, "
          f"{args.repeats} rounds after a warm-up, {args.threads} thread(s)")
    print(f"# lm-eval: median {statistics.median(r[0][0] for r in ref):.2f} s "
          f"(cpu {statistics.median(r[0][1] for r in ref):.2f} s)  pct_stereotype = {m_ref['pct_stereotype,none']:.4f}  "
          f"likelihood_diff = {m_ref['likelihood_diff,none']:.4f}")
    print(f"# probe:   median {statistics.median(r[0][0] for r in ours):.2f} s "
          f"(cpu {statistics.median(r[0][1] for r in ours):.2f} s)  pct_stereotype = {m_ours['pct_stereotype']:.4f}  "
          f"likelihood_diff = {m_ours['likelihood_diff']:.4f}  "
          f"pct_stereotype_per_token = {m_ours['pct_stereotype_per_token']:.4f}")
    print(f"# setup_s (outside loglikelihood, median): lm-eval {setup_ref:.2f}  probe {setup_ours:.2f}")
    print(f"max_abs_loglik_diff = {diff:.3g}")
    print(f"speed_ratio = {_spread(wall)}")
    print(f"cpu_ratio = {_spread(cpu)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
