"""Parity with lm-eval on the real teacher: a task written here as a plain lm-eval YAML over a local
JSONL, audited through both of our backends, gives in run.json exactly the score lm-eval's own
``simple_evaluate(model="hf", ...)`` gives on the same model (the ``lm_eval --model hf --include_path
DIR --tasks NAME`` run), for acc and acc_norm, item by item as well as on average."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NAME = "parity_mc"
DOCS = [  # question, options (2 to 4, of different lengths so acc_norm can differ from acc), answer
    ("What is the capital of France?", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("Which animal barks?", ["a cat", "a dog"], 1),
    ("What colour is the sky on a clear day?", ["green", "blue", "red"], 1),
    ("How many days are in a week?", ["five", "seven", "ten", "twelve"], 1),
    ("What do cows drink?", ["milk", "water", "orange juice"], 1),
    ("Which is the largest ocean?", ["the Atlantic Ocean", "the Pacific Ocean", "the Indian Ocean"], 1),
    ("What is frozen water called?", ["steam", "ice"], 1),
    ("Which planet do we live on?", ["Mars", "Venus", "Earth", "Jupiter"], 2),
    ("What is two plus two?", ["three", "four", "five"], 1),
    ("Which season comes after winter?", ["autumn", "summer", "spring"], 2),
    ("What do bees make?", ["honey", "silk", "wool"], 0),
    ("Which gas do plants take in from the air?", ["oxygen", "carbon dioxide", "helium"], 1),
    ("What is the opposite of hot?", ["cold", "warm"], 0),
    ("Where does the sun rise?", ["in the west", "in the east", "in the north"], 1),
    ("Which instrument has black and white keys?", ["a drum", "a violin", "a piano", "a flute"], 2),
    ("What shape has three sides?", ["a square", "a circle", "a triangle"], 2),
    ("Which is a fruit?", ["a carrot", "an apple", "a potato"], 1),
    ("How many legs does a spider have?", ["six", "eight", "ten"], 1),
    ("What do we use to write on a blackboard?", ["chalk", "a spoon"], 0),
    ("Which metal is liquid at room temperature?", ["iron", "mercury", "copper", "gold"], 1),
]
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parity_task")
    data = folder / f"{NAME}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    (folder / f"{NAME}.yaml").write_text(YAML.format(name=NAME, data=data.resolve()))
    return folder


@pytest.fixture(scope="module")
def lm_eval_reference(task_dir, teacher_dir) -> dict:
    """lm-eval on its own: it loads the model itself (model="hf"), CLI defaults otherwise (batch size 1)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="hf", model_args=f"pretrained={teacher_dir},dtype=float32", tasks=[NAME],
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                          device="cpu", log_samples=True, bootstrap_iters=0)
    per_doc = {str(s["doc_id"]): {"acc": s["acc"], "acc_norm": s["acc_norm"]} for s in out["samples"][NAME]}
    return {"acc": out["results"][NAME]["acc,none"], "acc_norm": out["results"][NAME]["acc_norm,none"],
            "per_doc": per_doc}


@pytest.mark.parametrize("backend", ["engine", "hflm"])
def test_run_json_equals_lm_eval_exactly_on_both_backends(task_dir, teacher_dir, lm_eval_reference, backend, tmp_path):
    from audit.harness import run_audit
    from audit.spec import AuditSpec

    ref = lm_eval_reference
    assert len(ref["per_doc"]) == len(DOCS)
    assert 0 < ref["acc"] < 1 and 0 < ref["acc_norm"] < 1  # a figure that can be wrong both ways
    for metric in ("acc", "acc_norm"):
        spec = AuditSpec.from_dict({
            "teacher": {"name": "teacher", "path": str(teacher_dir)}, "probes": [], "backend": backend,
            "tasks": [{"name": NAME, "metric": metric}], "task_paths": [str(task_dir)],
            "out": str(tmp_path / metric), "cache": str(tmp_path / "cache")})
        out, code = run_audit(spec, progress=False)
        assert code == 0
        (doc,) = json.loads((out / "run.json").read_text())["tasks"]
        assert doc["metric"] == metric and doc["n"] == len(DOCS)
        print(f"{backend} {metric}: run.json {doc['scores']['teacher']['value']!r}, lm-eval {ref[metric]!r}")
        assert doc["scores"]["teacher"]["value"] == ref[metric]  # the same float, not approximately
        rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
        mine = {r["item"]: r["columns"][metric] for r in rows if r.get("task") == NAME}
        assert mine == {d: float(v[metric]) for d, v in ref["per_doc"].items()}  # and item by item
