"""``run_distill``: spec in, student directory (weights + ``distill_card.json``) out.

Output layout (``spec.output`` = OUT):

- soft / hard: OUT is the student directory (model.safetensors, config, tokenizer,
  distill_card.json; ``corpus.jsonl`` when the teacher wrote the corpus); checkpoints live in
  OUT/checkpoints and a rerun resumes from the latest one.
- co: OUT/student and OUT/teacher (and OUT/peer<i>) each hold an updated model with its card;
  the student directory is returned.

Launch with ``torchrun --nproc_per_node N -m audit.cli distill ...`` (or ``accelerate launch``)
for DDP; nothing here changes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from audit.errors import BequeathError, SpecError
from audit.models import native_bf16
from distill.spec import LR_SCHEDULES, DistillSpec


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "accelerate", "bequeath"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _load_teacher(spec: DistillSpec) -> Any:
    from audit.models import ModelRef, load_model

    # float32 weights whatever spec.dtype says: dtype bfloat16 is mixed precision (the Trainer's autocast
    # computes in bf16), so the student keeps float32 master weights (it is built from these layers) and
    # Adam's small updates are not rounded away, and the learning curve scores the teacher in float32
    # as the audit does by default
    return load_model(ModelRef(name="teacher", path=spec.teacher))


class _Student:
    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info


def _build_student(spec: DistillSpec, teacher: Any, examples: list | None = None, *,
                   progress: bool = False) -> _Student:
    """The student as ``spec.student`` says; ``from: layers`` with ``keep`` measures the teacher's
    layers on ``examples`` (the tokenized corpus) and records each layer's importance."""
    from audit.models import ModelRef, load_model
    from distill import students

    init = spec.student
    if init.source == "layers":
        info: dict[str, Any] = {}
        if init.keep is not None:
            scores = students.layer_importance(teacher.model, examples or [], pad_id=teacher.tokenizer.pad_token_id,
                                               progress=progress)
            keep = students.most_important(scores, init.keep)
            info["layer_importance_kl"] = [round(x, 6) for x in scores]
        else:
            keep = students.layer_indices(init, teacher.model.config.num_hidden_layers)
        model = students.from_layers(teacher.model, keep)
        return _Student(model, teacher.tokenizer, {**init.as_dict(), "kept_layers": keep, **info})
    if init.source == "config":
        model = students.from_config(teacher.model, init.config, seed=spec.seed)
        return _Student(model, teacher.tokenizer, init.as_dict())
    loaded = load_model(ModelRef(name="student", path=init.path))  # float32 master weights, as the teacher
    return _Student(loaded.model, loaded.tokenizer, {**init.as_dict(), "content_hash": loaded.content_hash})


def _corpus(spec: DistillSpec, teacher: Any, out: Path, *, progress: bool) -> Path:
    """The corpus file: given, or written by the teacher (reused when its provenance matches)."""
    from distill import data
    from probes.files import sha256_file as file_sha256

    if spec.corpus != "generate":
        return Path(spec.corpus)
    prompts_file = Path(spec.prompts) if spec.prompts else data.seed_prompts_path()
    prov = {"teacher": spec.teacher, "teacher_hash": teacher.content_hash, "prompts": str(prompts_file),
            "prompts_sha256": file_sha256(prompts_file)}
    if spec.debias is not None and spec.method == "hard" and spec.hard_level == "sequence":
        prov["debias_prompts"] = _swap_list(spec).pairs_sha256()
    path = out / "corpus.jsonl"
    if path.is_file():
        try:
            first = json.loads(path.open(encoding="utf-8").readline())["provenance"]
            same = {k: first.get(k) for k in prov} == prov and first.get("max_new_tokens") == spec.gen_max_new_tokens \
                and first.get("temperature") == spec.gen_temperature and first.get("seed") == spec.seed
            if same:
                return path
        except (ValueError, KeyError, TypeError):
            pass
    prompts = data.read_prompts(prompts_file)
    if spec.debias is not None and spec.method == "hard" and spec.hard_level == "sequence":
        # CDA for sequence level: the teacher also answers the swapped prompts (its own outputs for them)
        swap = _swap_list(spec).swap
        prompts = prompts + [q for q in (swap(x) for x in prompts) if q not in prompts]
    return data.generate_corpus(teacher, prompts, path, max_new_tokens=spec.gen_max_new_tokens,
                                temperature=spec.gen_temperature, batch_size=spec.gen_batch_size, seed=spec.seed,
                                progress=progress, provenance=prov)


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _training_args(spec: DistillSpec, out: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=spec.max_steps, per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, warmup_steps=spec.warmup_steps,
        lr_scheduler_type=LR_SCHEDULES[spec.lr_schedule], weight_decay=spec.weight_decay, seed=spec.seed, data_seed=spec.seed,
        logging_steps=1, save_strategy="steps" if spec.checkpoint_every else "no",
        save_steps=spec.checkpoint_every or 500, report_to=[], disable_tqdm=True, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", use_cpu=not cuda, ddp_backend="gloo" if not cuda and _world_size() > 1 else None,
        dataloader_num_workers=0, average_tokens_across_devices=True, bf16=spec.dtype == "bfloat16",
        ddp_find_unused_parameters=False,
    )


