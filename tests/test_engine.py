"""PrefixCacheLM gives lm-eval HFLM's numbers: property test on the tiny model, parity on the real teacher.

The reference is ``HFLM(logits_cache=False)``, and the engine side is always the engine's own scoring:
a module-wide guard fails any test in which ``PrefixCacheLM`` falls back to HFLM's scoring (which it
does, with a warning, for models its cache cannot serve), since a parity test would then compare HFLM
with itself and could not fail. The one test of that fallback checks it against a plain forward pass. HFLM's default one-token "logits cache" reuses one
request's logits for another whose ``context + continuation[:-1]`` tokens are equal, and for a
one-token continuation it then gathers at the wrong position when the representative request had a
longer continuation (see ``test_boundary_shift_matches_direct_forward``); the engine computes every
request exactly, as HFLM does with that cache off. On real task requests both agree (slow tests).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from itertools import islice

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook, hash_args
from lm_eval.models.huggingface import HFLM

from audit.engine import PrefixCacheLM
from audit.plan import (
    Cluster,
    Group,
    Split,
    divide,
    layout,
    pack_rows,
    plan_clusters,
    plan_passes,
    split_request,
    tree_mask,
    tree_tokens,
)

TOL = 1e-4
_HFLM_SCORING = HFLM._loglikelihood_tokens


def _refuse_fallback(self, *args, **kwargs):
    if isinstance(self, PrefixCacheLM):
        raise AssertionError(f"PrefixCacheLM fell back to HFLM's scoring ({self._cache_supported()}): "
                             "the comparison would be HFLM with itself")
    return _HFLM_SCORING(self, *args, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def engine_scores_itself():
    """Every engine request in this module goes through the engine's own planner and passes."""
    HFLM._loglikelihood_tokens = _refuse_fallback
    try:
        yield
    finally:
        HFLM._loglikelihood_tokens = _HFLM_SCORING


def _instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def _pair(loaded, **kw):
    common = dict(pretrained=loaded.model, tokenizer=loaded.tokenizer, device="cpu", batch_size=8, **kw)
    return HFLM(logits_cache=False, **common), PrefixCacheLM(**common)


def _assert_same(ref, got):
    assert len(ref) == len(got)
    for i, ((ll_r, g_r), (ll_g, g_g)) in enumerate(zip(ref, got, strict=True)):
        assert math.isfinite(ll_g), f"request {i}: {ll_g}"
        assert abs(ll_r - ll_g) <= TOL, f"request {i}: HFLM {ll_r} vs engine {ll_g}"
        assert g_r == g_g, f"request {i}: is_greedy HFLM {g_r} vs engine {g_g}"


# ---------------------------------------------------------------- planning (pure)


def test_split_request_cuts_hflm_window():
    # no truncation: prefix = the context (its last token's logits score cont[0]), suffix = cont[:-1]
    s = split_request([1, 2, 3, 4], [5, 6], max_length=10)
    assert s == Split(prefix=(1, 2, 3, 4), suffix=(5,), targets=(5, 6))
    # truncation: window (ctx + cont)[-(L+1):][:-1] = [3, 4, 5] for L = 3; scored positions are its last 2
    s = split_request([1, 2, 3, 4], [5, 6], max_length=3)
    assert s == Split(prefix=(3, 4), suffix=(5,), targets=(5, 6))
    # a one-token context has nothing to cache: a plain forward scores every target
    assert split_request([9], [5, 6, 7], max_length=10) == Split(prefix=(), suffix=(9, 5, 6), targets=(5, 6, 7))
    # the continuation fills the whole window
    assert split_request([1, 2], [5, 6, 7], max_length=3) == Split(prefix=(), suffix=(2, 5, 6), targets=(5, 6, 7))
    # a one-token continuation has an empty suffix: the prefix's last logits score it
    assert split_request([1, 2], [5], max_length=10) == Split(prefix=(1, 2), suffix=(), targets=(5,))


def test_split_request_rejects_what_hflm_rejects():
    with pytest.raises(ValueError, match="continuation"):
        split_request([1, 2], [], max_length=8)
    with pytest.raises(ValueError, match="longer than the model window"):
        split_request([1], [2, 3, 4], max_length=2)


