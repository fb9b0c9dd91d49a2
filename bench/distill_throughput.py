"""Distillation throughput and memory, as ratios of steps timed side by side in one process.

    python bench/distill_throughput.py [--quick] [--threads 1] [--repeats 5]

Every step runs through ``DistillTrainer.training_step`` plus the optimizer step (the code path of
a real run) on the real teacher (SmolLM2-135M) and the demo student (every 5th layer), on one
fixed batch. Each variant has its own student copy and optimizer; all share the batch. The
variants differ only in the thing each ratio measures:

- ``student``: a student-only step, cross-entropy through the same fused kernel as the CE inside
  the soft-label step (``distill.losses.cross_entropy``).
- ``teacher``: the teacher forward exactly as the soft-label step runs it (``_teacher_logits``).
- ``soft``: a soft-label step with the live teacher (the demo's loss: alpha 0.5, tau 2, forward KL).
- ``cached``: the same loss from the teacher-logit cache (top-k rows), no teacher forward.
- ``soft_trl`` and ``trl``: TRL's ``GKDTrainer`` (off-policy: lmbda 0, so no generation; beta 0,
  forward KL; its loss has no CE term and no temperature) against our step with the same loss
  (alpha 1, tau 1, forward KL); both without bf16 and without gradient checkpointing.

After a warm-up (two steps of every variant), each repeat times every variant once, in an order
rotated by one each repeat, so load from other processes and cache effects hit every variant
alike. Each ratio is computed per repeat; the median is printed with the spread over repeats:

    soft_vs_floor = R (min a, max b)           (teacher + student) / soft       target >= 0.85
    cached_vs_student_only = R (min a, max b)  student / cached                 target >= 0.85
    soft_vs_trl = R (min a, max b)             trl / soft_trl                   target >= 1.3
    trl_vs_floor = R (min a, max b)            (teacher + student) / trl
    peak_rss_over_weights = R                  peak RSS after the soft warm-up / weight bytes

Without TRL installed: ``soft_vs_trl = missing (trl not installed)``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f})"


def _trainer(student, spec, teacher, vocab, out):
    from transformers import TrainingArguments

    from distill.train import DistillTrainer

    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True, learning_rate=spec.lr,
                             per_device_train_batch_size=spec.batch_size, disable_tqdm=True,
                             remove_unused_columns=False)
    tr = DistillTrainer(model=student, args=args, spec=spec, teacher=teacher, vocab=vocab)
    tr.create_optimizer()
    return tr


def _gkd_trainer(student, teacher, tokenizer, ids, batch: int, lr: float, out):
    """TRL's GKDTrainer on the same student, teacher and batch; None if TRL is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # TRL 1.x keeps GKD under experimental; 0.x exported it at the top
                from trl.experimental.gkd import GKDConfig, GKDTrainer
            except ImportError:
                from trl import GKDConfig, GKDTrainer
    except ImportError:
        return None
    from datasets import Dataset

    args = GKDConfig(output_dir=str(out), report_to=[], use_cpu=True, learning_rate=lr, per_device_train_batch_size=batch,
                     disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False, lmbda=0.0, beta=0.0,
                     seq_kd=False, max_length=ids.shape[1])
    data = Dataset.from_dict({"input_ids": ids.tolist()})  # GKD skips dataset preparation; only its size is read
    tr = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer)
    tr.create_optimizer()
    return tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter sequences (64 tokens instead of 128)")
    # 1 by default: on a shared machine two OpenMP threads wait on each other and on the neighbours,
    # which adds noise to every side alike but a lot of it
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of every variant (at least 5)")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL comparison even if TRL is installed")
    a = ap.parse_args()
    if a.repeats < 5:
        ap.error("--repeats must be at least 5")

    import torch

    from audit.models import ModelRef, load_model
    from distill.cache import topk_rows
    from distill.spec import DistillSpec, StudentInit
    from distill.students import freeze, from_layers, layer_indices

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch, seq = (4, 64) if a.quick else (4, 128)
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

    def student():
        return from_layers(t_model, keep).train()

    def step(tr, batch_inputs):
        def run():
            t0 = time.perf_counter()
            tr.training_step(tr.model, dict(batch_inputs), n_items)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0
        return run

    soft = _trainer(student(), spec, t_model, vocab, tmp)
    step(soft, inputs)(), step(soft, inputs)()  # a soft-label run alone: teacher + student + optimizer state
    rss_soft = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def teacher_forward():
        t0 = time.perf_counter()
        soft._teacher_logits(dict(inputs))  # the soft-label step's own teacher call
        return time.perf_counter() - t0

    sides = {
        "teacher": teacher_forward,
        "student": step(_trainer(student(), DistillSpec(alpha=0.0, batch_size=batch, lr=1e-4), None, vocab, tmp), inputs),
        "soft": step(soft, inputs),
        "cached": step(_trainer(student(), spec, None, vocab, tmp), cached),
    }
    gkd = None if a.no_trl else _gkd_trainer(student(), t_model, teacher.tokenizer, ids, batch, 1e-4, tmp)
    if gkd is not None:
        trl_spec = DistillSpec(alpha=1.0, temperature=1.0, divergence="forward_kl", batch_size=batch, lr=1e-4)
        ours = _trainer(student(), trl_spec, t_model, vocab, tmp)
        with torch.no_grad():  # same weights, same batch: the two losses must be one number
            same = (float(ours.compute_loss(ours.model, dict(inputs), num_items_in_batch=n_items)),
                    float(gkd.compute_loss(gkd.model, dict(inputs), num_items_in_batch=n_items)))
        sides["soft_trl"] = step(ours, inputs)
        sides["trl"] = step(gkd, inputs)
    for run in sides.values():  # warm-up: first-call allocations, optimizer state
        run(), run()
    names = list(sides)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(a.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(sides[name]())

    def per_repeat(f):
        return [f({k: v[i] for k, v in times.items()}) for i in range(a.repeats)]

    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * seq
    weights = sum(p.numel() * p.element_size() for p in t_model.parameters())
    weights += sum(p.numel() * p.element_size() for p in soft.model.parameters())
    teacher_grads = sum(p.grad is not None for p in t_model.parameters())
    teacher_state = sum(1 for p in t_model.parameters() if p in soft.optimizer.state)
    print(f"# {tokens} tokens/step, {a.threads} thread(s), {a.repeats} repeats after 2 warm-up steps each; "
          f"median s/step: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    for k, v in times.items():
        print(f"# {k}: s/step min {min(v):.3f}, max {max(v):.3f}")
    print(f"# frozen teacher: params with .grad = {teacher_grads}, params with optimizer state = {teacher_state}; "
          f"peak RSS {rss_soft / 2**20:.0f} MiB, weights (teacher + student) {weights / 2**20:.0f} MiB")
    print(f"soft_vs_floor = {_spread(per_repeat(lambda t: (t['teacher'] + t['student']) / t['soft']))}")
    print(f"cached_vs_student_only = {_spread(per_repeat(lambda t: t['student'] / t['cached']))}")
    if gkd is None:
        why = "--no-trl" if a.no_trl else "trl not installed"
        print(f"soft_vs_trl = missing ({why})")
        print(f"trl_vs_floor = missing ({why})")
    else:
        import trl

        print(f"# trl {trl.__version__}: GKDTrainer(lmbda=0, beta=0) vs DistillTrainer(alpha=1, tau=1, forward_kl); "
              f"first-step loss ours {same[0]:.6f}, trl {same[1]:.6f}")
        print(f"soft_vs_trl = {_spread(per_repeat(lambda t: t['trl'] / t['soft_trl']))}")
        print(f"trl_vs_floor = {_spread(per_repeat(lambda t: (t['teacher'] + t['student']) / t['trl']))}")
    print(f"peak_rss_over_weights = {rss_soft / weights:.3f}")


if __name__ == "__main__":
    main()
