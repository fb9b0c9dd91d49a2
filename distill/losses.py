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
    """Align causal-LM logits [B, L, V] with the next-token labels: ([B*L, V], [B*L]).

    The labels move left by one and each sequence's last position gets IGNORE (it predicts
    nothing), so the logits stay a view: no [B, L-1, V] copy forward, no zero-filled slice
    gradient backward.
    """
    v = logits.shape[-1]
    y = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)
    return logits.reshape(-1, v), y.reshape(-1)


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


# rows per block of the fused kernel: about 2**18 logits (1 MiB in fp32), so that a block's
# temporaries stay in cache and come back from the allocator's free list instead of fresh pages
_BLOCK_ELEMENTS = 1 << 18


def _blocks(n: int, v: int):
    rows = max(1, _BLOCK_ELEMENTS // max(1, v))
    return ((i, min(i + rows, n)) for i in range(0, n, rows))


def _kl_rows(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Σ_v p·(log p − log q) per row with 0·log 0 = 0: the plain product, redone with the mask only on
    the rare rows where an impossible token (p = 0, log p = −inf) made it NaN; a NaN input stays NaN."""
    rows = (p * (logp - logq)).sum(-1)
    bad = ~torch.isfinite(rows)
    if bool(bad.any()):
        pb, d = p[bad], logp[bad] - logq[bad]
        rows[bad] = torch.where(pb == 0, torch.zeros_like(d), pb * d).sum(-1)
    return rows


class _FusedSoftLabel(torch.autograd.Function):
    """Per-row cross-entropy on the labels and forward KL(p_T^τ ‖ p_S^τ), with the gradient
    written by hand: ∂CE/∂z = p_S − onehot(y), ∂KL/∂z = (p_S^τ − p_T)/τ (dense teacher), and for
    the top-k cache with its tail bucket ∂KL/∂z_j = (m·p_S,j − p_T,j)/τ on the teacher's top-k and
    p_S,j·(m − p_T,tail/q_S,tail)/τ elsewhere (m = the teacher's bucket mass, 1 up to rounding).

    ``teacher`` is the dense teacher's logits [N, V] (top_idx None), or the top-k cache's bucketed
    log-probs at τ [N, k+1] with their indices ``top_idx`` [N, k], or None: the cross-entropy alone,
    by the same code, so the student-only step (:func:`cross_entropy`) and the soft-label step share
    one CE kernel and a comparison of the two measures the teacher term only.

    Why our own: on CPU this loss is memory-bound over [N, V] rows, and autograd's chain of
    full-size temporaries (masking copies, two log-softmaxes, divide, exp, xlogy, scatter/logsumexp
    for the tail bucket, and all their backwards) made a soft-label step much slower than a teacher
    forward plus a student step. Here every [N, V] quantity is computed in blocks of rows that stay
    in cache; the only full-size tensor is p_S^τ, written once in the forward and turned into the
    gradient in place in the backward. The dense teacher's probabilities are recomputed per block
    in the backward from its logits (kept by reference, no copy) rather than stored. Rows with
    label IGNORE give 0 and get no gradient. Values and gradients equal the autograd form
    (``_soft_rows_autograd``); that is tested.
    """

    @staticmethod
    def forward(ctx, z, y, teacher, top_idx, temperature):
        n, v = z.shape
        tau = temperature
        valid = y != IGNORE
        yi = y.clamp_min(0).unsqueeze(-1)
        keep = ctx.needs_input_grad[0]
        p_s = torch.empty((n, v), dtype=torch.float32, device=z.device) if keep else None
        ce = torch.empty(n, dtype=torch.float32, device=z.device)
        kl = torch.zeros(n, dtype=torch.float32, device=z.device)
        lse1 = torch.empty(n, dtype=torch.float32, device=z.device) if tau != 1.0 else None
        q_tail = torch.empty(n, dtype=torch.float32, device=z.device) if top_idx is not None else None
        for a, b in _blocks(n, v):
            zf = z[a:b].float()
            ls = torch.log_softmax(zf / tau if tau != 1.0 else zf, dim=-1)
            if lse1 is None:  # CE = −log p_S(y), read off the one log-softmax
                ce[a:b] = -ls.gather(-1, yi[a:b]).squeeze(-1)
            else:
                lse1[a:b] = torch.logsumexp(zf, dim=-1)
                ce[a:b] = lse1[a:b] - zf.gather(-1, yi[a:b]).squeeze(-1)
            if teacher is not None and top_idx is None:  # dense teacher logits
                tf = teacher[a:b].float()
                tl = torch.log_softmax(tf / tau if tau != 1.0 else tf, dim=-1)
                kl[a:b] = _kl_rows(tl.exp(), tl, ls)
            if p_s is not None:
                ps = torch.exp(ls, out=p_s[a:b])
            elif top_idx is not None:
                ps = ls.exp_()
            if top_idx is not None:  # buckets [N, k+1]: the teacher's top-k, then its tail
                idx = top_idx[a:b]
                top = ps.gather(-1, idx)
                ps.scatter_(-1, idx, 0.0)
                q_tail[a:b] = ps.sum(-1)  # the student's exact tail mass (no 1 − Σ cancellation)
                ps.scatter_(-1, idx, top)
                p_t = teacher[a:b].exp()
                s_b = torch.cat([top, q_tail[a:b].unsqueeze(-1)], dim=-1).log()
                kl[a:b] = (torch.xlogy(p_t, p_t) - torch.where(p_t == 0, torch.zeros_like(p_t), p_t * s_b)).sum(-1)
        ce = torch.where(valid, ce, 0.0)
        kl = torch.where(valid, kl, 0.0)
        ctx.save_for_backward(z if lse1 is not None else None, yi, valid, p_s, teacher, top_idx, q_tail, lse1)
        ctx.temperature, ctx.in_dtype, ctx.done = tau, z.dtype, False
        return ce, kl

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        if ctx.done:  # p_S is reused in place below, so a second backward would be silently wrong
            raise RuntimeError("the fused soft-label loss supports one backward pass (no retain_graph reuse)")
        ctx.done = True
        z, yi, valid, p_s, teacher, top_idx, q_tail, lse1 = ctx.saved_tensors
        tau = ctx.temperature
        n, v = p_s.shape
        gk = (grad_kl * valid / tau).unsqueeze(-1)
        gc = (grad_ce * valid).unsqueeze(-1)
        gs = gk + gc if tau == 1.0 else gk  # at τ = 1 the CE's p_S is the same tensor as the KL's
        ce_at_1 = tau != 1.0 and bool(gc.any())
        for a, b in _blocks(n, v):
            g = p_s[a:b]
            if teacher is None:  # cross-entropy alone
                g.mul_(gc[a:b])
            elif top_idx is None:  # dense: p_T^τ again from the teacher's logits
                tf = teacher[a:b].float()
                p_t = torch.softmax(tf / tau if tau != 1.0 else tf, dim=-1)
                g.mul_(gs[a:b]).addcmul_(p_t, gk[a:b], value=-1.0)
            else:
                p_t = teacher[a:b].exp()
                mass = p_t.sum(-1, keepdim=True)
                idx = top_idx[a:b]
                top = g.gather(-1, idx)
                tail = mass - p_t[:, -1:] / q_tail[a:b].unsqueeze(-1).clamp_min(1e-30)
                g.mul_(tail * gk[a:b] + (gs[a:b] - gk[a:b]))
                g.scatter_(-1, idx, (mass * top - p_t[:, :-1]) * gk[a:b] + top * (gs[a:b] - gk[a:b]))
            if ce_at_1:
                g.add_(torch.sub(z[a:b].float(), lse1[a:b].unsqueeze(-1)).exp_().mul_(gc[a:b]))  # p_S at τ = 1
            g.scatter_add_(-1, yi[a:b], -gc[a:b])
        return p_s.to(ctx.in_dtype), None, None, None, None


def _soft_rows_fused(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | TopK,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE rows, forward-KL rows) through ``_FusedSoftLabel``; IGNORE rows are 0."""
    if isinstance(teacher, TopK):
        return _FusedSoftLabel.apply(student, labels, retemper(teacher, temperature), teacher.indices, temperature)
    return _FusedSoftLabel.apply(student, labels, teacher.detach(), None, temperature)


def _soft_rows_autograd(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | TopK,
                        temperature: float, *, kind: str, beta: float,
                        skew_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE rows, divergence rows) for any divergence, differentiated by autograd; IGNORE rows are 0."""
    mask = labels != IGNORE
    ce = F.cross_entropy(student.float(), labels, ignore_index=IGNORE, reduction="none")
    s_logp = log_probs(student, temperature)
    if isinstance(teacher, TopK):
        rows = divergence(retemper(teacher, temperature), bucket_student(s_logp, teacher.indices), kind=kind,
                          beta=beta, skew_lambda=skew_lambda)
    else:
        rows = divergence(log_probs(teacher, temperature).detach(), s_logp, kind=kind, beta=beta,
                          skew_lambda=skew_lambda)
    return ce, torch.where(mask, rows, 0.0)


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
    """Summed token cross-entropy over valid tokens / ``num_valid`` (fp32 log-softmax).

    Through the fused kernel of the soft-label loss (``_FusedSoftLabel`` with no teacher): the
    same log-softmax, gather and in-place backward as the CE inside a soft-label step.
    """
    ce, _ = _FusedSoftLabel.apply(logits, labels, None, None, 1.0)
    return ce.sum() / _denominator(num_valid, labels != IGNORE)


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
    if alpha <= 0.0:  # no teacher term: plain cross-entropy
        ce = cross_entropy(student, labels, num_valid=denom)
        return LossParts(total=ce, ce=ce, kd=ce.detach() * 0.0)
    if kind == "forward_kl":
        ce_rows, kd_rows = _soft_rows_fused(student, labels, teacher, temperature)
    else:
        ce_rows, kd_rows = _soft_rows_autograd(student, labels, teacher, temperature, kind=kind, beta=beta,
                                               skew_lambda=skew_lambda)
    ce, kd = ce_rows.sum() / denom, kd_rows.sum() / denom
    if tau_squared:
        kd = kd * temperature**2
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
