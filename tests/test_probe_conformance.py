"""Conformance of every registered probe: well-formed items, complete cards, deterministic scores
for a fixed model, and metrics that are pure functions of the per-item columns.

Parametrised over ``probes.registry.available()``, so a new probe is checked as soon as it is
registered. Scoring uses the tiny random model (fast); probes read the shared data (``data_dir``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pytest

from probes.base import Probe, ProbeItem, columns_of, stratified_sample
from probes.registry import available, get_probe

# Options that keep a conformance run fast without changing what is checked.
OPTIONS: Mapping[str, dict] = {"bold": {"scorers": ("sentiment",)}}
MAX_SAMPLE = 200


@pytest.fixture(scope="module")
def lm_pair(tiny):
    """Two independent lm-eval LMs over the same tiny model (no cache shared between the two runs)."""
    from audit.lm import make_lm

    return make_lm(tiny, batch_size=32), make_lm(tiny, batch_size=32)


@pytest.fixture(scope="module")
def loaded_probes(data_dir):
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            probe = get_probe(name, **OPTIONS.get(name, {}))
            cache[name] = (probe, probe.load(data_dir))
        return cache[name]

    return get


def balanced_sample(probe: Probe, items: list[ProbeItem]) -> list[ProbeItem]:
    """A small sample covering every combination of group values (so gap metrics are defined)."""
    keys = sorted({k for it in items for k in it.groups})
    limit = 1 if probe.kind == "generation" else 2
    sample = stratified_sample(items, by=keys, limit=limit, seed=0)
    if len(sample) > MAX_SAMPLE:  # a key with hundreds of values (e.g. StereoSet targets)
        sample = stratified_sample(items, by=probe.group_keys[:2], limit=limit * 4, seed=0)
    return sample


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def score(lm, probe, items, tokenizer):
    from audit.lm import score_probe_items

    return score_probe_items(lm, probe, items, tokenizer=tokenizer, progress=False)


@pytest.mark.parametrize("name", available())
def test_protocol_and_card(name):
    probe = get_probe(name, **OPTIONS.get(name, {}))
    assert isinstance(probe, Probe)
    assert probe.name == name and probe.version and probe.kind in ("loglikelihood", "generation")
    assert probe.group_keys and all(isinstance(k, str) and k for k in probe.group_keys)
    card = probe.card
    for field in ("title", "measures", "data", "license", "citation"):
        assert isinstance(getattr(card, field), str) and getattr(card, field).strip(), f"{name}: card.{field} empty"
    assert card.caveats and all(isinstance(c, str) and c.strip() for c in card.caveats)
    names = [m.name for m in probe.metrics]
    assert names and len(set(names)) == len(names), f"{name}: metric names must be unique: {names}"
    missing = [n for n in names if not str(card.metrics.get(n, "")).strip()]
    assert not missing, f"{name}: card.metrics lacks neutral value/direction for {missing}"
    for m in probe.metrics:
        assert m.kind in ("bias", "quality") and math.isfinite(m.neutral) and m.scale > 0 and m.description


@pytest.mark.parametrize("name", available())
def test_items_well_formed(name, loaded_probes):
    probe, loaded = loaded_probes(name)
    items = loaded.items
    assert items, f"{name}: no items"
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids), f"{name}: duplicate item ids"
    assert loaded.n_skipped == len(loaded.skipped), f"{name}: n_skipped must count the skipped rows"
    assert loaded.files and all(len(h) == 64 for h in loaded.files.values())
    for it in items:
        assert isinstance(it.groups, Mapping) and it.groups, f"{name}:{it.id}: no groups"
        for k in probe.group_keys:
            assert isinstance(it.groups.get(k), str) and it.groups[k], f"{name}:{it.id}: group '{k}' missing"
        assert isinstance(it.cluster, str) and it.cluster, f"{name}:{it.id}: no cluster"
        if probe.kind == "generation":
            assert isinstance(it.prompt, str) and it.prompt.strip(), f"{name}:{it.id}: no prompt"
        else:
            assert it.requests and all(isinstance(c, str) and isinstance(x, str) and x for c, x in it.requests), \
                f"{name}:{it.id}: requests must be non-empty (context, continuation) pairs"
    # the audit's limit: balanced per value of the first group key, and nested (a larger limit adds items)
    key = probe.group_keys[0]
    small, large = (stratified_sample(items, by=(key,), limit=n, seed=7) for n in (3, 6))
    per = Counter(it.groups[key] for it in small)
    assert set(per) == {it.groups[key] for it in items} and max(per.values()) <= 3
    assert {it.id for it in small} <= {it.id for it in large} and len(large) > len(small) or len(small) == len(items)


@pytest.mark.parametrize("name", available())
def test_scores_deterministic_and_metrics_from_columns(name, loaded_probes, lm_pair, tiny):
    probe, loaded = loaded_probes(name)
    sample = balanced_sample(probe, loaded.items)
    first = score(lm_pair[0], probe, sample, tiny.tokenizer)
    # the same items in the same batch through two LMs: identical numbers and columns
    few = sample[:8]
    one, two = score(lm_pair[0], probe, few, tiny.tokenizer), score(lm_pair[1], probe, few, tiny.tokenizer)
    for a, b in zip(one, two, strict=True):
        assert a.item_id == b.item_id and a.invalid == b.invalid and a.text == b.text
        if a.columns is not None:
            assert a.columns.keys() == b.columns.keys()
            assert all(same(a.columns[k], b.columns[k]) for k in a.columns), f"{name}:{a.item_id} not deterministic"
        if a.answers:
            assert [x.loglik for x in a.answers] == [x.loglik for x in b.answers]
    # in a different batch the fp32 padding changes only the last bits (measured: ~1e-6 nats)
    for a, b in zip(first[:8], one, strict=True):
        assert a.text == b.text
        if a.answers:
            assert np.allclose([x.loglik for x in a.answers], [x.loglik for x in b.answers], rtol=0, atol=1e-4)

    scored = [r for r in first if r.columns is not None]
    assert len(scored) >= len(first) / 2, f"{name}: most items invalid: {[r.invalid for r in first][:5]}"
    for r in scored:  # columns are plain numbers (finite or NaN, never inf)
        assert all(isinstance(v, float) and not math.isinf(v) for v in r.columns.values()), r.columns
    cols = columns_of(r.columns for r in scored)
    reasons = getattr(probe, "unavailable", {})
    perm = np.random.default_rng(0).permutation(len(scored))
    shuffled = {k: v[perm] for k, v in cols.items()}
    for m in probe.metrics:
        for col in (m.binary, m.margin):
            assert col is None or col in cols, f"{name}.{m.name}: column '{col}' not produced by score_item"
        value = m.compute(cols)
        assert isinstance(value, float)
        assert math.isfinite(value) or reasons.get(m.name), \
            f"{name}.{m.name} is NaN on a balanced sample with no reason in probe.unavailable"
        assert same(value, m.compute(shuffled)), f"{name}.{m.name} depends on item order"
        # computable on every group's subset (NaN allowed there), as the audit's breakdown does
        by_id = {r.item_id: i for i, r in enumerate(scored)}
        items = {it.id: it for it in sample}
        for key in probe.group_keys:
            for g in {items[i].groups[key] for i in by_id}:
                idx = [j for i, j in by_id.items() if items[i].groups[key] == g]
                sub = m.compute({k: v[idx] for k, v in cols.items()})
                assert isinstance(sub, float) and not math.isinf(sub)


@pytest.mark.parametrize("name, suffix", [("bundled", ".jsonl"), ("crows_pairs", ".csv"), ("bbq", ".jsonl"),
                                          ("stereoset", ".jsonl")])
def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path, name, suffix):
    from probes.base import ProbeDataError
    from probes.registry import get_probe

    bad = tmp_path / f"data{suffix}"
    bad.write_bytes(b'{"ok": 1}\n\xff\xfe not text\n')
    with pytest.raises(ProbeDataError) as err:
        get_probe(name, path=str(bad)).load(None)
    assert f"{bad}:2: not UTF-8 text" in str(err.value)
