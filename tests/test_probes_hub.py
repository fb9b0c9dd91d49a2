"""Hub ids as a probe's path (hf://OWNER/NAME[:CONFIG][@SPLIT]): exported once, read by the local reader.

Offline: ``datasets.load_dataset`` is replaced by one that returns a real ``datasets.Dataset``
(with ClassLabel columns, as hub copies often have) built from rows of the shared data, or
runs for real on a local folder. Each hub load is compared with the same rows read from a
local file, so the hub path and the local path must give identical items.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from probes.base import HubRef, ProbeDataError, sha256_file
from probes.bbq import BBQProbe
from probes.bold import BoldProbe
from probes.bundled import BundledProbe
from probes.coref import WinoBiasProbe, WinogenderProbe
from probes.crows_pairs import CrowsPairsProbe
from probes.holisticbias import HolisticBiasProbe
from probes.registry import get_probe
from probes.stereoset import StereoSetProbe

CROWS_ID = "hf://jannalu/crows_pairs_multilingual:english@test"
BBQ_ID = "hf://oskarvanderwal/bbq:All@test"
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "bequeath-cache"
    monkeypatch.setenv("BEQUEATH_CACHE", str(root))
    return root


@pytest.fixture
def hub(monkeypatch):
    """A fake hub: {(repo, config, split): Dataset}; records every load_dataset call."""
    tables: dict[tuple, datasets.Dataset] = {}
    calls: list[tuple] = []

    def load_dataset(path, name=None, *, split=None, **kwargs):
        assert not kwargs.get("trust_remote_code")
        calls.append((path, name, split))
        return tables[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


def _crows_rows(data_dir: Path, n: int) -> tuple[list[str], list[list[str]]]:
    with open(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1: n + 1]


def _crows_dataset(header: list[str], body: list[list[str]]) -> datasets.Dataset:
    """The hub copy's columns (no index column), with the two label columns as ClassLabels."""
    cols = [header.index(c) for c in CROWS_COLUMNS]
    ds = datasets.Dataset.from_list([{c: r[i] for c, i in zip(CROWS_COLUMNS, cols, strict=True)} for r in body])
    ds = ds.cast_column("stereo_antistereo", datasets.ClassLabel(names=["stereo", "antistereo"]))
    return ds.cast_column("bias_type", datasets.ClassLabel(names=sorted({r[cols[3]] for r in body})))


def _bbq_rows(data_dir: Path) -> list[dict]:
    rows = []
    for cat in ("Age", "Religion"):
        with open(data_dir / "bbq" / f"{cat}.jsonl", encoding="utf-8") as fh:
            rows += [json.loads(next(fh)) for _ in range(6)]
    return rows


def _bbq_dataset(rows: list[dict]) -> datasets.Dataset:
    ds = datasets.Dataset.from_list(rows)
    for col, names in (("context_condition", ["ambig", "disambig"]), ("question_polarity", ["neg", "nonneg"]),
                       ("category", ["Age", "Religion"]), ("label", ["ans0", "ans1", "ans2"])):
        ds = ds.cast_column(col, datasets.ClassLabel(names=names))
    return ds


