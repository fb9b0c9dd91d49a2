"""Bias-aware distillation: counterfactual swaps of text and tokens, CRR and the invariance term.

Pure computation (no models, no files written); ``distill.api`` and ``distill.train`` use it.

- :class:`SwapList` reads word pairs (``a b`` per line, both directions) and swaps gendered words
  in text (:meth:`SwapList.swap`), keeping case and word boundaries. "her" is ambiguous (him or
  his): it becomes "him" when the next word is a function word, punctuation or the end of the
  text, and "his" otherwise ("her book" -> "his book", "told her that" -> "told him that").
- :func:`token_groups` turns the pairs into token-level groups: one side's single-token forms
  against the other's (" he" | " she"; " him", " his" | " her").
- :func:`counterfactual_map` maps a next-token distribution on the swapped sequence back through
  the groups (mass preserved); :func:`crr_logprobs` mixes it with the distribution on the
  sequence itself (counterfactual role reversal, after Gupta et al. 2022).
- :func:`invariance_loss`: KL between the student's distributions on a sequence and its swap,
  over aligned positions whose next token the swap does not change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from audit.errors import SpecError

CRR_VARIANTS = ("mean", "max")
CRR_DEFINITIONS = {  # recorded in distill_card.json
    "mean": "p~ = 1/2 p_T(.|x) + 1/2 M p_T(.|swap(x)) at the training temperature; M moves each swap group's "
            "mass to its counterpart side (shared by p_T(.|x))",
    "max": "p~(v) proportional to max(p_T(v|x), [M p_T(.|swap(x))](v)) for the swap tokens, p_T(v|x) elsewhere",
}
# after "her", these (and punctuation or the end) make it an object ("him"); anything else a possessive ("his")
_OBJECT_FOLLOWERS = frozenset(
    "a an the to and or but nor that this these those in on at for with from by about as if when while because "
    "so than then up down out off over into onto again too very is was be been who which what where why how "
    "back away there here not all some any every each".split())


def default_word_list() -> Path:
    """The bundled pair list (pronouns and common gendered nouns) used when none is given."""
    return Path(str(resources.files("distill") / "gender_pairs.txt"))


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Word pairs of one list file: two whitespace-separated words per non-blank, non-# line."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"debias.word_lists: {p} does not exist; give files of word pairs (two words a line).")
    pairs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise SpecError(f"{p}:{n}: expected two words (a pair to swap), got {len(fields)}: {line.strip()!r}.")
        a, b = (f.lower() for f in fields)
        if a != b:
            pairs.append((a, b))
    if not pairs:
        raise SpecError(f"{p}: no word pair found; write one pair per line, e.g. 'he she'.")
    return pairs


def _case_like(word: str, template: str) -> str:
    """``word`` in the case of ``template``: UPPER, Capitalised or lower."""
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass(frozen=True, kw_only=True)
class SwapList:
    """A swap dictionary built from pairs: the first mapping of a word wins, then the reverse of
    every pair fills in the words that had none (so each listed word has exactly one swap)."""

    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def from_files(cls, paths: list[str | Path]) -> SwapList:
        return cls(pairs=tuple(p for path in paths for p in read_pairs(path)))

    def pairs_sha256(self) -> str:
        import hashlib

        return hashlib.sha256("\n".join(f"{a}\t{b}" for a, b in self.pairs).encode()).hexdigest()

    @cached_property
    def mapping(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for a, b in self.pairs:
            out.setdefault(a, b)
        for a, b in self.pairs:
            out.setdefault(b, a)
        return out

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        words = sorted(self.mapping, key=len, reverse=True)
        return re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)

    def swap(self, text: str) -> str:
        """``text`` with every listed word replaced by its counterpart (case kept)."""
        mapping, pattern = self.mapping, self._pattern

        def repl(m: re.Match[str]) -> str:
            word = m.group(0)
            low = word.lower()
            new = mapping[low]
            if low == "her" and {"him", "his"} <= set(mapping):
                after = re.match(r"\s*(\w+)?", text[m.end():])
                nxt = after.group(1) if after else None
                new = "him" if nxt is None or nxt.lower() in _OBJECT_FOLLOWERS else "his"
            return _case_like(new, word)

        return pattern.sub(repl, text)


# ------------------------------------------------------------------ token level


@dataclass(frozen=True, kw_only=True)
class TokenGroups:
    """Token-level swap groups. ``ids``, ``side`` (0/1) and ``group`` are parallel lists over the
    member tokens; a group's side-0 tokens are the counterparts of its side-1 tokens."""

    ids: tuple[int, ...]
    side: tuple[int, ...]
    group: tuple[int, ...]

    @property
    def n_groups(self) -> int:
        return max(self.group, default=-1) + 1

    @cached_property
    def _where(self) -> dict[int, tuple[int, int]]:
        return {i: (g, s) for i, g, s in zip(self.ids, self.group, self.side, strict=True)}

    def counterpart(self, a: int, b: int) -> bool:
        """Whether tokens ``a`` and ``b`` are swaps of each other (same group, opposite sides)."""
        where = self._where
        return a in where and b in where and where[a][0] == where[b][0] and where[a][1] != where[b][1]