def _warn_emulated_bf16(spec: DistillSpec) -> None:
    """bf16 autocast on a CPU without native bf16 is emulated: measured 11x slower than float32 on an
    MLP block of the teacher's size (AMD EPYC, AVX2 only). Say so before training, and keep the
    user's choice (the numbers would differ from a float32 run)."""
    import sys

    import torch

    if spec.dtype == "bfloat16" and not torch.cuda.is_available() and not native_bf16():
        print("bequeath distill: warning: this CPU has no native bfloat16 (no AVX-512 BF16 or AMX), so "
              "dtype bfloat16 is emulated and runs several times slower than float32 here; pass "
              "--dtype float32 (or dtype: float32 in the spec) to train at full speed.", file=sys.stderr, flush=True)


def _shared_vocab(spec: DistillSpec, teacher: Any, student: _Student) -> int | None:
    """The vocabulary teacher and student logits share (see ``students.shared_vocab``), trimming a
    padded student embedding to it."""
    from distill import students

    vocab = students.shared_vocab(teacher, student, method=spec.method, hard_level=spec.hard_level)
    if vocab is not None:
        students.trim_padded_embedding(student.model, vocab)
    return vocab


def run_distill(spec: DistillSpec, *, progress: bool = True) -> Path:
    """Train a student as ``spec`` says; return the student directory (see the module doc)."""
    import os

    from transformers import PrinterCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from distill import data, eval_items, students, train

    t0 = time.perf_counter()
    _check_eval_tasks(spec)  # before anything loads or trains
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(spec.seed)
    args = _training_args(spec, out)
    _warn_emulated_bf16(spec)
    teacher = _load_teacher(spec)
    # a student chosen by layer importance is built once the corpus it is measured on is tokenized;
    # it shares the teacher's tokenizer, so the tokenizer check below cannot fail for it
    student = None if spec.student.keep is not None else _build_student(spec, teacher)
    if student is None:
        students.check_keep(spec.student.keep, teacher.model.config.num_hidden_layers)
    vocab = _shared_vocab(spec, teacher, student) if student is not None else None
    tokenizer = student.tokenizer if student is not None else teacher.tokenizer
    with args.main_process_first(desc="corpus"):
        corpus = _corpus(spec, teacher, out, progress=progress)
    rows = data.read_corpus(corpus, text_field=spec.corpus_field)
    sequence_level = spec.method == "hard" and spec.hard_level == "sequence"
    if sequence_level and not all(r.prompt is not None for r in rows):
        raise data.CorpusError(
            f"Corpus {corpus}: sequence-level hard-label trains on the teacher's responses, so every row needs "
            "'prompt' and 'response'. Use --corpus generate (optionally --prompts FILE), or a JSONL the teacher wrote.")
    student_model = student.model if student is not None else teacher.model  # same positions as the teacher's
    models = (student_model,) if sequence_level else (teacher.model, student_model)
    limits = [x for m in models if (x := getattr(m.config, "max_position_embeddings", None))]
    rows, partner = _counterfactuals(spec, rows, sequence_level)
    examples = data.tokenize(rows, tokenizer, seq_len=spec.seq_len, max_positions=min(limits, default=None),
                             response_only=sequence_level)
    if student is None:
        student = _build_student(spec, teacher, examples, progress=progress)
        vocab = _shared_vocab(spec, teacher, student)
    data_hash = data.examples_hash(examples)
    train_data, groups, debias_info = examples, None, None
    if spec.debias is not None:
        train_data, groups, debias_info = _pair_up(spec, examples, partner, student.tokenizer)
    curve = None
    if spec.eval_tasks:
        score = _task_scorer(spec)
        teacher_scores = score(teacher.model, teacher.tokenizer) if args.process_index == 0 else None
        curve = train.LearningCurve(lambda: score(student.model, student.tokenizer), every=spec.eval_every,
                                    teacher=teacher_scores)
    cache = None
    if spec.cache:
        with args.main_process_first(desc="logit cache"):
            cache = _open_cache(spec, teacher, examples, data_hash, progress=progress)
        teacher.model = None  # training from the cache needs no teacher: free its memory
    set_seed(spec.seed)
    kill = os.environ.get("BEQUEATH_DISTILL_KILL_AT_STEP")  # fault injection for the resume test
    progress_cb = train.Progress(enabled=progress, kill_at_step=int(kill) if kill else None)
    common = dict(args=args, train_dataset=train_data, data_collator=data.Collator(pad_id=student.tokenizer.pad_token_id,
                  cache=cache), callbacks=[progress_cb, *([curve] if curve else [])], processing_class=student.tokenizer)
    if spec.method == "co":
        peers = [teacher.model.train().requires_grad_(True), student.model]
        peers += [_extra_peer(student.model, seed=spec.seed + 1 + i) for i in range(spec.peers)]
        trainer = train.CoDistillTrainer(model=train.PeerGroup(peers), spec=spec, vocab=vocab, groups=groups, **common)
    else:
        live = None if (cache is not None or _ce_only(spec)) else students.freeze(teacher.model)
        trainer = train.DistillTrainer(model=student.model, spec=spec, teacher=live, vocab=vocab, groups=groups,
                                       **common)
    trainer.remove_callback(PrinterCallback)
    last = get_last_checkpoint(args.output_dir) if spec.resume and Path(args.output_dir).is_dir() else None
    try:
        trainer.train(resume_from_checkpoint=last)
    except train.NonFiniteLossError as exc:
        where = out / f"checkpoint-nonfinite-step-{exc.step}"
        trainer.save_model(str(where))
        raise BequeathError(
            f"Training stopped: the loss is {exc.value} at step {exc.step}. The weights before that step are saved "
            f"in {where}. Lower the learning rate (lr={spec.lr}) or check the temperature ({spec.temperature})."
        ) from None
    if not trainer.is_world_process_zero():
        return out / "student" if spec.method == "co" else out
    ckpt_dir = Path(args.output_dir)
    if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()  # no checkpoint was asked for
    # the texts it trained on vs every probe's and task's items (n-gram overlap; distill.eval_items)
    contamination = eval_items.check_corpus([r.text for r in rows], data_dir=spec.contamination_data or spec.data_dir)
    card = _card(spec, teacher, student, corpus, data_hash, len(examples), trainer, cache, t0,
                 contamination=contamination, debias_info=debias_info, learning=curve)
    return _save(spec, out, trainer, teacher, student, card)