def test_plan_clusters_shares_a_long_head_and_keeps_short_ones_apart():
    head = tuple(range(100, 120))
    splits = [
        Split(prefix=head + (1, 2), suffix=(3,), targets=(4,)),
        Split(prefix=head + (1, 2), suffix=(3, 4), targets=(4, 5)),
        Split(prefix=head + (7,), suffix=(8,), targets=(9,)),
        Split(prefix=(100, 101, 5), suffix=(6,), targets=(7,)),  # shares 2 tokens only
        Split(prefix=(), suffix=(1, 2), targets=(2, 3)),  # no prefix: shares nothing
        Split(prefix=(), suffix=(1, 5), targets=(5, 6)),
    ]
    clusters = plan_clusters(splits, min_shared=8)
    assert sorted(clusters, key=lambda c: (len(c.root), c.groups[0].leaves)) == [
        Cluster(root=(), groups=(Group(segment=(), leaves=(4,)),)),
        Cluster(root=(), groups=(Group(segment=(), leaves=(5,)),)),
        Cluster(root=(100, 101, 5), groups=(Group(segment=(), leaves=(3,)),)),
        Cluster(root=head, groups=(Group(segment=(1, 2), leaves=(0, 1)), Group(segment=(7,), leaves=(2,)))),
    ]
    assert tree_tokens(clusters[-1] if clusters[-1].root == head else clusters[0], splits) == 20 + 2 + 1 + 2 + 1 + 1


def _leaves(pieces):
    return sorted(i for c in pieces for g in c.groups for i in g.leaves)


def test_divide_keeps_roots_and_segments_and_every_request_once():
    root = tuple(range(50, 70))
    splits = [Split(prefix=root + (g,), suffix=(1,) * (1 + i % 4), targets=(2,) * (2 + i % 4))
              for g in range(3) for i in range(10)]
    (cluster,) = plan_clusters(splits, min_shared=8)
    assert tree_tokens(cluster, splits) > 60
    for limit in (1, 25, 40, 60, 10_000):
        pieces = divide(cluster, splits, limit)
        assert _leaves(pieces) == list(range(30))
        for p in pieces:
            assert p.root == root and all(g.segment in {(0,), (1,), (2,)} for g in p.groups)
            assert tree_tokens(p, splits) <= limit or sum(len(g.leaves) for g in p.groups) == 1
        assert (len(pieces) == 1) == (limit >= tree_tokens(cluster, splits))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=0, max_size=30))
def test_pack_rows_places_every_tree_once_within_the_widest(sizes):
    rows = pack_rows(sizes)
    assert sorted(i for r in rows for i in r) == list(range(len(sizes)))
    used = [sum(sizes[i] for i in r) for r in rows]
    assert all(u <= max(sizes) for u in used) and used == sorted(used, reverse=True)
    # best fit never leaves two rows that could have been one
    assert all(a + b > max(sizes) for j, a in enumerate(used) for b in used[j + 1:])


def test_plan_passes_covers_every_request_within_the_pass_limits():
    splits = [Split(prefix=tuple(range(i % 7, 30)) + (i,), suffix=(1,) * (1 + i % 3), targets=(2,) * (2 + i % 3))
              for i in range(60)]
    passes = plan_passes(splits, max_row_tokens=64, max_pass_tokens=200, max_pass_scored=50)
    assert _leaves([c for rows in passes for row in rows for c in row]) == list(range(60))
    assert len(passes) > 1
    for rows in passes:
        width = max(sum(tree_tokens(c, splits) for c in row) for row in rows)
        scored = sum(len(splits[i].targets) for row in rows for c in row for g in c.groups for i in g.leaves)
        assert len(rows) == 1 or (len(rows) * width <= 200 and scored <= 50)


