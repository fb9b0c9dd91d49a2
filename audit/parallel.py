"""Data-parallel audit: which rank this process is, its share of the work, and gathering the shares.

Launched by ``torchrun --nproc_per_node=N "$(command -v bequeath)" audit SPEC``, every rank runs the
same audit on the same inputs; only the scoring of requests is split (see :func:`shard_lm` and
``audit.engine``). Each rank scores its strided share, :func:`gather` hands every rank all results in
request order, and everything after (probe scoring rules, lm-eval's metrics, statistics) runs
identically on every rank; rank 0 alone writes the run and the results cache. Without ``WORLD_SIZE > 1``
nothing here does anything and no process group exists. CPU: gloo; collectives carry Python objects.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from audit.errors import BequeathError


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``); True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _dist() is not None:
        return False
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    return True


def shutdown() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def world() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    return rank() == 0


def gather(mine: dict[int, Any], n: int, *, error: str | None = None) -> list[Any]:
    """Every rank's ``{index: value}`` merged into one list of ``n`` values, on every rank.

    ``error``: this rank failed (its message); then every rank raises, so no rank waits forever on a
    collective the failed one never reaches."""
    dist = _dist()
    if dist is None:
        if error:
            raise BequeathError(error)
        return [mine[i] for i in range(n)]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (error, mine))
    failed = [f"rank {r}: {e}" for r, (e, _) in enumerate(parts) if e]
    if failed:
        raise BequeathError("data-parallel scoring failed on " + "; ".join(failed))
    merged: dict[int, Any] = {}
    for _, got in parts:
        merged.update(got)
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise BequeathError(f"data-parallel scoring: no rank scored request(s) {missing[:5]}")
    return [merged[i] for i in range(n)]


def sharded(fn: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
    """``fn(items)``, each rank calling it on its strided share ``items[rank::world]``; results in order."""
    r, w = rank(), world()
    if w == 1:
        return fn(list(items))
    idx = list(range(r, len(items), w))
    try:
        out, error = dict(zip(idx, fn([items[i] for i in idx]) if idx else [], strict=True)), None
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it (see gather)
        out, error = {}, f"{type(exc).__name__}: {exc}"
    return gather(out, len(items), error=error)


def agree(positions: list[int]) -> list[int]:
    """The union of every rank's ``positions`` (sorted): work that any rank lacks is done by all."""
    dist = _dist()
    if dist is None:
        return positions
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, positions)
    return sorted({p for part in parts for p in part})


def broadcast_outcome(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; every rank returns after it, raising if it failed there."""
    dist = _dist()
    if dist is None:
        return fn()
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others heard of it
            error = exc
    box = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise BequeathError(f"rank 0 failed: {box[0]}")
    return result


def shard_lm(lm: Any) -> Any:
    """Make ``lm`` score only this rank's share of each call's requests (no-op in one process).

    The prefix-cache engine shards by forward pass (``lm.shard``): the passes are planned over all
    requests on every rank, so each request is computed in exactly the pass, and so with exactly the
    floats, of a one-process run. lm-eval's HFLM is sharded by request index (strided) below its request
    building (``_loglikelihood_tokens``); its batches then differ from one process's, which can change
    the last bits of a log-likelihood. Any other lm-eval model type, and generation for every backend,
    is sharded by request index at the LM's own methods.
    """
    if world() == 1:
        return lm
    from lm_eval.models.huggingface import HFLM

    from audit.engine import PrefixCacheLM

    methods = ["generate_until"]
    if isinstance(lm, PrefixCacheLM):
        lm.shard = (rank(), world())
    elif isinstance(lm, HFLM):
        methods.append("_loglikelihood_tokens")
    else:
        methods += ["loglikelihood", "loglikelihood_rolling"]
    for name in methods:
        setattr(lm, name, _sharded_method(getattr(lm, name)))
    return lm


def _sharded_method(method: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def call(requests: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return sharded(lambda part: method(part, *args, **kwargs), requests)

    return call


@contextlib.contextmanager
def lm_eval_sees_one_process():
    """While active, lm-eval's evaluator takes this rank for the only one (``LOCAL_RANK=0``).

    ``simple_evaluate`` returns results only where ``LOCAL_RANK`` is 0 (it assumes other ranks of a
    torchrun launch hold model shards). Here every rank needs the results: the scoring below lm-eval is
    what is sharded (:func:`shard_lm`), and every rank computes the same run from them."""
    if world() == 1:
        yield
        return
    old = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = old
