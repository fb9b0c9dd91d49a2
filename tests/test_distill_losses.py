"""Parity of every distillation loss with a direct torch computation on random logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill import losses as L

N, V = 40, 37


def _data(seed: int = 0, n: int = N, v: int = V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g) * 2
    t = torch.randn(n, v, generator=g) * 2
    y = torch.randint(0, v, (n,), generator=g)
    y[::3] = L.IGNORE  # masked tokens
    return s, t, y


def _direct(kind, t_logp, s_logp, beta=0.5, lam=0.1):
    """Reference divergences written with torch.nn.functional.kl_div (KL(p‖q) = kl_div(log q, log p))."""
    kl = lambda p, q: F.kl_div(q, p, reduction="none", log_target=True).sum(-1)  # noqa: E731
    if kind == "forward_kl":
        return kl(t_logp, s_logp)
    if kind == "reverse_kl":
        return kl(s_logp, t_logp)
    if kind == "jsd":
        m = torch.log(beta * t_logp.exp() + (1 - beta) * s_logp.exp())
        return beta * kl(t_logp, m) + (1 - beta) * kl(s_logp, m)
    m = torch.log(lam * t_logp.exp() + (1 - lam) * s_logp.exp())
    return kl(t_logp, m)


@pytest.mark.parametrize("kind", L.DIVERGENCES)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_loss_equals_direct_torch(kind, tau):
    s, t, y = _data()
    alpha = 0.3
    got = L.soft_label_loss(s, y, t, alpha=alpha, temperature=tau, kind=kind, beta=0.3, skew_lambda=0.2)
    m = y != L.IGNORE
    t_logp = F.log_softmax(t[m] / tau, -1)
    s_logp = F.log_softmax(s[m] / tau, -1)
    d = _direct(kind, t_logp, s_logp, beta=0.3, lam=0.2).sum() / m.sum() * tau**2
    ce = F.cross_entropy(s, y, ignore_index=-100)  # mean over valid tokens
    torch.testing.assert_close(got.kd, d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.ce, ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.total, (1 - alpha) * ce + alpha * d, rtol=1e-5, atol=1e-6)
    assert got.kd.item() > 0


def test_masked_tokens_do_not_contribute():
    s, t, y = _data()
    a = L.soft_label_loss(s, y, t, alpha=0.5, temperature=2.0)
    s2, t2 = s.clone(), t.clone()
    s2[y == L.IGNORE] = 1e3 * torch.randn_like(s2[y == L.IGNORE])
    t2[y == L.IGNORE] = -5.0
    b = L.soft_label_loss(s2, y, t2, alpha=0.5, temperature=2.0)
    torch.testing.assert_close(a.total, b.total)


def test_global_token_normalisation_makes_accumulation_exact():
    """Two micro-batches with different valid counts, each divided by the global count, sum
    to the loss of the whole batch (a per-micro-batch mean would not)."""
    s, t, y = _data(n=60)
    y[5:20] = L.IGNORE  # unbalance the halves
    n_first, n_second = int((y[:30] != L.IGNORE).sum()), int((y[30:] != L.IGNORE).sum())
    assert n_first < n_second  # else a per-micro-batch mean would equal the global one and prove nothing
    whole = L.soft_label_loss(s, y, t, alpha=0.4, temperature=2.0).total
    n = int((y != L.IGNORE).sum())
    parts = [L.soft_label_loss(s[i:j], y[i:j], t[i:j], alpha=0.4, temperature=2.0, num_valid=n).total
             for i, j in [(0, 30), (30, 60)]]
    torch.testing.assert_close(parts[0] + parts[1], whole)
    naive = sum(L.soft_label_loss(s[i:j], y[i:j], t[i:j], alpha=0.4, temperature=2.0).total
                for i, j in [(0, 30), (30, 60)]) / 2
    assert abs(naive.item() - whole.item()) > 1e-3


def test_jsd_reaches_kl_at_its_limits():
    s, t, _ = _data()
    t_logp, s_logp = F.log_softmax(t, -1), F.log_softmax(s, -1)
    # the references are torch's kl_div (``_direct``), not our own forward/reverse KL: comparing
    # jsd(β=0) with L.divergence("forward_kl") would compare one code branch with itself
    fwd = _direct("forward_kl", t_logp, s_logp)
    rev = _direct("reverse_kl", t_logp, s_logp)
    assert float((fwd - rev).abs().max()) > 0.1  # the two limits are distinguishable here
    torch.testing.assert_close(L.divergence(t_logp, s_logp, kind="jsd", beta=0.0), fwd)
    torch.testing.assert_close(L.divergence(t_logp, s_logp, kind="jsd", beta=1.0), rev)
    t64, s64 = t_logp.double(), s_logp.double()
    gaps = []
    for eps in (1e-2, 1e-4, 1e-7):  # JSD(β)/β -> KL(p_T‖p_S) as β->0; JSD(β)/(1-β) -> KL(p_S‖p_T) as β->1
        near0 = L.divergence(t64, s64, kind="jsd", beta=eps) / eps
        near1 = L.divergence(t64, s64, kind="jsd", beta=1 - eps) / eps
        gaps.append(max(float((near0 - fwd.double()).abs().max()), float((near1 - rev.double()).abs().max())))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3, gaps
    # symmetric at β = 1/2 and bounded by log 2
    j = L.divergence(t_logp, s_logp, kind="jsd", beta=0.5)
    torch.testing.assert_close(j, L.divergence(s_logp, t_logp, kind="jsd", beta=0.5), rtol=1e-5, atol=1e-6)
    assert float(j.max()) <= torch.log(torch.tensor(2.0)).item() + 1e-6


def test_skew_kl_limits():
    """λ = 0 and λ = 1 are special-cased in ``divergence``; checking those branches alone could not fail
    (KL(p‖p) = 0 whatever the code), so the general formula is checked to approach them, against
    torch's kl_div, and to shrink monotonically from forward KL to 0 as λ grows."""
    s, t, _ = _data()
    t_logp, s_logp = F.log_softmax(t.double(), -1), F.log_softmax(s.double(), -1)
    fwd = _direct("forward_kl", t_logp, s_logp)
    torch.testing.assert_close(L.divergence(t_logp, s_logp, kind="skew_kl", skew_lambda=0.0), fwd)
    lams = (1e-9, 1e-3, 0.1, 0.5, 0.9, 1 - 1e-9)
    rows = [L.divergence(t_logp, s_logp, kind="skew_kl", skew_lambda=lam) for lam in lams]
    for lam, r in zip(lams, rows, strict=True):
        torch.testing.assert_close(r, _direct("skew_kl", t_logp, s_logp, lam=lam))
    torch.testing.assert_close(rows[0], fwd, rtol=1e-6, atol=1e-6)
    assert float(rows[-1].abs().max()) < 1e-6 and float(fwd.min()) > 1e-2
    assert all(bool((a > b).all()) for a, b in zip(rows, rows[1:], strict=False))
    assert float(L.divergence(t_logp, s_logp, kind="skew_kl", skew_lambda=1.0).abs().max()) == 0.0


