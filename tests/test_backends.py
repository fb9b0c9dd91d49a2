"""Any lm-eval backend (issue 17): the spec's backend field, the registry, what probes need, dtype."""

from __future__ import annotations

import json

import pytest

from audit.errors import SpecError
from audit.lm import backend_key, lacking, make_lm, redacted, registry_kwargs, score_probe_items
from audit.models import ModelRef, load_model
from audit.spec import AuditSpec
from probes.registry import get_probe


def _parse(backend, **kw):
    return AuditSpec.from_dict({"backend": backend, **kw})


# ---------------------------------------------------------------- the spec


def test_ours_stay_names_and_any_registry_type_becomes_name_and_args():
    assert AuditSpec.from_dict({}).backend == "engine"
    assert _parse("hflm").backend == "hflm"
    assert _parse({"name": "engine"}).backend == "engine"  # the mapping form of ours is still a name
    assert _parse("hf").backend == {"name": "hf", "args": {}}
    spec = _parse({"name": "hf", "args": {"device": "cpu", "max_length": 256}})
    assert spec.backend == {"name": "hf", "args": {"device": "cpu", "max_length": 256}}
    assert spec.to_dict()["backend"] == spec.backend


@pytest.mark.parametrize("backend, field, words", [
    ({"nmae": "hf"}, "backend:", "Did you mean: name?"),
    ({"args": {}}, "backend.name:", "expected a backend name"),
    ({"name": "hf", "args": ["device=cpu"]}, "backend.args:", "expected a mapping"),
    ({"name": "hf", "args": "device=cpu"}, "backend.args:", "expected a mapping"),
    ({"name": "engine", "args": {"device": "cpu"}}, "backend.args:", "takes no args"),
    (3, "backend:", "expected a name"),
    ({"name": ""}, "backend.name:", "expected a backend name"),
])
def test_a_malformed_backend_is_named_by_its_field(backend, field, words):
    with pytest.raises(SpecError) as err:
        _parse(backend)
    assert f"- {field}" in str(err.value) and words in str(err.value)


def test_an_unknown_backend_is_refused_with_did_you_mean_from_the_registry():
    with pytest.raises(SpecError) as err:
        _parse({"name": "hg"})
    msg = str(err.value)
    assert "backend.name: Unknown backend 'hg'. Did you mean: hf?" in msg
    assert "local-completions" in msg and "vllm" in msg  # the registry's list is shown
    with pytest.raises(SpecError, match="Did you mean: engine"):
        _parse("engin")


def test_secrets_are_not_recorded():
    spec = _parse({"name": "local-completions",
                   "args": {"base_url": "http://localhost:8000/v1/completions", "tokenizer": "/models/t",
                            "api_key": "sk-1", "auth_token": "t0", "HF_TOKEN": "t1", "max_tokens": 8}})
    rec = spec.to_dict()["backend"]
    assert rec == {"name": "local-completions",
                   "args": {"base_url": "http://localhost:8000/v1/completions", "tokenizer": "/models/t",
                            "api_key": "<redacted>", "auth_token": "<redacted>", "HF_TOKEN": "<redacted>",
                            "max_tokens": 8}}
    assert spec.backend["args"]["api_key"] == "sk-1"  # the audit itself still has it
    assert "sk-1" not in json.dumps(spec.to_dict()) and redacted(spec.backend) == rec
    assert backend_key("engine") == {} and backend_key(spec.backend) == {"backend": rec}


# ---------------------------------------------------------------- what a backend implements


def test_lacking_reads_what_the_lm_eval_class_implements():
    from lm_eval.api.registry import get_model

    assert lacking(get_model("hf")) == set()
    assert "loglikelihood" in lacking(get_model("local-chat-completions"))  # raises NotImplementedError
    assert "loglikelihood" not in lacking(get_model("local-completions"))  # echo + logprobs


