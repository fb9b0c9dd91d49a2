"""The training loop on the transformers ``Trainer`` (so ``torchrun`` / ``accelerate launch``
run it under DDP, FSDP or DeepSpeed unchanged).

- ``DistillTrainer``: one student against a frozen teacher (live logits or the top-k cache):
  soft-label, token-level hard-label, or plain cross-entropy (sequence-level hard-label and
  the CE-only baseline).
- ``CoDistillTrainer``: teacher, student and optional peers as one module, each with
  ``CE + λ(t)·τ²·mean KL(sg(peer) ‖ self)``.

Losses are normalised by the global count of valid tokens that the Trainer passes as
``num_items_in_batch`` (summed over accumulation steps and gathered over processes).
"""

from __future__ import annotations

import copy
import os
import signal
import time
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from audit.errors import BequeathError
from distill import debias as D
from distill import losses as L
from distill.spec import DistillSpec


class NonFiniteLossError(BequeathError):
    """The loss became NaN or infinite; a checkpoint of the last good weights was saved."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.step, self.value = step, value


_TOPK_KEYS = ("topk_indices", "topk_logprobs", "topk_tail")


def _aligned_topk(inputs: dict[str, Any], temperature: float) -> L.TopK:
    """Cached teacher rows aligned with the shifted student logits (every position, as ``L.shift``)."""
    ind, lp, tail = (inputs.pop(k) for k in _TOPK_KEYS)
    k = ind.shape[-1]
    return L.TopK(indices=ind.reshape(-1, k), logprobs=lp.reshape(-1, k), tail=tail.reshape(-1),
                  temperature=temperature)


class _LossMixin:
    """Shared bookkeeping: global-token denominator, DDP scale, finiteness, loss parts for logs."""

    loss_is_scaled_for_ga = True  # we divide by the global token count ourselves

    def _denominator(self, labels: torch.Tensor, num_items_in_batch: Any) -> Any:
        if num_items_in_batch is not None:
            return num_items_in_batch
        return (labels[:, 1:] != L.IGNORE).sum()  # evaluation: this batch alone

    def _finish(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(self.state.global_step + 1, float(loss.detach()))
        self._parts = {k: float(v.detach()) for k, v in parts.items()}
        # DDP averages gradients over processes; the denominator is already global, so undo it
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and getattr(self, "_parts", None):
            logs.update({f"loss_{k}": round(v, 6) for k, v in self._parts.items()})
        super().log(logs, *args, **kwargs)


class DistillTrainer(_LossMixin, Trainer):
    """A student trained against a frozen teacher (``teacher=None``: cached logits or plain CE)."""

    def __init__(self, *args: Any, spec: DistillSpec, teacher: nn.Module | None, vocab: int | None,
                 groups: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec, self.teacher, self.vocab, self.groups = spec, teacher, vocab, groups

    def _mode(self) -> str:
        s = self.spec
        if s.method == "hard" and s.hard_level == "sequence":
            return "ce"
        if s.method == "soft" and s.alpha == 0.0:
            return "ce"
        return s.method

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        s = self.spec
        labels = inputs.pop("labels")
        pairs = _pairs(inputs)
        cached = _aligned_topk(inputs, s.temperature) if _TOPK_KEYS[0] in inputs else None
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        logits, y = L.shift(out.logits, labels)
        n = self._denominator(labels, num_items_in_batch)
        mode = self._mode()
        if mode == "ce":
            ce = L.cross_entropy(logits[..., : self.vocab] if self.vocab else logits, y, num_valid=n)
            parts = L.LossParts(total=ce, ce=ce, kd=ce.detach() * 0)
        else:
            target = cached if cached is not None else self._teacher_logits(inputs, pairs)
            if mode == "soft":
                parts = L.soft_label_loss(logits, y, target, alpha=s.alpha, temperature=s.temperature,
                                          kind=s.divergence, beta=s.beta, skew_lambda=s.skew_lambda,
                                          tau_squared=s.tau_squared, vocab=self.vocab, num_valid=n)
            else:
                parts = L.hard_label_loss(logits, y, target, vocab=self.vocab, num_valid=n)
        logged = {"ce": parts.ce, "kd": parts.kd}
        total = parts.total
        if pairs is not None and s.debias is not None and s.debias.method == "invariance":
            z = out.logits[..., : self.vocab] if self.vocab else out.logits
            inv = D.invariance_loss(z, labels, *pairs, num_valid=n)
            total, logged["invariance"] = total + s.debias.weight * inv, inv
        loss = self._finish(total, logged)
        return (loss, out) if return_outputs else loss

    def _teacher_logits(self, inputs: dict[str, Any], pairs: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> torch.Tensor:
        if self.teacher is None:
            raise BequeathError("This run needs teacher logits but has neither a teacher nor a cache.")
        s = self.spec
        with torch.no_grad():  # not inference_mode: its tensors could not be saved by the loss's backward
            t = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
            if pairs is not None and s.debias is not None and s.debias.method == "crr":
                if self.vocab:
                    t = t[..., : self.vocab]
                t = D.crr_teacher_logits(t, *pairs, self.groups, temperature=s.temperature, variant=s.debias.crr)
            return t.reshape(-1, t.shape[-1])  # aligned with ``L.shift`` (a view, no copy)


def _pairs(inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The counterfactual pairing of a bias-aware batch (see ``distill.data.Collator``), or None."""
    if "cf_partner" not in inputs:
        return None
    return inputs.pop("cf_partner"), inputs.pop("cf_aligned")


