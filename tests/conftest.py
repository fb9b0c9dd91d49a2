"""Shared fixtures. Tests are offline; tiny models are built from a config.

- ``teacher_dir``: the real SmolLM2-135M teacher, converted once (session) - for tests marked slow.
- ``tiny_model_dir``: a tiny random Llama (2 layers, hidden 32) with the teacher's real tokenizer,
  saved as safetensors in a temp dir; fast unit tests use it.
- ``audit_runs``: a complete and a partial audit run written by the real audit code from
  synthetic answers (tests/fixtures/make_run.py), once per session; no model is loaded.
- ``data_dir``: ``../shared/data`` (or ``$BEQUEATH_DATA``); tests that need it skip with a reason
  only if it is absent, which never happens in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("BEQUEATH_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"shared datasets not found at {path}; set BEQUEATH_DATA")
    return path


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    from audit.models import prepare_demo_teacher

    return prepare_demo_teacher()


@pytest.fixture(scope="session")
def teacher(teacher_dir):
    from audit.models import ModelRef, load_model

    return load_model(ModelRef(name="teacher", path=str(teacher_dir)))


def build_tiny_model(out: Path, tokenizer_dir: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random Llama with the teacher's tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, teacher_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), teacher_dir)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from audit.models import ModelRef, load_model

    return load_model(ModelRef(name="tiny", path=str(tiny_model_dir)))


def _make_run_module():
    """tests/fixtures/make_run.py, imported once under a name no installed package can shadow."""
    import importlib.util
    import sys

    name = "bequeath_tests_make_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "fixtures" / "make_run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def make_run_module():
    """The fixture-run generator: ``make_run(out_dir, partial=...)`` and the planted ``EXPECTED`` verdicts."""
    return _make_run_module()


@pytest.fixture(scope="session")
def audit_runs(tmp_path_factory, make_run_module) -> dict[str, Path]:
    """Two audit runs written by the real audit code from synthetic answers (tests/fixtures/make_run.py),
    once per session: "complete", and "partial" (the hard student's scorer failed on the bundled
    probe, and a task's data file is missing). Read-only: tests that change a run copy it first."""
    root = tmp_path_factory.mktemp("audit_runs")
    return {"complete": make_run_module.make_run(root / "complete"),
            "partial": make_run_module.make_run(root / "partial", partial=True)}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory, teacher_dir) -> Path:
    """The demo run on the real teacher, once per session, with a small distillation budget."""
    from audit.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "4"]) == 0
    return out


# ---------------------------------------------------------------- a fake hub (hub ids, offline)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """$BEQUEATH_CACHE in a temporary folder (hub exports land in its datasets/)."""
    root = tmp_path / "bequeath-cache"
    monkeypatch.setenv("BEQUEATH_CACHE", str(root))
    return root


@pytest.fixture
def hub(monkeypatch):
    """A fake hub: {(repo, config, split): Dataset}; records every load_dataset call."""
    import datasets

    tables: dict[tuple, datasets.Dataset] = {}
    calls: list[tuple] = []

    def load_dataset(path, name=None, *, split=None, **kwargs):
        assert not kwargs.get("trust_remote_code")
        calls.append((path, name, split))
        return tables[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


def free_port() -> int:
    """A TCP port free on localhost now (for torchrun's rendezvous and test servers): a fixed port
    would collide with another run of the suite on the same machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