def test_tree_mask_lets_each_token_see_exactly_its_ancestors():
    # one tree: root (5, 6); a group with no segment and suffix (11); a group with segment (7) and suffixes
    # (8, 9) and (10). A second row holds a request with no prefix (its suffix scores every target).
    splits = [Split(prefix=(5, 6, 7), suffix=(8, 9), targets=(8, 9, 1)), Split(prefix=(5, 6, 7), suffix=(10,), targets=(10, 1)),
              Split(prefix=(5, 6), suffix=(11,), targets=(11, 1)), Split(prefix=(), suffix=(12, 13), targets=(13, 14))]
    (cluster,) = [c for c in plan_clusters(splits, min_shared=1) if c.root]
    lonely = Cluster(root=(), groups=(Group(segment=(), leaves=(3,)),))
    lay = layout([[cluster], [lonely]], splits, pad=0)
    assert lay.ids.tolist() == [[5, 6, 11, 7, 8, 9, 10], [12, 13, 0, 0, 0, 0, 0]]
    assert lay.positions.tolist()[0] == [0, 1, 2, 2, 3, 4, 3] and lay.positions.tolist()[1][:2] == [0, 1]
    mask = tree_mask(lay)[:, 0].int().tolist()
    assert mask[0] == [[1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0],  # the segment-less group's suffix: root, itself
                       [1, 1, 0, 1, 0, 0, 0],  # segment (7): root, itself
                       [1, 1, 0, 1, 1, 0, 0],
                       [1, 1, 0, 1, 1, 1, 0],
                       [1, 1, 0, 1, 0, 0, 1]]  # the second suffix: root, segment, not its sibling
    assert mask[1] == [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]] + [[int(i == j) for j in range(7)] for i in range(2, 7)]
    # flat positions whose logits score each request's targets: the prefix's last token first
    assert lay.scored == {2: [1, 2], 0: [3, 4, 5], 1: [3, 6], 3: [7, 8]}


# ---------------------------------------------------------------- parity with HFLM on the tiny model


@pytest.fixture(scope="module")
def tiny_lms(tiny):
    return _pair(tiny)


@pytest.fixture(scope="module")
def tiny_lms_short(tiny):
    return _pair(tiny, max_length=12)


_WORDS = ["the", "cat", "sat", "on", "mat", "Hello", "world", "!", ",", "42", "über", "nurse", "he", "she", "\n"]
# a whitespace-only context encodes to no tokens, which HFLM rejects (test_empty_encodings_are_errors...)
_text = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6).map(lambda ws: " ".join(ws)).filter(str.strip)
_cont = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3).map(lambda ws: " " + " ".join(ws))


@st.composite
def _requests(draw):
    """Contexts from a small pool (shared, extended, empty), each with several continuations."""
    base = draw(st.lists(_text, min_size=1, max_size=3))
    pool = base + [b + " " + draw(_text) for b in base] + [""]
    n = draw(st.integers(1, 12))
    return [(draw(st.sampled_from(pool)), draw(_cont)) for _ in range(n)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_requests())
