"""Does an evaluation item leak into the distillation corpus? An n-gram overlap check (pure).

The rule is the GPT-3 contamination analysis (Brown et al. 2020, appendix C): texts are
normalised to words (lowercase, punctuation removed, split on whitespace: ``words``), and an item
overlaps the corpus when one of its texts shares a 13-gram with one corpus text (n-grams never
cross two corpus texts). A text shorter than 13 words is one n-gram of its own length, as in
GPT-3 ("or that overlap with the whole example when it is shorter"), down to a floor of 8
words, GPT-3's minimum N for non-synthetic tasks "due to spurious collisions at lower values
of N": a 5-word text such as "the nurse said that she" occurs in ordinary prose by chance, so
texts under 8 words are not checked, and an item none of whose texts reaches 8 words is counted
as ``too_short``, never as clean.

The corpus side is hashed once per n-gram length (13, and each length from 8 to 12 that some
short item text needs), so every probe and task is checked against the same sets. Python's
64-bit hash of the word tuple stands for the n-gram: a chance collision between 10^6 item and
10^6 corpus n-grams has odds of about 1 in 10^7.
Reading the items (probes, tasks) is ``distill.eval_items``; this module only compares strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NGRAM = 13  # GPT-3's N (its maximum)
MIN_NGRAM = 8  # GPT-3's minimum N for non-synthetic tasks
MAX_EXAMPLES = 5  # overlapping item ids kept per probe or task
RULE = ("GPT-3 (Brown et al. 2020, app. C): lowercase, punctuation removed, split on whitespace; an item "
        "overlaps when one of its texts shares an n-gram with one corpus text; a text shorter than n words is "
        "one n-gram of its own length down to min_ngram words; shorter texts are not checked")

_APOSTROPHE = re.compile(r"['\u2018\u2019`]")
_PUNCT = re.compile(r"[^\w\s]|_")


def words(text: str) -> list[str]:
    """Normalised words: lowercase, punctuation removed, split on whitespace.

    Apostrophes are dropped (``Don't``, ``don’t`` -> ``dont``); any other punctuation separates
    words (``well-known`` -> ``well known``, ``work—then`` -> ``work then``), so two spellings
    that differ only in punctuation give the same words.
    """
    return _PUNCT.sub(" ", _APOSTROPHE.sub("", text.lower())).split()


def text_ngrams(tokens: Sequence[str], *, n: int = NGRAM, floor: int = MIN_NGRAM) -> list[tuple[str, ...]]:
    """The n-grams of one item text; the whole text when it has ``floor`` to ``n - 1`` words; none below."""
    if len(tokens) >= n:
        return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return [tuple(tokens)] if len(tokens) >= floor else []


class CorpusIndex:
    """Hashes of every n-gram of the corpus texts, one set per length, built on first use."""

    def __init__(self, texts: Iterable[str], *, n: int = NGRAM, floor: int = MIN_NGRAM) -> None:
        if not 1 <= floor <= n:
            raise ValueError(f"expected 1 <= floor <= n, got floor={floor}, n={n}")
        self.n, self.floor = n, floor
        self._docs = [w for w in (words(t) for t in texts) if w]
        self._sets: dict[int, set[int]] = {}
        self.n_texts = len(self._docs)
        self.n_words = sum(len(d) for d in self._docs)

    def _grams(self, k: int) -> set[int]:
        if k not in self._sets:
            self._sets[k] = {hash(tuple(d[i:i + k])) for d in self._docs for i in range(len(d) - k + 1)}
        return self._sets[k]

    def shared(self, text: str) -> list[tuple[str, ...]] | None:
        """The n-grams of ``text`` found in the corpus; None when the text is too short to check."""
        grams = text_ngrams(words(text), n=self.n, floor=self.floor)
        if not grams:
            return None
        return [g for g in grams if hash(g) in self._grams(len(g))]


@dataclass(frozen=True, kw_only=True)
class EvalSet:
    """The items of one probe or task: (item id, the texts a model reads for it)."""

    kind: str  # "probe" | "task"
    name: str
    items: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, kw_only=True)
class SetResult:
    """Overlap of one probe's or task's items with the corpus."""

    kind: str
    name: str
    items: int
    checked: int  # items with at least one text of >= min_ngram words
    too_short: int
    overlapping: int
    examples: tuple[str, ...]  # ids of the first overlapping items
    example_ngram: str | None = None  # one shared n-gram (normalised words), to show what matched

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "items": self.items, "checked": self.checked,
                "too_short": self.too_short, "overlapping": self.overlapping, "examples": list(self.examples),
                "example_ngram": self.example_ngram}


def check(index: CorpusIndex, evalset: EvalSet, *, max_examples: int = MAX_EXAMPLES) -> SetResult:
    """Which items of ``evalset`` share an n-gram with the corpus (each distinct text looked at once)."""
    seen: dict[str, list[tuple[str, ...]] | None] = {}
    checked = overlapping = 0
    examples: list[str] = []
    first: tuple[str, ...] | None = None
    for item_id, texts in evalset.items:
        for t in texts:
            if t not in seen:
                seen[t] = index.shared(t)
        found = [seen[t] for t in texts]
        if all(f is None for f in found):
            continue
        checked += 1
        hits = [g for f in found if f for g in f]
        if hits:
            overlapping += 1
            first = first or hits[0]
            if len(examples) < max_examples:
                examples.append(item_id)
    return SetResult(kind=evalset.kind, name=evalset.name, items=len(evalset.items), checked=checked,
                     too_short=len(evalset.items) - checked, overlapping=overlapping, examples=tuple(examples),
                     example_ngram=" ".join(first) if first else None)


def card_block(index: CorpusIndex, results: Sequence[SetResult],
               not_checked: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """The ``contamination`` block of ``distill_card.json``."""
    return {
        "ngram": index.n, "min_ngram": index.floor, "rule": RULE,
        "corpus_texts": index.n_texts, "corpus_words": index.n_words,
        "items_checked": sum(r.checked for r in results),
        "items_overlapping": sum(r.overlapping for r in results),
        "sets": [r.as_dict() for r in results],
        "not_checked": [dict(x) for x in not_checked],
    }


__all__ = ["NGRAM", "MIN_NGRAM", "RULE", "words", "text_ngrams", "CorpusIndex", "EvalSet", "SetResult", "check",
           "card_block"]
