"""Training text: read a corpus, let the teacher write one, tokenize, batch.

A corpus is a ``.txt`` file (one text per non-empty line) or a ``.jsonl`` file whose rows
hold ``text``, or ``prompt`` and ``response`` (the teacher-generated form, with provenance).
Bad rows are errors that name the file and the line.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from audit.errors import SpecError
from distill.losses import IGNORE


class CorpusError(SpecError):
    """The corpus is missing, empty or malformed (names the file and line)."""


@dataclass(frozen=True, kw_only=True)
class Row:
    """One training text; ``prompt`` is set for prompt/response rows."""

    text: str
    prompt: str | None = None


def seed_prompts_path() -> Path:
    """The bundled seed prompts the teacher writes the demo corpus from."""
    return Path(str(resources.files("distill") / "seed_prompts.txt"))


def read_corpus(path: str | Path, *, text_field: str = "text") -> list[Row]:
    """Rows of a ``.txt`` or ``.jsonl`` corpus; errors name the file and line. A JSONL row's text is its
    ``text_field`` (with the default ``text``, a row may hold ``prompt`` and ``response`` instead)."""
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"Corpus {p} does not exist; give a .txt or .jsonl file, or 'generate'.")
    rows: list[Row] = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if p.suffix != ".jsonl":
                rows.append(Row(text=line.rstrip("\n")))
                continue
            rows.append(_json_row(p, n, line, text_field))
    if not rows:
        raise CorpusError(f"Corpus {p} is empty: no non-blank line. Add texts (one per line) or rows of JSON.")
    return rows


def _json_row(p: Path, n: int, line: str, text_field: str = "text") -> Row:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise CorpusError(f"{p}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); "
                          "each line must be one JSON object.") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{p}:{n}: expected a JSON object with 'text' or 'prompt'+'response', got {type(obj).__name__}.")
    if isinstance(obj.get(text_field), str) and obj[text_field].strip():
        return Row(text=obj[text_field])
    if text_field != "text":
        raise CorpusError(f"{p}:{n}: field '{text_field}' (corpus_field: a non-empty string) is missing; "
                          f"found fields {sorted(obj)}.")
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        return Row(text=obj["prompt"] + obj["response"], prompt=obj["prompt"])
    raise CorpusError(f"{p}:{n}: field 'text' (a non-empty string) or 'prompt' and 'response' is missing; "
                      f"found fields {sorted(obj)}.")


def tokenize(rows: list[Row], tokenizer: Any, *, seq_len: int, max_positions: int | None,
             response_only: bool = False) -> list[dict[str, Any]]:
    """Token ids and labels per row, truncated to ``seq_len`` (and the model's limit) with a warning.

    Labels equal the ids (the loss shifts them); the first position is never a target, and with
    ``response_only`` the prompt's tokens are not targets either (sequence-level hard-label).
    """
    limit = seq_len
    if max_positions and seq_len > max_positions:
        warnings.warn(f"seq_len {seq_len} is longer than the model allows ({max_positions}); using {max_positions}.",
                      stacklevel=2)
        limit = max_positions
    out, cut = [], 0
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        ids = tokenizer(row.text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids = ids + [eos]
        n_prompt = len(tokenizer(row.prompt, add_special_tokens=False)["input_ids"]) if row.prompt and response_only else 1
        if len(ids) > limit:
            cut += 1
            ids = ids[:limit]
        labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
        if len(ids) >= 2 and any(x != IGNORE for x in labels):
            out.append({"input_ids": ids, "labels": labels, "idx": len(out), "row": i})
    if cut:
        warnings.warn(f"{cut} of {len(rows)} texts were longer than {limit} tokens and were truncated.", stacklevel=2)
    if not out:
        raise CorpusError("No corpus row has a token to learn from (every row is empty after tokenization).")
    return out


def examples_hash(examples: list[dict[str, Any]]) -> str:
    """Hash of the tokenized data (ids and labels): what a logit cache was built for."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["input_ids"], ex["labels"]]).encode())
    return h.hexdigest()


def with_counterfactuals(rows: list[Row], swap: Any) -> tuple[list[Row], list[int]]:
    """CDA: ``rows`` followed by the swap of every row that has a listed word (two-sided: each
    original and its counterfactual are both training rows). Returns the rows and, per row, the
    index of its partner (-1 for a row the swap does not change)."""
    out, partner = list(rows), [-1] * len(rows)
    for i, row in enumerate(rows):
        text = swap(row.text)
        if text == row.text:
            continue
        partner[i] = len(out)
        partner.append(i)
        out.append(Row(text=text, prompt=swap(row.prompt) if row.prompt is not None else None))
    return out, partner


def partners_by_prompt(rows: list[Row], swap: Any) -> list[int]:
    """Partners of prompt/response rows the teacher wrote for a prompt list with its swaps: row i pairs
    with the row whose prompt is the swap of its prompt (-1 where there is none)."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.prompt or "", i)
    partner = []
    for i, row in enumerate(rows):
        j = first.get(swap(row.prompt or ""), -1) if row.prompt else -1
        partner.append(j if j != i else -1)
    return partner


def pair_units(examples: list[dict[str, Any]], partner_row: list[int], is_aligned: Any) -> list[list[dict[str, Any]]]:
    """Training units for bias-aware runs: each example with its counterfactual partner (so a batch
    always holds both), or alone. ``is_aligned(ids_a, ids_b)`` marks the pairs that line up
    position by position (they get CRR and the invariance term)."""
    by_row = {ex["row"]: ex for ex in examples}
    units, used = [], set()
    for ex in examples:
        if ex["row"] in used:
            continue
        used.add(ex["row"])
        mate = by_row.get(partner_row[ex["row"]]) if partner_row[ex["row"]] >= 0 else None
        if mate is None or mate["row"] in used:
            units.append([ex])
            continue
        used.add(mate["row"])
        ok = bool(is_aligned(ex["input_ids"], mate["input_ids"]))
        units.append([dict(ex, aligned=ok), dict(mate, aligned=ok)])
    return units


@dataclass(frozen=True, kw_only=True)
class Collator:
    """Right-pads a batch; pad positions get label -100. Attaches cached teacher top-k rows.

    Items may be pair units (lists of 1 or 2 examples, from :func:`pair_units`): they are flattened,
    and ``cf_partner`` [R] (the batch row of each row's counterfactual, -1 if none) and ``cf_aligned``
    [R] are added."""

    pad_id: int
    cache: Any = None  # distill.cache.LogitCache

    def __call__(self, batch: list[Any]) -> dict[str, Any]:
        import torch

        pairs = None
        if batch and isinstance(batch[0], list):
            flat, partner, ok = [], [], []
            for unit in batch:
                base = len(flat)
                for j, ex in enumerate(unit):
                    flat.append(ex)
                    partner.append(base + 1 - j if len(unit) == 2 else -1)
                    ok.append(bool(ex.get("aligned", False)))
            batch = flat
            pairs = {"cf_partner": torch.tensor(partner, dtype=torch.long), "cf_aligned": torch.tensor(ok)}
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[r, :n] = torch.tensor(ex["input_ids"])
            labels[r, :n] = torch.tensor(ex["labels"])
            mask[r, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if pairs is not None:
            out.update(pairs)
        if self.cache is not None:
            out.update(self.cache.batch([ex["idx"] for ex in batch], width))
        return out


def generate_corpus(teacher: Any, prompts: list[str], out: Path, *, max_new_tokens: int, temperature: float,
                    batch_size: int, seed: int, progress: bool = True,
                    provenance: dict[str, Any] | None = None) -> Path:
    """The teacher continues each prompt; rows ``{prompt, response, provenance}`` go to ``out`` (JSONL)."""
    import time

    import torch
    from tqdm.auto import tqdm

    tok, model = teacher.tokenizer, teacher.model
    side = tok.padding_side
    tok.padding_side = "left"
    torch.manual_seed(seed)
    rows, t0, n_tokens = [], time.perf_counter(), 0
    bar = tqdm(total=len(prompts), desc="teacher writes corpus", unit="prompt", disable=not progress)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                     temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                     pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            n_tokens += int((new != tok.pad_token_id).sum())
            for prompt, ids in zip(chunk, new, strict=True):
                rows.append({"prompt": prompt, "response": tok.decode(ids, skip_special_tokens=True)})
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
    finally:
        tok.padding_side = side
        bar.close()
    prov = dict(provenance or {}, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                n_prompts=len(prompts), wall_s=round(time.perf_counter() - t0, 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "provenance": prov}) + "\n")
    return out


def read_prompts(path: str | Path | None) -> list[str]:
    """Prompts for generation: one per non-blank line (``#`` starts a comment)."""
    p = Path(path) if path else seed_prompts_path()
    if not p.is_file():
        raise CorpusError(f"Prompt file {p} does not exist.")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    if not prompts:
        raise CorpusError(f"Prompt file {p} is empty: write one prompt per line.")
    return prompts