_DEBIAS_NAMES = {"cda": "CDA", "crr": "CDA + CRR", "invariance": "CDA + counterfactual invariance"}


def _swap_list(spec: DistillSpec) -> Any:
    from distill import debias

    return debias.SwapList.from_files(list(spec.debias.word_lists) or [debias.default_word_list()])


def _counterfactuals(spec: DistillSpec, rows: list, sequence_level: bool) -> tuple[list, list[int] | None]:
    """CDA: the corpus rows with their swaps and each row's partner (rows unchanged without debias).
    Sequence level on a teacher-written corpus pairs rows by prompt (the teacher answered the swapped
    prompts itself); any other corpus gets the swap of each row's text."""
    from distill import data

    if spec.debias is None:
        return rows, None
    swap = _swap_list(spec).swap
    if sequence_level and spec.corpus == "generate":
        return rows, data.partners_by_prompt(rows, swap)
    return data.with_counterfactuals(rows, swap)


def _pair_up(spec: DistillSpec, examples: list, partner: list[int], tokenizer: Any) -> tuple[list, Any, dict]:
    """Pair units for training, the token-level swap groups, and the card's ``debias`` record."""
    from distill import data, debias
    from probes.files import sha256_file

    swaps = _swap_list(spec)
    groups = debias.token_groups(swaps.pairs, tokenizer)
    units = data.pair_units(examples, partner, lambda a, b: debias.aligned(a, b, groups))
    pairs = [u for u in units if len(u) == 2]
    files = list(spec.debias.word_lists) or [str(debias.default_word_list())]
    d = spec.debias
    info = {
        "method": d.method, "summary": _DEBIAS_NAMES[d.method],
        "word_lists": [{"path": f, "sha256": sha256_file(Path(f))} for f in files],
        "n_word_pairs": len(swaps.pairs), "n_token_groups": groups.n_groups, "n_swap_tokens": len(groups.ids),
        "n_sequences": len(examples), "n_pairs": len(pairs), "n_aligned_pairs": sum(bool(u[0]["aligned"]) for u in pairs),
        "crr": ({"variant": d.crr, "definition": debias.CRR_DEFINITIONS[d.crr]} if d.method == "crr" else None),
        "invariance": ({"weight": d.weight, "divergence": "KL(p_S(x) || p_S(swap(x))) + KL(p_S(swap(x)) || p_S(x)), "
                        "tau = 1, aligned pairs, positions whose next token the swap does not change"}
                       if d.method == "invariance" else None),
    }
    return units, groups, info