def test_crows_pairs_hub_id_gives_the_items_of_the_local_file(data_dir, tmp_path, cache, hub):
    header, body = _crows_rows(data_dir, 30)
    local = tmp_path / "crows_slice.csv"
    with open(local, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    tables, calls = hub
    tables[("jannalu/crows_pairs_multilingual", "english", "test")] = _crows_dataset(header, body)

    from_hub = get_probe("crows_pairs", path=CROWS_ID).load()
    from_file = CrowsPairsProbe(path=str(local)).load()

    assert calls == [("jannalu/crows_pairs_multilingual", "english", "test")]
    assert from_hub.items == from_file.items and len(from_hub.items) == 30
    assert {it.groups["direction"] for it in from_hub.items} == {"stereo", "antistereo"}  # ClassLabel -> name
    assert [it.id for it in from_hub.items[:3]] == ["crows-0", "crows-1", "crows-2"]
    ((source, digest),) = from_hub.files.items()
    export = Path(source.rsplit(" -> ", 1)[1])
    assert source.startswith(CROWS_ID + " (fingerprint ") and export.suffix == ".csv"
    assert export.is_relative_to(cache / "datasets") and sha256_file(export) == digest
    meta = json.loads(export.with_name(export.name + ".source.json").read_text())
    assert meta["hub_id"] == CROWS_ID and meta["config"] == "english" and meta["split"] == "test"
    assert meta["sha256"] == digest and meta["rows"] == 30 and meta["fingerprint"]


def test_bbq_hub_id_gives_the_items_of_the_local_file(data_dir, tmp_path, cache, hub):
    rows = _bbq_rows(data_dir)
    local = tmp_path / "bbq_slice.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tables, calls = hub
    tables[("oskarvanderwal/bbq", "All", "test")] = _bbq_dataset(rows)

    from_hub = BBQProbe(path=BBQ_ID).load()
    from_file = BBQProbe(path=str(local)).load()

    assert from_hub.items == from_file.items and len(from_hub.items) == 12
    assert {it.groups["category"] for it in from_hub.items} == {"Age", "Religion"}
    assert [it.meta["label"] for it in from_hub.items] == [r["label"] for r in rows]  # an index, not a name
    assert {it.groups["context_condition"] for it in from_hub.items} == {"ambig", "disambig"}
    ((source, digest),) = from_hub.files.items()
    assert source.startswith(BBQ_ID) and source.endswith(".jsonl") and len(digest) == 64


def test_the_export_is_written_once_and_verified_on_reuse(data_dir, cache, hub):
    tables, calls = hub
    tables[("oskarvanderwal/bbq", "All", "test")] = _bbq_dataset(_bbq_rows(data_dir))

    first = BBQProbe(path=BBQ_ID).load()
    second = BBQProbe(path=BBQ_ID).load()
    assert len(calls) == 1  # the second load reads the export without touching datasets
    assert second.items == first.items and second.files == first.files

    export = Path(next(iter(first.files)).rsplit(" -> ", 1)[1])
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    export.write_text(export.read_text().replace("Muslim", "Buddhist"), encoding="utf-8")
    with pytest.raises(ProbeDataError, match="cached file was changed. Delete .* to export it again"):
        BBQProbe(path=BBQ_ID).load()
    assert len(calls) == 1


def test_offline_miss_names_the_id_and_says_to_pass_a_local_file(cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # conftest sets it too; the real datasets call runs
    with pytest.raises(ProbeDataError) as err:
        CrowsPairsProbe(path=CROWS_ID).load()
    msg = str(err.value)
    assert CROWS_ID in msg and "network is off (HF_DATASETS_OFFLINE=1)" in msg
    assert "path= a copy of crows_pairs_anonymized.csv" in msg and "data_dir=" in msg
    assert not (cache / "datasets").exists() or not any((cache / "datasets").rglob("*.csv"))


def test_unreachable_hub_says_so_and_gives_the_same_fix(cache, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'oskarvanderwal/bbq' on the Hub (ConnectionError)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(ProbeDataError, match=r"oskarvanderwal/bbq:All@test: not in the local datasets cache "
                       r"and the hub could not be reached\. Pass a local file instead: path="):
        BBQProbe(path=BBQ_ID).load()


def test_unknown_split_or_config_names_the_valid_ones(data_dir, tmp_path, cache, monkeypatch):
    # A real load_dataset on a local folder named like a hub id (datasets looks there first).
    folder = tmp_path / "hub" / "someone" / "bbq_rows"
    folder.mkdir(parents=True)
    rows = _bbq_rows(data_dir)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "hub")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))

    loaded = BBQProbe(path="hf://someone/bbq_rows@test").load()
    local = tmp_path / "rows.jsonl"
    local.write_text((folder / "test.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert loaded.items == BBQProbe(path=str(local)).load().items
    with pytest.raises(ProbeDataError, match=r"hf://someone/bbq_rows@validation: .*Valid splits: 'test'"):
        BBQProbe(path="hf://someone/bbq_rows@validation").load()
    with pytest.raises(ProbeDataError, match=r"hf://someone/bbq_rows:nope@test: .*Valid configs: 'default'"):
        BBQProbe(path="hf://someone/bbq_rows:nope").load()


@pytest.mark.parametrize("make, expects", [
    (lambda p: StereoSetProbe(path=p).load(), "stereoset_dev_flat.jsonl"),
    (lambda p: WinoBiasProbe(path=p), "winobias/data"),
    (lambda p: WinogenderProbe(path=p), "all_sentences.tsv"),
    (lambda p: HolisticBiasProbe(path=p), "holisticbias/v1.0"),
    (lambda p: BoldProbe(path=p), "bold/prompts"),
    (lambda p: BundledProbe(path=p), "bundled templates"),
], ids=["stereoset", "winobias", "winogender", "holisticbias", "bold", "bundled"])
def test_probes_without_a_confirmed_hub_schema_refuse_hub_ids(make, expects, cache, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the hub"))
    with pytest.raises(ProbeDataError) as err:
        make("hf://someone/copy:default@test")
    msg = str(err.value)
    assert msg.startswith("hf://someone/copy:default@test: the ") and "reads local files only" in msg
    assert "Pass path= " in msg and expects in msg


def test_hub_ref_syntax():
    assert HubRef.parse("hf://a/b") == HubRef(repo="a/b")
    assert HubRef.parse("hf://a/b:c@test") == HubRef(repo="a/b", config="c", split="test")
    assert HubRef.parse("hf://a/b@train[:10]") == HubRef(repo="a/b", split="train[:10]")
    assert str(HubRef(repo="a/b", config="c", split="test")) == "hf://a/b:c@test"
    for bad in ("hf://b", "hf://a/b/c", "hf://a/b:", "hf://a/b@", "hf:///b"):
        with pytest.raises(ProbeDataError, match=r"expected hf://OWNER/NAME\[:CONFIG\]\[@SPLIT\]"):
            HubRef.parse(bad)