def test_property_equals_hflm(tiny_lms, pairs):
    hf, engine = tiny_lms
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_requests())
def test_property_equals_hflm_with_shared_roots(tiny, pairs):
    """Any shared head becomes a root (min_shared_prefix=1), so a context that is the head of another
    is a group with an empty segment, scored from its root's last logits."""
    hf, _ = _pair(tiny)
    engine = PrefixCacheLM(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu", min_shared_prefix=1)
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


def test_shared_root_plan_has_empty_segments_and_one_token_continuations(tiny):
    """The case the property test above relies on does occur: a group whose prefix is its root."""
    engine = PrefixCacheLM(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu", min_shared_prefix=1)
    pairs = [("the cat sat on the mat", " he"), ("the cat sat on the mat and the dog", " she"),
             ("the cat sat on the mat and the dog", " said Hello world")]
    splits = [split_request(*engine._encode_pair(c, x), max_length=engine.max_length) for c, x in pairs]
    (cluster,) = plan_clusters(splits, min_shared=1)
    assert sorted(len(g.segment) for g in cluster.groups)[0] == 0 and len(cluster.groups) == 2
    assert min(len(s.suffix) for s in splits) == 0
    hf, _ = _pair(tiny)
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_requests())
def test_property_equals_hflm_when_truncated_to_window(tiny_lms_short, pairs):
    hf, engine = tiny_lms_short
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


def test_truncation_is_exercised(tiny_lms_short):
    hf, engine = tiny_lms_short
    pairs = [("the cat sat on the mat " * 4, " Hello world"), ("the cat sat on the mat " * 4, " nurse"), ("", "he " * 8)]
    toks = [hf._encode_pair(*p) for p in pairs[:2]]
    assert all(len(c) + len(x) > hf.max_length + 1 for c, x in toks)
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


def test_continuation_longer_than_window_is_an_error_like_hflm(tiny_lms_short):
    hf, engine = tiny_lms_short
    pairs = [("the cat", " sat on the mat " * 6)]
    with pytest.raises(AssertionError):
        hf.loglikelihood(_instances(pairs))
    with pytest.raises(ValueError, match="longer than the model window"):
        engine.loglikelihood(_instances(pairs))


def test_empty_encodings_are_errors_like_hflm(tiny_lms):
    hf, engine = tiny_lms
    pairs = [("\n", " the")]  # lm-eval moves the context's trailing whitespace into the continuation
    with pytest.raises(AssertionError):
        hf.loglikelihood(_instances(pairs))
    with pytest.raises(ValueError, match="whitespace"):
        engine.loglikelihood(_instances(pairs))


def test_boundary_shift_matches_direct_forward(tiny, tiny_lms):
    """Same tokens, split at two places: each equals a plain forward pass (HFLM's logits cache does not)."""
    _, engine = tiny_lms
    pairs = [("The cat sat on", " the mat"), ("The cat sat on the", " mat")]
    got = engine.loglikelihood(_instances(pairs))
    for (ctx, cont), (ll, _) in zip(pairs, got, strict=True):
        c, x = engine._encode_pair(ctx, cont)
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(torch.tensor([c + x])).logits[0], dim=-1)
        direct = sum(float(logp[len(c) - 1 + j, t]) for j, t in enumerate(x))
        assert abs(ll - direct) <= TOL