def _extra_peer(student: Any, *, seed: int) -> Any:
    """An extra co-distillation peer: the student's architecture, randomly initialised with ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(student.config, dtype=student.dtype)


def _ce_only(spec: DistillSpec) -> bool:
    return (spec.method == "hard" and spec.hard_level == "sequence") or (spec.method == "soft" and spec.alpha == 0.0)


def _open_cache(spec: DistillSpec, teacher: Any, examples: list, data_hash: str, *, progress: bool) -> Any:
    from distill import cache as C

    key = C.CacheKey(teacher_hash=teacher.content_hash, data_hash=data_hash, k=spec.top_k, temperature=1.0)
    where = Path(spec.cache)
    if not (where / "manifest.json").is_file():
        C.build(teacher.model.eval(), examples, where, key=key, progress=progress)
    return C.LogitCache(where, key=key)


def _check_eval_tasks(spec: DistillSpec) -> None:
    """Every learning-curve task is known and its data readable, or one SpecError naming them all."""
    if not spec.eval_tasks:
        return
    import audit.tasks as tasks

    unknown = {name: m for name in spec.eval_tasks if (m := tasks.unknown_task(name))}
    # the known ones are loaded (nothing scored): an lm-eval task whose dataset is not on disk is named here
    problems = [*unknown.values(), *tasks.check_tasks([n for n in spec.eval_tasks if n not in unknown],
                                                       data_dir=spec.data_dir)]
    if problems:
        raise SpecError("eval_tasks: " + " ".join(problems) + " (the task data folder is data_dir, e.g. ../shared/data)")


def _task_scorer(spec: DistillSpec) -> Any:
    """``score(model, tokenizer) -> {task: value or None}``: lm-eval's figure for each learning-curve task (its default
    metric), on the model as it is, through the audit's engine. Random states are saved and restored,
    so scoring (lm-eval seeds every generator) leaves training exactly as it would have been."""
    import random

    import numpy as np
    import torch

    from audit.lm import make_lm
    from audit.models import LoadedModel, ModelRef
    from audit.tasks import run_tasks

    def score(model: Any, tokenizer: Any) -> dict[str, float | None]:
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        training = model.training
        model.eval()
        try:
            loaded = LoadedModel(ref=ModelRef(name="learning-curve"), model=model, tokenizer=tokenizer, directory=None,
                                 content_hash="", n_params=0)
            results = run_tasks(make_lm(loaded), spec.eval_tasks, data_dir=spec.data_dir, limit=spec.eval_limit)
        finally:
            model.train(training)
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        # a task lm-eval could not score is recorded as missing (None), never as 0
        return {r.task: (None if r.error else r.lm_eval_value) for r in results}

    return score


def _curve_block(spec: DistillSpec, curve: Any, history: list[dict]) -> dict[str, Any] | None:
    """The card's learning curve: the settings, the teacher's scores, and each point (from the Trainer's
    log history, so it survives a resume) with the student's retention of the teacher's score."""
    if curve is None:
        return None
    teacher = curve.teacher or {}
    points = [{"step": e["step"], "tokens_seen": e["tokens_seen"], "scores": e["task_scores"],
               "retention": {t: (v / teacher[t] if v is not None and teacher.get(t) else None)
                             for t, v in e["task_scores"].items()}}
              for e in history if "task_scores" in e]
    return {"tasks": list(spec.eval_tasks), "limit": spec.eval_limit, "every": spec.eval_every,
            "teacher": teacher, "points": points}


def _card(spec, teacher, student, corpus, data_hash, n_examples, trainer, cache, t0, *,
          contamination: dict[str, Any], debias_info: dict[str, Any] | None, learning: Any = None) -> dict[str, Any]:
    from probes.files import sha256_file as file_sha256

    st = trainer.state
    # log_history survives resume (it is in each checkpoint's trainer_state.json)
    curve = [{"step": e["step"], **{k: v for k, v in e.items() if k.startswith("loss")}}
             for e in st.log_history if "loss" in e]
    technique = {"soft": f"soft-label ({spec.divergence})", "hard": f"hard-label ({spec.hard_level} level)",
                 "co": "co-distillation"}[spec.method]
    if debias_info is not None:
        technique += f" + {_DEBIAS_NAMES[spec.debias.method]}"
    return {
        "schema_version": 1, "technique": technique, "method": spec.method, "hyperparameters": spec.as_dict(),
        "teacher": {"source": spec.teacher, "content_hash": teacher.content_hash, "n_params": teacher.n_params},
        "data": {"corpus": str(corpus), "sha256": file_sha256(Path(corpus)), "tokenized_sha256": data_hash,
                 "n_examples": n_examples},
        "student_init": student.info, "student_n_params": sum(p.numel() for p in student.model.parameters()),
        "steps": st.global_step, "tokens_seen": int(st.num_input_tokens_seen), "world_size": trainer.args.world_size,
        "loss_curve": curve, "final_loss": curve[-1]["loss"] if curve else None,
        "cache": {"dir": spec.cache, "k": spec.top_k} if cache is not None else None,
        "wall_time_s": round(time.perf_counter() - t0, 2), "versions": _versions(),
        "spec_sha256": hashlib.sha256(json.dumps(spec.as_dict(), sort_keys=True).encode()).hexdigest(),
        "contamination": contamination, "debias": debias_info,
        "learning_curve": _curve_block(spec, learning, st.log_history),
    }


def _save_model(model: Any, tokenizer: Any, where: Path, card: dict[str, Any]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(where, safe_serialization=True)
    tokenizer.save_pretrained(where)
    (where / "distill_card.json").write_text(json.dumps(card, indent=2))
    return where


def _save(spec, out: Path, trainer, teacher, student, card) -> Path:
    if spec.method != "co":
        return _save_model(student.model, student.tokenizer, out, card)
    group = trainer.accelerator.unwrap_model(trainer.model)
    names = ["teacher", "student"] + [f"peer{i}" for i in range(1, len(group.peers) - 1)]
    for name, model in zip(names, group.peers, strict=True):
        _save_model(model, student.tokenizer, out / name, {**card, "role": name})
    return out / "student"
