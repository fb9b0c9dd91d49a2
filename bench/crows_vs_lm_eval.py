"""The CrowS-Pairs probe vs lm-eval's own ``crows_pairs_english`` task, same model, same rows.

Both run in this process on one loaded model, on the first ``--rows`` pairs of the CrowS-Pairs
CSV. lm-eval's side is its unchanged task config pointed at that slice (task setup counts in
its time: it is what a user of lm-eval pays); ours is reading the probe's items and scoring them
through ``audit.lm.score_probe_items`` with the chosen backend. A short warm-up forward runs
first so neither side pays torch's first-call cost; with ``--repeats k`` the sides alternate
(ours, lm-eval, lm-eval, ours, ...) and each side's fastest run counts, because on a shared
machine the slowest runs measure the neighbours. Prints:

    max_abs_loglik_diff = D     (over all 2 x rows log-likelihoods)
    speed_ratio = R             (lm-eval's wall seconds / ours; target >= 1.0)
    cpu_ratio = C               (the same with CPU seconds of this process, less sensitive to load)
    setup_s                     (each side's wall seconds outside ``loglikelihood``: the only work
                                 that differs when both use HFLM; the rest is the same forward passes)

With ``--backend hflm`` both sides run the same HFLM forward passes (identical numbers, D = 0) and
the difference is lm-eval's task setup and evaluator; ``--backend engine`` (the default of the
audit) shares prefixes and reorders batches, so its numbers equal HFLM's only up to float
summation order (D ~ 1e-5).

Usage (offline):
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/crows_vs_lm_eval.py --rows 100 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import os
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


def run_ours(loaded, csv_path: Path, backend: str, batch_size: int) -> tuple[tuple[float, float, float], dict, list[list[float]]]:
    """The probe through audit.lm: seconds, its metrics, its log-likelihoods per item."""
    from audit.lm import make_lm, score_probe_items
    from probes.base import columns_of
    from probes.crows_pairs import CrowsPairsProbe

    t0, c0 = time.perf_counter(), time.process_time()
    probe = CrowsPairsProbe(path=str(csv_path))
    items = probe.load(None).items
    lm = make_lm(loaded, backend=backend, batch_size=batch_size)
    timer = _Timed(lm)
    results = score_probe_items(lm, probe, items, tokenizer=loaded.tokenizer, progress=False)
    seconds = (time.perf_counter() - t0, time.process_time() - c0, timer.seconds)
    cols = columns_of(r.columns for r in results if r.columns)
    metrics = {m.name: m.compute(cols) for m in probe.metrics}
    return seconds, metrics, [[a.loglik for a in r.answers] for r in results]


def _warm_up(loaded) -> None:
    import torch

    # a batch the size of the benchmark's, so that neither side pays the first large allocation
    text = "A warm-up sentence about nothing in particular, long enough to look like a CrowS pair. " * 2
    ids = loaded.tokenizer([text] * 32, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(2):
            loaded.model(ids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--model", default="smollm2-135m", help="model directory or the demo alias")
    ap.add_argument("--backend", default="hflm", choices=("hflm", "engine"))
    ap.add_argument("--batch-size", type=int, default=32)
    # 5: the two sides do the same forward passes, so R is ~1 and run-to-run noise (±5% here) decides
    # single runs; the fastest of 5 per side measured R 1.03 / 1.06 where 2 gave 0.96-1.02
    ap.add_argument("--repeats", type=int, default=5, help="runs per side, alternating; the fastest counts")
    args = ap.parse_args(argv)

    import torch

    from audit.models import ModelRef, load_model

    loaded = load_model(ModelRef(name="model", path=args.model))
    _warm_up(loaded)
    with tempfile.TemporaryDirectory() as tmp_s, torch.inference_mode():
        tmp = Path(tmp_s)
        csv_path = _slice(Path(args.data_dir) / "crows_pairs" / "crows_pairs_anonymized.csv",
                          tmp / "crows_slice.csv", args.rows)
        ours, ref = [], []
        for k in range(max(1, args.repeats)):
            runs = [lambda: ours.append(run_ours(loaded, csv_path, args.backend, args.batch_size)),
                    lambda k=k: ref.append(run_lm_eval(loaded, csv_path, tmp / f"r{k}", args.batch_size))]
            for run in runs if k % 2 == 0 else runs[::-1]:
                run()
    (_, m_ours, ll_ours), (_, m_ref, ll_ref) = ours[0], ref[0]
    t_ours = tuple(min(r[0][i] for r in ours) for i in (0, 1))
    t_ref = tuple(min(r[0][i] for r in ref) for i in (0, 1))
    # wall time outside loglikelihood (task setup, evaluator / reading items), per run, fastest run
    setup_ours = min(r[0][0] - r[0][2] for r in ours)
    setup_ref = min(r[0][0] - r[0][2] for r in ref)
    if len(ll_ours) != len(ll_ref):
        print(f"error: {len(ll_ours)} items scored by the probe, {len(ll_ref)} by lm-eval", file=sys.stderr)
        return 2
    diff = max(abs(a - b) for xs, ys in zip(ll_ours, ll_ref, strict=True) for a, b in zip(xs, ys, strict=True))
    print(f"rows = {len(ll_ours)}  backend = {args.backend}  batch_size = {args.batch_size}  "
          f"repeats = {args.repeats}")
    print(f"lm-eval: {t_ref[0]:.2f} s (cpu {t_ref[1]:.2f} s)  pct_stereotype = {m_ref['pct_stereotype,none']:.4f}  "
          f"likelihood_diff = {m_ref['likelihood_diff,none']:.4f}")
    print(f"probe:   {t_ours[0]:.2f} s (cpu {t_ours[1]:.2f} s)  pct_stereotype = {m_ours['pct_stereotype']:.4f}  "
          f"likelihood_diff = {m_ours['likelihood_diff']:.4f}  "
          f"pct_stereotype_per_token = {m_ours['pct_stereotype_per_token']:.4f}")
    print(f"setup_s (outside loglikelihood): lm-eval {setup_ref:.2f}  probe {setup_ours:.2f}")
    print(f"max_abs_loglik_diff = {diff:.3g}")
    print(f"speed_ratio = {t_ref[0] / t_ours[0]:.2f}")
    print(f"cpu_ratio = {t_ref[1] / t_ours[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
