"""Structure of the bundled template probe: enough templates (the audit's clusters) per bias type
and subgroup for the cluster statistics to decide, counterbalanced directions, and sentences
written for bequeath (none taken from CrowS-Pairs)."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import pytest

from probes.bundled import BundledProbe

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("id", "bias_type", "target", "subgroup", "template", "context", "stereotype", "anti_stereotype")
# located as tests/conftest.py's data_dir fixture does (which fails rather than skips when absent)
CROWS = Path(os.environ.get("BEQUEATH_DATA", REPO.parent / "shared" / "data")) / "crows_pairs" / "crows_pairs_anonymized.csv"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    src = Path(str(resources.files("probes.data") / "bundled_templates.jsonl"))
    return [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_rows_have_exactly_the_layout_fields(rows):
    for r in rows:
        assert tuple(r) == FIELDS, r
        assert all(isinstance(r[f], str) and r[f] for f in FIELDS), r
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    assert 600 <= len(rows) <= 900


def test_every_bias_type_has_enough_templates_and_subgroups(rows):
    templates: dict[str, set[str]] = defaultdict(set)
    per_subgroup: dict[tuple[str, str], set[str]] = defaultdict(set)
    subgroups: dict[str, set[str]] = defaultdict(set)
    owner: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        templates[r["bias_type"]].add(r["template"])
        per_subgroup[(r["bias_type"], r["subgroup"])].add(r["template"])
        subgroups[r["bias_type"]].add(r["subgroup"])
        owner[r["template"]].add(r["bias_type"])
    assert len(templates) >= 4, sorted(templates)
    assert {"gender", "age"} <= set(templates)
    for bias_type, ts in templates.items():
        assert len(ts) >= 16, (bias_type, len(ts))
        assert len(subgroups[bias_type]) == 2, (bias_type, subgroups[bias_type])
    for key, ts in per_subgroup.items():
        assert len(ts) >= 12, (key, len(ts))
    # a template id names one cluster of one bias type
    assert all(len(b) == 1 for b in owner.values()), {t: b for t, b in owner.items() if len(b) > 1}
    sizes = Counter(r["template"] for r in rows)
    assert all(3 <= n <= 8 for n in sizes.values()), sizes


def test_pairs_differ_and_directions_cancel_within_each_template(rows):
    by_template: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        assert r["stereotype"] != r["anti_stereotype"], r["id"]
        assert r["stereotype"].startswith(" ") and r["anti_stereotype"].startswith(" "), r["id"]
        assert not r["context"].endswith(" "), r["id"]
        by_template[r["template"]].append(r)
    for t, items in by_template.items():
        # each continuation is the stereotype as often as the anti-stereotype: a generic word
        # (or pronoun) preference of a model cancels within the cluster
        assert Counter(r["stereotype"] for r in items) == Counter(r["anti_stereotype"] for r in items), t
        assert len({r["subgroup"] for r in items}) == 2, t


def test_the_probe_loads_every_row_clustered_by_template(rows):
    loaded = BundledProbe().load()
    assert loaded.n_skipped == 0 and len(loaded.items) == len(rows)
    for it, r in zip(loaded.items, rows, strict=True):
        assert it.id == r["id"] and it.cluster == r["template"]
        assert dict(it.groups) == {"bias_type": r["bias_type"], "subgroup": r["subgroup"]}
        assert it.requests == ((r["context"], r["stereotype"]), (r["context"], r["anti_stereotype"]))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'-]+", text.lower())


def test_no_sentence_is_taken_from_crows_pairs(rows):
    if not CROWS.is_file():
        pytest.skip(f"CrowS-Pairs not found at {CROWS} (set BEQUEATH_DATA); cannot check for copied sentences")
    sentences, spans = set(), set()
    n = 8  # a shared run of 8 words would mean a copied sentence, not a common phrase
    with CROWS.open(newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            for col in ("sent_more", "sent_less"):
                w = _words(rec[col])
                sentences.add(" ".join(w))
                spans.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    assert len(sentences) > 1000
    for r in rows:
        for text in (r["context"], r["context"] + r["stereotype"], r["context"] + r["anti_stereotype"]):
            w = _words(text)
            assert " ".join(w) not in sentences, (r["id"], text)
            shared = [" ".join(w[i:i + n]) for i in range(len(w) - n + 1) if tuple(w[i:i + n]) in spans]
            assert not shared, (r["id"], shared)
