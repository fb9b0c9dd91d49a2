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

from probes.access import HubRef
from probes.base import ProbeDataError, ProbeError
from probes.bbq import BBQProbe
from probes.bold import BoldProbe
from probes.bundled import BundledProbe
from probes.coref import WinoBiasProbe, WinogenderProbe
from probes.crows_pairs import CrowsPairsProbe
from probes.files import sha256_file
from probes.registry import get_probe
from probes.stereoset import StereoSetProbe

CROWS_ID = "hf://jannalu/crows_pairs_multilingual:english@test"
BBQ_ID = "hf://oskarvanderwal/bbq:All@test"
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


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


def test_the_bundled_probe_has_no_hub_copy_and_refuses_hub_ids(cache, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the hub"))
    with pytest.raises(ProbeDataError) as err:
        BundledProbe(path="hf://someone/copy:default@test")
    msg = str(err.value)
    assert msg.startswith("hf://someone/copy:default@test: the ") and "reads local files only" in msg
    assert "Pass path= " in msg and "bundled templates" in msg


# ---------------------------------------------------------------- probes whose hub copy has another layout

_STEREO_LABELS = ["anti-stereotype", "stereotype", "unrelated"]


def _stereoset_dataset(rows: list[dict]) -> datasets.Dataset:
    """McGill-NLP/stereoset's layout: options in ``sentences`` (a sequence of dicts, gold labels as
    nested ClassLabels, five annotator labels each), in an order that is not the flat file's."""
    label = datasets.ClassLabel(names=_STEREO_LABELS + ["related"])
    features = datasets.Features({
        "id": datasets.Value("string"), "target": datasets.Value("string"), "bias_type": datasets.Value("string"),
        "context": datasets.Value("string"),
        "sentences": datasets.Sequence({
            "sentence": datasets.Value("string"), "id": datasets.Value("string"),
            "labels": datasets.Sequence({"label": label, "human_id": datasets.Value("string")}),
            "gold_label": datasets.ClassLabel(names=_STEREO_LABELS)}),
    })
    out = []
    for k, r in enumerate(rows):
        order = [_STEREO_LABELS[(k + j) % 3] for j in range(3)]  # rotate so position never gives the label away
        out.append({"id": f"c{k}", **{f: r[f] for f in ("target", "bias_type", "context")},
                    "sentences": {"sentence": [r[o] for o in order], "id": [f"s{k}{j}" for j in range(3)],
                                  "gold_label": order,
                                  "labels": [{"label": [o] * 5, "human_id": [f"h{i}" for i in range(5)]}
                                             for o in order]}})
    return datasets.Dataset.from_list(out, features=features)


def test_stereoset_hub_id_gives_the_items_of_the_flat_file(data_dir, tmp_path, cache, hub):
    with open(data_dir / "stereoset" / "stereoset_dev_flat.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    inter = [r for r in rows if r["type"] == "intersentence"][:20]
    intra = [r for r in rows if r["type"] == "intrasentence"][:20]
    tables, calls = hub
    tables[("McGill-NLP/stereoset", "intersentence", "validation")] = _stereoset_dataset(inter)
    tables[("McGill-NLP/stereoset", "intrasentence", "validation")] = _stereoset_dataset(intra)
    local = tmp_path / "flat.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in inter + intra), encoding="utf-8")

    from_hub = StereoSetProbe(path="hf://McGill-NLP/stereoset").load()
    assert calls == [("McGill-NLP/stereoset", "intersentence", "validation"),
                     ("McGill-NLP/stereoset", "intrasentence", "validation")]
    assert from_hub.items == StereoSetProbe(path=str(local)).load().items and len(from_hub.items) == 40
    first = from_hub.items[0]  # the stereotype option is scored first, whatever its place in the hub row
    assert first.requests[0] == (inter[0]["context"], " " + inter[0]["stereotype"])
    ((source, _),) = from_hub.files.items()
    assert source.startswith("hf://McGill-NLP/stereoset@validation (") and source.endswith("/all/validation.stereoset.jsonl")

    only_intra = StereoSetProbe(path="hf://McGill-NLP/stereoset:intrasentence@validation").load()
    assert [it.requests for it in only_intra.items] == [it.requests for it in from_hub.items[20:]]


def _conll_documents(path: Path) -> list[dict]:
    """The wino_bias loading script's rows from a CoNLL file: document_id, tokens, and coreference
    cluster 1 as flattened [start, end] word-number strings (parsed here independently)."""
    docs, cur, open_at, spans = [], None, {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#begin"):
            cur, open_at, spans = {"document_id": None, "tokens": []}, {}, []
        elif line.startswith("#end"):
            docs.append({**cur, "coreference_clusters": [str(x) for span in spans for x in span]})
        elif line.strip():
            cols = line.split()
            cur["document_id"] = cols[0]
            cur["tokens"].append(cols[3])
            for seg in ([] if cols[-1] == "-" else cols[-1].split("|")):
                cid = int(seg.strip("()"))
                if seg.startswith("("):
                    open_at[cid] = cols[2]
                if seg.endswith(")") and cid == 1:
                    spans.append((open_at.pop(cid), cols[2]))
    return docs


def test_winobias_hub_id_rebuilds_every_sentence_of_the_text_files(data_dir, cache, hub):
    """All 3,168 items from the hub layout (CoNLL tokens + spans) equal those of the text files."""
    tables, calls = hub
    conll = data_dir / "winobias" / "data" / "conll_format"
    for typ in ("type1", "type2"):
        for stereo in ("pro", "anti"):
            for split, prefix in (("validation", "dev"), ("test", "test")):
                docs = _conll_documents(conll / f"{prefix}_{typ}_{stereo}_stereotype.v4_auto_conll")
                tables[("uclanlp/wino_bias", f"{typ}_{stereo}", split)] = datasets.Dataset.from_list(docs)

    from_hub = WinoBiasProbe(path="hf://uclanlp/wino_bias").load()
    local = WinoBiasProbe().load(data_dir)
    assert len(calls) == 8 and len(from_hub.items) == len(local.items) == 3168
    assert from_hub.items == local.items
    ((source, _),) = from_hub.files.items()
    assert source.startswith("hf://uclanlp/wino_bias") and source.endswith("all.winobias")

    assert WinoBiasProbe(path="hf://uclanlp/wino_bias").load().items == local.items and len(calls) == 8  # reused
    export = Path(source.rsplit(" -> ", 1)[1])
    assert sorted(p.name for p in export.iterdir())[:2] == ["anti_stereotyped_type1.txt.dev",
                                                             "anti_stereotyped_type1.txt.test"]
    assert len((export / "occupations.txt").read_text().splitlines()) == 40  # each of the 2 x 20 is a referent
    edited = export / "pro_stereotyped_type1.txt.dev"
    edited.write_text(edited.read_text().replace("[he]", "[she]", 1))
    with pytest.raises(ProbeDataError, match="cached file was changed"):
        WinoBiasProbe(path="hf://uclanlp/wino_bias").load()

    test_only = WinoBiasProbe(path="hf://uclanlp/wino_bias@test").load()
    assert test_only.items == [it for it in local.items if it.id.startswith("test-")]
    with pytest.raises(ProbeError, match="holds none of the splits"):
        WinoBiasProbe(path="hf://uclanlp/wino_bias@test", splits=("dev",)).load()


def _winogender_rows(data_dir: Path) -> list[dict]:
    """oskarvanderwal/winogender's columns, from all_sentences.tsv (the pronoun read off the sentence)."""
    with open(data_dir / "winogender" / "all_sentences.tsv", encoding="utf-8", newline="") as fh:
        sentences = list(csv.DictReader(fh, delimiter="\t"))
    pronouns = {"he", "she", "they", "his", "her", "their", "him", "them"}
    rows = []
    for r in sentences:
        occ, participant, answer, gender, _ = r["sentid"].split(".")
        (pronoun,) = {w for w in r["sentence"].lower().rstrip(".").split() if w in pronouns}
        rows.append({"sentid": r["sentid"], "sentence": r["sentence"], "pronoun": pronoun, "occupation": occ,
                     "participant": participant, "gender": gender, "target": (occ, participant)[int(answer)],
                     "label": answer})
    return rows


def test_winogender_hub_id_gives_the_items_of_the_templates(data_dir, cache, hub):
    """The hub copy has the pronoun as a column and no templates.tsv; the items are the same."""
    root = data_dir / "winogender"
    rows = _winogender_rows(data_dir)
    tables, _ = hub
    tables[("oskarvanderwal/winogender", "all", "test")] = datasets.Dataset.from_list(rows)

    with pytest.raises(ProbeError, match="the hub copy has no occupations-stats.tsv .* pass stats= its path"):
        WinogenderProbe(path="hf://oskarvanderwal/winogender").load()
    from_hub = WinogenderProbe(path="hf://oskarvanderwal/winogender").load(data_dir)
    local = WinogenderProbe().load(data_dir)
    stats = str(root / "occupations-stats.tsv")
    assert WinogenderProbe(path="hf://oskarvanderwal/winogender", stats=stats).load().items == local.items
    assert len(from_hub.items) == 720 and from_hub.items == local.items
    source, stats_file = from_hub.files
    assert source.startswith("hf://oskarvanderwal/winogender") and stats_file == stats
    assert from_hub.files[stats_file] == sha256_file(root / "occupations-stats.tsv")

    rows[0]["pronoun"] = "it"
    tables[("oskarvanderwal/winogender", "gotcha", "test")] = datasets.Dataset.from_list(rows[:3])
    with pytest.raises(ProbeDataError, match=r"all_sentences.tsv:2: field 'sentid': pronoun 'it'"):
        WinogenderProbe(path="hf://oskarvanderwal/winogender:gotcha", stats=stats).load()


def test_bold_hub_id_gives_the_items_of_the_prompt_files(data_dir, cache, hub):
    prompts = data_dir / "bold" / "prompts"
    rows = []
    for domain in ("gender", "religious_ideology"):
        for group, entities in json.loads((prompts / f"{domain}_prompt.json").read_text(encoding="utf-8")).items():
            rows += [{"domain": domain, "name": name, "category": group, "prompts": ps, "wikipedia": ["w"] * len(ps)}
                     for name, ps in entities.items()]
    tables, _ = hub
    tables[("AlexaAI/bold", None, "train")] = datasets.Dataset.from_list(rows)

    domains = ("gender", "religious_ideology")
    from_hub = BoldProbe(path="hf://AlexaAI/bold", domains=domains, scorers=("sentiment",)).load()
    local = BoldProbe(domains=domains, scorers=("sentiment",)).load(data_dir)
    assert len(from_hub.items) == len(local.items) > 3800 and from_hub.items == local.items
    assert from_hub.n_skipped == local.n_skipped
    with pytest.raises(ProbeError, match=r"no rows for domains \['race'\] \(it has \['gender', 'religious_ideology'\]\)"):
        BoldProbe(path="hf://AlexaAI/bold", domains=("race",), scorers=("sentiment",)).load()


def test_hub_ref_syntax():
    assert HubRef.parse("hf://a/b") == HubRef(repo="a/b")
    assert HubRef.parse("hf://a/b:c@test") == HubRef(repo="a/b", config="c", split="test")
    assert HubRef.parse("hf://a/b@train[:10]") == HubRef(repo="a/b", split="train[:10]")
    assert str(HubRef(repo="a/b", config="c", split="test")) == "hf://a/b:c@test"
    for bad in ("hf://b", "hf://a/b/c", "hf://a/b:", "hf://a/b@", "hf:///b"):
        with pytest.raises(ProbeDataError, match=r"expected hf://OWNER/NAME\[:CONFIG\]\[@SPLIT\]"):
            HubRef.parse(bad)


def test_ls_probes_names_each_probes_hub_copy(capsys):
    from audit.cli import main
    from probes.registry import available

    assert main(["ls", "probes"]) == 0
    out = capsys.readouterr().out
    with_hub = []
    for name in available():
        hub = getattr(get_probe(name), "hub", None)
        if hub is None:
            continue
        with_hub.append(name)
        assert hub.probe == name and HubRef.parse(hub.example).repo and hub.confirmed_by
        assert f"path: {hub.example} (hub copy)" in out
    assert sorted(with_hub) == ["bbq", "bold", "crows_pairs", "holisticbias", "stereoset", "winobias", "winogender"]


def test_an_audit_reads_a_hub_id_records_it_and_scores_only_new_items_at_a_larger_limit(
        data_dir, tmp_path, cache, hub, tiny_model_dir, monkeypatch):
    """Through the harness: the run's provenance names the hub copy; a larger limit reuses the cache."""
    from audit.harness import run_audit
    from audit.spec import AuditSpec
    from audit.store import ResultsCache

    tables, calls = hub
    tables[("oskarvanderwal/winogender", "all", "test")] = datasets.Dataset.from_list(_winogender_rows(data_dir))
    scored = []
    original = ResultsCache.rows

    def spy(self, key, ids, compute, **kw):
        return original(self, key, ids, lambda pos: scored.append(len(pos)) or compute(pos), **kw)

    monkeypatch.setattr(ResultsCache, "rows", spy)

    def audit(limit: int, out: str):
        spec = AuditSpec.from_dict(dict(
            teacher={"name": "teacher", "path": str(tiny_model_dir)}, students=[], tasks=[], n_boot=100,
            probes=[{"name": "winogender", "limit": limit, "path": "hf://oskarvanderwal/winogender"}],
            data_dir=str(data_dir), out=str(tmp_path / out), cache=str(tmp_path / "results"), backend="hflm"))
        folder, code = run_audit(spec, progress=False)
        return code, json.loads((folder / "run.json").read_text())

    code, run = audit(20, "small")
    files = run["provenance"]["dataset_files"]
    assert code == 0 and calls == [("oskarvanderwal/winogender", "all", "test")]
    assert any(f.startswith("hf://oskarvanderwal/winogender") for f in files)
    assert str(data_dir / "winogender" / "occupations-stats.tsv") in files
    small = run["probes"][0]["models"]["teacher"]["n_scored"] + run["probes"][0]["models"]["teacher"]["n_invalid"]
    assert small == 60 and scored == [60]  # 20 per pronoun gender

    code, run = audit(40, "large")
    assert code == 0 and scored == [60, 60] and len(calls) == 1  # 60 new items; the export is reused