def test_small_memory_budget_and_pass_size_give_same_numbers(tiny, tiny_lms):
    hf, _ = tiny_lms
    common = dict(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu")
    big, small = PrefixCacheLM(**common), PrefixCacheLM(memory_budget_mb=1, max_pass_tokens=3, max_row_tokens=2, **common)
    pairs = [(f"the cat sat on the mat number {i}", f" {w} was here") for i in range(12) for w in ("he", "she", "nurse")]
    passes = {}
    for name, lm in (("big", big), ("small", small)):
        calls = []
        score = lm._score_pass
        lm._score_pass = lambda *a, score=score, calls=calls, **k: calls.append(1) or score(*a, **k)
        _assert_same(hf.loglikelihood(_instances(pairs)), lm.loglikelihood(_instances(pairs)))
        passes[name] = len(calls)
    # else both would run the same plan and the comparison could not fail
    assert passes["big"] == 1 and passes["small"] >= 12, passes


def test_eager_attention_takes_the_float_mask_and_equals_hflm(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    common = dict(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), device="cpu", batch_size=8)
    hf, engine = HFLM(logits_cache=False, **common), PrefixCacheLM(**common)
    pairs = [("Q: who? A:", " he"), ("Q: who? A:", " she said"), ("", "Hello world"), ("the cat sat on the mat", " and")]
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


def test_rolling_goes_through_the_engine_and_equals_hflm(tiny):
    common = dict(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu", max_length=8)
    hf, engine = HFLM(logits_cache=False, **common), PrefixCacheLM(**common)
    docs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
            for i, t in enumerate(["the cat sat on the mat and he said Hello world", "Hello"])]
    ref, got = hf.loglikelihood_rolling(docs), engine.loglikelihood_rolling(docs)
    assert len(got) == 2
    assert all(abs(a - b) <= TOL for a, b in zip(ref, got, strict=True))


def test_sliding_window_model_falls_back_to_hflm_scoring(tiny, monkeypatch, caplog):
    """A model the cache cannot serve is scored by HFLM's own path, with a warning, and never by the
    engine's planner; its numbers are checked against a plain forward pass (comparing them with HFLM
    would compare HFLM with itself)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, max_position_embeddings=128)
    model = MistralForCausalLM(cfg).eval()
    engine = PrefixCacheLM(pretrained=model, tokenizer=tiny.tokenizer, device="cpu", batch_size=4)
    assert "sliding" in engine._cache_supported()
    fallbacks = []
    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", lambda self, *a, **k: fallbacks.append(1) or _HFLM_SCORING(self, *a, **k))
    monkeypatch.setattr(engine, "_score_pass", lambda *a, **k: pytest.fail("the engine's planner ran"))
    # contexts longer than the window (4), so the sliding window changes the numbers
    pairs = [("the cat sat on the mat and then", " he"), ("the cat sat on the mat and then", " she ran")]
    with caplog.at_level(logging.WARNING, logger="audit.engine"):
        got = engine.loglikelihood(_instances(pairs))
    assert fallbacks == [1] and "scoring with HFLM's own path" in caplog.text
    for (ctx, cont), (ll, _) in zip(pairs, got, strict=True):
        c, x = engine._encode_pair(ctx, cont)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + x])).logits[0], dim=-1)
        assert abs(ll - sum(float(logp[len(c) - 1 + j, t]) for j, t in enumerate(x))) <= TOL


class _Recorder:
    def __init__(self):
        self.store = {}

    def add_partial(self, attr, req, res):
        self.store[hash_args(attr, req)] = res


def test_results_cache_keys_and_values_do_not_depend_on_backend(tiny_lms):
    pairs = [("Q: who? A:", " he"), ("Q: who? A:", " she"), ("", "Hello world"), ("the cat", " sat")]
    stores = []
    for lm in tiny_lms:
        rec = _Recorder()
        lm.set_cache_hook(rec)
        try:
            lm.loglikelihood(_instances(pairs))
        finally:
            lm.set_cache_hook(CacheHook(None))
        stores.append(rec.store)
    ref, got = stores
    assert set(ref) == set(got) == {hash_args("loglikelihood", p) for p in pairs}
    for key in ref:
        assert abs(ref[key][0] - got[key][0]) <= TOL and ref[key][1] == got[key][1]


# ---------------------------------------------------------------- parity on the real teacher (slow)


@pytest.fixture(scope="module")
def teacher_lms(teacher):
    return _pair(teacher)


def _check_teacher(teacher_lms, pairs):
    hf, engine = teacher_lms
    _assert_same(hf.loglikelihood(_instances(pairs)), engine.loglikelihood(_instances(pairs)))


@pytest.mark.slow
def test_teacher_crows_pairs(teacher_lms, data_dir):
    with open(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", newline="") as fh:
        rows = list(islice(csv.DictReader(fh), 30))
    # lm-eval's crows_pairs_english: empty context, each sentence a continuation (target_delimiter "")
    _check_teacher(teacher_lms, [("", r[k]) for r in rows for k in ("sent_more", "sent_less")])


@pytest.mark.slow
def test_teacher_bbq_all_options(teacher_lms, data_dir):
    from lm_eval.tasks.bbq.utils import doc_to_choice

    with open(data_dir / "bbq" / "Age.jsonl") as fh:
        docs = [json.loads(line) for line in islice(fh, 10)]
    pairs = [(f"{d['context']}\n\nQ: {d['question']}\nA:", " " + c) for d in docs for c in doc_to_choice(d)]
    assert len(pairs) == 120  # 2 named answers + 10 "unknown" phrasings per item, as lm-eval's bbq task
    _check_teacher(teacher_lms, pairs)


@pytest.mark.slow
def test_teacher_hellaswag(teacher_lms, data_dir):
    from lm_eval.tasks.hellaswag.utils import preprocess

    with open(data_dir / "hellaswag" / "hellaswag_val.derived.jsonl") as fh:
        docs = [json.loads(line) for line in islice(fh, 10)]
    pairs = [(preprocess(d["activity_label"] + ": " + d["ctx"]), " " + preprocess(e)) for d in docs for e in d["endings"]]
    _check_teacher(teacher_lms, pairs)