@pytest.mark.parametrize("kind", L.DIVERGENCES)
def test_tau_squared_scales_gradients(kind):
    s, t, y = _data()
    tau = 3.0
    grads = []
    for flag in (False, True):
        x = s.clone().requires_grad_(True)
        L.soft_label_loss(x, y, t, alpha=1.0, temperature=tau, kind=kind, tau_squared=flag).total.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0] * tau**2)
    assert grads[0].abs().sum() > 0


def test_cached_topk_approaches_dense_with_bounded_error():
    """Bucketed KL = dense KL − P_T(tail)·KL(tail conditionals) exactly (chain rule), so it is a
    lower bound whose gap shrinks to 0 as k grows to V."""
    g = torch.Generator().manual_seed(1)
    n, v = 16, 512
    s, t = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3
    y = torch.randint(0, v, (n,), generator=g)
    tau = 2.0
    dense = L.soft_label_loss(s, y, t, alpha=1.0, temperature=tau).kd.double()
    errors = []
    for k in (1, 8, 64, 256, v):
        t_logp = F.log_softmax(t, -1)
        lp, idx = t_logp.topk(k, -1)
        tail = t_logp.scatter(-1, idx, float("-inf")).logsumexp(-1)
        top = L.TopK(indices=idx, logprobs=lp, tail=tail, temperature=1.0)
        # cache stored at τ=1, re-tempered to τ=2 (approximate only in the tail bucket): compare to
        # a cache stored at the training τ, where the bucketing is the only approximation
        t_tau = F.log_softmax(t / tau, -1)
        lp2, idx2 = t_tau.topk(k, -1)
        tail2 = t_tau.scatter(-1, idx2, float("-inf")).logsumexp(-1)
        top2 = L.TopK(indices=idx2, logprobs=lp2, tail=tail2, temperature=tau)
        cached = L.soft_label_loss(s, y, top2, alpha=1.0, temperature=tau).kd.double()
        # chain-rule decomposition, computed directly
        s_tau = F.log_softmax(s / tau, -1)
        rest = torch.ones_like(t_tau, dtype=torch.bool).scatter(-1, idx2, False)
        pt_tail = (t_tau.exp() * rest).sum(-1)
        ps_tail = (s_tau.exp() * rest).sum(-1)
        cond = torch.where(rest, t_tau.exp() / pt_tail.clamp_min(1e-30).unsqueeze(-1), torch.zeros_like(t_tau))
        cond_kl = torch.where(cond > 0, cond * (torch.log(cond.clamp_min(1e-30)) - (s_tau - torch.log(ps_tail.clamp_min(1e-30)).unsqueeze(-1))), torch.zeros_like(cond)).sum(-1)
        gap = (pt_tail * cond_kl).sum() / n * tau**2
        torch.testing.assert_close(dense - cached, gap.double(), rtol=1e-3, atol=1e-4)
        errors.append(float(dense - cached))
        if k == v:
            retempered = L.soft_label_loss(s, y, top, alpha=1.0, temperature=tau).kd.double()
            torch.testing.assert_close(retempered, dense, rtol=1e-4, atol=1e-5)
    assert all(e >= -1e-4 for e in errors)
    assert errors[0] > errors[2] > errors[3] and abs(errors[-1]) < 1e-4
    assert errors[3] / float(dense) < 0.05  # k=256 of 512 keeps the loss within 5%


