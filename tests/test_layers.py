"""The packages import one way: probes <- audit <- distill, reports reads stored runs; the app layer
(the CLI and the demo) sits on top. Every import counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = {"audit/cli.py", "audit/demo.py", "reports/cli.py"}  # the app layer: may reach every package
ALLOWED = {  # package -> first-party modules it may import (prefix match), besides itself
    "probes": set(),
    "audit": {"probes"},
    # audit.tasks: read only, by distill.eval_items, for the task items the corpus must not contain
    # (its registry and data files; lm-eval is imported only inside functions that distill never calls)
    # audit.lm and audit.tasks: the learning curve scores its tasks through the audit's engine, so a
    # curve's point and an audit's figure are computed the same way
    "distill": {"probes", "audit.models", "audit.errors", "audit.tasks", "audit.lm"},
    "reports": {"probes.files", "audit.run_format", "audit.verdicts", "audit.errors"},
}
HEAVY = {"torch", "transformers"}  # never in reports: a report renders on any machine


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _violations() -> list[str]:
    bad = []
    for pkg, allowed in ALLOWED.items():
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in APP:
                continue
            for line, name in _imports(path):
                top = name.split(".")[0]
                if pkg == "reports" and top in HEAVY:
                    bad.append(f"{rel}:{line} imports {name}")
                if top in ALLOWED and top != pkg and not any(name == a or name.startswith(a + ".") for a in allowed):
                    bad.append(f"{rel}:{line} imports {name}")
    return bad


def test_imports_follow_the_layers():
    assert _violations() == []


def test_the_check_catches_an_import_against_the_layers(tmp_path, monkeypatch):
    """The rule is live: a probe importing audit is reported with its file and line."""
    fake = tmp_path / "probes"
    fake.mkdir()
    (fake / "x.py").write_text("import json\n\ndef f():\n    from audit.store import write_jsonl\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _violations() == ["probes/x.py:4 imports audit.store"]
