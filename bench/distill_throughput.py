"""Distillation throughput and memory, as ratios measured in one process.

    python bench/distill_throughput.py [--quick]

Prints:
- ``soft_vs_floor = R``: soft-label step throughput ÷ the floor, where the floor's time is one
  teacher forward plus one student forward/backward/optimizer step, each timed separately here.
- ``cached_vs_student_only = R``: a step trained from the teacher-logit cache (top-k) ÷ a
  student-only cross-entropy step.
- ``peak_rss_over_weights = R``: peak RSS after the soft-label steps ÷ the bytes of both models'
  weights (a frozen teacher has no gradients and no optimizer state; printed too).

Steps run through ``DistillTrainer.training_step`` (the code path of a real run) on the real
teacher (SmolLM2-135M) and the demo student (every 5th layer). Timings are interleaved,
round-robin, and the median is kept, so load from other processes hits every variant alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _trainer(student, spec, teacher, vocab, out):
    from transformers import TrainingArguments

    from distill.train import DistillTrainer

    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True, learning_rate=spec.lr,
                             per_device_train_batch_size=spec.batch_size, disable_tqdm=True,
                             remove_unused_columns=False)
    tr = DistillTrainer(model=student, args=args, spec=spec, teacher=teacher, vocab=vocab)
    tr.create_optimizer()
    return tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter steps (~2 minutes)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import tempfile

    import torch

    from audit.models import ModelRef, load_model
    from distill.cache import topk_rows
    from distill.spec import DistillSpec, StudentInit
    from distill.students import freeze, from_layers, layer_indices

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch, seq, reps = (4, 64, 5) if a.quick else (4, 128, 10)
    teacher = load_model(ModelRef(name="teacher", path="smollm2-135m"))
    t_model = freeze(teacher.model)
    vocab = len(teacher.tokenizer)
    ids = torch.randint(0, vocab, (batch, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    n_items = int((ids[:, 1:] >= 0).sum())
    spec = DistillSpec(alpha=0.5, temperature=2.0, batch_size=batch, lr=1e-4)
    with torch.inference_mode():
        t_logits = t_model(input_ids=ids).logits
    idx, lp, tail = topk_rows(t_logits.reshape(-1, t_logits.shape[-1]), spec.top_k, 1.0)
    cached = {**inputs, "topk_indices": idx.long().reshape(batch, seq, -1), "topk_logprobs": lp.reshape(batch, seq, -1),
              "topk_tail": tail.reshape(batch, seq)}
    keep = layer_indices(StudentInit(source="layers", every=5), t_model.config.num_hidden_layers)
    tmp = tempfile.mkdtemp(prefix="bequeath-bench-")
    soft = _trainer(from_layers(t_model, keep).train(), spec, t_model, vocab, tmp)

    def step(tr, batch_inputs):
        t0 = time.perf_counter()
        tr.training_step(tr.model, dict(batch_inputs), n_items)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def teacher_forward():
        t0 = time.perf_counter()
        with torch.inference_mode():
            t_model(input_ids=ids, attention_mask=inputs["attention_mask"])
        return time.perf_counter() - t0

    times = {"soft": [], "teacher": [], "student": [], "cached": []}
    step(soft, inputs), step(soft, inputs)  # a soft-label run alone: teacher + student + optimizer state
    rss_soft = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ce = _trainer(from_layers(t_model, keep).train(), DistillSpec(alpha=0.0, batch_size=batch, lr=1e-4), None, vocab, tmp)
    cache_tr = _trainer(from_layers(t_model, keep).train(), spec, None, vocab, tmp)
    step(ce, inputs), step(cache_tr, cached), teacher_forward()  # warm-up
    for _ in range(reps):  # round-robin, so load from other processes hits every variant alike
        times["teacher"].append(teacher_forward())
        times["student"].append(step(ce, inputs))
        times["cached"].append(step(cache_tr, cached))
        times["soft"].append(step(soft, inputs))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * seq
    weights = sum(p.numel() * p.element_size() for p in t_model.parameters())
    weights += sum(p.numel() * p.element_size() for p in soft.model.parameters())
    teacher_grads = sum(p.grad is not None for p in t_model.parameters())
    teacher_state = sum(1 for p in t_model.parameters() if p in soft.optimizer.state)
    print(f"# tokens/step {tokens}; median s/step: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"# tokens/s: soft {tokens / med['soft']:.0f}, floor {tokens / (med['teacher'] + med['student']):.0f}, "
          f"cached {tokens / med['cached']:.0f}, student-only {tokens / med['student']:.0f}")
    print(f"# frozen teacher: params with .grad = {teacher_grads}, params with optimizer state = {teacher_state}; "
          f"peak RSS {rss_soft / 2**20:.0f} MiB, weights (teacher + student) {weights / 2**20:.0f} MiB")
    print(f"soft_vs_floor = {(med['teacher'] + med['student']) / med['soft']:.3f}")
    print(f"cached_vs_student_only = {med['student'] / med['cached']:.3f}")
    print(f"peak_rss_over_weights = {rss_soft / weights:.3f}")


if __name__ == "__main__":
    main()