def test_codistill_no_gradient_through_peer_target():
    s, t, y = _data()
    a = s.clone().requires_grad_(True)
    b = t.clone().requires_grad_(True)
    la = L.codistill_loss(a, y, [b], lam=0.7, temperature=2.0)
    ga, gb = torch.autograd.grad(la.total, [a, b], allow_unused=True, retain_graph=True)
    assert gb is None or float(gb.abs().max()) == 0.0
    assert float(ga.abs().sum()) > 0
    # value: CE + λ·τ²·KL(p_b‖p_a)
    m = y != L.IGNORE
    kl = F.kl_div(F.log_softmax(s[m] / 2, -1), F.log_softmax(t[m] / 2, -1), reduction="sum", log_target=True) / m.sum()
    torch.testing.assert_close(la.total, F.cross_entropy(s, y) + 0.7 * 4.0 * kl, rtol=1e-5, atol=1e-6)
    # summed peer losses give each peer exactly its own gradient
    lb = L.codistill_loss(b, y, [a], lam=0.2, temperature=2.0)
    ga2, gb2 = torch.autograd.grad(la.total + lb.total, [a, b])
    torch.testing.assert_close(ga2, ga)
    torch.testing.assert_close(gb2, torch.autograd.grad(L.codistill_loss(b, y, [a.detach()], lam=0.2, temperature=2.0).total, b)[0])


def test_hard_label_loss_is_ce_on_teacher_argmax_and_vocab_trim():
    s, t, y = _data()
    got = L.hard_label_loss(s, y, t).total
    tgt = torch.where(y != L.IGNORE, t.argmax(-1), y)
    torch.testing.assert_close(got, F.cross_entropy(s, tgt, ignore_index=-100))
    # padded student rows beyond the shared vocabulary are trimmed before the softmax
    padded = torch.cat([s, torch.full((N, 5), 30.0)], dim=-1)
    a = L.soft_label_loss(padded, y, t, vocab=V, temperature=2.0)
    b = L.soft_label_loss(s, y, t, temperature=2.0)
    torch.testing.assert_close(a.total, b.total)


