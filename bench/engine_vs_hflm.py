"""PrefixCacheLM vs lm-eval's HFLM on the real teacher: same numbers, how much faster.

Runs lm-eval's own BBQ multiple-choice task config (12 options per item), a HellaSwag config that
mirrors lm-eval's preprocessing, and lm-eval's crows_pairs_english config, each pointed at a local
file of the first ``--n`` items, with both backends in one process on one loaded model. The two
sides differ only in the backend: same task objects, same evaluator, same model, same threads.

First a warm-up (every task on its first few items through both backends, untimed), then
``--repeats`` rounds; in each round every task runs through both backends back to back, HFLM first
in even rounds and the engine first in odd ones, so load from other processes hits both alike. A
round's speedup is HFLM's seconds / the engine's on the same task in that round; prints

    max_abs_loglik_diff = D     (over every request of every task, and every round)
    bbq_speedup = R (min a, max b)         median over rounds, and the spread     target >= 5
    hellaswag_speedup = R (min a, max b)                                            target >= 2
    crows_speedup = R (min a, max b)
    projected_full_bbq_s = S    (all 6 local BBQ categories, 11,956 items, at the engine's median rate)

Usage (offline):
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/engine_vs_hflm.py --n 200 --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BBQ_LOCAL_ITEMS = 11_956  # Age, Disability_status, Nationality, Physical_appearance, Religion, Sexual_orientation

_HELLASWAG_UTILS = '''
import re


def preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\\\[.*?\\\\]", "", text)
    text = text.replace("  ", " ")
    return text


def process_docs(dataset):
    # lm-eval's hellaswag.process_docs; the local file has ctx already joined (no ctx_a / ctx_b)
    def _process_doc(doc):
        return {
            "query": preprocess(doc["activity_label"] + ": " + doc["ctx"]),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_process_doc)
'''

_HELLASWAG_YAML = """task: bench_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
process_docs: !function hellaswag_utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_tasks(tmp: Path, data: Path, n: int) -> list[str]:
    """Local copies of the first ``n`` items and task configs for bbq, hellaswag and crows_pairs."""
    from probes.files import write_lm_eval_task
    with open(data / "bbq" / "Age.jsonl") as fh:
        (tmp / "bbq.jsonl").write_text("".join(next(fh) for _ in range(n)))
    write_lm_eval_task(tmp, "bbq/bbq_multiple_choice.yaml", tmp / "bbq.jsonl", task="bench_bbq")

    with open(data / "hellaswag" / "hellaswag_val.derived.jsonl") as fh:
        (tmp / "hellaswag.jsonl").write_text("".join(next(fh) for _ in range(n)))
    (tmp / "hellaswag_utils.py").write_text(_HELLASWAG_UTILS)
    (tmp / "bench_hellaswag.yaml").write_text(_HELLASWAG_YAML.format(data=tmp / "hellaswag.jsonl"))

    with open(data / "crows_pairs" / "crows_pairs_anonymized.csv", newline="") as fh:
        rows = list(islice(csv.DictReader(fh), n))
    (tmp / "crows.jsonl").write_text("".join(
        json.dumps({"sent_more": r["sent_more"], "sent_less": r["sent_less"], "bias_type": r["bias_type"]}) + "\n"
        for r in rows))
    write_lm_eval_task(tmp, "crows_pairs/crows_pairs_english.yaml", tmp / "crows.jsonl", task="bench_crows",
                       utils_module="crows_utils")
    return ["bench_bbq", "bench_hellaswag", "bench_crows"]


