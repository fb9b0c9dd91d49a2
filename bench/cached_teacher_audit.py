"""Auditing a second student against an already audited teacher, and the audit's peak memory.

Builds two students of the same size from the real teacher (6 of its 30 layers each, layers 0, 5,
..., 25 and 1, 6, ..., 26; no training: timing only). One round audits teacher + one student with
an empty results cache (first: the teacher is scored) and then teacher + the other student with that
cache (second: the teacher's results come from the cache), same probes, tasks and sizes; the two
audits differ only in whether the teacher is cached. Which student goes first alternates between
rounds, so any difference between the students hits both sides alike.

A warm-up audit runs first, untimed (imports, lm-eval task setup, the teacher's file in the page
cache), then ``--repeats`` rounds. Prints, as ratios measured in this one process:

  second_over_first = R (min a, max b)   per round, median and spread          target <= 0.55
  peak_rss_over_weights = R              peak RSS of the process / (teacher + one student weights)

Run: python bench/cached_teacher_audit.py [--limit 20] [--repeats 5] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS_A = (0, 5, 10, 15, 20, 25)
LAYERS_B = (1, 6, 11, 16, 21, 26)  # same size, other weights


def _student(teacher_dir: Path, layers: tuple[int, ...], out: Path) -> Path:
    from transformers import AutoTokenizer

    from audit.models import ModelRef, load_model
    from distill.spec import StudentInit
    from distill.students import from_layers, layer_indices

    teacher = load_model(ModelRef(name="t", path=str(teacher_dir)))
    keep = layer_indices(StudentInit(source="layers", every=None, layers=layers), teacher.model.config.num_hidden_layers)
    from_layers(teacher.model, keep).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
    return out


def _weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=20, help="items per group per probe")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (first + second audit), at least 5")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch default)")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")
    import torch

    from audit.harness import run_audit
    from audit.models import prepare_demo_teacher
    from audit.spec import AuditSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher_dir = prepare_demo_teacher()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        students = {"a": _student(teacher_dir, LAYERS_A, tmp / "student_a"),
                    "b": _student(teacher_dir, LAYERS_B, tmp / "student_b")}
        assert _weights_bytes(students["a"]) == _weights_bytes(students["b"])
        probes = [{"name": "bundled", "limit": args.limit}, {"name": "crows_pairs", "limit": args.limit // 4 or 1}]

        def audit(name: str, cache: Path, out: str) -> float:
            spec = AuditSpec.from_dict(dict(teacher={"name": "teacher", "path": str(teacher_dir)},
                                            students=[{"name": name, "path": str(students[name])}], probes=probes,
                                            tasks=["bundled_qa"], task_limit=24, data_dir=args.data_dir,
                                            out=str(tmp / out), cache=str(cache), n_boot=500))
            t = time.perf_counter()
            run_audit(spec, progress=False)
            return time.perf_counter() - t

        audit("a", tmp / "cache-warmup", "warmup")  # untimed
        first, second = [], []
        for r in range(args.repeats):
            x, y = ("a", "b") if r % 2 == 0 else ("b", "a")
            cache = tmp / f"cache-{r}"  # empty: the first audit scores the teacher
            first.append(audit(x, cache, f"r{r}-first"))
            second.append(audit(y, cache, f"r{r}-second"))
            print(f"# round {r + 1}: first ({x}) {first[-1]:.1f} s, second ({y}) {second[-1]:.1f} s", flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        weights = _weights_bytes(teacher_dir) + _weights_bytes(students["a"])
        print(f"# {args.repeats} rounds after a warm-up audit; limit {args.limit} per group; {args.threads} thread(s)")
        print(f"first_audit_s = {_spread(first)}")
        print(f"second_audit_s = {_spread(second)}")
        print(f"second_over_first = {_spread([s / f for f, s in zip(first, second, strict=True)])}")
        print(f"peak_rss_over_weights = {peak / weights:.3f}")


if __name__ == "__main__":
    main()
