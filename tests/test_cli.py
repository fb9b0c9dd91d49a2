"""The ``bequeath`` command's own subcommands: --version, ls, models list. Real output, no model loaded."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from audit.cli import main


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == f"bequeath {version('bequeath')}"
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert version("bequeath") == pyproject["project"]["version"]  # installed metadata is not stale


def test_ls_probes_name_prints_the_full_card(capsys):
    from probes.registry import get_probe

    assert main(["ls", "probes", "bbq"]) == 0
    out = capsys.readouterr().out
    card = get_probe("bbq").card
    for heading in ("measures:", "metrics:", "data:", "license:", "caveats:", "citation:", "measurability:"):
        assert f"\n{heading}\n" in out
    assert out.startswith(f"bbq (version {get_probe('bbq').version}, loglikelihood): {card.title}")
    assert card.measures in out and card.license in out and card.citation.splitlines()[0] in out
    for name, text in card.metrics.items():
        assert f"  {name}: {text}" in out
    for caveat in card.caveats:
        assert f"  - {caveat}" in out
    assert f"ability metric: {card.ability}" in out and f"floor: {card.floor:g}" in out
    assert "hf://oskarvanderwal/bbq" in out  # where its hub copy lives


def test_ls_probes_name_without_ability_has_no_measurability_section(capsys):
    from probes.registry import available, get_probe

    plain = [n for n in available() if get_probe(n).card.ability is None and get_probe(n).card.floor is None]
    if not plain:
        pytest.skip("every probe declares an ability metric")
    assert main(["ls", "probes", plain[0]]) == 0
    out = capsys.readouterr().out
    assert "citation:" in out and "measurability:" not in out


def test_ls_probes_unknown_name_exits_2_with_did_you_mean(capsys):
    assert main(["ls", "probes", "crows_pair"]) == 2
    err = capsys.readouterr().err
    assert "Unknown probe 'crows_pair'" in err and "Did you mean: crows_pairs?" in err


def test_ls_name_after_tasks_is_a_usage_error(capsys):
    assert main(["ls", "tasks", "bbq"]) == 2
    assert "bequeath ls probes NAME" in capsys.readouterr().err


def test_models_list_empty_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BEQUEATH_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"  smollm2-135m   not prepared: {tmp_path / 'models' / 'smollm2-135m'}" in out
    assert "bequeath models prepare smollm2-135m" in out
    assert f"model folders in {tmp_path / 'models'}:\n  (none)" in out


def test_models_list_shows_prepared_alias_and_cache_folders(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BEQUEATH_CACHE", str(tmp_path))
    demo = tmp_path / "models" / "smollm2-135m"
    demo.mkdir(parents=True)
    (demo / "model.safetensors").write_bytes(b"\0" * (3 * 2**20))
    (demo / "bequeath_source.json").write_text("{}")
    (tmp_path / "models" / "my-student").mkdir()
    (tmp_path / "models" / ".prep-123").mkdir()  # an unfinished conversion is not a model
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"  smollm2-135m   prepared: {demo}\n" in out
    assert "  smollm2-135m   3.0 MiB of safetensors" in out
    assert "  my-student     (no .safetensors weights)" in out
    assert ".prep-123" not in out


# ---------------------------------------------------------------- one registry: probes, tasks, techniques


def test_registry_lists_each_kind():
    from audit.registry import available
    from audit.tasks import LOCAL_TASKS
    from probes.registry import BUILTIN

    assert set(BUILTIN) <= set(available("probes"))
    assert set(LOCAL_TASKS) <= set(available("tasks"))
    assert available("techniques") == ["co", "hard", "soft"]  # from the installed entry points


def test_techniques_are_read_from_entry_points_and_match_distill():
    """The names come from the installed metadata (pyproject's bequeath.techniques group) and are
    exactly the methods distill's spec accepts; each loads to distill's own description."""
    from importlib.metadata import entry_points

    from audit.registry import get
    from distill.spec import METHODS, TECHNIQUES

    eps = {ep.name: ep.value for ep in entry_points(group="bequeath.techniques")}
    assert eps == {name: f"distill.spec:{name.upper()}" for name in METHODS}
    for name in METHODS:
        assert get("techniques", name) is TECHNIQUES[name]


def test_registry_get_returns_the_thing():
    from audit.registry import get
    from audit.tasks import LOCAL_TASKS

    assert get("tasks", "bundled_qa") is LOCAL_TASKS["bundled_qa"]
    probe = get("probes", "crows_pairs")
    assert probe.name == "crows_pairs" and probe.card.title


@pytest.mark.parametrize(("kind", "typo", "close"), [("probes", "stereosett", "stereoset"),
                                                     ("tasks", "bundled_q", "bundled_qa"),
                                                     ("techniques", "sotf", "soft")])
def test_registry_unknown_names_get_did_you_mean(kind, typo, close):
    from audit.errors import SpecError
    from audit.registry import available, get

    with pytest.raises(SpecError) as exc:
        get(kind, typo)
    msg = str(exc.value)
    assert f"'{typo}'" in msg and f"Did you mean: {close}?" in msg and ", ".join(available(kind)) in msg
    assert exc.value.exit_code == 2


def test_registry_unknown_kind():
    from audit.errors import SpecError
    from audit.registry import available

    with pytest.raises(SpecError, match="Did you mean: probes"):
        available("probe")


def test_ls_techniques_reads_the_registry(capsys, monkeypatch):
    """ls lists what the registry holds: a technique registered by a plugin shows up, with its summary."""
    import importlib.metadata as md

    import audit.registry as registry
    from distill.spec import TECHNIQUES

    real = md.entry_points

    def with_plugin(*, group):
        eps = list(real(group=group))
        if group == "bequeath.techniques":
            eps.append(md.EntryPoint(name="zz_plugin", value="distill.spec:HARD", group=group))
        return eps

    monkeypatch.setattr(registry, "entry_points", with_plugin)
    assert main(["ls", "techniques"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "techniques:"
    assert out[1:] == [f"  {n:<8} {TECHNIQUES[n].summary}" for n in ("co", "hard", "soft")] + [
        f"  {'zz_plugin':<8} {TECHNIQUES['hard'].summary}"]


def test_ls_tasks_reads_the_registry(capsys):
    from audit.tasks import LOCAL_TASKS

    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    for t in LOCAL_TASKS.values():
        assert f"  {t.name:<20} {t.description}" in out


def test_spec_validation_uses_the_registry():
    from audit.errors import SpecError
    from audit.spec import AuditSpec

    with pytest.raises(SpecError) as exc:
        AuditSpec.from_dict({"probes": ["crows_pair"], "tasks": ["bundled_q"]})
    msg = str(exc.value)
    assert "probes: Unknown probe 'crows_pair'. Did you mean: crows_pairs?" in msg
    assert "tasks: Unknown task 'bundled_q'. Did you mean: bundled_qa?" in msg


# ---------------------------------------------------------------- lm-eval's per-wrap warnings, once


def test_lm_eval_wrap_warnings_appear_at_most_once(tiny):
    """lm-eval's HFLM warns twice on every model it wraps; over several wraps (both backends) each
    warning is logged once per process, and lm-eval's other messages still pass."""
    import logging

    import audit.lm as lm

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("lm_eval.models.huggingface")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    lm._ONCE.seen.clear()  # as in a fresh process (an earlier test may already have said them)
    try:
        for backend in ("hflm", "engine", "hflm"):
            lm.make_lm(tiny, backend=backend, batch_size=2)
        logger.warning("some other lm-eval warning")
        logger.warning("some other lm-eval warning")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [r.getMessage() for r in records]
    for prefix in lm._ONCE_PREFIXES:
        assert sum(m.startswith(prefix) for m in messages) == 1, (prefix, messages)
    assert messages.count("some other lm-eval warning") == 2
    assert logger.filters.count(lm._ONCE) == 1  # installed once, however many wraps
