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
