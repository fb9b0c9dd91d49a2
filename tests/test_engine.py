"""PrefixCacheLM gives lm-eval HFLM's numbers: property test on the tiny model, parity on the real teacher.

The reference is ``HFLM(logits_cache=False)``. HFLM's default one-token "logits cache" reuses one
request's logits for another whose ``context + continuation[:-1]`` tokens are equal, and for a
one-token continuation it then gathers at the wrong position when the representative request had a
longer continuation (see ``test_boundary_shift_matches_direct_forward``); the engine computes every
request exactly, as HFLM does with that cache off. On real task requests both agree (slow tests).
"""

from __future__ import annotations

import csv
import json
import math
from itertools import islice

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook, hash_args
from lm_eval.models.huggingface import HFLM

from audit.engine import (
    Cluster,
    Group,
    MemoryModel,
    PrefixCacheLM,
    Split,
    batch_bytes,
    length_chunks,
    plan_batches,
    plan_clusters,
    split_request,
)

TOL = 1e-4


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
    ]
    clusters = plan_clusters(splits, min_shared=8)
    assert sorted(clusters, key=lambda c: len(c.root)) == [
        Cluster(root=(100, 101, 5), groups=(Group(segment=(), leaves=(3,)),)),
        Cluster(root=head, groups=(Group(segment=(1, 2), leaves=(0, 1)), Group(segment=(7,), leaves=(2,)))),
    ]


def test_plan_batches_covers_every_request_once_within_budget():
    mem = MemoryModel(kv=1000, logits=50_000, activations=2000, heads=4, elem=4)
    splits = [Split(prefix=tuple(range(i % 7, 30)), suffix=(1,) * (1 + i % 3), targets=(2,) * (1 + i % 3))
              for i in range(60)]
    budget = 3_000_000
    batches = plan_batches(splits, mem, budget)
    seen = sorted(i for b in batches for c in b for g in c.groups for i in g.leaves)
    assert seen == list(range(60))
    assert len(batches) > 1
    for b in batches:
        n_leaves = sum(len(g.leaves) for c in b for g in c.groups)
        assert batch_bytes(b, splits, mem) <= budget or n_leaves == 1
    # suffixes in passes of <= 6 positions: only one pass's rows copy their prefix cache, so more fits
    paced = plan_batches(splits, mem, budget, pass_tokens=6)
    assert sorted(i for b in paced for c in b for g in c.groups for i in g.leaves) == list(range(60))
    assert len(paced) < len(batches)
    for b in paced:
        assert batch_bytes(b, splits, mem, pass_tokens=6) <= budget
        assert batch_bytes(b, splits, mem, pass_tokens=6) < batch_bytes(b, splits, mem)


def test_length_chunks_bound_padding():
    lengths = [1, 4, 3, 10, 9, 0, 8, 0, 4]
    chunks = length_chunks(lengths, ratio=0.8)
    assert chunks == [[3, 4, 6], [1, 8], [2], [0], [5, 7]]
    for c in chunks:
        assert all(lengths[i] >= 0.8 * lengths[c[0]] for i in c)


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


def test_small_memory_budget_and_pass_size_give_same_numbers(tiny):
    common = dict(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu")
    big, small = PrefixCacheLM(**common), PrefixCacheLM(memory_budget_mb=1, max_pass_tokens=3, **common)
    pairs = [(f"the cat sat on the mat number {i}", f" {w}") for i in range(12) for w in ("he", "she", "nurse")]
    _assert_same(big.loglikelihood(_instances(pairs)), small.loglikelihood(_instances(pairs)))


def test_rolling_goes_through_the_engine_and_equals_hflm(tiny):
    common = dict(pretrained=tiny.model, tokenizer=tiny.tokenizer, device="cpu", max_length=8)
    hf, engine = HFLM(logits_cache=False, **common), PrefixCacheLM(**common)
    docs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
            for i, t in enumerate(["the cat sat on the mat and he said Hello world", "Hello"])]
    ref, got = hf.loglikelihood_rolling(docs), engine.loglikelihood_rolling(docs)
    assert len(got) == 2
    assert all(abs(a - b) <= TOL for a, b in zip(ref, got, strict=True))


def test_sliding_window_model_falls_back_to_hflm_scoring(tiny):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, max_position_embeddings=128)
    model = MistralForCausalLM(cfg).eval()
    common = dict(pretrained=model, tokenizer=tiny.tokenizer, device="cpu", batch_size=4)
    hf, engine = HFLM(**common), PrefixCacheLM(**common)
    assert engine._cache_supported() is not None
    pairs = [("the cat sat on the mat and then", " he"), ("the cat sat on the mat and then", " she ran")]
    assert hf.loglikelihood(_instances(pairs)) == engine.loglikelihood(_instances(pairs))


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
