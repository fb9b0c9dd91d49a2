"""The reference recipe and a plain-vs-CDA audit on the real teacher, at a size CI can afford (issue 16).

CI runs ``docs/recipes/smollm2-keep14.yaml`` end to end, shortened (8 steps, 24 documents per
task; float32 where bf16 would be emulated): the 14 most important of the teacher's 30 layers, BoolQ's passages as the corpus, the
learning curve on bundled QA and ARC-Easy. The same run with ``--debias cda`` (same layers) gives
the CDA student, and the teacher and both students are audited on WinoBias, Winogender, CrowS-Pairs
and StereoSet (gender among their cells) plus the two task benchmarks. The full-size figures come
from ``bench/distill_quality.py`` (the recipe) and docs/examples/debias-audit/ (the audit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "docs" / "recipes" / "smollm2-keep14.yaml"
SHORT = {"max_steps": 8, "eval_every": 4, "eval_limit": 24, "warmup_steps": 2}


def short_dtype() -> str:
    """The recipe's bfloat16 where this CPU computes bf16 natively; float32 where it would be emulated
    (AVX2 only: measured 11x slower than float32, which would make this test the longest in CI). The
    recipe file itself is checked to say bfloat16, and the card to record what ran."""
    from distill.api import native_bf16

    return "bfloat16" if native_bf16() else "float32"
GENDER_CELL = {"winobias": ("all", "all"), "winogender": ("all", "all"), "crows_pairs": ("bias_type", "gender"),
               "stereoset": ("bias_type", "gender")}
PROBES = tuple(GENDER_CELL)
VERDICTS = {"not measurable", "amplified", "introduced", "reversed", "attenuated", "inherited", "not detected",
            "unchanged", "inconclusive"}


def recipe_spec(data_dir: Path, out: Path, **overrides) -> dict:
    """The recipe's YAML with its two relative paths pointed at ``data_dir`` and the output at ``out``."""
    d = yaml.safe_load(RECIPE.read_text())
    assert d["corpus"] == "../shared/data/boolq/dev.jsonl" and d["data_dir"] == "../shared/data"
    assert d["dtype"] == "bfloat16"  # the recipe as written: mixed precision
    return {**d, "corpus": str(data_dir / "boolq" / "dev.jsonl"), "data_dir": str(data_dir), "output": str(out),
            **overrides}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, teacher_dir, data_dir):
    from audit.harness import run_audit
    from audit.spec import AuditSpec
    from distill.api import run_distill
    from distill.spec import DistillSpec

    tmp = tmp_path_factory.mktemp("recipe")
    short = {**SHORT, "dtype": short_dtype()}
    plain = run_distill(DistillSpec.from_dict(recipe_spec(data_dir, tmp / "plain", **short)), progress=False)
    kept = json.loads((plain / "distill_card.json").read_text())["student_init"]["kept_layers"]
    cda = run_distill(DistillSpec.from_dict(recipe_spec(
        data_dir, tmp / "cda", **short, student={"from": "layers", "layers": kept}, debias={"method": "cda"})),
        progress=False)
    spec = AuditSpec.from_dict(dict(
        teacher={"name": "smollm2-135m", "path": str(teacher_dir)},
        students=[{"name": "plain-kd", "path": str(plain)}, {"name": "cda-kd", "path": str(cda)}],
        probes=[{"name": "winobias", "limit": 12}, {"name": "winogender", "limit": 12},
                {"name": "crows_pairs", "limit": 6}, {"name": "stereoset", "limit": 6}],
        tasks=["bundled_qa", "arc_easy_local"], task_limit=24, data_dir=str(data_dir), n_boot=200,
        out=str(tmp / "audit"), cache=str(tmp / "cache")))
    out, code = run_audit(spec, progress=False)
    cards = {n: json.loads((p / "distill_card.json").read_text()) for n, p in (("plain-kd", plain), ("cda-kd", cda))}
    return {"out": out, "code": code, "cards": cards, "run": json.loads((out / "run.json").read_text())}


def test_the_recipe_runs_end_to_end_with_its_learning_curve(recipe_run):
    card = recipe_run["cards"]["plain-kd"]
    assert card["student_init"]["keep"] == 14 and len(card["student_init"]["kept_layers"]) == 14
    assert card["student_n_params"] / card["teacher"]["n_params"] <= 0.60
    assert card["hyperparameters"]["corpus_field"] == "passage" and card["hyperparameters"]["dtype"] == short_dtype()
    curve = card["learning_curve"]
    assert curve["tasks"] == ["bundled_qa", "arc_easy_local"] and curve["limit"] == 24
    assert [p["step"] for p in curve["points"]] == [0, 4, 8]
    assert [p["tokens_seen"] for p in curve["points"]][0] == 0 < curve["points"][1]["tokens_seen"]
    # the curve's last point is the audit's own figure on the same documents (lm-eval's --limit 24)
    tasks = {t["task"]: t for t in recipe_run["run"]["tasks"]}
    for name in curve["tasks"]:
        assert curve["teacher"][name] == pytest.approx(tasks[name]["scores"]["teacher"]["value"], abs=1e-9)
        assert curve["points"][-1]["scores"][name] == pytest.approx(tasks[name]["scores"]["plain-kd"]["value"], abs=1e-9)
    # the corpus is BoolQ's passages: the card says it overlaps BoolQ, and nothing the recipe is judged on
    sets = {s["name"]: s for s in card["contamination"]["sets"]}
    assert sets["boolq_local"]["overlapping"] > 0.9 * sets["boolq_local"]["checked"]
    for name in ("bundled_qa", "arc_easy_local", *PROBES):
        assert sets[name]["overlapping"] == 0, sets[name]


def test_real_teacher_plain_vs_cda_audit_is_complete_and_verifies(recipe_run, data_dir):
    from audit.verify import load_run, verify

    run, cards = recipe_run["run"], recipe_run["cards"]
    assert recipe_run["code"] in (0, 1, 2)
    assert [m["name"] for m in run["models"]] == ["smollm2-135m", "plain-kd", "cda-kd"]
    assert run["models"][1]["n_params"] == run["models"][2]["n_params"]
    assert cards["cda-kd"]["student_init"]["layers"] == cards["plain-kd"]["student_init"]["kept_layers"]
    debias = cards["cda-kd"]["debias"]
    assert debias["method"] == "cda" and debias["n_pairs"] > 100 and cards["plain-kd"]["debias"] is None
    # every probe has its gender cell for both students (WinoBias and Winogender are gender probes
    # throughout, so their overall cell), each with one of the verdicts of DESIGN.md's table
    for probe, (key, group) in GENDER_CELL.items():
        for student in ("plain-kd", "cda-kd"):
            cells = [c for c in run["comparisons"] if c["probe"] == probe and c["student_name"] == student
                     and c["group_key"] == key and c["group"] == group]
            assert cells and all(c["verdict"] in VERDICTS for c in cells), (probe, student)
    stored, rows = load_run(recipe_run["out"])
    checks = verify(stored, rows, stored["items_sha256"], key=None, require_signature=False, data_dir=data_dir)
    assert [c for c in checks if c.status != "pass"] == []
    for task in run["tasks"]:
        scores = task["scores"]
        for student in ("plain-kd", "cda-kd"):
            assert task["retention"][student]["value"] == pytest.approx(
                scores[student]["value"] / scores["teacher"]["value"])
    print({(c["probe"], c["student_name"], c["metric"]): c["verdict"] for c in run["comparisons"]
           if (c["group_key"], c["group"]) == GENDER_CELL[c["probe"]]})
