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