def test_burn_in_ramp():
    assert [L.burn_in_weight(i, lam=1.0, burn_in=4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert L.burn_in_weight(0, lam=0.3, burn_in=0) == 0.3


def test_nan_teacher_is_not_masked():
    s, t, y = _data()
    t[0, 0] = float("nan")
    t[y != L.IGNORE] = float("nan")
    for kind in L.DIVERGENCES:
        assert torch.isnan(L.soft_label_loss(s, y, t, alpha=0.5, kind=kind).total)


def _topk(t, k, tau):
    t_logp = F.log_softmax(t / tau, -1)
    lp, idx = t_logp.topk(k, -1)
    tail = t_logp.scatter(-1, idx, float("-inf")).logsumexp(-1)
    return L.TopK(indices=idx, logprobs=lp, tail=tail, temperature=tau)


@pytest.mark.parametrize("block_rows", [1, 3, None])
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_fused_soft_label_matches_autograd_value_and_gradient(cached, tau, block_rows, monkeypatch):
    """The hand-written gradient of the fused CE + forward-KL equals autograd's on the plain
    formulas, for a dense teacher and for the top-k cache, with masked rows, whether the rows run
    in one block or in several (3 rows: 40 = 13 blocks + a last one of 1 row)."""
    if block_rows is not None:
        monkeypatch.setattr(L, "_BLOCK_ELEMENTS", block_rows * V)
    assert len(list(L._blocks(N, V))) == (1 if block_rows is None else -(-N // block_rows))
    s, t, y = _data()
    teacher = _topk(t, 5, tau) if cached else t
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    ce_f, kl_f = L._soft_rows_fused(a, y, teacher, tau)
    ce_r, kl_r = L._soft_rows_autograd(b, y, teacher, tau, kind="forward_kl", beta=0.5, skew_lambda=0.1)
    torch.testing.assert_close(ce_f, ce_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_f, kl_r, rtol=1e-5, atol=1e-6)
    assert float(kl_f.detach()[y == L.IGNORE].abs().max()) == 0.0 and float(kl_f.detach().min()) >= -1e-6
    w1, w2 = torch.rand(N), torch.rand(N)
    ((ce_f * w1).sum() + (kl_f * w2).sum()).backward()
    ((ce_r * w1).sum() + (kl_r * w2).sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert float(a.grad[y == L.IGNORE].abs().max()) == 0.0
    with pytest.raises(RuntimeError, match="one backward"):  # p_S is reused in place
        ce, kl = L._soft_rows_fused(s.clone().requires_grad_(True), y, teacher, tau)
        total = kl.sum() + ce.sum()
        total.backward(retain_graph=True)
        total.backward()


def test_shift_keeps_a_view_and_ignores_the_last_position():
    logits = torch.randn(2, 4, V)
    labels = torch.tensor([[5, 6, 7, 8], [1, 2, -100, -100]])
    z, y = L.shift(logits, labels)
    assert z.data_ptr() == logits.data_ptr() and z.shape == (8, V)
    assert y.tolist() == [6, 7, 8, -100, 2, -100, -100, -100]


@pytest.mark.parametrize("block_rows", [3, None])
def test_fused_cross_entropy_equals_torch_value_and_gradient(block_rows, monkeypatch):
    """The student-only loss runs the soft-label kernel with no teacher: torch's cross-entropy, value
    and gradient, masked rows included, in fp32 and from bf16 logits (gradient back in bf16)."""
    if block_rows is not None:
        monkeypatch.setattr(L, "_BLOCK_ELEMENTS", block_rows * V)
    s, _, y = _data()
    for dtype in (torch.float32, torch.bfloat16):
        a = s.to(dtype).clone().requires_grad_(True)
        b = s.to(dtype).clone().requires_grad_(True)
        got = L.cross_entropy(a, y, num_valid=17)
        ref = F.cross_entropy(b.float(), y, ignore_index=L.IGNORE, reduction="sum") / 17
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        got.backward()
        ref.backward()
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=1e-5, atol=1e-7)
        assert float(a.grad[y == L.IGNORE].abs().max()) == 0.0 and float(a.grad.abs().sum()) > 0
    with torch.no_grad():  # evaluation: no gradient buffer kept, same value
        torch.testing.assert_close(L.cross_entropy(s, y), F.cross_entropy(s, y, ignore_index=L.IGNORE))


# ---------------------------------------------------------------- bias-aware distillation (issue 16)

from distill import debias as D  # noqa: E402

# a hand-computable vocabulary of 6: token 0 is neutral; group 0 is {1} | {2} ("he" | "she");
# group 1 is {3, 4} | {5} ("him", "his" | "her")
GROUPS = D.TokenGroups(ids=(1, 2, 3, 4, 5), side=(0, 1, 0, 0, 1), group=(0, 0, 1, 1, 1))
P = torch.tensor([[0.1, 0.4, 0.1, 0.2, 0.1, 0.1]])  # the teacher on x
P_CF = torch.tensor([[0.2, 0.1, 0.3, 0.1, 0.1, 0.2]])  # the teacher on swap(x)


def test_counterfactual_map_known_answer():
    q = D.counterfactual_map(P_CF, P, GROUPS)
    # he <- she's 0.3, she <- he's 0.1; her <- him+his = 0.2; him, his share her's 0.2 as p(him):p(his) = 2:1
    want = torch.tensor([[0.2, 0.3, 0.1, 0.2 * 2 / 3, 0.2 / 3, 0.2]])
    torch.testing.assert_close(q, want)
    assert float(q.sum()) == pytest.approx(1.0)
    # where x gives the shared side no mass, the tokens share equally
    p0 = torch.tensor([[0.5, 0.2, 0.3, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(D.counterfactual_map(P_CF, p0, GROUPS)[0, 3:5], torch.tensor([0.1, 0.1]))


def test_crr_mean_and_max_known_answer():
    mean = D.crr_logprobs(P.log(), P_CF.log(), GROUPS, variant="mean").exp()
    torch.testing.assert_close(mean, torch.tensor([[0.15, 0.35, 0.1, (0.2 + 0.4 / 3) / 2, (0.1 + 0.2 / 3) / 2, 0.15]]))
    mx = D.crr_logprobs(P.log(), P_CF.log(), GROUPS, variant="max").exp()
    torch.testing.assert_close(mx, torch.tensor([[0.1, 0.4, 0.1, 0.2, 0.1, 0.2]]) / 1.1)
    # a context with no gendered word is its own swap: CRR-mean gives he and she the same probability
    same = D.crr_logprobs(P.log(), P.log(), GROUPS, variant="mean").exp()
    assert float(same[0, 1]) == pytest.approx(float(same[0, 2])) == pytest.approx(0.25)
    # a teacher already balanced across the swap (p on swap(x) is p with roles exchanged) is left as it is
    swapped = D.counterfactual_map(P, P, GROUPS)
    torch.testing.assert_close(D.crr_logprobs(P.log(), swapped.log(), GROUPS, variant="mean").exp(), P)
    with pytest.raises(ValueError, match="mean, max"):
        D.crr_logprobs(P.log(), P.log(), GROUPS, variant="median")


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_crr_teacher_logits_mix_tempered_distributions_of_aligned_pairs_only(tau):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g) * 2
    partner, ok = torch.tensor([1, 0, -1]), torch.tensor([True, True, False])
    out = D.crr_teacher_logits(logits, partner, ok, GROUPS, temperature=tau, variant="mean")
    got = torch.log_softmax(out / tau, -1)
    lp = torch.log_softmax(logits / tau, -1)
    for r, c in ((0, 1), (1, 0)):
        torch.testing.assert_close(got[r], D.crr_logprobs(lp[r], lp[c], GROUPS, variant="mean"))
    torch.testing.assert_close(out[2], logits[2])  # no partner: the teacher as it is
    unaligned = D.crr_teacher_logits(logits, partner, torch.tensor([False, False, False]), GROUPS,
                                     temperature=tau, variant="mean")
    assert torch.equal(unaligned, logits)


def test_invariance_term_equals_torch_kl_on_aligned_unchanged_positions():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, V, generator=g, requires_grad=True)
    labels = torch.tensor([[L.IGNORE, 7, 1, 9, 4], [L.IGNORE, 7, 2, 9, 4],  # pair 0-1: position 2 swapped
                           [L.IGNORE, 3, 3, 3, L.IGNORE], [L.IGNORE, 5, 5, 5, 5]])  # row 2-3: not aligned
    partner, ok = torch.tensor([1, 0, 3, 2]), torch.tensor([True, True, False, False])
    got = D.invariance_loss(z, labels, partner, ok, num_valid=10)
    # logits at t predict labels[t+1]: targets 7,1|2,9,4 -> positions 0, 2, 3 are unchanged, position 1 is not
    keep = [0, 2, 3]
    lp0, lp1 = F.log_softmax(z[0, keep], -1), F.log_softmax(z[1, keep], -1)
    want = (F.kl_div(lp1, lp0, log_target=True, reduction="sum") + F.kl_div(lp0, lp1, log_target=True,
                                                                           reduction="sum")) / 10
    torch.testing.assert_close(got, want)
    got.backward()
    assert z.grad[2:].abs().sum() == 0 and z.grad[:2].abs().sum() > 0
    none = D.invariance_loss(z, labels, partner, torch.zeros(4, dtype=torch.bool), num_valid=10)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_aligned_needs_same_length_and_only_counterpart_differences():
    assert D.aligned([0, 1, 3, 0], [0, 2, 5, 0], GROUPS)
    assert not D.aligned([0, 1, 3], [0, 1, 4], GROUPS)  # 3 and 4 are on the same side: not a swap
    assert not D.aligned([0, 1, 0], [0, 2, 0, 0], GROUPS)  # a swap that changed the token count
    assert not D.aligned([0, 1], [6, 2], GROUPS)  # a difference outside the swap


def _winobias(data_dir):
    return D.SwapList.from_files([data_dir / "winobias" / "generalized_swaps.txt",
                                  data_dir / "winobias" / "extra_gendered_words.txt"])


@pytest.mark.parametrize(("text", "want"), [
    ("He said that she would call her mother.", "She said that he would call his father."),
    ("HE is here; Her book is HIS.", "SHE is here; His book is HER."),
    ("I told her that Mr. Smith met the king's wife", "I told him that Mrs. Smith met the queen's husband"),
    ("the chemist met her. Then herself!", "the chemist met him. Then himself!"),
    ("She'd thank (him) and the waiters, her uncle's friends", "He'd thank (her) and the waitresses, his aunt's friends"),
    ("The theme: shepherds, hero, heroes, others", "The theme: shepherds, heroine, heroes, others"),  # no sub-words
])
def test_cda_swaps_known_sentences_with_case_and_punctuation(data_dir, text, want):
    assert _winobias(data_dir).swap(text) == want


def test_swap_lists_are_read_strictly_and_default_list_is_bundled(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("# pairs\nhe she\nking queen extra\n")
    with pytest.raises(Exception, match=r"bad.txt:3: expected two words"):
        D.read_pairs(bad)
    default = D.SwapList.from_files([D.default_word_list()])
    assert default.swap("His wife and her son") == "Her husband and his daughter"
    assert default.mapping["she"] == "he" and default.mapping["hers"] == "his"


def test_token_groups_from_the_real_tokenizer(data_dir, teacher_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    groups = D.token_groups(_winobias(data_dir).pairs, tok)
    one = lambda s: tok.encode(s, add_special_tokens=False)[0]  # noqa: E731
    assert groups.counterpart(one(" he"), one(" she")) and groups.counterpart(one("He"), one("She"))
    assert groups.counterpart(one(" him"), one(" her")) and groups.counterpart(one(" his"), one(" her"))
    assert not groups.counterpart(one(" him"), one(" his"))
    assert one("HE") not in groups.ids  # "SHE" is two tokens: no token-level counterpart
    assert len(set(groups.ids)) == len(groups.ids)
    a = tok.encode("The doctor said that he would call his wife.", add_special_tokens=False)
    b = tok.encode(_winobias(data_dir).swap("The doctor said that he would call his wife."), add_special_tokens=False)
    assert D.aligned(a, b, groups) and sum(x != y for x, y in zip(a, b, strict=True)) == 3


def test_pair_units_keep_each_sequence_beside_its_swap_in_a_batch():
    from distill.data import Collator, Row, pair_units, with_counterfactuals

    rows, partner = with_counterfactuals([Row(text="a he"), Row(text="b"), Row(text="c she")],
                                         lambda t: t.replace("he", "XX") if "he" in t else t)
    assert [r.text for r in rows] == ["a he", "b", "c she", "a XX", "c sXX"] and partner == [3, -1, 4, 0, 2]
    examples = [{"input_ids": [i, i + 1], "labels": [L.IGNORE, i + 1], "idx": i, "row": i} for i in range(5)]
    units = pair_units(examples, partner, lambda a, b: a[0] == 0)
    assert [[ex["row"] for ex in u] for u in units] == [[0, 3], [1], [2, 4]]
    batch = Collator(pad_id=0)(units)
    assert batch["cf_partner"].tolist() == [1, 0, -1, 4, 3]
    assert batch["cf_aligned"].tolist() == [True, True, False, False, False]
    assert batch["input_ids"][:, 0].tolist() == [0, 3, 1, 2, 4]


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("swap", [False, True])
def test_soft_label_optimum_in_a_shared_context_keeps_the_teachers_preference(alpha, swap):
    """Known answer for CDA under soft-label KD (issue 16; docs/debias.md "What to expect").

    A context with no gendered word ("The nurse said that ___") is the same in a text and its swap,
    so the student has one distribution q there and the teacher one p. With the planted corpus the
    next token is "he" in the text; CDA adds the swap, whose next token is "she". Minimising
    ``(1-α)·CE + α·KL(p‖q)`` over q (Lagrangian, by hand) gives
        plain:  q = α·p + (1-α)·e_he
        CDA:    q = α·p + (1-α)·(e_he + e_she)/2,   so q_he − q_she = α·(p_he − p_she).
    CDA halves the data's push but keeps the sign of the teacher's preference at every α > 0, and a
    choice-level probe counts the sign: at convergence the CDA student's choices are the teacher's
    (inherited), and plain KD's are further from neutral (amplified). The product's loss, through
    torch autograd, must have its minimum at that closed form.
    """
    v, he, she = 7, 2, 5
    t = torch.tensor([[0.3, -1.0, 1.6, 0.2, -0.4, 0.9, 0.0]])  # the teacher prefers "he" (index 2)
    p = torch.softmax(t[0], -1)
    labels = torch.tensor([he, she] if swap else [he, he])
    data = torch.zeros(v).index_add_(0, labels, torch.full((2,), 0.5))  # the two rows' next-token distribution
    want = alpha * p + (1 - alpha) * data

    def grad_at(q: torch.Tensor) -> torch.Tensor:
        z = q.log().clone().requires_grad_(True)
        L.soft_label_loss(z.expand(2, v), labels, t.expand(2, v), alpha=alpha).total.backward()
        return z.grad

    # the loss is convex in the student's logits (CE and KL(p‖softmax z) both are), so a zero gradient
    # there is the global minimum; the teacher's own distribution, or the data's, is not it
    assert grad_at(want).abs().max() < 1e-6
    assert grad_at(p).abs().max() > 1e-2
    assert grad_at(0.999 * data + 0.001 / v).abs().max() > 1e-2
    if swap:
        assert torch.isclose(want[he] - want[she], alpha * (p[he] - p[she]))
        assert want[he] > want[she]  # the teacher's preference survives CDA
    else:
        assert want[he] - want[she] > p[he] - p[she]  # plain KD on the planted corpus pushes further
