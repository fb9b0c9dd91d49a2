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
