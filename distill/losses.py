"""Distillation losses: pure functions of logits and labels (no models, no I/O).

Definitions follow ``DESIGN.md``: p^τ = softmax(z/τ) in fp32; valid tokens are those whose
label is not -100; every loss is summed over the vocabulary and over valid tokens, then
divided by ``num_valid`` (the *global* count of valid tokens across gradient-accumulation
micro-batches and processes, passed in by the trainer), so accumulation never changes it.

Inputs are already aligned: ``logits[i]`` predicts ``labels[i]`` (use :func:`shift`).
The teacher is given either as dense logits (live teacher) or as :class:`TopK` (the
teacher-logit cache); the same functions take both.

We write these ourselves rather than use ``torch.nn.KLDivLoss`` because we need JSD(β),
skew KL, the top-k+tail form and global-token normalisation in one place; the parity tests
compare each against ``torch.nn.functional`` computations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl")


@dataclass(frozen=True, kw_only=True)
class TopK:
    """The teacher's top-k log-probs per position, plus the tail bucket ``log(1 - Σ p)``.

    ``indices``/``logprobs``: [N, k]; ``tail``: [N]; ``temperature``: the τ they were computed at.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    temperature: float = 1.0

    def select(self, mask: torch.Tensor) -> TopK:
        return TopK(indices=self.indices[mask], logprobs=self.logprobs[mask], tail=self.tail[mask],
                    temperature=self.temperature)


@dataclass(frozen=True, kw_only=True)
class LossParts:
    """The total loss and its parts (each already divided by ``num_valid``)."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align causal-LM logits [B, L, V] with the next-token labels: ([B*(L-1), V], [B*(L-1)])."""
    v = logits.shape[-1]
    return logits[:, :-1, :].reshape(-1, v), labels[:, 1:].reshape(-1)


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """fp32 log-softmax of ``logits / τ``."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per row, summed over the last dim; 0·log 0 = 0 (NaN inputs stay NaN)."""
    p = logp.exp()
    return torch.where(p == 0, torch.zeros_like(p), p * (logp - logq)).sum(-1)


def _mix(logp: torch.Tensor, logq: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·p + (1-w)·q), computed stably in log space."""
    return torch.logaddexp(logp + math.log(w), logq + math.log(1.0 - w))


def divergence(t_logp: torch.Tensor, s_logp: torch.Tensor, *, kind: str = "forward_kl",
               beta: float = 0.5, skew_lambda: float = 0.1) -> torch.Tensor:
    """Per-row divergence between teacher and student log-probs (summed over the vocabulary).

    forward_kl: KL(p_T‖p_S). reverse_kl: KL(p_S‖p_T).
    jsd: β·KL(p_T‖m) + (1-β)·KL(p_S‖m), m = β·p_T + (1-β)·p_S; at the endpoints, where that
    expression vanishes, β=0 is defined as forward KL and β=1 as reverse KL (the limits of
    JSD(β)/β and JSD(β)/(1-β); the same convention as TRL's GKD).
    skew_kl: KL(p_T ‖ λ·p_T + (1-λ)·p_S).
    """
    if kind == "forward_kl":
        return _kl(t_logp, s_logp)
    if kind == "reverse_kl":
        return _kl(s_logp, t_logp)
    if kind == "jsd":
        if beta <= 0.0:
            return _kl(t_logp, s_logp)
        if beta >= 1.0:
            return _kl(s_logp, t_logp)
        m = _mix(t_logp, s_logp, beta)
        return beta * _kl(t_logp, m) + (1.0 - beta) * _kl(s_logp, m)
    if kind == "skew_kl":
        if skew_lambda >= 1.0:
            return torch.zeros(t_logp.shape[:-1], dtype=t_logp.dtype, device=t_logp.device)
        if skew_lambda <= 0.0:
            return _kl(t_logp, s_logp)
        return _kl(t_logp, _mix(t_logp, s_logp, skew_lambda))
    raise ValueError(f"Unknown divergence '{kind}'; expected one of {', '.join(DIVERGENCES)}.")


class _ForwardKL(torch.autograd.Function):
    """Per-row KL(p_T ‖ softmax(z/τ)) with its gradient written by hand, (p_S − p_T)/τ.

    Why our own: on CPU this loss is memory-bound over [N, V] rows; autograd's chain of
    temporaries (divide, log-softmax, subtract, multiply, where, and their backwards) made a
    soft-label step much slower than teacher forward + student step. One log-softmax forward and
    one exp backward do the same. Parity with the autograd form is tested.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, t_logp: torch.Tensor, temperature: float) -> torch.Tensor:
        s_logp = torch.log_softmax(z.float() / temperature, dim=-1)
        p_t = t_logp.exp()
        kl = (torch.xlogy(p_t, p_t) - p_t * s_logp).sum(-1)  # 0·log 0 = 0; NaN stays NaN
        ctx.save_for_backward(s_logp, p_t)
        ctx.temperature, ctx.in_dtype = temperature, z.dtype
        return kl

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s_logp, p_t = ctx.saved_tensors
        g = s_logp.exp().sub_(p_t).mul_(grad.unsqueeze(-1) / ctx.temperature)
        return g.to(ctx.in_dtype), None, None


