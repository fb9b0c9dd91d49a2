"""Known answers of the verdicts on the real teacher (issue: verdicts a reviewer can act on).

- The teacher against a bfloat16 copy of itself, on the demo-size probe set, with
  ``--until-decided``: the default gate passes, no cell is amplified, introduced or reversed,
  and the overall cells are decided.
- A student that answers option 0 on every BBQ item is "not measurable", never "attenuated".
"""

from __future__ import annotations

import json

import pytest

from audit.cli import main
from audit.verdicts import DECIDED

pytestmark = pytest.mark.slow


def test_teacher_against_its_bfloat16_copy_passes_the_default_gate(tmp_path, teacher_dir, data_dir, capsys):
    import yaml

    spec = {"teacher": {"name": "teacher", "path": str(teacher_dir)},
            "students": [{"name": "bf16-copy", "path": str(teacher_dir), "dtype": "bfloat16"}],
            # Winogender is left out: its gap metrics need more items than the dataset holds to show a
            # bfloat16 copy unchanged within 3 points (the audit says so: about 1,100 items, of 720)
            "probes": ["bundled", "crows_pairs", "stereoset"], "tasks": ["bundled_qa"],
            "data_dir": str(data_dir), "out": str(tmp_path / "run"), "cache": str(tmp_path / "cache"),
            "until_decided": True, "max_items": 120}
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["audit", str(path)]) == 0
    capsys.readouterr()
    code = main(["gate", str(tmp_path / "run")])  # no --policy: the documented default policy
    table = capsys.readouterr().out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    verdicts = [c["verdict"] for c in run["comparisons"]]
    overall = [c for c in run["comparisons"] if c["group_key"] == "all"]
    decided = sum(c["verdict"] in DECIDED for c in overall) / len(overall)
    all_decided = sum(v in DECIDED for v in verdicts) / len(verdicts)
    print(f"\nbf16 copy: {len(run['settings']['adaptive'])} look(s); decided overall cells {decided:.2f}, "
          f"all cells {all_decided:.2f}; verdicts " + json.dumps({v: verdicts.count(v) for v in set(verdicts)}))
    for c in run["comparisons"]:
        if c["group_key"] == "all" or c["verdict"] not in ("inconclusive", "unchanged", "inherited"):
            print(f"  {c['probe']}/{c['metric']} {c['group_key']}={c['group']}: {c['verdict']} "
                  f"(kappa {(c['evidence'] or {}).get('kappa')}): {c['reason'][:160]}")
    assert not {"amplified", "introduced", "reversed"} & set(verdicts)
    assert code == 0, table
    assert decided == 1.0
    assert {c["probe"] for c in overall} == {"bundled", "crows_pairs", "stereoset"}


def test_a_constant_answer_student_is_not_measurable_on_bbq(teacher, data_dir):
    """The real teacher's BBQ answers against a student that picks option 0 every time, scored by BBQ's rule."""
    from audit.compare import Ability, ItemInfo, Settings, compare_probe, finalize
    from audit.lm import make_lm, score_probe_items
    from probes.base import Answer, stratified_sample
    from probes.registry import get_probe

    probe = get_probe("bbq")
    items = stratified_sample(probe.load(data_dir).items, by=probe.group_keys[:1], limit=12, seed=0)
    rows = score_probe_items(make_lm(teacher, backend="engine"), probe, items, tokenizer=teacher.tokenizer)
    t = {r.item_id: r.columns for r in rows if r.columns is not None}
    constant = [Answer(loglik=0.0, is_greedy=True), Answer(loglik=-9.0, is_greedy=False),
                Answer(loglik=-9.0, is_greedy=False)]
    s = {it.id: probe.score_item(it, constant) for it in items}
    assert {v["choice"] for v in s.values()} == {0.0}
    card = probe.card
    ability = Ability(metric=next(m for m in probe.metrics if m.name == card.ability), floor=card.floor,
                      choice=card.choice)
    infos = [ItemInfo(id=it.id, groups=dict(it.groups), cluster=it.cluster) for it in items]
    fin = finalize(compare_probe(probe="bbq", metrics=probe.metrics, group_keys=probe.group_keys, items=infos,
                                 teacher=t, students={"constant": s}, settings=Settings(), ability=ability),
                   Settings())
    assert fin and {c["verdict"] for c in fin} == {"not measurable"}
    assert "student: one option answers 100% of items (degenerate answers)" in fin[0]["reason"]
    assert "teacher" not in fin[0]["not_measurable"]  # the real teacher can do the task