@pytest.fixture(scope="module")
def no_generation_backend():
    """A minimal lm-eval LM that scores log-likelihoods but cannot generate, registered by name."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model

    class NoGeneration(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(-1.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return [-1.0 for _ in requests]

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError("this backend cannot generate")

    register_model("test-no-generation")(NoGeneration)
    yield "test-no-generation"
    model_registry._objs.pop("test-no-generation", None)


def test_a_backend_lacking_a_request_type_is_refused_with_the_probes_that_need_it(no_generation_backend):
    with pytest.raises(SpecError) as err:
        _parse(no_generation_backend, probes=["bundled", "bold"], tasks=["bundled_qa"])
    msg = str(err.value)
    assert "backend: Backend 'test-no-generation' cannot run this audit: it has no generate_until" in msg
    assert "probe bold" in msg and "probe bundled" not in msg and "bundled_qa" not in msg
    # the same backend is fine for log-likelihood probes and multiple-choice tasks
    assert _parse(no_generation_backend, probes=["bundled", "crows_pairs"], tasks=["bundled_qa"]).backend == {
        "name": no_generation_backend, "args": {}}


def test_probes_declare_their_request_types():
    from audit.registry import available

    for name in available("probes"):
        probe = get_probe(name)
        want = ("generate_until",) if probe.kind == "generation" else ("loglikelihood",)
        assert probe.needs == want, name
    assert get_probe("bold").needs == ("generate_until",)


# ---------------------------------------------------------------- the registry's hf against our hflm


def test_registry_hf_gives_our_hflm_per_item_scores(tiny):
    probe = get_probe("bundled")
    items = probe.load(None).items[:12]
    ours = score_probe_items(make_lm(tiny, backend="hflm", batch_size=4), probe, items, progress=False)
    lm = make_lm(tiny, backend={"name": "hf", "args": {"device": "cpu"}}, batch_size=4)
    assert type(lm).__name__ == "HFLM" and isinstance(lm._model, type(tiny.model))  # lm-eval loaded it itself
    theirs = score_probe_items(lm, probe, items, progress=False)
    assert [r.item_id for r in theirs] == [r.item_id for r in ours]
    for a, b in zip(ours, theirs, strict=True):
        assert [x.loglik for x in b.answers] == pytest.approx([x.loglik for x in a.answers], abs=1e-5)
        assert [x.n_tokens for x in b.answers] == [x.n_tokens for x in a.answers]
        assert b.columns == pytest.approx(a.columns, abs=1e-5)


def test_the_model_path_and_dtype_become_the_lm_eval_arguments(tiny_model_dir):
    from lm_eval.api.registry import get_model

    loaded = load_model(ModelRef(name="t", path=str(tiny_model_dir), dtype="bfloat16"))
    kw = registry_kwargs(get_model("hf"), loaded, {"device": "cpu"}, batch_size=8)
    assert kw == {"device": "cpu", "pretrained": str(tiny_model_dir), "dtype": "bfloat16", "batch_size": 8}
    # the user's own arguments win; an API model gets the path as its served model name
    kw = registry_kwargs(get_model("hf"), loaded, {"pretrained": "elsewhere", "dtype": "float16"}, batch_size=8)
    assert kw["pretrained"] == "elsewhere" and kw["dtype"] == "float16"
    kw = registry_kwargs(get_model("local-completions"), loaded, {"base_url": "http://x"}, batch_size=8)
    assert kw["model"] == str(tiny_model_dir) and "pretrained" not in kw and "dtype" not in kw


# ---------------------------------------------------------------- dtype


@pytest.mark.parametrize("dtype,native,warned", [("bfloat16", False, True), ("bfloat16", True, False),
                                                 ("float32", False, False)])
def test_emulated_bf16_model_is_named_when_loaded(tiny_model_dir, monkeypatch, capsys, dtype, native, warned):
    """A bf16 model on a CPU without native bf16 scores emulated (11x slower than float32 measured): say so."""
    import torch

    from audit import models

    assert models.native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own answer
    monkeypatch.setattr(models, "native_bf16", lambda device="cpu": native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_model(ModelRef(name="t", path=str(tiny_model_dir), dtype=dtype))
    err = capsys.readouterr().err
    assert ("model 't' in bfloat16 on a CPU without native bf16" in err) == warned, err
    assert next(loaded.model.parameters()).dtype == getattr(torch, dtype)  # the user's choice is kept


@pytest.mark.parametrize("backend", ["engine", "hflm"])
def test_our_backends_score_the_model_in_its_dtype(tiny_model_dir, backend):
    import torch

    loaded = load_model(ModelRef(name="t", path=str(tiny_model_dir), dtype="bfloat16"))
    lm = make_lm(loaded, backend=backend, batch_size=4)
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    probe = get_probe("bundled")
    rows = score_probe_items(lm, probe, probe.load(None).items[:4], progress=False)
    assert all(r.invalid is None for r in rows)


def test_bf16_and_a_registry_backend_are_recorded_in_run_json(tmp_path, tiny_model_dir):
    from audit.harness import run_audit
    from audit.run_format import AuditRun, BackendRecord
    from audit.verify import load_run, verify
    from reports.build import as_run
    from reports.sections import method

    spec = AuditSpec.from_dict(dict(
        teacher={"name": "teacher", "path": str(tiny_model_dir), "dtype": "bfloat16"},
        students=[{"name": "student", "path": str(tiny_model_dir)}],
        probes=[{"name": "bundled", "limit": 3}], tasks=[], n_boot=100, n_perm=999,
        backend={"name": "hf", "args": {"device": "cpu", "token": "hf_secret"}},
        out=str(tmp_path / "run"), cache=str(tmp_path / "cache")))
    out, _ = run_audit(spec, progress=False)
    run = json.loads((out / "run.json").read_text())
    assert [m["dtype"] for m in run["models"]] == ["bfloat16", "float32"]
    assert run["settings"]["backend"] == {"name": "hf", "args": {"device": "cpu", "token": "<redacted>"}}
    assert "hf_secret" not in (out / "run.json").read_text()
    assert AuditRun.from_json(run).settings.backend == BackendRecord(name="hf", args={"device": "cpu",
                                                                                      "token": "<redacted>"})
    stored, rows = load_run(out)
    failed = [c for c in verify(stored, rows, stored.get("items_sha256"), key=None) if c.status != "pass"]
    assert failed == []
    models = method(as_run(run))["models"]
    assert [m[5] for m in models] == ["bfloat16", "float32"]  # the report's models table states each dtype


def test_the_audit_command_takes_any_backend_with_lm_eval_style_args(tmp_path):
    from audit.cli import audit_spec, build_parser

    def spec(*flags: str):
        return audit_spec(build_parser().parse_args(["audit", "--teacher", "smollm2-135m", "--out", str(tmp_path),
                                                     *flags]))

    got = spec("--backend", "local-completions", "--backend-args",
               "base_url=http://127.0.0.1:8000/v1/completions,tokenizer=/models/t,num_concurrent=4,tokenized_requests=False")
    assert got.backend == {"name": "local-completions", "args": {
        "base_url": "http://127.0.0.1:8000/v1/completions", "tokenizer": "/models/t", "num_concurrent": 4,
        "tokenized_requests": False}}
    assert spec("--backend", "hflm").backend == "hflm"
    with pytest.raises(SpecError, match="'hflm' takes no args"):
        spec("--backend", "hflm", "--backend-args", "batch_size=4")
    with pytest.raises(SpecError, match="--backend-args: expected comma-separated key=value pairs"):
        spec("--backend", "hf", "--backend-args", "pretrained")
    with pytest.raises(SpecError, match="backend.name: expected a backend name"):
        spec("--backend-args", "pretrained=x")
