"""End-to-end distillation runs on the tiny model: spec/CLI, student init, vocab checks, bad
input, logit cache, co-distillation, DDP (torchrun, gloo) and SIGKILL-resume equivalence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audit.errors import BequeathError, SpecError
from distill.spec import DistillSpec
from tests.conftest import build_tiny_model, free_port

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a doctor nurse said went home because she he was tired happy and then later on day".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "\n" for _ in range(48)))
    return p


def _spec(teacher: Path, corpus: Path, out: Path, **kw) -> DistillSpec:
    d = {"teacher": str(teacher), "corpus": str(corpus), "output": str(out), "max_steps": 3, "batch_size": 4,
         "student": {"from": "layers", "every": 2}, "resume": False, "lr": 1e-3}
    d.update(kw)
    return DistillSpec.from_dict(d)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("BEQUEATH_DISTILL_KILL_AT_STEP", None)
    return env


def _cli(*args: str) -> list[str]:
    return ["-m", "distill.cli", "--no-progress", *args]


# Two gloo processes (DDP) add the gradients, and the losses, in another order than one process
# does, so their runs equal a single process's only up to rounding, which the two comparisons below
# allow for and no more:
# - loss curves to a relative 1e-5: the order moves a logged loss by ~1e-7 relative (seen: 9e-8;
#   rounding both to 5 decimals could fall on either side of a digit and failed by chance), and a
#   run that trained on other batches differs by what one batch's loss differs from the next one's,
#   which ``_assert_same_curve`` checks is over 100x the tolerance;
# - weights per tensor by their RMS difference, within 5% of the learning rate: Adam's step is
#   lr·m̂/(√v̂ + ε) whatever the gradient's size, so where a gradient is ~0 its rounding noise can
#   move a weight by up to ~lr per step (seen: one weight of 1024 off by 7.6e-5 at lr 1e-3, the others
#   within 1e-5), while gradients that really differ (another batch, another optimizer state) move nearly
#   every weight a good part of lr apart. An element-wise tolerance would have to choose between
#   failing on the first by chance and missing the second.
CURVE_RTOL = 1e-5
WEIGHT_RMS_OF_LR = 0.05


def _assert_same_curve(got: list[dict], want: list[dict]) -> None:
    assert [e["step"] for e in got] == [e["step"] for e in want]
    losses = [e["loss"] for e in want]
    steps = [abs(a - b) / abs(b) for a, b in zip(losses[1:], losses, strict=False)]
    assert min(steps) > 100 * CURVE_RTOL, f"consecutive losses too alike to tell another batch apart: {losses}"
    assert [e["loss"] for e in got] == pytest.approx(losses, rel=CURVE_RTOL, abs=0)


def _assert_same_weights(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], lr: float) -> None:
    assert want.keys() == got.keys()
    for k in want:
        rms = float((want[k].double() - got[k].double()).pow(2).mean().sqrt())
        assert rms <= WEIGHT_RMS_OF_LR * lr, f"{k}: RMS difference {rms:.3g} > {WEIGHT_RMS_OF_LR} x lr {lr}"


# ---------------------------------------------------------------- spec and CLI


def test_spec_collects_all_errors_with_did_you_mean():
    with pytest.raises(SpecError) as e:
        DistillSpec.from_dict({"methd": "soft", "divergence": "forward_k", "alpha": 1.5, "max_steps": "x",
                               "student": {"from": "layer"}}, source="s.yaml")
    msg = str(e.value)
    assert msg.startswith("s.yaml: invalid distill spec (5 problems)")
    for part in ("unknown field 'methd'. Did you mean: method?", "Did you mean: forward_kl?", "alpha must be in [0, 1]",
                 "max_steps: expected int", "Did you mean: layers?"):
        assert part in msg


def test_demo_defaults():
    s = DistillSpec.demo(Path("/tmp/x"))
    assert (s.method, s.divergence, s.temperature, s.alpha, s.student.keep, s.corpus, s.output) == (
        "soft", "forward_kl", 2.0, 0.5, 14, "generate", "/tmp/x")
    assert (s.eval_tasks, s.eval_every) == (("bundled_qa",), 20) and "eval_tasks" not in s.as_dict()
    assert DistillSpec.from_dict(s.as_dict(settings=True)) == s  # what `bequeath distill --demo` starts from


def test_cli_flags_override_yaml(tmp_path):
    import argparse

    from distill import cli

    y = tmp_path / "s.yaml"
    y.write_text("method: hard\nhard_level: sequence\nmax_steps: 9\nstudent: {from: layers, every: 3}\n")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["distill", str(y), "--max-steps", "4", "--layers", "0,2", "--no-tau-squared"])
    d, source = cli.spec_dict(args)
    spec = DistillSpec.from_dict(d, source=source)
    assert (spec.method, spec.hard_level, spec.max_steps, spec.student.layers, spec.tau_squared) == (
        "hard", "sequence", 4, (0, 2), False)
    assert args.func is cli.run
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: soft\n  alpha: [\n")
    with pytest.raises(SpecError, match=r"bad.yaml:\d+: not valid YAML"):
        cli.spec_dict(parser.parse_args(["distill", str(bad)]))


# ---------------------------------------------------------------- students and vocabularies


def test_student_from_layers_copies_teacher_weights(tiny):
    from distill.spec import StudentInit
    from distill.students import from_layers, layer_indices

    keep = layer_indices(StudentInit(source="layers", every=None, layers=(1,)), 2)
    s = from_layers(tiny.model, keep)
    assert s.config.num_hidden_layers == 1
    t_sd, s_sd = tiny.model.state_dict(), s.state_dict()
    for k, v in s_sd.items():
        src = k.replace("layers.0.", "layers.1.")
        torch.testing.assert_close(v, t_sd[src], rtol=0, atol=0)
    with pytest.raises(SpecError, match="out of range"):
        layer_indices(StudentInit(source="layers", every=None, layers=(0, 7)), 2)


def test_layer_importance_known_answer_a_silenced_layer_scores_zero(tmp_path, teacher_dir):
    """A layer whose output projections are zero adds nothing to the residual stream: skipping it
    changes no logit (importance 0 up to float rounding), while skipping any other layer does; the
    student keeps the others. Cross-checked against a forward pass of the student built from them."""
    from audit.models import ModelRef, load_model
    from distill.students import from_layers, layer_importance, most_important

    tiny = load_model(ModelRef(name="tiny", path=str(build_tiny_model(tmp_path / "m", teacher_dir, layers=4))))
    model = tiny.model
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    examples = [{"input_ids": tiny.tokenizer(t)["input_ids"], "labels": tiny.tokenizer(t)["input_ids"]}
                for t in ("The nurse said that", "A cat sat on the mat and looked", "Rain fell")]
    scores = layer_importance(model, examples, pad_id=tiny.tokenizer.pad_token_id, batch_size=2)
    assert len(scores) == 4 and scores[2] < 1e-6 and min(scores[0], scores[1], scores[3]) > 1e-4
    assert most_important(scores, 3) == [0, 1, 3]
    assert len(model.model.layers) == 4  # the model is left whole
    student = from_layers(model, [0, 1, 3]).eval()
    ids = torch.tensor([examples[1]["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(SpecError, match="4 layers"):
        most_important(scores, 5)


def test_keep_is_parsed_and_exclusive_with_every_and_layers():
    ok = DistillSpec.from_dict({"student": {"from": "layers", "keep": 14}})
    assert (ok.student.keep, ok.student.every, ok.student.as_dict()) == (14, None, {"from": "layers", "keep": 14})
    for bad, msg in (({"from": "layers", "keep": 3, "every": 2}, "one of 'every', 'layers' or 'keep'"),
                     ({"from": "layers", "keep": 0}, "student.keep: expected the number"),
                     ({"from": "layers", "keep": True}, "student.keep: expected the number")):
        with pytest.raises(SpecError, match=msg):
            DistillSpec.from_dict({"student": bad})


def test_padded_embedding_is_trimmed(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from distill.students import trim_padded_embedding

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    v = m.config.vocab_size
    before = m.get_input_embeddings().weight[:v].clone()
    m.resize_token_embeddings(v + 64)  # padded, like 151936 -> 152064
    with pytest.warns(UserWarning, match=f"from {v + 64} to {v} rows"):
        assert trim_padded_embedding(m, v)
    assert m.get_input_embeddings().weight.shape[0] == v and m.lm_head.weight.shape[0] == v
    torch.testing.assert_close(m.get_input_embeddings().weight, before)
    assert not trim_padded_embedding(m, v)


def _other_tokenizer_student(tiny_model_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<bequeath-extra-1>", "<bequeath-extra-2>"])
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    m.resize_token_embeddings(len(tok))
    m.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_different_tokenizer_soft_is_error_naming_hard_label(tiny_model_dir, corpus, tmp_path):
    other = _other_tokenizer_student(tiny_model_dir, tmp_path / "other")
    from distill.api import run_distill

    spec = _spec(tiny_model_dir, corpus, tmp_path / "o", student={"from": "checkpoint", "path": str(other)})
    with pytest.raises(SpecError, match=r"tokenizer .* differs .*--method hard --hard-level sequence"):
        run_distill(spec, progress=False)
    # sequence-level hard-label needs teacher responses (prompt/response rows) ...
    seq = _spec(tiny_model_dir, corpus, tmp_path / "seq", method="hard", hard_level="sequence", max_steps=2,
                student={"from": "checkpoint", "path": str(other)})
    with pytest.raises(SpecError, match=r"corpus.txt: sequence-level hard-label .* 'prompt' and 'response'"):
        run_distill(seq, progress=False)
    # ... and works across tokenizers; only response tokens are targets
    jsonl = tmp_path / "responses.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"The nurse {i} said", "response": " she was tired and went home."})
                             + "\n" for i in range(8)))
    out = run_distill(DistillSpec.from_dict({**seq.as_dict(), "corpus": str(jsonl)}), progress=False)
    card = json.loads((out / "distill_card.json").read_text())
    assert card["steps"] == 2 and card["technique"] == "hard-label (sequence level)"
    assert card["student_init"]["from"] == "checkpoint" and card["data"]["n_examples"] == 8


# ---------------------------------------------------------------- bad input


def test_corpus_errors_name_file_and_line(tmp_path):
    from distill.data import CorpusError, read_corpus

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CorpusError, match=r"empty.txt is empty"):
        read_corpus(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:3: not valid JSON"):
        read_corpus(bad)
    miss = tmp_path / "miss.jsonl"
    miss.write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"miss.jsonl:1: field 'text'.*found fields \['body'\]"):
        read_corpus(miss)


def test_long_sequences_are_truncated_with_warning(tiny):
    from distill.data import Row, tokenize

    rows = [Row(text="word " * 300), Row(text="short text")]
    with pytest.warns(UserWarning) as rec:
        ex = tokenize(rows, tiny.tokenizer, seq_len=1024, max_positions=64)
    msgs = " ".join(str(w.message) for w in rec)
    assert "longer than the model allows (64)" in msgs and "1 of 2 texts" in msgs
    assert len(ex[0]["input_ids"]) == 64 and ex[0]["labels"][0] == -100


def test_nonfinite_loss_stops_with_step_and_checkpoint(tiny_model_dir, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.api import run_distill

    bad = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # a teacher whose logits are NaN
    with torch.no_grad():
        bad.model.norm.weight[0] = float("nan")
    bad.save_pretrained(tmp_path / "bad")
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "bad")
    shutil.copy(tiny_model_dir / "tokenizer_config.json", tmp_path / "bad")
    spec = _spec(tmp_path / "bad", corpus, tmp_path / "nan", student={"from": "checkpoint", "path": str(tiny_model_dir)})
    with pytest.raises(BequeathError, match=r"loss is nan at step 1") as e:
        run_distill(spec, progress=False)
    saved = tmp_path / "nan" / "checkpoint-nonfinite-step-1"
    assert str(saved) in str(e.value) and (saved / "model.safetensors").is_file()


# ---------------------------------------------------------------- cache


def test_logit_cache_trains_without_teacher_and_refuses_mismatch(tiny_model_dir, corpus, tmp_path):
    from distill import api
    from distill.cache import CacheMismatchError

    cache = tmp_path / "cache"
    out = api.run_distill(_spec(tiny_model_dir, corpus, tmp_path / "c1", cache=str(cache), top_k=8), progress=False)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["k"] == 8 and manifest["n_examples"] == 48
    card = json.loads((out / "distill_card.json").read_text())
    assert card["cache"] == {"dir": str(cache), "k": 8} and card["steps"] == 3
    assert all(0 < e["loss_kd"] for e in card["loss_curve"])
    with pytest.raises(CacheMismatchError, match="top-k 8.*needs 16"):
        api.run_distill(_spec(tiny_model_dir, corpus, tmp_path / "c2", cache=str(cache), top_k=16), progress=False)
    with pytest.raises(CacheMismatchError, match="other data"):
        api.run_distill(_spec(tiny_model_dir, corpus, tmp_path / "c3", cache=str(cache), top_k=8, seq_len=8),
                        progress=False)


# ---------------------------------------------------------------- co-distillation


def test_codistillation_updates_and_saves_teacher_and_student(tiny_model_dir, corpus, tmp_path):
    from distill.api import run_distill

    out = run_distill(_spec(tiny_model_dir, corpus, tmp_path / "co", method="co", burn_in=2, snapshot_every=2,
                            teacher_lambda=0.1, lam=0.5, peers=1), progress=False)
    assert (tmp_path / "co" / "peer1" / "model.safetensors").is_file()
    assert out == tmp_path / "co" / "student"
    teacher_after = _weights(tmp_path / "co" / "teacher")
    teacher_before = _weights(tiny_model_dir)
    assert any(not torch.equal(teacher_after[k], teacher_before[k]) for k in teacher_before)
    card = json.loads((out / "distill_card.json").read_text())
    assert card["technique"] == "co-distillation" and card["steps"] == 3
    first = card["loss_curve"][0]
    assert first["loss_student_kd"] > 0 and first["loss_teacher_ce"] > 0
    # burn-in: λ(0) = 0, so the first step's total is the sum of the cross-entropies alone
    ces = [first[f"loss_{n}_ce"] for n in ("teacher", "student", "peer1")]
    assert first["loss"] == pytest.approx(sum(ces), rel=1e-5)


# ---------------------------------------------------------------- scale: DDP and resume


def test_ddp_two_processes_equal_single_process(tiny_model_dir, corpus, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, batch 2 each) == one process with batch 4."""
    from distill.api import run_distill

    single = run_distill(_spec(tiny_model_dir, corpus, tmp_path / "single"), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), *_cli(
        "--teacher", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "ddp"), "--max-steps", "3",
        "--batch-size", "2", "--every", "2", "--lr", "1e-3", "--no-resume")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "ddp" / "distill_card.json").read_text())
    assert card["world_size"] == 2
    a, b = _weights(single), _weights(tmp_path / "ddp")
    _assert_same_weights(a, b, lr=1e-3)
    _assert_same_curve(card["loss_curve"], json.loads((single / "distill_card.json").read_text())["loss_curve"])
    moved = _weights(tiny_model_dir)["model.embed_tokens.weight"]
    assert not torch.equal(a["model.embed_tokens.weight"], moved)  # it trained