class PeerGroup(nn.Module):
    """Teacher (index 0), student (index 1) and extra peers, trained together."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(models)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [m(input_ids=input_ids, attention_mask=attention_mask).logits for m in self.peers]


_SNAPSHOT_FILE = "peer_snapshot.safetensors"


class CoDistillTrainer(_LossMixin, Trainer):
    """Co-distillation: every peer learns from the data and from the others' stop-gradient outputs."""

    def __init__(self, *args: Any, spec: DistillSpec, vocab: int | None, groups: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec, self.vocab, self.groups = spec, vocab, groups
        self._snapshot: PeerGroup | None = None
        self._snapshot_step = -1

    def _targets(self, model: nn.Module, inputs: dict[str, Any], live: list[torch.Tensor]) -> list[torch.Tensor]:
        every = self.spec.snapshot_every
        if not every:
            return [t.detach() for t in live]
        step = self.state.global_step
        if self._snapshot is None or step - self._snapshot_step >= every:
            self._snapshot = copy.deepcopy(self.accelerator.unwrap_model(model)).eval().requires_grad_(False)
            self._snapshot_step = step - step % every
        with torch.inference_mode():
            return [t.clone() for t in self._snapshot(inputs["input_ids"], inputs.get("attention_mask"))]

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        s = self.spec
        labels = inputs.pop("labels")
        pairs = _pairs(inputs)
        live = model(inputs["input_ids"], inputs.get("attention_mask"))
        targets = self._targets(model, inputs, live)
        method = s.debias.method if (pairs is not None and s.debias is not None) else None
        if method == "crr":  # every peer's target is its role-reversed distribution
            with torch.no_grad():
                targets = [D.crr_teacher_logits(t[..., : self.vocab] if self.vocab else t, *pairs, self.groups,
                                                temperature=s.temperature, variant=s.debias.crr) for t in targets]
        n = self._denominator(labels, num_items_in_batch)
        total, parts = 0.0, {}
        for k, logits in enumerate(live):
            lam = L.burn_in_weight(self.state.global_step, lam=s.teacher_lambda if k == 0 else s.lam, burn_in=s.burn_in)
            z, y = L.shift(logits, labels)
            others = [L.shift(t, labels)[0] for j, t in enumerate(targets) if j != k]
            p = L.codistill_loss(z, y, others, lam=lam, temperature=s.temperature, tau_squared=s.tau_squared,
                                 vocab=self.vocab, num_valid=n)
            total = total + p.total
            name = "teacher" if k == 0 else ("student" if k == 1 else f"peer{k - 1}")
            parts[f"{name}_ce"], parts[f"{name}_kd"] = p.ce, p.kd
            if method == "invariance" and k > 0:  # the students (not the teacher) learn invariance
                inv = D.invariance_loss(logits[..., : self.vocab] if self.vocab else logits, labels, *pairs, num_valid=n)
                total, parts[f"{name}_invariance"] = total + s.debias.weight * inv, inv
        loss = self._finish(total, parts)
        return (loss, live) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW with the teacher at its own learning rate (``teacher_lr``, default lr/10)."""
        if self.optimizer is None:
            group = self.accelerator.unwrap_model(self.model)
            t_lr = self.spec.teacher_lr if self.spec.teacher_lr is not None else self.args.learning_rate / 10
            params = [{"params": [p for p in group.peers[0].parameters() if p.requires_grad], "lr": t_lr}]
            params.append({"params": [p for m in group.peers[1:] for p in m.parameters() if p.requires_grad],
                           "lr": self.args.learning_rate})
            self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay,
                                               betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        return self.optimizer

    # The group is not a PreTrainedModel and its peers tie embeddings to heads: save and load
    # with safetensors' save_model/load_model, which handle shared tensors. A checkpoint also
    # keeps the peers' snapshot (and the step it was taken at), so a resumed run reads the same
    # targets as an uninterrupted one even when checkpoints and refreshes do not line up.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_model
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_model(self.accelerator.unwrap_model(self.model), os.path.join(output_dir, "model.safetensors"))
        if self._snapshot is not None and os.path.basename(output_dir).startswith(PREFIX_CHECKPOINT_DIR):
            save_model(self._snapshot, os.path.join(output_dir, _SNAPSHOT_FILE),
                       metadata={"step": str(self._snapshot_step)})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_model

        model = model or self.model
        load_model(model, os.path.join(resume_from_checkpoint, "model.safetensors"))
        snap = os.path.join(resume_from_checkpoint, _SNAPSHOT_FILE)
        if os.path.isfile(snap):
            self._snapshot = copy.deepcopy(self.accelerator.unwrap_model(model)).eval().requires_grad_(False)
            load_model(self._snapshot, snap)
            with safe_open(snap, "pt") as f:
                self._snapshot_step = int(f.metadata()["step"])


class Progress(TrainerCallback):
    """A tqdm bar with loss and tokens/s (the loss curve itself is the Trainer's log_history)."""

    def __init__(self, *, enabled: bool, kill_at_step: int | None = None) -> None:
        self.enabled, self.kill_at_step = enabled, kill_at_step
        self.bar = None
        self.t0 = 0.0
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="distill", unit="step",
                        disable=not (self.enabled and state.is_world_process_zero))

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)
        if self.kill_at_step is not None and state.global_step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            tok_s = (state.num_input_tokens_seen - self.tokens0) / dt
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{tok_s:.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class LearningCurve(TrainerCallback):
    """Task scores of the student against tokens seen: before the first step, every ``every`` steps
    (0: only the ends) and after the last. Each point is appended to the Trainer's ``log_history``
    (``task_scores``), which checkpoints keep, so a resumed run's curve is whole. ``score()`` scores the
    student as it is; ``teacher`` holds the teacher's scores on the same documents. Rank 0 scores."""

    def __init__(self, score: Any, *, every: int, teacher: dict[str, float | None] | None) -> None:
        self.score, self.every, self.teacher = score, every, teacher

    def _point(self, state: Any) -> None:
        if not state.is_world_process_zero or any(
                e.get("step") == state.global_step and "task_scores" in e for e in state.log_history):
            return
        state.log_history.append({"step": state.global_step, "tokens_seen": int(state.num_input_tokens_seen),
                                  "task_scores": self.score()})

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._point(state)

    def on_step_end(self, args, state, control, **kwargs):
        if (self.every and state.global_step % self.every == 0) or state.global_step >= state.max_steps:
            self._point(state)