def run_task(lm, name: str, task, limit: int | None = None) -> tuple[float, list[tuple[float, bool]]]:
    """Seconds for lm-eval's ``evaluate`` of one task, and its per-request answers in doc order."""
    from lm_eval.evaluator import evaluate

    t0 = time.perf_counter()
    out = evaluate(lm=lm, task_dict={name: task}, limit=limit, log_samples=True, verbosity="ERROR")
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return seconds, [tuple(r[0]) for s in samples for r in s["resps"]]


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="items per task (default 200)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--hf-batch-size", type=int, default=32, help="HFLM batch size (default 32)")
    ap.add_argument("--memory-budget-mb", type=int, default=2048)
    ap.add_argument("--max-pass-tokens", type=int, default=2048, help="engine: scored positions per pass")
    ap.add_argument("--tasks", default="bbq,hellaswag,crows", help="comma-separated subset of bbq,hellaswag,crows")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds, at least 5 (default 5)")
    ap.add_argument("--warmup-items", type=int, default=4, help="items per task in the untimed warm-up")
    # 1 by default: on a shared, oversubscribed machine two OpenMP threads spend most of their time waiting
    # for each other (measured here: 76 s vs 4.7 s for the same 36 requests), which drowns the comparison
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both backends (0: torch default)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    sys.path.insert(0, str(REPO))
    from audit.engine import PrefixCacheLM
    from audit.models import ModelRef, load_model, prepare_demo_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelRef(name="teacher", path=str(prepare_demo_teacher())))
    common = dict(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu")
    backends = {
        "hflm": HFLM(batch_size=args.hf_batch_size, **common),
        "engine": PrefixCacheLM(batch_size=args.hf_batch_size, memory_budget_mb=args.memory_budget_mb,
                                max_pass_tokens=args.max_pass_tokens, **common),
    }
    times: dict[str, dict[str, list[float]]] = {}
    answers: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory(prefix="bequeath-bench-") as tmp:
        names = [t for t in write_tasks(Path(tmp), args.data, args.n) if t.removeprefix("bench_") in args.tasks.split(",")]
        task_dict = get_task_dict(names, TaskManager(include_path=tmp, include_defaults=False))
        for name in names:  # warm-up: first calls, allocations, the evaluator's own caches
            for lm in backends.values():
                run_task(lm, name, task_dict[name], limit=args.warmup_items)
        times = {name: {b: [] for b in backends} for name in names}
        answers = {name: {b: [] for b in backends} for name in names}
        for r in range(args.repeats):
            for name in names:
                for b in ("hflm", "engine") if r % 2 == 0 else ("engine", "hflm"):
                    seconds, got = run_task(backends[b], name, task_dict[name])
                    times[name][b].append(seconds)
                    answers[name][b].append(got)
                print(f"# round {r + 1} {name}: hflm {times[name]['hflm'][-1]:.1f} s, "
                      f"engine {times[name]['engine'][-1]:.1f} s", flush=True)
    diff, flips, n_req = 0.0, 0, 0
    for name in names:
        task_diff = 0.0
        ref = answers[name]["hflm"][0]
        flipped = set()
        for b in backends:
            for got in answers[name][b]:
                for i, ((ll_h, g_h), (ll_e, g_e)) in enumerate(zip(ref, got, strict=True)):
                    task_diff = max(task_diff, abs(ll_h - ll_e))
                    if g_h != g_e:
                        flipped.add(i)
        flips += len(flipped)
        n_req += len(ref)
        diff = max(diff, task_diff)
        print(f"# {name}: {len(ref)} requests, max |loglik diff| {task_diff:.3g} (every round, both backends)")
    print(f"# {args.repeats} rounds after a warm-up of {args.warmup_items} items per task and backend; "
          f"{args.threads} thread(s); HFLM batch {args.hf_batch_size}")
    print(f"requests = {n_req}")
    print(f"is_greedy_mismatches = {flips}")
    print(f"max_abs_loglik_diff = {diff:.3g}")
    for name in names:
        hf, en = times[name]["hflm"], times[name]["engine"]
        print(f"# {name}: median s hflm {statistics.median(hf):.2f}, engine {statistics.median(en):.2f}")
        print(f"{name.removeprefix('bench_')}_speedup = {_spread([h / e for h, e in zip(hf, en, strict=True)])}")
    if "bench_bbq" not in names:
        return 0
    rate = statistics.median(times["bench_bbq"]["engine"]) / args.n
    rate_hf = statistics.median(times["bench_bbq"]["hflm"]) / args.n
    print(f"projected_full_bbq_s = {rate * BBQ_LOCAL_ITEMS:.0f}  ({rate * BBQ_LOCAL_ITEMS / 3600:.2f} h engine; "
          f"HFLM {rate_hf * BBQ_LOCAL_ITEMS / 3600:.2f} h)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