@pytest.mark.parametrize("method", ["soft", "co"])
def test_sigkill_then_resume_equals_uninterrupted(tiny_model_dir, corpus, tmp_path, method):
    """Killed at step 5 with checkpoints every 2 steps, resumed: bit for bit the weights and loss curve
    of an uninterrupted run. Co-distillation refreshes its peer snapshot every 3 steps, so the
    resumed run needs the step-3 snapshot from the checkpoint (step 4 would give other targets).

    The uninterrupted run is the same command in the same environment (a subprocess, one thread), so
    the two runs add every float in the same order and nothing but the kill and the resume differs:
    the comparison is exact. (Run in this process with other threads instead, the reduction order
    differs; the loss then moved by ~1e-7 relative and rounding both to 5 decimals failed by chance.)
    """
    # co: a large λ and lr, so that peers one step apart are distinguishable targets
    co_flags = ["--method", "co", "--snapshot-every", "3", "--burn-in", "1", "--lam", "5"] if method == "co" else []

    def cli(out: Path) -> list[str]:
        return [sys.executable, *_cli("--teacher", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(out),
                                      "--max-steps", "6", "--batch-size", "4", "--every", "2",
                                      "--lr", "3e-2" if co_flags else "1e-3", "--checkpoint-every", "2", *co_flags)]

    ref = subprocess.run(cli(tmp_path / "ref"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = subprocess.run(cli(tmp_path / "run"), cwd=REPO, env={**_env(), "BEQUEATH_DISTILL_KILL_AT_STEP": "5"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"]  # lost only step 5
    if co_flags:
        assert (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "peer_snapshot.safetensors").is_file()
    student = tmp_path / ("run/student" if co_flags else "run")
    assert not (student / "distill_card.json").exists()
    resumed = subprocess.run(cli(tmp_path / "run"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want_student = tmp_path / ("ref/student" if co_flags else "ref")
    pairs = [(want_student, student)] + ([(tmp_path / "ref" / "teacher", tmp_path / "run" / "teacher")] if co_flags else [])
    for want, got in pairs:
        a, b = _weights(want), _weights(got)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m, k=k, got=got: f"{got}: {k}: {m}")
    trained = _weights(want_student)["model.embed_tokens.weight"]
    assert not torch.equal(trained, _weights(tiny_model_dir)["model.embed_tokens.weight"])  # it trained
    card = json.loads((student / "distill_card.json").read_text())
    assert card["steps"] == 6
    assert [e["step"] for e in card["loss_curve"]] == [1, 2, 3, 4, 5, 6]  # steps 1-4 from the checkpoint
    ref_curve = json.loads((want_student / "distill_card.json").read_text())["loss_curve"]
    assert [e["loss"] for e in card["loss_curve"]] == [e["loss"] for e in ref_curve]
    shutil.rmtree(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------- frozen teacher, held-out metrics


def test_frozen_teacher_has_no_grad_and_no_optimizer_state(tiny, tmp_path):
    from transformers import TrainingArguments

    from distill.students import freeze, from_layers
    from distill.train import DistillTrainer

    teacher = freeze(from_layers(tiny.model, [0, 1]))
    student = from_layers(tiny.model, [1]).train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    tr = DistillTrainer(model=student, args=args, spec=DistillSpec(), teacher=teacher, vocab=None)
    opt = tr.create_optimizer()
    ids = torch.randint(0, 1000, (2, 12))
    tr.training_step(student, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}, 22)
    opt.step()
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    assert opt_params == {id(p) for p in student.parameters()}
    assert all(id(p) in opt_params for p in opt.state)


def test_heldout_kl_of_a_model_with_itself_is_zero(tiny):
    from distill.data import Row, tokenize
    from distill.evaluate import heldout
    from distill.students import from_layers

    ex = tokenize([Row(text="the nurse said she was tired"), Row(text="he went home")], tiny.tokenizer,
                  seq_len=32, max_positions=None)
    same = heldout(tiny.model, tiny.model, ex, pad_id=tiny.tokenizer.pad_token_id)
    assert same.kl_to_teacher == pytest.approx(0.0, abs=1e-6) and same.student_ppl == pytest.approx(same.teacher_ppl)
    assert same.n_tokens == sum(len(e["input_ids"]) - 1 for e in ex)
    other = heldout(tiny.model, from_layers(tiny.model, [0]), ex, pad_id=tiny.tokenizer.pad_token_id)
    assert other.kl_to_teacher > 1e-4


def test_tokenize_response_only_masks_prompt(tiny):
    from distill.data import Row, tokenize

    tok = tiny.tokenizer
    prompt, response = "The nurse said", " she was tired."
    (ex,) = tokenize([Row(text=prompt + response, prompt=prompt)], tok, seq_len=64, max_positions=None,
                     response_only=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["input_ids"][-1] == tok.eos_token_id


# ---------------------------------------------------------------- bias-aware distillation (issue 16)


@pytest.mark.parametrize(("method", "extra"), [
    ("soft", {}), ("hard", {}), ("co", {"burn_in": 0}), ("hard", {"hard_level": "sequence"}),
])
@pytest.mark.parametrize("debias", ["cda", "crr", "invariance"])
def test_debias_composes_with_every_technique_and_is_on_the_card(tiny_model_dir, corpus, tmp_path, method, extra,
                                                                   debias, data_dir):
    from distill.api import run_distill

    if debias == "crr" and extra.get("hard_level") == "sequence":
        with pytest.raises(SpecError, match="debias.method 'crr'.*sequence-level"):
            _spec(tiny_model_dir, corpus, tmp_path / "x", method=method, debias={"method": debias}, **extra)
        return
    lists = [str(data_dir / "winobias" / f) for f in ("generalized_swaps.txt", "extra_gendered_words.txt")]
    sequence = extra.get("hard_level") == "sequence"
    if sequence:  # the teacher writes the corpus from prompts, and answers the swapped prompts too
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("She said that\nThe doctor told him\nThe weather is\nMy uncle and his wife\n")
        extra = dict(extra, prompts=str(prompts), gen_max_new_tokens=4)
    spec = _spec(tiny_model_dir, "generate" if sequence else corpus, tmp_path / "d", method=method, max_steps=2, seq_len=24,
                 debias={"method": debias, "word_lists": lists, "weight": 0.5}, **extra)
    out = run_distill(spec, progress=False)
    card = json.loads((out / "distill_card.json").read_text())
    info = card["debias"]
    assert info["method"] == debias and card["hyperparameters"]["debias"]["method"] == debias
    assert [w["sha256"] for w in info["word_lists"]] == [
        "4d093db96d4386318ec9aafc3cebc458ead06bb02ac81770e278905fbdd4341e",
        "728554ebab711703e37dc92d9d14acde6e5bfcc28fa5b62b90b34110be7bd854"]
    assert card["technique"].endswith({"cda": "+ CDA", "crr": "+ CDA + CRR",
                                       "invariance": "+ CDA + counterfactual invariance"}[debias])
    if sequence:  # 3 gendered prompts, each answered by the teacher as written and swapped
        rows = [json.loads(x) for x in (out / "corpus.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in rows[4:]] == ["He said that", "The doctor told her", "My aunt and her husband"]
        assert info["n_pairs"] == 3 and info["n_sequences"] == 7
    else:  # the corpus has 'she'/'he' in most rows: each trains beside its swap (one token each: aligned)
        assert info["n_pairs"] > 10 and info["n_aligned_pairs"] == info["n_pairs"]
        assert info["n_sequences"] == 48 + info["n_pairs"]
    # the report's card row says what the student was debiased with, what it paired and on which lists
    from reports.sections import debias_lines

    lines = debias_lines(info)
    assert lines[0] == (f"{info['summary']}: {info['n_pairs']} of {info['n_sequences']} sequences paired with their swap "
                        f"({info['n_aligned_pairs']} token-aligned)")
    assert lines[-2:] == [f"word list {lists[0]} (sha256 4d093db96d43…)", f"word list {lists[1]} (sha256 728554ebab71…)"]
    assert any(x.startswith("crr: variant ") for x in lines) == (debias == "crr")
    assert debias_lines(None) == ["none (plain distillation)"]
    if debias == "invariance" and sequence:  # sampled answers to a prompt and its swap do not line up
        assert info["n_aligned_pairs"] == 0 and all(e["loss_invariance"] == 0 for e in card["loss_curve"])
    elif debias == "invariance":
        key = "loss_student_invariance" if method == "co" else "loss_invariance"
        assert all(e[key] >= 0 for e in card["loss_curve"]) and any(e[key] > 0 for e in card["loss_curve"])


def test_debias_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError) as exc:
        DistillSpec.from_dict({"debias": {"method": "cdaa", "crr": "median", "weight": -1,
                                          "word_lists": [str(tmp_path / "none.txt")], "wieght": 1}})
    msg = str(exc.value)
    assert "debias.method 'cdaa' is not one of cda, crr, invariance. Did you mean: cda?" in msg
    assert "debias.wieght: not a field of debias" in msg and "Did you mean: weight?" in msg
    with pytest.raises(SpecError) as exc:
        DistillSpec.from_dict({"debias": {"method": "crr", "crr": "median", "weight": -1,
                                          "word_lists": [str(tmp_path / "none.txt")]}, "cache": "c"})
    msg = str(exc.value)
    assert "debias.crr 'median' is not one of mean, max" in msg and "debias.weight must be >= 0, got -1.0" in msg
    assert "none.txt does not exist" in msg and "remove 'cache'" in msg
    assert DistillSpec.from_dict({"debias": "crr"}).debias.method == "crr"


def test_debias_cli_flags_build_the_spec(tmp_path):
    import argparse

    from distill import cli

    p = argparse.ArgumentParser()
    cli._add_arguments(p)
    args = p.parse_args(["--debias", "invariance", "--debias-weight", "0.3", "--debias-word-list", "a.txt,b.txt"])
    d, _ = cli.spec_dict(args)
    assert d["debias"] == {"method": "invariance", "weight": 0.3, "word_lists": ["a.txt", "b.txt"]}
    assert "--debias" in p.format_help() and "cda" in p.format_help()


def test_learning_curve_equals_lm_eval_on_the_saved_models_and_leaves_training_unchanged(tiny_model_dir, corpus,
                                                                                           tmp_path):
    """The curve's points are lm-eval's own score of the student at those steps (the last one is checked
    against ``simple_evaluate(model="hf")`` on the saved student, the teacher's on the teacher's folder),
    tokens seen grow, and scoring between steps does not change what training does (same losses, same
    weights, bit for bit: the random states are restored around each scoring)."""
    from lm_eval import simple_evaluate

    from audit.tasks import all_tasks, local_config, task_data_file
    from distill.api import run_distill

    plain = run_distill(_spec(tiny_model_dir, corpus, tmp_path / "plain", max_steps=4), progress=False)
    curved = run_distill(_spec(tiny_model_dir, corpus, tmp_path / "curve", max_steps=4, eval_tasks=["bundled_qa"],
                               eval_every=2, eval_limit=12), progress=False)
    card = json.loads((curved / "distill_card.json").read_text())
    block = card["learning_curve"]
    assert block["tasks"] == ["bundled_qa"] and block["limit"] == 12 and block["every"] == 2
    assert [p["step"] for p in block["points"]] == [0, 2, 4]
    tokens = [p["tokens_seen"] for p in block["points"]]
    assert tokens[0] == 0 and tokens[0] < tokens[1] < tokens[2] == card["tokens_seen"]

    def lm_eval_acc(model_dir: Path) -> float:
        cfg = local_config(all_tasks()["bundled_qa"], task_data_file("bundled_qa", None))
        out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[cfg], limit=12,
                              device="cpu", bootstrap_iters=0)
        return out["results"]["bundled_qa"]["acc,none"]

    last = block["points"][-1]
    assert last["scores"]["bundled_qa"] == pytest.approx(lm_eval_acc(curved), abs=1e-12)
    assert block["teacher"]["bundled_qa"] == pytest.approx(lm_eval_acc(tiny_model_dir), abs=1e-12)
    assert last["retention"]["bundled_qa"] == pytest.approx(last["scores"]["bundled_qa"] / block["teacher"]["bundled_qa"])
    plain_card = json.loads((plain / "distill_card.json").read_text())
    assert card["loss_curve"] == plain_card["loss_curve"] and plain_card["learning_curve"] is None
    want, got = _weights(plain), _weights(curved)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_learning_curve_spec_errors_are_caught_before_training(tiny_model_dir, corpus, tmp_path):
    from distill.api import run_distill

    with pytest.raises(SpecError, match="eval_every: the learning curve needs tasks"):
        _spec(tiny_model_dir, corpus, tmp_path / "a", eval_every=2)
    with pytest.raises(SpecError, match="eval_tasks: expected a list of task names"):
        _spec(tiny_model_dir, corpus, tmp_path / "a", eval_tasks=[3])
    spec = _spec(tiny_model_dir, corpus, tmp_path / "b", eval_tasks="bundled_qa,bundled_qaa")
    assert spec.eval_tasks == ("bundled_qa", "bundled_qaa")
    with pytest.raises(SpecError, match="Unknown task 'bundled_qaa'.*Did you mean: bundled_qa"):
        run_distill(spec, progress=False)
    assert not (tmp_path / "b").exists()  # nothing loaded, nothing written


def test_a_jsonl_corpus_field_is_read_and_a_missing_one_names_the_line(tmp_path):
    from distill.data import CorpusError, read_corpus

    p = tmp_path / "c.jsonl"
    p.write_text('{"passage": "one text", "question": "q"}\n{"question": "no passage"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: field 'passage' .* found fields \['question'\]"):
        read_corpus(p, text_field="passage")
    p.write_text('{"passage": "one text", "question": "q"}\n')
    assert [r.text for r in read_corpus(p, text_field="passage")] == ["one text"]


def test_bfloat16_is_mixed_precision_with_float32_weights_and_the_schedule_is_used(tiny_model_dir, corpus, tmp_path):
    """dtype bfloat16 trains under bf16 autocast with float32 master weights (pure bf16 weights would
    round Adam's small updates away), and lr_schedule reaches the Trainer."""
    from distill.api import _training_args, run_distill

    spec = _spec(tiny_model_dir, corpus, tmp_path / "bf16", dtype="bfloat16", lr_schedule="cosine", warmup_steps=1)
    args = _training_args(spec, tmp_path / "bf16")
    assert args.bf16 and str(args.lr_scheduler_type.value) == "cosine" and args.warmup_steps == 1
    out = run_distill(spec, progress=False)
    before = _weights(tiny_model_dir)
    after = _weights(out)
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert any(not torch.equal(after[k], before[k]) for k in after if k in before)  # it trained
    card = json.loads((out / "distill_card.json").read_text())
    assert (card["hyperparameters"]["dtype"], card["hyperparameters"]["lr_schedule"]) == ("bfloat16", "cosine")
    with pytest.raises(SpecError, match="lr_schedule 'cosin' is not one of constant, cosine, linear.*Did you mean: cosine"):
        _spec(tiny_model_dir, corpus, tmp_path / "x", lr_schedule="cosin")


@pytest.mark.parametrize("dtype,native,warned", [("bfloat16", False, True), ("bfloat16", True, False),
                                                 ("float32", False, False)])
def test_emulated_bf16_is_named_before_training(monkeypatch, capsys, dtype, native, warned):
    """bf16 autocast on a CPU without native bf16 (AVX2 only) ran 11x slower than float32: say so, keep the choice."""
    from distill import api

    # the check itself is oneDNN's, which this machine answers one way or the other
    assert api.native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(api, "native_bf16", lambda device="cpu": native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    api._warn_emulated_bf16(DistillSpec.from_dict({"dtype": dtype}))
    err = capsys.readouterr().err
    assert ("no native bfloat16" in err and "--dtype float32" in err) == warned, err
