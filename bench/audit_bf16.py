"""Audits in bfloat16 vs float32 on the real teacher: how much faster, and how many choices change.

The teacher (``smollm2-135m``) is audited twice with the same spec, ``dtype: float32`` and
``dtype: bfloat16`` (engine backend, a small stratified sample of bundled, crows_pairs and stereoset).
Agreement is read from the two runs' ``items.jsonl``: an item's choice is the value of its probe's
binary columns (the per-item choice the bias metrics count, e.g. ``stereotyped``, stereoset's ``pro``),
and ``bf16_choice_agreement`` is the share of (probe, item) pairs with identical choices.

Speed is the scoring of the same sampled items (the model loaded once per side, untimed): first a
warm-up (every probe on its first few items, both sides, untimed), then ``--repeats`` rounds in which
both sides score every probe back to back, float32 first in even rounds and bfloat16 first in odd
ones, so load from other processes hits both alike. A round's speedup is float32 seconds / bfloat16
seconds; prints

    bf16_speedup = R (min a, max b)      median over rounds, and the spread
    bf16_choice_agreement = A            share of per-item choices identical to float32

Usage (offline):
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/audit_bf16.py --data-dir ../shared/data --limit 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBES = ("bundled", "crows_pairs", "stereoset")
DTYPES = ("float32", "bfloat16")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f})"


def spec_for(dtype: str, args: argparse.Namespace, tmp: Path):
    from audit.models import DEMO_ALIAS
    from audit.spec import AuditSpec

    return AuditSpec.from_dict({
        "teacher": {"name": "teacher", "path": DEMO_ALIAS, "dtype": dtype},
        "probes": [{"name": p, "limit": args.limit} for p in args.probes.split(",")], "tasks": [],
        "data_dir": str(args.data_dir), "backend": "engine", "batch_size": args.batch_size,
        "n_boot": 100, "n_perm": 999, "out": str(tmp / f"run-{dtype}"), "cache": str(tmp / f"cache-{dtype}")})


def choices(run_dir: Path, binary: dict[str, list[str]]) -> dict[tuple[str, str], tuple]:
    """(probe, item) -> the item's binary columns, from the run's items.jsonl."""
    out = {}
    for line in (run_dir / "items.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("probe") and row.get("columns") is not None:
            out[(row["probe"], row["item"])] = tuple(row["columns"].get(c) for c in binary[row["probe"]])
    return out


def score_all(lm, probes) -> float:
    from audit.lm import score_probe_items

    t0 = time.perf_counter()
    for pp in probes:
        score_probe_items(lm, pp.probe, pp.items, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated (default {','.join(PROBES)})")
    ap.add_argument("--limit", type=int, default=10, help="items per group of each probe (default 10)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds, at least 5 (default 5)")
    ap.add_argument("--warmup-items", type=int, default=4, help="items per probe in the untimed warm-up")
    # 1 by default, as bench/engine_vs_hflm.py: on a shared machine two OpenMP threads mostly wait
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")

    import torch

    sys.path.insert(0, str(REPO))
    from audit.harness import _prepare_probes, run_audit
    from audit.lm import make_lm
    from audit.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bequeath-bench-") as tmp:
        specs = {d: spec_for(d, args, Path(tmp)) for d in DTYPES}
        runs = {}
        for d in DTYPES:  # the real audit, one per dtype: run.json records the dtype, items.jsonl the choices
            runs[d], _ = run_audit(specs[d], progress=False)
            recorded = json.loads((runs[d] / "run.json").read_text())["models"][0]["dtype"]
            assert recorded == d, f"run.json records {recorded}, the spec asked for {d}"
        probes = _prepare_probes(specs["float32"])
        binary = {pp.name: sorted({m.binary for m in pp.probe.metrics if m.binary}) for pp in probes}
        got = {d: choices(runs[d], binary) for d in DTYPES}
        lms = {d: make_lm(load_model(specs[d].teacher), backend="engine", batch_size=args.batch_size) for d in DTYPES}
        warm = [replace(pp, items=pp.items[: args.warmup_items]) for pp in probes]
        for d in DTYPES:
            score_all(lms[d], warm)
        times: dict[str, list[float]] = {d: [] for d in DTYPES}
        for r in range(args.repeats):
            for d in DTYPES if r % 2 == 0 else DTYPES[::-1]:
                times[d].append(score_all(lms[d], probes))
            print(f"# round {r + 1}: float32 {times['float32'][-1]:.1f} s, bfloat16 {times['bfloat16'][-1]:.1f} s",
                  flush=True)
    keys = sorted(set(got["float32"]) & set(got["bfloat16"]))
    same = sum(got["float32"][k] == got["bfloat16"][k] for k in keys)
    n_req = sum(len(it.requests) for pp in probes for it in pp.items)
    for pp in probes:
        mine = [k for k in keys if k[0] == pp.name]
        agree = sum(got["float32"][k] == got["bfloat16"][k] for k in mine)
        print(f"# {pp.name}: {len(mine)} items, choice columns {binary[pp.name]}, {agree} identical")
    print(f"# {args.repeats} rounds after a warm-up of {args.warmup_items} items per probe and dtype; "
          f"{args.threads} thread(s); engine batch {args.batch_size}; {n_req} requests per round")
    print(f"items = {len(keys)}")
    print(f"fp32_seconds = {_spread(times['float32'])}")
    print(f"bf16_seconds = {_spread(times['bfloat16'])}")
    print(f"bf16_speedup = {_spread([f / b for f, b in zip(times['float32'], times['bfloat16'], strict=True)])}")
    print(f"bf16_choice_agreement = {same / len(keys):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