def forward_kl_from_logits(z: torch.Tensor, t_logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T ‖ softmax(z/τ)) per row, fused (see ``_ForwardKL``); ``t_logp`` is not differentiated."""
    return _ForwardKL.apply(z, t_logp.detach(), temperature)


def retemper(top: TopK, temperature: float) -> torch.Tensor:
    """Bucketed teacher log-probs [N, k+1] (top-k then tail) at ``temperature``.

    ``log p_τ2 = (τ1/τ2)·log p_τ1 − logsumexp(·)``. Exact for the top-k entries' ratios; the
    tail bucket is re-tempered as if it were one token (its inner distribution is not stored),
    an approximation that vanishes when τ2 = τ1.
    """
    buckets = torch.cat([top.logprobs.float(), top.tail.float().unsqueeze(-1)], dim=-1)
    if temperature == top.temperature:
        return buckets
    scaled = buckets * (top.temperature / temperature)
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def bucket_student(s_logp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Student log-probs gathered at the teacher's top-k, plus its own tail bucket: [N, k+1]."""
    top = s_logp.gather(-1, indices)
    rest = s_logp.scatter(-1, indices, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


def teacher_argmax(teacher: torch.Tensor | TopK) -> torch.Tensor:
    """The teacher's most likely token per position (hard labels for token-level distillation)."""
    if isinstance(teacher, TopK):
        return teacher.indices[:, 0]
    return teacher.argmax(-1)


def _denominator(num_valid: float | int | torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    if num_valid is None:
        num_valid = mask.sum()
    return torch.as_tensor(num_valid, dtype=torch.float32, device=mask.device).clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *,
                  num_valid: float | int | torch.Tensor | None = None) -> torch.Tensor:
    """Summed token cross-entropy over valid tokens / ``num_valid`` (fp32 log-softmax)."""
    mask = labels != IGNORE
    ce = F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
    return ce / _denominator(num_valid, mask)


def soft_label_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | TopK, *,
                    alpha: float = 0.5, temperature: float = 1.0, kind: str = "forward_kl",
                    beta: float = 0.5, skew_lambda: float = 0.1, tau_squared: bool = True,
                    vocab: int | None = None,
                    num_valid: float | int | torch.Tensor | None = None) -> LossParts:
    """``(1-α)·CE(y, p_S) + α·[τ²]·D(p_T^τ, p_S^τ)`` over valid tokens / ``num_valid``.

    ``student``: [N, V] aligned logits; ``teacher``: [N, V'] logits or :class:`TopK` rows for
    the same N positions. ``vocab`` trims both logit tensors to the shared vocabulary (a
    padded embedding has extra rows that are no token).
    """
    if vocab is not None:
        student = student[..., :vocab]
        if not isinstance(teacher, TopK):
            teacher = teacher[..., :vocab]
    mask = labels != IGNORE
    denom = _denominator(num_valid, mask)
    s = student[mask]
    zero = s.sum() * 0.0  # keeps the graph when a micro-batch has no valid token
    ce = F.cross_entropy(s.float(), labels[mask], reduction="sum") / denom if alpha < 1.0 else zero
    if alpha > 0.0:
        if isinstance(teacher, TopK):
            sel = teacher.select(mask)
            s_logp = log_probs(s, temperature)
            rows = divergence(retemper(sel, temperature), bucket_student(s_logp, sel.indices), kind=kind,
                              beta=beta, skew_lambda=skew_lambda)
        elif kind == "forward_kl":
            rows = forward_kl_from_logits(s, log_probs(teacher[mask], temperature), temperature)
        else:
            rows = divergence(log_probs(teacher[mask], temperature).detach(), log_probs(s, temperature), kind=kind,
                              beta=beta, skew_lambda=skew_lambda)
        kd = rows.sum() / denom
        if tau_squared:
            kd = kd * temperature**2
    else:
        kd = zero
    return LossParts(total=(1.0 - alpha) * ce + alpha * kd, ce=ce, kd=kd)


def hard_label_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | TopK, *,
                    vocab: int | None = None,
                    num_valid: float | int | torch.Tensor | None = None) -> LossParts:
    """Token-level hard-label distillation: CE against the teacher's argmax at valid positions."""
    if vocab is not None:
        student = student[..., :vocab]
        if not isinstance(teacher, TopK):
            teacher = teacher[..., :vocab]
    target = torch.where(labels != IGNORE, teacher_argmax(teacher), torch.full_like(labels, IGNORE))
    ce = cross_entropy(student, target, num_valid=num_valid)
    return LossParts(total=ce, ce=ce, kd=ce.detach() * 0.0)


def codistill_loss(logits: torch.Tensor, labels: torch.Tensor, peers: list[torch.Tensor], *,
                   lam: float, temperature: float = 1.0, tau_squared: bool = True,
                   vocab: int | None = None,
                   num_valid: float | int | torch.Tensor | None = None) -> LossParts:
    """Peer k's loss ``CE_k + λ·[τ²]·mean_{l≠k} KL(sg(p_l^τ) ‖ p_k^τ)``.

    Peer logits are detached here (stop-gradient): no gradient ever reaches a peer through
    the target it provides.
    """
    if vocab is not None:
        logits = logits[..., :vocab]
        peers = [p[..., :vocab] for p in peers]
    mask = labels != IGNORE
    denom = _denominator(num_valid, mask)
    s = logits[mask]
    ce = F.cross_entropy(s.float(), labels[mask], reduction="sum") / denom
    if not peers:
        return LossParts(total=ce, ce=ce, kd=s.sum() * 0.0)  # KD is still computed at λ=0, for the log
    s_logp = log_probs(s, temperature)
    kls = [_kl(log_probs(p[mask].detach(), temperature), s_logp).sum() for p in peers]
    kd = torch.stack(kls).mean() / denom
    if tau_squared:
        kd = kd * temperature**2
    return LossParts(total=ce + lam * kd, ce=ce, kd=kd)


def burn_in_weight(step: int, *, lam: float, burn_in: int) -> float:
    """λ(t): a linear ramp from 0 at step 0 to ``lam`` at ``burn_in`` steps, constant after."""
    if burn_in <= 0:
        return lam
    return lam * min(1.0, step / burn_in)
