"""Held-out agreement of a student with its teacher: token-level KL(p_T‖p_S) and perplexities."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from distill import losses as L


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """Per-token means over the held-out valid tokens."""

    kl_to_teacher: float
    student_ppl: float
    teacher_ppl: float
    n_tokens: int


def heldout(teacher: Any, student: Any, examples: list[dict[str, Any]], *, pad_id: int,
            vocab: int | None = None, batch_size: int = 8) -> HeldOut:
    """KL(p_T‖p_S) at τ=1 and both perplexities on ``examples`` (from ``distill.data.tokenize``)."""
    import torch

    from distill.data import Collator

    collate = Collator(pad_id=pad_id)
    kl = ce_s = ce_t = 0.0
    n = 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size])
        with torch.inference_mode():
            kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            zs, y = L.shift(student(**kw).logits, batch["labels"])
            zt, _ = L.shift(teacher(**kw).logits, batch["labels"])
            if vocab:
                zs, zt = zs[..., :vocab], zt[..., :vocab]
            m = y != L.IGNORE
            k = int(m.sum())
            kl += float(L.divergence(L.log_probs(zt[m]), L.log_probs(zs[m]), kind="forward_kl").sum())
            ce_s += float(L.cross_entropy(zs, y, num_valid=1))
            ce_t += float(L.cross_entropy(zt, y, num_valid=1))
            n += k
    if n == 0:
        raise ValueError("held-out set has no valid token")
    return HeldOut(kl_to_teacher=kl / n, student_ppl=math.exp(ce_s / n), teacher_ppl=math.exp(ce_t / n), n_tokens=n)
