"""Students worth auditing (issue 16): what the demo's student and the debiased students keep.

Quality figures, not timings: each run is seeded and deterministic, so one run per figure.

  demo_retention = R            the demo student's bundled QA accuracy / the teacher's      target >= 0.6
  demo_retention_above_chance = R   (student - 0.25) / (teacher - 0.25), 4 options
  demo_params_ratio = R         student parameters / teacher parameters
  demo_minutes = M              the whole demo (prepare, distill, audit, report) on this machine  target <= 10
  debias_task_ratio = R         min over --debias methods of debiased / plain bundled QA on the planted
                                teacher (tests/test_debias.py's runs)                        target >= 0.95
  debias_task_ratio_<method> = R   each method's ratio
  recipe_retention_min = R      the reference recipe (docs/recipes/smollm2-keep14.yaml): the smaller of
                                its two tasks' retention at the last learning-curve point     target >= 0.8
  recipe_retention_<task> = R, recipe_retention_above_chance_<task> = R   each task (chance 0.25: 4 options)
  recipe_params_ratio = R       student parameters / teacher parameters                      target <= 0.6
  recipe_minutes = M            the recipe's one command, start to finish                    target <= 60

demo_minutes and recipe_minutes are single runs of a time budget (each takes minutes and is
deterministic in what it computes), not comparisons, so there is no baseline to alternate with
and they are printed as one run each, not as a median of repeats.

Run: python bench/distill_quality.py [--demo-dir DIR (reuse a finished demo)] [--methods cda,crr,invariance]
     [--skip-debias] [--recipe-dir DIR (reuse a finished recipe run) | --skip-recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHANCE = 0.25  # bundled QA and ARC-Easy: 4 options
REPO = Path(__file__).resolve().parents[1]


def demo_figures(demo_dir: Path | None) -> dict[str, float]:
    from audit.demo import run_demo

    minutes = None
    if demo_dir is None:
        demo_dir = Path(tempfile.mkdtemp(prefix="bequeath-bench-demo-")) / "demo"
        t0 = time.perf_counter()
        run_demo(demo_dir)
        minutes = (time.perf_counter() - t0) / 60
    run = json.loads((demo_dir / "audit" / "run.json").read_text())
    task = next(t for t in run["tasks"] if t["task"] == "bundled_qa")
    teacher, student = (task["scores"][m["name"]]["value"] for m in run["models"][:2])
    params = {m["role"]: m["n_params"] for m in run["models"][:2]}
    out = {"demo_retention": student / teacher, "demo_retention_above_chance": (student - CHANCE) / (teacher - CHANCE),
           "demo_params_ratio": params["student"] / params["teacher"], "demo_teacher_acc": teacher,
           "demo_student_acc": student}
    if minutes is not None:
        out["demo_minutes"] = minutes
    return out


def recipe_figures(recipe_dir: Path | None) -> dict[str, float]:
    """Run the recipe's one command from the repository root (or read a finished run's card)."""
    import subprocess

    minutes = None
    if recipe_dir is None:
        recipe_dir = Path(tempfile.mkdtemp(prefix="bequeath-bench-recipe-")) / "student"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "audit.cli", "distill", "docs/recipes/smollm2-keep14.yaml", "--out",
                        str(recipe_dir)], cwd=REPO, check=True)
        minutes = (time.perf_counter() - t0) / 60
    card = json.loads((recipe_dir / "distill_card.json").read_text())
    curve = card["learning_curve"]
    last = curve["points"][-1]
    out: dict[str, float] = {}
    for task in curve["tasks"]:
        out[f"recipe_retention_{task}"] = last["retention"][task]
        out[f"recipe_retention_above_chance_{task}"] = ((last["scores"][task] - CHANCE)
                                                          / (curve["teacher"][task] - CHANCE))
    out["recipe_retention_min"] = min(last["retention"][t] for t in curve["tasks"])
    out["recipe_params_ratio"] = card["student_n_params"] / card["teacher"]["n_params"]
    out["recipe_minutes"] = minutes if minutes is not None else card["wall_time_s"] / 60
    for p in curve["points"]:
        print(f"# learning curve: step {p['step']}, {p['tokens_seen']:,} tokens: "
              + ", ".join(f"{t} {v:.3f}" for t, v in p["scores"].items()))
    return out


def debias_figures(methods: tuple[str, ...]) -> dict[str, float]:
    from audit.models import prepare_demo_teacher
    from tests.test_debias import planted_debias_audit

    result = planted_debias_audit(Path(tempfile.mkdtemp(prefix="bequeath-bench-debias-")), prepare_demo_teacher(),
                                  methods=methods)
    qa = result["qa"]
    ratios = {f"debias_task_ratio_{m}": qa[m] / qa["plain"] for m in methods}
    for m in ("plain", *methods):
        cell = result["cell"][(m, "gender")]
        print(f"# planted gender cell, {m}: teacher {cell['teacher']['bias']:+.1f}, student {cell['student']['bias']:+.1f} "
              f"points, {cell['verdict']}; bundled QA {qa[m]:.3f}")
    return {"debias_task_ratio": min(ratios.values()), **ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", type=Path, default=None, help="a finished `bequeath demo --out DIR` to read")
    ap.add_argument("--methods", default="cda,crr,invariance", help="debias methods to compare with plain soft KD")
    ap.add_argument("--skip-debias", action="store_true")
    ap.add_argument("--recipe-dir", type=Path, default=None, help="a finished run of docs/recipes/smollm2-keep14.yaml")
    ap.add_argument("--skip-recipe", action="store_true")
    args = ap.parse_args()
    figures = demo_figures(args.demo_dir)
    if not args.skip_debias:
        figures.update(debias_figures(tuple(m for m in args.methods.split(",") if m)))
    if not args.skip_recipe:
        figures.update(recipe_figures(args.recipe_dir))
    for name, value in figures.items():
        print(f"{name} = {value:.3f}")


if __name__ == "__main__":
    main()
