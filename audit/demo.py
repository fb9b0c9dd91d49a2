"""The demo: distil a student from the bundled teacher, audit both, write the report.

Everything it reads ships in the package (bundled probe, bundled QA task, seed prompts
for the teacher-generated corpus), so it runs on a fresh machine without ../shared.
The distillation and report packages are imported by name at run time: the audit
package does not depend on them (see DESIGN.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from audit.errors import RunDirError


def run_demo(out: Path, *, max_steps: int | None = None, force: bool = False) -> Path:
    """Run the three steps into ``out``; return the report's path."""
    import os

    # Everything the demo reads is local (bundled data, cached teacher): never wait on a hub look-up.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from audit.harness import run_audit
    from audit.models import DEMO_ALIAS, prepare_demo_teacher
    from audit.spec import AuditSpec, ProbeSpec

    out = Path(out)
    marker = out / "bequeath-demo.json"
    if out.exists() and any(out.iterdir()) and not marker.exists() and not force:
        raise RunDirError(f"{out} exists and is not a bequeath demo folder; choose another --out or pass --force.")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"demo": 1}))
    timings = {}
    t0 = time.time()
    print("[1/4] preparing the bundled teacher (SmolLM2-135M-Instruct)...", flush=True)
    prepare_demo_teacher()
    timings["prepare"] = time.time() - t0

    print("[2/4] distilling a soft-label student (forward KL, the 14 most important of 30 layers)...", flush=True)
    t1 = time.time()
    from distill import api as distill_api  # the demo is the app layer: it may use every package
    from distill import spec as distill_spec
    student_dir = out / "student"
    if (student_dir / "distill_card.json").is_file() and max_steps is None:
        print(f"      reusing the student in {student_dir}")
    else:
        spec = distill_spec.DistillSpec.demo(student_dir)
        if max_steps:
            import dataclasses

            spec = dataclasses.replace(spec, max_steps=max_steps)
        student_dir = Path(distill_api.run_distill(spec))
    timings["distill"] = time.time() - t1

    print("[3/4] auditing teacher and student (bundled probe, bundled QA task)...", flush=True)
    t2 = time.time()
    from audit.models import ModelRef

    audit_spec = AuditSpec(
        teacher=ModelRef(name="teacher", path=DEMO_ALIAS),
        students=(ModelRef(name="soft-student", path=str(student_dir)),),
        probes=(ProbeSpec(name="bundled"),), tasks=("bundled_qa",), out=str(out / "audit"),
    )
    run_dir, code = run_audit(audit_spec, force=True)
    timings["audit"] = time.time() - t2

    print("[4/4] writing the report...", flush=True)
    from reports.cli import render
    paths = render(run_dir, out)
    timings["report"] = time.time() - t0 - sum(v for k, v in timings.items())
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f", total {time.time() - t0:.0f}")
    if code:
        print("warning: the audit is partial (see errors in run.json); the report says what is missing")
    return Path(paths["html"])
