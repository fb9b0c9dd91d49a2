"""audit.run_format: the typed stored run reads every run the audit writes, names malformed fields by
path, and matches docs/run-schema.md."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from audit.cli import main
from audit.run_format import RECORDS, AuditRun, Comparison, RunFormatError


@pytest.fixture(scope="module")
def stored(audit_runs) -> dict[str, dict]:
    return {k: json.loads((v / "run.json").read_text()) for k, v in audit_runs.items()}


def test_every_run_the_audit_writes_reads_back(stored):
    for name, doc in stored.items():
        run = AuditRun.from_json(doc)
        assert len(run.comparisons) == len(doc["comparisons"]) and run.status == doc["status"], name
        assert run.comparisons[0].teacher.state in ("biased", "within tolerance", "undetermined")


def test_comparisons_the_compare_code_builds_are_what_run_json_holds(audit_runs, stored):
    """The typed records audit.compare builds from a run's items serialise (``to_json``) to run.json's
    comparisons, key order included, and read back (``from_json``) to equal records."""
    from audit.compare import (
        ItemInfo,
        columns_from_rows,
        finalize_records,
        probe_comparisons,
        settings_from_run,
    )
    from audit.verify import load_run
    from probes.registry import get_probe

    doc, rows = load_run(audit_runs["complete"])
    settings = settings_from_run(doc["settings"])
    (name,) = [p["probe"] for p in doc["probes"]]
    mine = [r for r in rows if r.get("probe") == name]
    items = {r["item"]: ItemInfo(id=r["item"], groups=r["groups"], cluster=str(r["cluster"])) for r in mine}
    cols = {m["name"]: columns_from_rows([r for r in mine if r["model"] == m["name"]]) for m in doc["models"]}
    records = finalize_records(probe_comparisons(name=name, probe=get_probe(name), items=list(items.values()),
                                                 cols=cols, teacher="teacher", students=["soft", "hard"],
                                                 settings=settings), settings)
    assert records and all(isinstance(c, Comparison) for c in records)
    assert json.dumps([c.to_json() for c in records]) == json.dumps(stored["complete"]["comparisons"])
    assert [Comparison.from_json(c.to_json()) for c in records] == records
    assert AuditRun.from_json(stored["complete"]).comparisons == records


@pytest.mark.parametrize("mutate, path", [
    (lambda r: r["comparisons"][3]["delta"].update(p_adj="0.01"), "comparisons[3].delta.p_adj"),
    (lambda r: r.update(status="running"), "status"),
    (lambda r: r.pop("status"), "status: missing"),
    (lambda r: r["models"][0].pop("dtype"), "models[0].dtype: missing"),
    (lambda r: r["settings"].update(n_perm=True), "settings.n_perm"),
    (lambda r: r["comparisons"][0].update(verdict="fine"), "comparisons[0].verdict"),
    (lambda r: r["comparisons"][0]["teacher"].update(ci="[1, 2]"), "comparisons[0].teacher.ci"),
    (lambda r: r["tasks"][0]["scores"].update(teacher=5), "tasks[0].scores.teacher"),
    (lambda r: r["probes"][0].update(models=[]), "probes[0].models"),
    (lambda r: r.update(comparisons={}), "comparisons"),
    (lambda r: r["errors"].append({"stage": 3}), "errors[0]"),
    (lambda r: r.update(extra=1), "unknown field(s) extra"),
    (lambda r: r["provenance"].update(python={}), "provenance.python: expected text, got {}"),
    (lambda r: r["provenance"].pop("spec_hash"), "provenance.spec_hash: missing"),
    (lambda r: r["provenance"].update(seed="0"), "provenance.seed: expected a whole number"),
    (lambda r: r["provenance"]["dataset_files"].update(x=1), "provenance.dataset_files.x: expected text"),
    (lambda r: r["provenance"].update(extra=1), "provenance: unknown field(s) extra"),
    (lambda r: r["integrity"].update(sha256=None), "integrity.sha256: expected text"),
    (lambda r: r["integrity"].pop("hmac_sha256"), "integrity.hmac_sha256: missing"),
])
def test_a_malformed_field_is_named_by_its_path(stored, mutate, path):
    doc = copy.deepcopy(stored["complete"])
    mutate(doc)
    with pytest.raises(RunFormatError) as err:
        AuditRun.from_json(doc)
    assert path in str(err.value)


def test_the_gate_refuses_a_malformed_run_with_exit_2_naming_the_field(tmp_path, audit_runs, capsys):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(audit_runs["complete"], folder)
    doc = json.loads((folder / "run.json").read_text())
    doc["comparisons"][2]["n"] = "many"
    (folder / "run.json").write_text(json.dumps(doc))
    assert main(["gate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "comparisons[2].n: expected a whole number, got 'many'" in err and "re-run the audit" in err


def test_docs_name_every_field_of_the_stored_run():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-schema.md").read_text()
    quoted = set(re.findall(r'"([a-z_0-9]+)"\s*:', doc))
    missing = sorted({f.name for rec in RECORDS for f in fields(rec)} - quoted)
    assert missing == [], f"docs/run-schema.md does not show these run.json fields: {missing}"


def test_the_integrity_digest_covers_every_field_and_not_the_layout(stored):
    from audit.run_format import canonical, integrity_of, integrity_problems

    doc = copy.deepcopy(stored["complete"])
    assert integrity_problems(doc, None) == ([], "digest")
    reordered = json.loads(json.dumps(dict(reversed(list(doc.items())))))
    assert canonical(reordered) == canonical(doc) and integrity_problems(reordered, None) == ([], "digest")
    doc["items_sha256"] = "0" * 64
    (problem,), _ = integrity_problems(doc, None)
    assert problem.startswith("integrity.sha256 ") and "run.json was changed after the audit" in problem
    signed = dict(doc, integrity=integrity_of(doc, b"k"))
    assert integrity_problems(signed, b"k") == ([], "digest and signature")
    assert integrity_problems(signed, None) == ([], "digest, signature unchecked")
    assert integrity_problems(signed, b"other")[0][0].startswith("integrity.hmac_sha256 does not match")
    unsigned = dict(doc, integrity=integrity_of(doc))
    assert integrity_problems(unsigned, b"k")[0][0].startswith("run.json is not signed, and BEQUEATH_SIGNING_KEY")
    assert "no key is set" in integrity_problems(unsigned, None, require_signature=True)[0][0]
    odd = dict(signed, integrity={"sha256": signed["integrity"]["sha256"], "hmac_sha256": "\x18\u00d0\x8b"})
    assert integrity_problems(odd, b"k")[0][0].startswith("integrity.hmac_sha256 does not match")  # no TypeError
    odd["integrity"]["sha256"] = "\u00e9" * 64
    assert integrity_problems(odd, b"k")[0][0].startswith("integrity.sha256 ")
    assert integrity_problems({k: v for k, v in doc.items() if k != "integrity"}, None)[0][0].startswith(
        "run.json has no integrity block")


def test_write_run_writes_nothing_that_does_not_conform(tmp_path, stored):
    from audit.harness import write_run

    doc = copy.deepcopy(stored["complete"])
    doc["provenance"]["python"] = 3
    with pytest.raises(RunFormatError, match="provenance.python"):
        write_run(tmp_path, doc, [])
    assert list(tmp_path.iterdir()) == []