def token_groups(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]], tokenizer: Any) -> TokenGroups:
    """Groups of single-token forms: for each surface form (lower, Capitalised, UPPER; with and without
    a leading space) the pair graph over words that are one token in that form, split into connected
    components and 2-coloured. A component that cannot be 2-coloured (the lists disagree about a
    word's side) is left out, as are words that are several tokens (they are swapped in the text,
    but the token-level map cannot move probability between them)."""
    forms = [lambda w: w, lambda w: w[:1].upper() + w[1:], str.upper]
    ids: list[int] = []
    side: list[int] = []
    group: list[int] = []
    seen: set[int] = set()
    for space in ("", " "):
        for form in forms:
            tok: dict[str, int] = {}
            for w in {w for p in pairs for w in p}:
                enc = tokenizer.encode(space + form(w), add_special_tokens=False)
                if len(enc) == 1:
                    tok[w] = enc[0]
            adj: dict[str, set[str]] = {}
            for a, b in pairs:
                if a in tok and b in tok:
                    adj.setdefault(a, set()).add(b)
                    adj.setdefault(b, set()).add(a)
            colour: dict[str, int] = {}
            for start in sorted(adj):
                if start in colour:
                    continue
                comp, stack, ok = [start], [start], True
                colour[start] = 0
                while stack:
                    u = stack.pop()
                    for v in adj[u]:
                        if v not in colour:
                            colour[v] = 1 - colour[u]
                            comp.append(v)
                            stack.append(v)
                        elif colour[v] == colour[u]:
                            ok = False
                members = [w for w in comp if tok[w] not in seen]
                if not ok or len({colour[w] for w in members}) < 2:
                    continue
                g = max(group, default=-1) + 1
                for w in sorted(members):
                    seen.add(tok[w])
                    ids.append(tok[w])
                    side.append(colour[w])
                    group.append(g)
    return TokenGroups(ids=tuple(ids), side=tuple(side), group=tuple(group))


def aligned(ids_a: list[int], ids_b: list[int], groups: TokenGroups) -> bool:
    """Whether two token sequences line up position by position: same length, and every position
    where they differ holds a token and its counterpart. Only aligned pairs get CRR and the
    invariance term (a swap that changes the token count, e.g. a one-token word whose counterpart
    is two tokens, leaves the pair to plain CDA)."""
    if len(ids_a) != len(ids_b):
        return False
    return all(a == b or groups.counterpart(a, b) for a, b in zip(ids_a, ids_b, strict=True))


# ------------------------------------------------------------------ distributions (torch)


def _group_index(groups: TokenGroups, device: Any) -> tuple[Any, Any, Any]:
    import torch

    ids = torch.tensor(groups.ids, dtype=torch.long, device=device)
    own = torch.tensor([2 * g + s for g, s in zip(groups.group, groups.side, strict=True)], device=device)
    other = torch.tensor([2 * g + 1 - s for g, s in zip(groups.group, groups.side, strict=True)], device=device)
    return ids, own, other


def counterfactual_map(p_cf: Any, p: Any, groups: TokenGroups) -> Any:
    """The counterfactual sequence's next-token distribution ``p_cf`` [N, V] seen from the sequence
    itself: each group side receives the mass the other side had under ``p_cf``, shared among its
    tokens in proportion to ``p`` (the sequence's own distribution; equally where that is all zero).
    For a one-to-one pair this is the plain swap q(she) = p_cf(he); tokens outside the groups keep
    ``p_cf``. Mass is preserved: the result sums to what ``p_cf`` sums to."""
    import torch

    if not groups.ids:
        return p_cf
    ids, own, other = _group_index(groups, p_cf.device)
    slots = 2 * groups.n_groups
    n = p_cf.shape[0]
    cf = p_cf[:, ids]
    mine = p[:, ids]
    side_cf = torch.zeros((n, slots), dtype=p_cf.dtype, device=p_cf.device).index_add_(1, own, cf)
    side_p = torch.zeros((n, slots), dtype=p.dtype, device=p.device).index_add_(1, own, mine)
    size = torch.zeros(slots, dtype=p.dtype, device=p.device).index_add_(0, own, torch.ones_like(own, dtype=p.dtype))
    denom = side_p[:, own]
    share = torch.where(denom > 0, mine / denom.clamp_min(1e-38), 1.0 / size[own])
    q = p_cf.clone()
    q[:, ids] = side_cf[:, other] * share
    return q


