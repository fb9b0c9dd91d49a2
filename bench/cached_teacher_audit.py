"""Auditing a second student against an already audited teacher, and the audit's peak memory.

Builds two students from the real teacher (every 5th and every 3rd layer, no training:
timing only), audits teacher + student A (first: the teacher is scored), then teacher +
student B (second: the teacher's results come from the cache), same probes and sizes.
Prints, as ratios measured in this one process:
  second_over_first = wall time of the second audit / the first   (target <= 0.55)
  peak_rss_over_weights = peak RSS of the process / (teacher + largest student weights, bytes)
Run: python bench/cached_teacher_audit.py [--limit 20] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _student(teacher_dir: Path, every: int, out: Path) -> Path:
    from transformers import AutoTokenizer

    from audit.models import ModelRef, load_model
    from distill.spec import StudentInit
    from distill.students import from_layers, layer_indices

    teacher = load_model(ModelRef(name="t", path=str(teacher_dir)))
    keep = layer_indices(StudentInit(source="layers", every=every), teacher.model.config.num_hidden_layers)
    from_layers(teacher.model, keep).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
    return out


def _weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=20, help="items per group per probe")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    from audit.harness import run_audit
    from audit.models import prepare_demo_teacher
    from audit.spec import AuditSpec

    teacher_dir = prepare_demo_teacher()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a = _student(teacher_dir, 5, tmp / "student_a")
        b = _student(teacher_dir, 6, tmp / "student_b")  # same size class, different content
        probes = [{"name": "bundled", "limit": args.limit}, {"name": "crows_pairs", "limit": args.limit // 4 or 1}]

        def audit(student: Path, name: str) -> float:
            spec = AuditSpec.from_dict(dict(teacher={"name": "teacher", "path": str(teacher_dir)},
                                            students=[{"name": name, "path": str(student)}], probes=probes,
                                            tasks=["bundled_qa"], task_limit=24, data_dir=args.data_dir,
                                            out=str(tmp / f"run_{name}"), cache=str(tmp / "cache"), n_boot=500))
            t = time.perf_counter()
            run_audit(spec, progress=False)
            return time.perf_counter() - t

        first = audit(a, "a")
        second = audit(b, "b")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        weights = _weights_bytes(teacher_dir) + max(_weights_bytes(a), _weights_bytes(b))
        print(f"first_audit_s = {first:.1f}")
        print(f"second_audit_s = {second:.1f}")
        print(f"second_over_first = {second / first:.3f}")
        print(f"peak_rss_over_weights = {peak / weights:.3f}")


if __name__ == "__main__":
    main()
