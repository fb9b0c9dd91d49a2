"""Teacher-logit cache: the teacher's top-k log-probs per position, computed once.

Layout of a cache directory::

    manifest.json         {"format": 1, "teacher_hash", "data_hash", "k", "temperature",
                           "n_examples", "shards": [{"file", "first", "count", "sha256"}]}
    shard-00000.safetensors   indices [T, k] int32, logprobs [T, k] fp32, tail [T] fp32,
                              offsets [count+1] int64 (rows of example i: offsets[i]:offsets[i+1])

``tail`` is ``log(1 - Σ top-k p)``, computed as the logsumexp of the other entries (exact, -inf
when k covers the vocabulary). A cache built for another teacher, data, k or temperature is
refused with the reason; training from it needs no teacher forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import BequeathError

FORMAT = 1
SHARD_EXAMPLES = 256


class CacheMismatchError(BequeathError):
    """A logit cache was built for another teacher, corpus, k or temperature."""


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    """What a cache must match to be used."""

    teacher_hash: str
    data_hash: str
    k: int
    temperature: float

    def check(self, manifest: dict[str, Any], where: Path) -> None:
        for name, want in (("teacher_hash", self.teacher_hash), ("data_hash", self.data_hash), ("k", self.k),
                           ("temperature", self.temperature)):
            got = manifest.get(name)
            if got != want:
                what = {"teacher_hash": "another teacher", "data_hash": "other data (corpus or tokenization)",
                        "k": f"top-k {got}", "temperature": f"temperature {got}"}[name]
                raise CacheMismatchError(
                    f"Logit cache {where} was built for {what}: its {name} is {got!r}, this run needs {want!r}. "
                    "Use another --cache directory, or delete this one to rebuild it."
                )


def topk_rows(logits: Any, k: int, temperature: float) -> tuple[Any, Any, Any]:
    """(indices, logprobs, tail) of fp32 log-softmax(logits/τ) rows [T, V]."""
    import torch

    from distill.losses import log_probs

    logp = log_probs(logits, temperature)
    lp, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    tail = logp.scatter(-1, idx, float("-inf")).logsumexp(-1)
    return idx.to(torch.int32), lp, tail


def build(teacher: Any, examples: list[dict[str, Any]], out: Path, *, key: CacheKey, progress: bool = True) -> Path:
    """Run the teacher once over ``examples`` and write the cache under ``out``."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from probes.files import sha256_file as file_sha256

    out.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = tqdm(total=len(examples), desc="teacher-logit cache", unit="text", disable=not progress)
    for first in range(0, len(examples), SHARD_EXAMPLES):
        part = examples[first:first + SHARD_EXAMPLES]
        idx_l, lp_l, tail_l, offsets = [], [], [], [0]
        for ex in part:  # one text at a time: no padding in the stored rows
            with torch.inference_mode():
                logits = teacher(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            i, lp, t = topk_rows(logits, key.k, key.temperature)
            idx_l.append(i)
            lp_l.append(lp)
            tail_l.append(t)
            offsets.append(offsets[-1] + len(ex["input_ids"]))
            bar.update(1)
        name = f"shard-{first // SHARD_EXAMPLES:05d}.safetensors"
        save_file({"indices": torch.cat(idx_l).contiguous(), "logprobs": torch.cat(lp_l).contiguous(),
                   "tail": torch.cat(tail_l).contiguous(), "offsets": torch.tensor(offsets, dtype=torch.long)},
                  str(out / name))
        shards.append({"file": name, "first": first, "count": len(part), "sha256": file_sha256(out / name)})
    bar.close()
    manifest = {"format": FORMAT, "teacher_hash": key.teacher_hash, "data_hash": key.data_hash, "k": key.k,
                "temperature": key.temperature, "n_examples": len(examples), "shards": shards}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


class LogitCache:
    """A loaded cache: per-example top-k rows, padded into batches by the collator."""

    def __init__(self, directory: Path, *, key: CacheKey) -> None:
        import torch
        from safetensors.torch import load_file

        manifest_path = directory / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheMismatchError(f"Logit cache {directory}: manifest.json is unreadable ({exc}); delete the "
                                     "directory to rebuild it.") from None
        if manifest.get("format") != FORMAT:
            raise CacheMismatchError(f"Logit cache {directory}: format {manifest.get('format')}, expected {FORMAT}.")
        key.check(manifest, directory)
        self.k, self.temperature = key.k, key.temperature
        self.rows: list[tuple[Any, Any, Any]] = []
        for shard in manifest["shards"]:
            t = load_file(str(directory / shard["file"]))
            off = t["offsets"]
            for i in range(shard["count"]):
                a, b = int(off[i]), int(off[i + 1])
                self.rows.append((t["indices"][a:b].long(), t["logprobs"][a:b], t["tail"][a:b]))
        self._torch = torch

    def batch(self, idxs: list[int], width: int) -> dict[str, Any]:
        """Padded top-k tensors for the examples ``idxs``: [B, width, k] and [B, width]."""
        torch = self._torch
        b = len(idxs)
        ind = torch.zeros((b, width, self.k), dtype=torch.long)
        lp = torch.full((b, width, self.k), float("-inf"))
        lp[..., 0] = 0.0  # padding rows: a valid (one-hot) distribution; they are masked anyway
        tail = torch.full((b, width), float("-inf"))
        for r, i in enumerate(idxs):
            ri, rl, rt = self.rows[i]
            n = ri.shape[0]
            ind[r, :n], lp[r, :n], tail[r, :n] = ri, rl, rt
        return {"topk_indices": ind, "topk_logprobs": lp, "topk_tail": tail}
