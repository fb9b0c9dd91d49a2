"""On the real SmolLM2-135M teacher (slow): with the same small budget, a soft-label student ends
closer to the teacher on held-out text than a cross-entropy-only student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS, BATCH, SEQ = 12, 4, 48


def _texts(data_dir: Path) -> list[str]:
    rows = []
    with open(data_dir / "hellaswag" / "hellaswag_val.derived.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            rows.append(f"{r['ctx']} {r['endings'][int(r['label'])]}")
            if len(rows) == 72:
                break
    return rows


def test_soft_label_student_is_closer_to_teacher_than_ce_only(teacher, data_dir, tmp_path):
    import torch

    from distill.api import run_distill
    from distill.data import Row, tokenize
    from distill.evaluate import heldout
    from distill.spec import DistillSpec

    torch.set_num_threads(2)
    texts = _texts(data_dir)
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(texts[:56]) + "\n")
    held = tokenize([Row(text=t) for t in texts[56:]], teacher.tokenizer, seq_len=SEQ, max_positions=None)
    base = {"teacher": str(teacher.directory), "corpus": str(corpus), "max_steps": STEPS, "batch_size": BATCH,
            "seq_len": SEQ, "lr": 5e-4, "student": {"from": "layers", "every": 5}, "resume": False,
            "temperature": 2.0}
    results = {}
    for name, alpha in (("soft", 0.5), ("ce_only", 0.0)):
        out = run_distill(DistillSpec.from_dict({**base, "alpha": alpha, "output": str(tmp_path / name)}), progress=False)
        from transformers import AutoModelForCausalLM

        student = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
        results[name] = heldout(teacher.model, student, held, pad_id=teacher.tokenizer.pad_token_id)
    for name, r in results.items():
        print(f"{name}: held-out KL(teacher||student) = {r.kl_to_teacher:.4f} nats/token, "
              f"student ppl = {r.student_ppl:.2f}, teacher ppl = {r.teacher_ppl:.2f}, tokens = {r.n_tokens}")
    soft, ce = results["soft"], results["ce_only"]
    assert soft.n_tokens == ce.n_tokens > 200
    assert soft.kl_to_teacher < ce.kl_to_teacher
    assert soft.teacher_ppl == pytest.approx(ce.teacher_ppl)
    assert soft.kl_to_teacher > 0 and soft.student_ppl > 1


@pytest.mark.parametrize("method", ["hard-sequence", "hard-token", "co"])
def test_every_technique_makes_a_student_from_the_real_teacher_through_the_cli(teacher, tmp_path, method):
    """`bequeath distill --method ...` on SmolLM2-135M with a tiny budget: the student (and, for
    co-distillation, the updated teacher) are written as safetensors with a card, and they trained."""
    from safetensors.torch import load_file

    from audit.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write one sentence about a nurse.\nName a colour.\nWhat is two plus two?\nSay hello.\n")
    out = tmp_path / method
    flags = {"hard-sequence": ["--method", "hard", "--hard-level", "sequence"],
             "hard-token": ["--method", "hard", "--hard-level", "token"],
             "co": ["--method", "co", "--burn-in", "1", "--lam", "0.5"]}[method]
    code = main(["distill", "--teacher", str(teacher.directory), "--corpus", "generate", "--prompts", str(prompts),
                 "--max-new-tokens", "8", "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--seq-len", "32",
                 "--every", "10", "--lr", "1e-4", "--no-progress", *flags])
    assert code == 0
    student = out / "student" if method == "co" else out
    card = json.loads((student / "distill_card.json").read_text())
    assert card["steps"] == 2 and card["tokens_seen"] > 0
    assert all(e["loss"] == e["loss"] and e["loss"] > 0 for e in card["loss_curve"])  # finite, positive
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == 4 and all(r["provenance"]["teacher_hash"] for r in corpus)
    weights = load_file(str(student / "model.safetensors"))
    assert {k.split(".")[2] for k in weights if k.startswith("model.layers.")} == {"0", "1", "2"}  # 0, 10, 20
    import torch

    before = load_file(str(teacher.directory / "model.safetensors"))
    # the student started as a copy of teacher layer 10 (its layer 1) and moved away from it in training
    assert not torch.equal(weights["model.layers.1.mlp.down_proj.weight"], before["model.layers.10.mlp.down_proj.weight"])
    if method == "co":
        after = load_file(str(out / "teacher" / "model.safetensors"))
        assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
