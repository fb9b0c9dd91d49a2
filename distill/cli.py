"""``bequeath distill``: a YAML spec and/or flags (flags override the file).

    bequeath distill --method soft --out runs/soft --max-steps 60
    bequeath distill spec.yaml --max-steps 10
    torchrun --nproc_per_node 2 -m distill.cli spec.yaml      # DDP, same code
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from audit.errors import BequeathError, SpecError

# flag -> (spec field, type, help)
_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--method", "method", str, "soft | hard | co (default soft)"),
    ("--teacher", "teacher", str, "teacher model directory or alias (default smollm2-135m)"),
    ("--corpus", "corpus", str, "training text: .txt (one text per line), .jsonl (text, or prompt+response), "
                                "or 'generate' (the teacher writes it from the bundled seed prompts; default)"),
    ("--prompts", "prompts", str, "prompt file for --corpus generate (default: bundled seed prompts)"),
    ("--contamination-data", "contamination_data", str, "also check the corpus for n-gram overlap with every probe "
                                                        "and task whose data this folder holds (e.g. ../shared/data)"),
    ("--corpus-field", "corpus_field", str, "the .jsonl field that holds each text (default text; e.g. passage)"),
    ("--data-dir", "data_dir", str, "folder of probe and task data (e.g. ../shared/data): the learning-curve "
                                    "tasks read it, and the corpus is checked against every probe and task it holds"),
    ("--eval-tasks", "eval_tasks", str, "learning curve: tasks scored on the student before training, every "
                                        "--eval-every steps and at the end, and once on the teacher, comma-separated "
                                        "(e.g. bundled_qa,arc_easy_local)"),
    ("--eval-every", "eval_every", int, "learning curve: score the tasks every N steps (0: only before and after)"),
    ("--eval-limit", "eval_limit", int, "learning curve: documents per task (lm-eval's --limit; default all)"),
    ("--out", "output", str, "output directory (the student; for co: OUT/student and OUT/teacher)"),
    ("--divergence", "divergence", str, "forward_kl | reverse_kl | jsd | skew_kl (soft-label)"),
    ("--temperature", "temperature", float, "softmax temperature τ"),
    ("--alpha", "alpha", float, "weight of the distillation term; 1-α goes to cross-entropy on the data"),
    ("--beta", "beta", float, "JSD(β) mixing weight"),
    ("--skew-lambda", "skew_lambda", float, "skew KL λ"),
    ("--no-tau-squared", "tau_squared", None, "do not multiply the distillation term by τ²"),
    ("--hard-level", "hard_level", str, "token | sequence (hard-label; sequence works across tokenizers)"),
    ("--every", "every", int, "student = every k-th teacher layer (with embeddings, norm, head)"),
    ("--layers", "layers", str, "student = these teacher layers, comma-separated (e.g. 0,5,10)"),
    ("--keep", "keep", int, "student = the N teacher layers that matter most on the corpus (skipping each "
     "layer in turn, measured as the teacher's KL from itself)"),
    ("--student-checkpoint", "student_checkpoint", str, "student = this existing model directory"),
    ("--max-steps", "max_steps", int, "optimizer steps"),
    ("--batch-size", "batch_size", int, "texts per device per micro-batch"),
    ("--grad-accum", "grad_accum", int, "gradient accumulation steps"),
    ("--lr", "lr", float, "learning rate"),
    ("--lr-schedule", "lr_schedule", str, "after the warm-up: constant (default) | cosine | linear"),
    ("--warmup-steps", "warmup_steps", int, "steps of linear learning-rate warm-up"),
    ("--dtype", "dtype", str, "float32 (default) | bfloat16 (mixed precision: bf16 autocast, float32 weights)"),
    ("--seq-len", "seq_len", int, "longest text in tokens (longer ones are truncated with a warning)"),
    ("--seed", "seed", int, "random seed"),
    ("--checkpoint-every", "checkpoint_every", int, "save a resumable checkpoint every N steps (0: none)"),
    ("--no-resume", "resume", None, "start over even if OUT/checkpoints holds a checkpoint"),
    ("--cache", "cache", str, "teacher-logit cache directory (built when missing, refused when built for other data)"),
    ("--top-k", "top_k", int, "top-k log-probs kept in the cache"),
    ("--peers", "peers", int, "co-distillation: extra peers beside teacher and student"),
    ("--burn-in", "burn_in", int, "co-distillation: steps over which λ ramps up from 0"),
    ("--lam", "lam", float, "co-distillation: λ of the students"),
    ("--teacher-lambda", "teacher_lambda", float, "co-distillation: λ of the teacher"),
    ("--snapshot-every", "snapshot_every", int, "co-distillation: refresh the peers' snapshot every N steps (0: live)"),
    ("--max-new-tokens", "gen_max_new_tokens", int, "tokens the teacher writes per prompt (corpus generate)"),
    ("--debias", "debias_method", str, "bias-aware distillation (docs/debias.md): cda (train on every sequence and "
                                       "its gender swap) | crr (cda + the teacher's distribution averaged with its "
                                       "role-reversed one on the swap) | invariance (cda + weight x KL between the "
                                       "student's distributions on a sequence and its swap); works with soft, hard, co"),
    ("--debias-word-list", "debias_word_lists", str, "swap list file(s), comma-separated, two words a line (default: "
                                                     "bundled pronouns and common nouns; e.g. WinoBias's "
                                                     "generalized_swaps.txt,extra_gendered_words.txt)"),
    ("--debias-weight", "debias_weight", float, "weight of the invariance term (--debias invariance; default 1.0)"),
    ("--crr-variant", "debias_crr", str, "CRR: mean (average with the role-reversed distribution; default) | max"),
]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``distill`` on an argparse subparsers object; returns the parser."""
    p = subparsers.add_parser(
        "distill", help="train a student from a teacher (soft-label, hard-label or co-distillation)",
        description="Distil a teacher into a student. Give a YAML spec, flags, or both (flags win). "
                    "Writes the student (safetensors, config, tokenizer) and distill_card.json.",
        epilog="Defaults are DistillSpec's (soft-label, forward KL, τ=2, α=0.5, every 5th teacher layer, "
               "a corpus the teacher writes from the bundled seed prompts). DDP: torchrun --nproc_per_node N "
               "-m distill.cli ...",
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="YAML spec file (fields as in distill.spec.DistillSpec)")
    p.add_argument("--demo", action="store_true", help="start from the demo defaults (DistillSpec.demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for flag, dest, typ, text in _FLAGS:
        if typ is None:
            p.add_argument(flag, dest=dest, action="store_const", const=False, default=None, help=text)
        else:
            p.add_argument(flag, dest=dest, type=typ, default=None, help=text)


def spec_dict(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The spec mapping: the YAML file's, overridden by the flags that were given."""
    import yaml

    d: dict[str, Any] = {}
    source = "<flags>"
    if args.demo:
        from distill.spec import DistillSpec

        d = DistillSpec.demo(Path("bequeath-out/student")).as_dict(settings=True)
    if args.spec:
        path = Path(args.spec)
        if not path.is_file():
            raise SpecError(f"Spec file {path} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise SpecError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
        if not isinstance(loaded, dict):
            raise SpecError(f"{path}: expected a mapping of fields, got {type(loaded).__name__}.")
        d.update(loaded)
        source = str(path)
    student = dict(d.get("student") or {}) if isinstance(d.get("student"), dict) else d.get("student")
    for _, dest, _, _ in _FLAGS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest in ("every", "keep"):
            student = {"from": "layers", dest: value}
        elif dest == "layers":
            try:
                student = {"from": "layers", "layers": [int(x) for x in value.split(",") if x.strip()]}
            except ValueError:
                raise SpecError(f"--layers: expected comma-separated integers, got '{value}'.") from None
        elif dest == "student_checkpoint":
            student = {"from": "checkpoint", "path": value}
        elif dest.startswith("debias_"):
            debias = d.get("debias")
            debias = dict(debias) if isinstance(debias, dict) else ({"method": debias} if debias else {})
            key = dest.removeprefix("debias_")
            debias[key] = [x for x in value.split(",") if x.strip()] if key == "word_lists" else value
            d["debias"] = debias
        else:
            d[dest] = value
    if student is not None:
        d["student"] = student
    return d, source


def run(args: argparse.Namespace) -> int:
    """Run ``distill`` from parsed arguments; returns the exit code (0 ok, 2 error)."""
    from distill.api import run_distill
    from distill.spec import DistillSpec

    try:
        d, source = spec_dict(args)
        spec = DistillSpec.from_dict(d, source=source)
        out = run_distill(spec, progress=not args.no_progress)
    except BequeathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m distill.cli``), e.g. under ``torchrun``."""
    parser = argparse.ArgumentParser(prog="bequeath distill", description="Distil a teacher into a student.")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
