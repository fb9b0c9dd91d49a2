"""``DistillSpec``: what to distil, how, and where; validated at the edge.

Users write flat YAML (or CLI flags) with names and numbers. ``DistillSpec.from_dict``
checks every field and reports all problems at once in one ``SpecError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean
from distill.losses import DIVERGENCES


@dataclass(frozen=True, kw_only=True)
class Technique:
    """A distillation method as the catalogue shows it. Registered by name under the
    ``bequeath.techniques`` entry-point group (pyproject.toml), read by ``audit.registry``."""

    name: str
    summary: str


SOFT = Technique(name="soft", summary="soft-label KD: the student matches the teacher's token distributions "
                                      "(forward or reverse KL, JSD(beta), skew KL; temperature)")
HARD = Technique(name="hard", summary="hard-label KD: the student learns the teacher's argmax tokens (token "
                                      "level) or its greedy continuations (sequence level)")
CO = Technique(name="co", summary="co-distillation: teacher and peers train together, each pulled towards "
                                  "the others' distributions")
TECHNIQUES: dict[str, Technique] = {t.name: t for t in (SOFT, HARD, CO)}
METHODS = tuple(TECHNIQUES)
HARD_LEVELS = ("token", "sequence")
DEBIAS_METHODS = ("cda", "crr", "invariance")
STUDENT_FROM = ("layers", "config", "checkpoint")
# our names -> transformers' lr_scheduler_type (each with a linear warm-up of warmup_steps)
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


@dataclass(frozen=True, kw_only=True)
class StudentInit:
    """How the student starts: a subset of the teacher's layers, a config, or a checkpoint.

    ``layers``: every ``every``-th layer (0, every, 2·every, ...), the explicit ``layers`` list, or the
    ``keep`` layers that matter most on the distillation corpus (each layer's importance is the
    teacher's KL divergence from itself with that one layer skipped: :func:`distill.students.layer_importance`),
    with embeddings, final norm and head copied. ``config``: the teacher's config with the given
    overrides (``config`` mapping, e.g. ``{num_hidden_layers: 4, hidden_size: 256}``), random init.
    ``checkpoint``: an existing model directory (``path``).
    """

    source: str = "layers"
    every: int | None = 5
    layers: tuple[int, ...] | None = None
    keep: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"from": self.source}
        if self.source == "layers":
            d.update({"layers": list(self.layers)} if self.layers is not None
                     else {"keep": self.keep} if self.keep is not None else {"every": self.every})
        elif self.source == "config":
            d["config"] = dict(self.config)
        else:
            d["path"] = self.path
        return d


@dataclass(frozen=True, kw_only=True)
class Debias:
    """Bias-aware distillation (docs/debias.md). Every method trains on the corpus with its
    counterfactual (CDA: each sequence with a listed word beside its swap); ``crr`` also trains on
    the teacher's role-reversed distributions (``crr`` variant ``mean`` or ``max``), ``invariance``
    also adds ``weight``·KL between the student's distributions on a sequence and its swap.
    ``word_lists``: files of word pairs (default: the bundled gender_pairs.txt)."""

    method: str = "cda"
    word_lists: tuple[str, ...] = ()
    weight: float = 1.0
    crr: str = "mean"

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "word_lists": list(self.word_lists), "weight": self.weight, "crr": self.crr}


@dataclass(frozen=True, kw_only=True)
class DistillSpec:
    """One distillation run. See ``docs`` in the CLI help for each field's meaning."""

    teacher: str = "smollm2-135m"
    method: str = "soft"
    divergence: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.5  # JSD(β)
    skew_lambda: float = 0.1
    tau_squared: bool = True
    hard_level: str = "token"
    student: StudentInit = field(default_factory=StudentInit)
    corpus: str = "generate"  # .txt / .jsonl path, or "generate" (teacher writes it from seed prompts)
    corpus_field: str = "text"  # the JSONL field that holds each text (e.g. 'passage'); prompt+response when 'text'
    prompts: str | None = None  # prompt file for corpus=generate (default: bundled seed prompts)
    # folder of probe/task data (e.g. ../shared/data) whose items the corpus is also checked against
    # (distill.eval_items); not a hyperparameter: left out of as_dict, recorded in the card's contamination block
    contamination_data: str | None = None
    # the learning curve (task score against tokens seen): these tasks (audit.tasks names) are scored on
    # the student before training, every eval_every steps and at the end, and once on the teacher;
    # eval_limit caps each task's documents (lm-eval's --limit). Task data is read from data_dir, which
    # is also the contamination check's folder when contamination_data is not given. Not hyperparameters:
    # left out of as_dict, recorded in the card's learning_curve block.
    eval_tasks: tuple[str, ...] = ()
    eval_every: int = 0
    eval_limit: int | None = None
    data_dir: str | None = None
    gen_max_new_tokens: int = 48
    gen_temperature: float = 0.8
    gen_batch_size: int = 16
    max_steps: int = 60
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after the warm-up: constant | cosine | linear (decay to 0 at max_steps)
    weight_decay: float = 0.0
    seq_len: int = 128
    seed: int = 0
    output: str = "bequeath-out/student"
    checkpoint_every: int = 0  # 0 = only the final model
    resume: bool = True  # pick up the latest checkpoint under output, if any
    cache: str | None = None  # teacher-logit cache directory (built when missing)
    top_k: int = 64
    peers: int = 0  # co-distillation: extra randomly-seeded students beside teacher and student
    burn_in: int = 10  # co-distillation: steps over which λ ramps from 0
    lam: float = 0.5  # co-distillation λ for students
    teacher_lambda: float = 0.1  # co-distillation λ for the teacher
    teacher_lr: float | None = None  # co-distillation: teacher learning rate (default lr/10)
    snapshot_every: int = 0  # co-distillation: read peers from a snapshot refreshed every N steps
    dtype: str = "float32"
    debias: Debias | None = None  # bias-aware distillation: {method: cda|crr|invariance, ...}

    # ------------------------------------------------------------ construction

    @classmethod
    def demo(cls, out: Path) -> DistillSpec:
        """The demo student: forward KL, τ=2, α=0.5, the teacher's 14 most important layers of 30
        (58% of its parameters), generated corpus, and its learning curve on bundled QA."""
        return cls(method="soft", divergence="forward_kl", temperature=2.0, alpha=0.5,
                   student=StudentInit(source="layers", every=None, keep=14), corpus="generate",
                   eval_tasks=("bundled_qa",), eval_every=20, output=str(out))

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<flags>") -> DistillSpec:
        """Validate ``d`` (YAML or flags) and build a spec; all problems in one ``SpecError``."""
        if not isinstance(d, dict):
            raise SpecError(f"{source}: a distill spec must be a mapping, got {type(d).__name__}.")
        errors: list[str] = []
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                errors.append(f"unknown field '{key}'.{did_you_mean(key, known)}")
                continue
            if value is None and key not in ("cache", "prompts", "teacher_lr", "debias", "eval_limit", "data_dir"):
                continue
            kwargs[key] = value
        if "student" in kwargs:
            kwargs["student"] = _student(kwargs["student"], errors)
        if "eval_tasks" in kwargs:
            kwargs["eval_tasks"] = _names("eval_tasks", kwargs["eval_tasks"], errors)
        if kwargs.get("debias") is not None:
            kwargs["debias"] = _debias(kwargs["debias"], errors)
        _coerce(kwargs, errors)
        spec = cls(**{k: v for k, v in kwargs.items() if v is not _BAD})
        errors += spec.problems()
        if errors:
            raise SpecError(_message(source, errors))
        return spec

    def problems(self) -> list[str]:
        """Cross-field checks; an empty list when the spec is runnable."""
        e: list[str] = []
        for name, value, allowed in (("method", self.method, METHODS), ("divergence", self.divergence, DIVERGENCES),
                                     ("hard_level", self.hard_level, HARD_LEVELS)):
            if value not in allowed:
                e.append(f"{name} '{value}' is not one of {', '.join(allowed)}.{did_you_mean(value, allowed)}")
        for name in ("temperature", "lr"):
            if not getattr(self, name) > 0:
                e.append(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("alpha", "beta", "skew_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                e.append(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        for name in ("max_steps", "batch_size", "grad_accum", "seq_len", "top_k", "gen_max_new_tokens", "gen_batch_size"):
            if getattr(self, name) < 1:
                e.append(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("checkpoint_every", "peers", "burn_in", "snapshot_every", "warmup_steps"):
            if getattr(self, name) < 0:
                e.append(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.lam < 0 or self.teacher_lambda < 0:
            e.append("lam and teacher_lambda must be >= 0.")
        if self.cache and self.method == "co":
            e.append("cache: co-distillation trains the teacher, so its logits cannot be cached; remove 'cache'.")
        if self.cache and self.method == "hard" and self.hard_level == "sequence":
            e.append("cache: sequence-level hard-label training needs no teacher logits; remove 'cache'.")
        if self.method != "co" and self.peers:
            e.append("peers: only co-distillation (method: co) trains peers.")
        if self.lr_schedule not in LR_SCHEDULES:
            e.append(f"lr_schedule '{self.lr_schedule}' is not one of {', '.join(LR_SCHEDULES)}."
                     f"{did_you_mean(self.lr_schedule, LR_SCHEDULES)}")
        if self.dtype not in ("float32", "bfloat16"):
            e.append(f"dtype '{self.dtype}' is not one of float32, bfloat16.")
        for name in ("contamination_data", "data_dir"):
            folder = getattr(self, name)
            if folder and not Path(folder).is_dir():
                e.append(f"{name}: {folder} is not a folder; give the one that holds the probes' and tasks' data "
                         "(e.g. ../shared/data), or leave it out to use the bundled ones only.")
        if self.eval_every and not self.eval_tasks:
            e.append("eval_every: the learning curve needs tasks to score; name them in eval_tasks (e.g. [bundled_qa]).")
        if self.eval_limit is not None and self.eval_limit < 1:
            e.append(f"eval_limit must be >= 1 (documents per task), got {self.eval_limit}.")
        if not self.corpus_field:
            e.append("corpus_field: give the JSONL field that holds each text (default 'text').")
        if self.debias is not None:
            e += self._debias_problems()
        return e

    def _debias_problems(self) -> list[str]:
        from distill.debias import CRR_VARIANTS

        d, e = self.debias, []
        if d.method not in DEBIAS_METHODS:
            e.append(f"debias.method '{d.method}' is not one of {', '.join(DEBIAS_METHODS)}."
                     f"{did_you_mean(d.method, DEBIAS_METHODS)}")
        if d.crr not in CRR_VARIANTS:
            e.append(f"debias.crr '{d.crr}' is not one of {', '.join(CRR_VARIANTS)}.{did_you_mean(d.crr, CRR_VARIANTS)}")
        if not d.weight >= 0:
            e.append(f"debias.weight must be >= 0, got {d.weight}.")
        for path in d.word_lists:
            if not Path(path).is_file():
                e.append(f"debias.word_lists: {path} does not exist (give files of word pairs, two words a line).")
        if d.method == "crr" and self.method == "hard" and self.hard_level == "sequence":
            e.append("debias.method 'crr' changes the teacher's token distributions, which sequence-level hard-label "
                     "training never reads; use 'cda' (the teacher also answers the swapped prompts) or 'invariance'.")
        if d.method == "crr" and self.cache:
            e.append("debias.method 'crr' needs the teacher's full distributions on each sequence and its swap; "
                     "the top-k cache keeps neither; remove 'cache'.")
        if d.method == "crr" and self.method == "soft" and self.alpha == 0.0:
            e.append("debias.method 'crr' acts on the teacher term, which alpha 0 switches off; set alpha > 0.")
        return e

    def as_dict(self, *, settings: bool = False) -> dict[str, Any]:
        """The spec as YAML would hold it: the hyperparameters (what the card records), and with
        ``settings`` also the fields that do not change the student (data folders, the learning curve)."""
        d = dataclasses.asdict(self)
        d["student"] = self.student.as_dict()
        for key in SETTINGS:
            if settings:
                d[key] = list(d[key]) if isinstance(d[key], tuple) else d[key]
            else:
                del d[key]
        d["debias"] = self.debias.as_dict() if self.debias is not None else None
        return d


_BAD = object()
# fields that do not change what is trained: left out of the card's hyperparameters
SETTINGS = ("contamination_data", "eval_tasks", "eval_every", "eval_limit", "data_dir")


def _message(source: str, errors: list[str]) -> str:
    lines = "\n".join(f"  - {err}" for err in errors)
    return f"{source}: invalid distill spec ({len(errors)} problem{'s' * (len(errors) > 1)}):\n{lines}"


def _coerce(kwargs: dict[str, Any], errors: list[str]) -> None:
    """Check each field's type against the dataclass annotation; numbers from flags are coerced."""
    types = {f.name: f.type for f in dataclasses.fields(DistillSpec)}
    for key, value in list(kwargs.items()):
        t = str(types[key])
        if value is None or key in ("student", "debias"):
            continue
        try:
            if t.startswith("bool"):
                if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                    value = value.lower() in ("true", "yes", "1")
                if not isinstance(value, bool):
                    raise TypeError
            elif t.startswith("int"):
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                value = int(value)
            elif t.startswith("float"):
                if isinstance(value, bool):
                    raise TypeError
                value = float(value)
            elif t.startswith("str"):
                if not isinstance(value, str | Path):
                    raise TypeError
                value = str(value)
        except (TypeError, ValueError):
            errors.append(f"{key}: expected {t.split(' ')[0]}, got {value!r}.")
            value = _BAD
        kwargs[key] = value


def _names(field_name: str, value: Any, errors: list[str]) -> Any:
    """A list of names from YAML (a list) or a flag (comma-separated)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        errors.append(f"{field_name}: expected a list of task names, e.g. [bundled_qa, arc_easy_local], got {value!r}.")
        return _BAD
    return tuple(value)


def _student(value: Any, errors: list[str]) -> Any:
    """Parse ``student: {from: layers, every: 5}`` and its variants."""
    if isinstance(value, StudentInit):
        return value
    if not isinstance(value, dict):
        errors.append(f"student: expected a mapping like {{from: layers, every: 5}}, got {value!r}.")
        return _BAD
    src = value.get("from", "layers")
    if src not in STUDENT_FROM:
        errors.append(f"student.from '{src}' is not one of {', '.join(STUDENT_FROM)}.{did_you_mean(str(src), STUDENT_FROM)}")
        return _BAD
    allowed = {"layers": {"from", "every", "layers", "keep"}, "config": {"from", "config"},
               "checkpoint": {"from", "path"}}[src]
    for key in set(value) - allowed:
        errors.append(f"student.{key}: not a field of 'from: {src}' (expected {', '.join(sorted(allowed))})."
                      f"{did_you_mean(key, allowed)}")
    if src == "layers":
        layers, keep = value.get("layers"), value.get("keep")
        if sum(value.get(k) is not None for k in ("layers", "keep", "every")) > 1:
            errors.append("student: give one of 'every', 'layers' or 'keep', not several.")
            return _BAD
        every = value.get("every", None if layers is not None or keep is not None else 5)
        if keep is not None:
            if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
                errors.append(f"student.keep: expected the number of teacher layers to keep (an integer >= 1), got {keep!r}.")
                return _BAD
            return StudentInit(source="layers", every=None, keep=keep)
        if layers is not None:
            if not isinstance(layers, list | tuple) or not layers or not all(isinstance(x, int) and x >= 0 for x in layers):
                errors.append(f"student.layers: expected a non-empty list of layer indices, got {layers!r}.")
                return _BAD
            return StudentInit(source="layers", every=None, layers=tuple(layers))
        if not isinstance(every, int) or every < 1:
            errors.append(f"student.every: expected an integer >= 1, got {every!r}.")
            return _BAD
        return StudentInit(source="layers", every=every)
    if src == "config":
        cfg = value.get("config", {})
        if not isinstance(cfg, dict) or not cfg:
            errors.append("student.config: expected a mapping of config overrides, e.g. {num_hidden_layers: 4}.")
            return _BAD
        return StudentInit(source="config", every=None, config=dict(cfg))
    if not value.get("path"):
        errors.append("student.path: 'from: checkpoint' needs the model directory in 'path'.")
        return _BAD
    return StudentInit(source="checkpoint", every=None, path=str(value["path"]))


def _debias(value: Any, errors: list[str]) -> Any:
    """Parse ``debias: {method: crr, word_lists: [a.txt], weight: 1.0, crr: mean}`` (or just ``debias: cda``)."""
    if isinstance(value, Debias):
        return value
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, dict):
        errors.append(f"debias: expected a mapping like {{method: cda}} or a method name, got {value!r}.")
        return _BAD
    allowed = {"method", "word_lists", "weight", "crr"}
    for key in sorted(set(value) - allowed):
        errors.append(f"debias.{key}: not a field of debias (expected {', '.join(sorted(allowed))})."
                      f"{did_you_mean(str(key), allowed)}")
    kw: dict[str, Any] = {}
    method = value.get("method")
    if not isinstance(method, str):
        errors.append(f"debias.method: expected one of {', '.join(DEBIAS_METHODS)}, got {method!r}.")
        return _BAD
    kw["method"] = method
    lists = value.get("word_lists")
    if lists is not None:
        if isinstance(lists, str | Path):
            lists = [lists]
        if not isinstance(lists, list | tuple) or not lists or not all(isinstance(x, str | Path) for x in lists):
            errors.append(f"debias.word_lists: expected a list of file paths, got {lists!r}.")
            return _BAD
        kw["word_lists"] = tuple(str(x) for x in lists)
    weight = value.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float | str):
        errors.append(f"debias.weight: expected a number, got {weight!r}.")
        return _BAD
    try:
        kw["weight"] = float(weight)
    except ValueError:
        errors.append(f"debias.weight: expected a number, got {weight!r}.")
        return _BAD
    crr = value.get("crr", "mean")
    if not isinstance(crr, str):
        errors.append(f"debias.crr: expected 'mean' or 'max', got {crr!r}.")
        return _BAD
    kw["crr"] = crr
    return Debias(**kw)