def crr_logprobs(logp: Any, logp_cf: Any, groups: TokenGroups, *, variant: str = "mean") -> Any:
    """Counterfactual role reversal of the teacher's next-token log-probs [N, V] (fp32).

    ``mean``: p̃ = ½·p + ½·q, with q = :func:`counterfactual_map` of the counterfactual sequence's
    distribution: the teacher averaged over the sequence and its swap, read in the sequence's own
    roles. ``max``: only the group tokens change, p̃(v) ∝ max(p(v), q(v)) for them and p(v) for the
    rest, renormalised (each gendered token gets the larger of its two role-reversed
    probabilities). Both equal p when the teacher is already balanced across the swap."""
    import torch

    p, p_cf = logp.float().exp(), logp_cf.float().exp()
    q = counterfactual_map(p_cf, p, groups)
    if variant == "mean":
        return torch.log(0.5 * p + 0.5 * q)
    if variant == "max":
        out = p.clone()
        if groups.ids:
            ids = torch.tensor(groups.ids, dtype=torch.long, device=p.device)
            out[:, ids] = torch.maximum(p[:, ids], q[:, ids])
        return torch.log(out / out.sum(-1, keepdim=True))
    raise ValueError(f"Unknown CRR variant '{variant}'; expected one of {', '.join(CRR_VARIANTS)}.")


def pair_rows(partner: Any, aligned_mask: Any) -> Any:
    """Rows [R] of a batch that have an aligned partner row."""
    return (partner >= 0) & aligned_mask


def crr_teacher_logits(logits: Any, partner: Any, aligned_mask: Any, groups: TokenGroups, *,
                       temperature: float, variant: str) -> Any:
    """Teacher logits [R, L, V] with CRR applied at the training temperature to every row that has an
    aligned partner: returns τ·log p̃^τ there (so log_softmax(·/τ) gives back p̃^τ exactly) and the
    logits unchanged elsewhere. Positions are aligned one to one (see :func:`aligned`)."""
    import torch

    rows = pair_rows(partner, aligned_mask)
    if not bool(rows.any()):
        return logits
    r = rows.nonzero().squeeze(-1)
    v = logits.shape[-1]
    logp = torch.log_softmax(logits[r].float() / temperature, dim=-1).reshape(-1, v)
    logp_cf = torch.log_softmax(logits[partner[r]].float() / temperature, dim=-1).reshape(-1, v)
    mixed = crr_logprobs(logp, logp_cf, groups, variant=variant).reshape(len(r), -1, v)
    out = logits.float().clone()
    out[r] = mixed * temperature
    return out


def invariance_loss(logits: Any, labels: Any, partner: Any, aligned_mask: Any, *, num_valid: Any) -> Any:
    """Σ_rows Σ_t KL(p_S(·|x_≤t) ‖ p_S(·|x'_≤t)) / ``num_valid`` over rows with an aligned partner x'
    and positions t whose next token is a target in both and the same in both (the swap does not
    change it). Every pair is in the batch both ways, so the sum is the symmetric KL of each pair.
    ``logits`` [R, L, V]; ``labels`` [R, L] as the collator gives them (unshifted)."""
    import torch

    from distill.losses import IGNORE

    rows = pair_rows(partner, aligned_mask)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    r = rows.nonzero().squeeze(-1)
    c = partner[r]
    y, y_cf = labels[r, 1:], labels[c, 1:]
    keep = (y != IGNORE) & (y_cf != IGNORE) & (y == y_cf)
    zp, zq = logits[r, :-1][keep], logits[c, :-1][keep]
    logp, logq = torch.log_softmax(zp.float(), -1), torch.log_softmax(zq.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum()
    denom = torch.as_tensor(num_valid, dtype=torch.float32, device=logits.device).clamp_min(1.0)
    return kl / denom
