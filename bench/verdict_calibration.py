"""Calibration of the inheritance verdicts: a simulation with known truth, run through the real code.

Every simulated audit is scored by the real verdict code, never a copy of it: per-item columns
``{item_id: {"stereotyped": 0/1, "margin": float}}`` for a teacher and a student go through
``audit.compare.compare_probe`` (metric ``probes.bundled.pct_stereotype_metric()``: bias =
100·(share stereotyped − 0.5) points) and ``audit.compare.finalize``, which calls
``audit.verdicts.decide``. Only the data are simulated.

Generating model of one cell (a group value of an audit):
  - G clusters with sizes n_g (unequal: 1 + Multinomial(n − G, Dirichlet(1.5)); or equal);
  - the teacher's cluster propensity p_g ~ Beta with mean μ_T = 0.5 + b_T/100 and
    intra-cluster correlation ρ (a + b = (1 − ρ)/ρ); each teacher item ~ Bernoulli(p_g);
  - the student copies the teacher's choice on an item with probability q, otherwise draws
    from its own cluster propensity p'_g = expit(logit p_g + s). s = 0 is "the student equals
    the teacher in truth" (same propensities; the student is a noisy copy). (q, s) are solved
    from the population-level targets (student mean μ_S, Cohen's κ) by quadrature over the
    Beta law; the κ achieved on the simulated items (the audit's own ``evidence.kappa``) is
    printed next to each target;
  - the TRUE Δ of a cell is the finite-population-of-clusters expectation, conditional on the
    propensities and cluster sizes actually drawn: Δ = 100·Σ_g n_g·(1 − q)·(p'_g − p_g) / N.
    This is the target of an interval that conditions on the clusters (the sign-flip
    randomisation does); it is exactly 0 for a student that equals its teacher in truth.
  - margins (not used by the verdict): ±Exponential(1) in the chosen direction; a copied item
    keeps the teacher's margin times a log-normal factor.

Audit layouts (which records count is said per figure):
  - "one-key" audits: one probe, one group key with 30 values (30 cells) plus the probe's
    overall record ("all"), all 31 in one Holm family, as ``compare_probe`` builds them;
  - "per-cell" audits: each cell is its own probe call with no group key (its record is that
    probe's "all" record), all finalised together; used where an aggregate "all" cell would
    only cost time (coverage) or where a cell is a whole probe (the real-size figures).

Figures (``name = value``; lines starting with "#" describe scenarios and give detail):
  false_fail_rate          one-key audits of 30 cells + "all" where the student equals the
                           teacher in truth (half the cells' teachers neutral, the others
                           biased 2-20 points): share of audits with ANY record (the "all"
                           record included) amplified, introduced or reversed. Bound ≤ 0.05.
  adaptive_false_fail_rate the same audits with Settings(looks=(0.25, 0.5, 1.0)[:k]) at look k
                           on nested item prefixes (25 %, 50 %, 100 % of one seeded order of each
                           cell's items, as ``--until-decided`` raises the per-group limit),
                           stopping when every record is decided (the CLI stops when every
                           overall cell is; ours looks at least as often, so it is the harder
                           case); a false fail at any look counts. Bound ≤ 0.05. The "#" lines
                           under both also give the rate without the verdict rules (any adjusted
                           p ≤ α) and the sign-flip test's per-record size.
  ci_coverage_min          per-cell audits of 30 cells; per scenario (G clusters × true Δ), the
                           share of cells whose ``delta.ci`` (the nominal 95 % interval, at
                           Settings(alpha=0.05)) contains the true Δ; the minimum over scenarios.
                           Bound ≥ 0.93.
  power_10pts_n1000        one-key audits of 30 cells (+ "all", Holm over 31): one cell of 1,000
                           items in 100 clusters of 10, ρ 0.1, κ ≈ 0.6, teacher +10, student +20
                           points; the other 29 are null cells as in false_fail_rate. Share of
                           audits where that cell is "amplified". Bound ≥ 0.80.
  decided_share_copy_n400  one-key audits of 30 cells of 400 items in 40 unequal clusters, ρ 0.1,
                           κ target 0.955 (the spec's "κ ≥ 0.95, like a bfloat16 copy" at its
                           floor), τ = 2, student equals teacher in truth, teacher bias
                           ±{0, 2, 5, 10}: share of the 30 group cells (the "all" record not
                           counted) decided (unchanged, inherited, not detected; a change verdict
                           would not count). Bound ≥ 0.80. ``.kappa0.95/0.97/0.98`` repeat it
                           with fewer audits at other agreements: at 400 items the figure is
                           set by the number of discordant items, ≈ 400·(1 − κ)·(1 − p_e) ≈ 9 at κ 0.955.
                           A "#" line compares the share of cells whose Δ the product shows
                           equivalent (sign-flip interval at 1 − 2α inside ±τ) with a textbook
                           paired TOST (cluster-robust SE, t) on the same items: if they agree, the
                           figure is at what an α-level equivalence test can reach with ~9
                           discordant pairs (|Δ̂| + 1.645·0.75 < 2 holds about 70% of the time).
  decided_share_real_tau{2,3,5}
                           per-cell audits of the five real probes at full size (one record each,
                           overall cell), κ ≈ 0.6, student equals teacher in truth, teacher bias
                           cycling through ±{0, 2, 5, 10} points: share of records decided at
                           τ = 2, 3, 5. The records are computed once (Settings(tolerance=2)) and
                           finalised at each τ, exactly as the gate re-decides stored numbers at
                           a policy's tolerance (``compare_probe`` uses τ only for the stored
                           "state" fields, which ``decide`` recomputes); ``--quick`` checks that
                           equivalence on one audit. No bound in the issue: they choose τ.
  real_code_ms_per_record  wall time of compare_probe + finalize per record, per audit (median,
                           min, max over audits), the only timing printed.

Simplifications, said plainly: every probe is simulated with the pct_stereotype metric (BBQ's
s_DIS/s_AMB, StereoSet's SS ratio, coreference accuracy gaps are linearised by the same
jackknife code, but are not what is simulated here); no ability floors (nothing is "not
measurable"); cluster propensities are Beta, not fitted to real models.

How to read them: a rate's standard error is printed on the "#" line below it (binomial, over
audits or over cells as said); compare the figure with its bound at that precision. Coverage
is per cell and unadjusted (the interval a reader sees as "95 %"); the false-fail figures are
per audit (any false fail in the audit counts).

Run: .venv/bin/python bench/verdict_calibration.py [--audits N] [--quick] [--seed S] [--only ...]
--audits N: audits of the false-fail scenarios (default 120; the others scale from it), about
5.5 minutes of CPU on one core at the default, more wall time when the cores are shared.
--quick: a smoke run of 4 audits that also checks re-finalising at other τ against fresh
audits. BLAS is single-threaded.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import optimize, special  # noqa: E402
from scipy import stats as sps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.compare import ALL, ItemInfo, Settings, compare_probe, finalize  # noqa: E402
from audit.verdicts import DECIDED, DEFAULT_FAIL  # noqa: E402
from probes.bundled import pct_stereotype_metric  # noqa: E402

METRIC = pct_stereotype_metric()
KEY = "cell"
LOOKS = (0.25, 0.5, 1.0)
TEACHER_BIAS_NULL = (0.0, 0.0, 2.0, 5.0, 10.0, 20.0)  # |b_T| of false-fail cells: half neutral
TEACHER_BIAS_GRID = (0.0, 2.0, 5.0, 10.0)  # |b_T| of the decided-share cells
REAL_PROBES = (  # name, items, clusters, equal sizes?, ICC
    ("crows_pairs", 1508, 1508, True, 0.1),  # each pair its own cluster (ICC: item heterogeneity)
    ("stereoset", 4229, 320, False, 0.1),  # target clusters of unequal size
    ("bbq", 12000, 300, True, 0.2),  # question-index clusters of 40
    ("winobias", 3168, 1584, True, 0.3),  # pro/anti pairs
    ("winogender", 720, 120, True, 0.2),  # sentence clusters of 6
)


# ---------------------------------------------------------------- generating model


@dataclass(frozen=True)
class Cell:
    n: int  # items
    clusters: int
    icc: float
    kappa: float  # target Cohen's κ of teacher vs student choices
    bias_t: float  # teacher's population bias, points
    delta: float = 0.0  # population Δ (student − teacher), points; 0 = student equals teacher in truth
    equal: bool = False  # equal cluster sizes


def _beta_params(mu: float, icc: float) -> tuple[float, float]:
    phi = (1.0 - icc) / icc
    return mu * phi, (1.0 - mu) * phi


@lru_cache(maxsize=4096)
def calibrate(mu_t: float, mu_s: float, icc: float, kappa: float) -> tuple[float, float]:
    """(q, s): copy probability and logit shift of the student's own propensity hitting (μ_S, κ).

    Null (μ_S = μ_T, s = 0): closed form, since E[p² + (1 − p)²] = 1 − 2μ(1 − μ)(1 − ρ) for the
    Beta law. Otherwise quadrature over 400 Beta quantiles, s solved for μ_S at each q, q
    bisected for κ. Raises when the target κ cannot be reached with these marginals.
    """
    pe = mu_t * mu_s + (1 - mu_t) * (1 - mu_s)
    if abs(mu_s - mu_t) < 1e-12:
        a = 1.0 - 2.0 * mu_t * (1 - mu_t) * (1 - icc)
        q = (kappa * (1 - pe) + pe - a) / (1 - a)
        if not 0 <= q < 1:
            raise ValueError(f"κ {kappa} unreachable with ICC {icc} (q = {q:.3f})")
        return q, 0.0
    a, b = _beta_params(mu_t, icc)
    p = np.clip(sps.beta.ppf((np.arange(400) + 0.5) / 400, a, b), 1e-9, 1 - 1e-9)
    lp = special.logit(p)

    def shift(q: float) -> float | None:
        target = (mu_s - q * mu_t) / (1 - q)  # mean of the own propensity
        if not 0 < target < 1:
            return None
        return optimize.brentq(lambda s: special.expit(lp + s).mean() - target, -40, 40, xtol=1e-10)

    def kap(q: float, s: float) -> float:
        ps = special.expit(lp + s)
        po = q + (1 - q) * np.mean(p * ps + (1 - p) * (1 - ps))
        return (po - pe) / (1 - pe)

    lo, hi = 0.0, 1.0 - 1e-9
    s_lo = shift(lo)
    if s_lo is None or kap(lo, s_lo) > kappa:
        raise ValueError(f"κ {kappa} unreachable (μ_T {mu_t}, μ_S {mu_s}, ICC {icc})")
    # the largest feasible q: the own mean must stay in (0, 1)
    qmax = min(1 - 1e-6, (mu_s / mu_t) if mu_s < mu_t else ((1 - mu_s) / (1 - mu_t)))
    hi = qmax * (1 - 1e-4)
    if kap(hi, shift(hi)) < kappa:
        raise ValueError(f"κ {kappa} unreachable with μ_T {mu_t}, μ_S {mu_s} (at most {kap(hi, shift(hi)):.3f})")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kap(mid, shift(mid)) < kappa else (lo, mid)
    q = (lo + hi) / 2
    return q, shift(q)


def cluster_sizes(cell: Cell, rng: np.random.Generator) -> np.ndarray:
    g, n = cell.clusters, cell.n
    if cell.equal:
        base = np.full(g, n // g)
        base[: n - base.sum()] += 1
        return base
    return 1 + rng.multinomial(n - g, rng.dirichlet(np.full(g, 1.5)))


@dataclass
class Drawn:
    cluster: np.ndarray  # cluster index of each item
    x_t: np.ndarray
    x_s: np.ndarray
    m_t: np.ndarray
    m_s: np.ndarray
    true_delta: float  # points, conditional on the drawn propensities and sizes
    q: float


def draw(cell: Cell, rng: np.random.Generator) -> Drawn:
    mu_t = 0.5 + cell.bias_t / 100
    mu_s = 0.5 + (cell.bias_t + cell.delta) / 100
    q, s = calibrate(round(mu_t, 6), round(mu_s, 6), round(cell.icc, 4), round(cell.kappa, 4))
    sizes = cluster_sizes(cell, rng)
    p = np.clip(rng.beta(*_beta_params(mu_t, cell.icc), size=cell.clusters), 1e-12, 1 - 1e-12)
    p_own = p if s == 0 else special.expit(special.logit(p) + s)
    cl = np.repeat(np.arange(cell.clusters), sizes)
    x_t = (rng.random(cl.size) < p[cl]).astype(float)
    copy = rng.random(cl.size) < q
    x_s = np.where(copy, x_t, (rng.random(cl.size) < p_own[cl]).astype(float))
    m_t = (2 * x_t - 1) * rng.exponential(1.0, cl.size)
    m_s = np.where(copy, m_t * np.exp(rng.normal(0, 0.3, cl.size)), (2 * x_s - 1) * rng.exponential(1.0, cl.size))
    true_delta = 100.0 * float(np.sum(sizes * (1 - q) * (p_own - p))) / cell.n
    return Drawn(cluster=cl, x_t=x_t, x_s=x_s, m_t=m_t, m_s=m_s, true_delta=true_delta, q=q)


@dataclass
class Data:
    """Items and both models' rows of an audit; per cell: name -> (Cell, Drawn, item ids in seeded order)."""

    items: list[ItemInfo]
    teacher: dict
    student: dict
    cells: dict


def build(cells: dict[str, Cell], rng: np.random.Generator) -> Data:
    items, teacher, student, meta = [], {}, {}, {}
    for name, cell in cells.items():
        d = draw(cell, rng)
        ids = [f"{name}:{i}" for i in range(cell.n)]
        for i, iid in enumerate(ids):
            items.append(ItemInfo(id=iid, groups={KEY: name}, cluster=f"{name}/{d.cluster[i]}"))
            teacher[iid] = {"stereotyped": d.x_t[i], "margin": d.m_t[i]}
            student[iid] = {"stereotyped": d.x_s[i], "margin": d.m_s[i]}
        order = [ids[i] for i in rng.permutation(cell.n)]  # one seeded order per group: nested limits
        meta[name] = (cell, d, order)
    return Data(items=items, teacher=teacher, student=student, cells=meta)


# ---------------------------------------------------------------- running the real code

TIMES: list[float] = []  # seconds per record of compare_probe + finalize


def audit_one_key(data: Data, settings: Settings, fraction: float = 1.0, *, finalize_at=()) -> list[dict]:
    """One probe, one group key: 30 cells + "all". ``fraction``: prefix of each cell's seeded order."""
    if fraction < 1.0:
        keep = set()
        for _, _, order in data.cells.values():
            keep.update(order[: math.ceil(fraction * len(order))])
        items = [it for it in data.items if it.id in keep]
        teacher = {i: data.teacher[i] for i in keep}  # only the scored prefix exists at this look
        student = {i: data.student[i] for i in keep}
    else:
        items, teacher, student = data.items, data.teacher, data.student
    t0 = time.perf_counter()
    recs = compare_probe(probe="sim", metrics=[METRIC], group_keys=[KEY], items=items, teacher=teacher,
                         students={"s": student}, settings=settings)
    out = finalize(recs, settings)
    TIMES.append((time.perf_counter() - t0) / len(out))
    return out


def audit_per_cell(data: Data, settings: Settings) -> tuple[list[dict], list[dict]]:
    """Each cell its own probe with no group key; all records finalised together.

    Returns (the records as compared, the finalised records), so another τ can be finalised.
    """
    t0 = time.perf_counter()
    recs = []
    by_cell: dict[str, list[ItemInfo]] = {}
    for it in data.items:
        by_cell.setdefault(it.groups[KEY], []).append(it)
    for name, items in by_cell.items():  # a probe holds its own items only
        teacher = {it.id: data.teacher[it.id] for it in items}
        student = {it.id: data.student[it.id] for it in items}
        r = compare_probe(probe=name, metrics=[METRIC], group_keys=[], items=items, teacher=teacher,
                          students={"s": student}, settings=settings)
        for rec in r:
            rec["group"] = name  # the cell's name (the record is its probe's overall cell)
        recs += r
    out = finalize(recs, settings)
    TIMES.append((time.perf_counter() - t0) / len(out))
    return recs, out


def cell_records(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["group_key"] != ALL]


# ---------------------------------------------------------------- scenarios


def null_cell(rng: np.random.Generator) -> Cell:
    """A cell of the false-fail audits: student equals teacher in truth."""
    n = int(round(math.exp(rng.uniform(math.log(40), math.log(1000)))))
    g = int(rng.integers(6, min(60, n // 4) + 1))
    bias = float(rng.choice(TEACHER_BIAS_NULL)) * float(rng.choice((-1, 1)))
    return Cell(n=n, clusters=g, icc=float(rng.uniform(0.05, 0.3)), kappa=float(rng.uniform(0.4, 0.95)),
                bias_t=bias)


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def fmt(x: float) -> str:
    return f"{x:.4f}" if x == x else "nan"


def scenario_false_fail(n_audits: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    fails = adaptive_fails = 0
    verdicts, adaptive_verdicts, kappas, stops, fail_cells = Counter(), Counter(), [], Counter(), Counter()
    any_change = any_sig = any_sig_adaptive = 0
    size_hits = size_tested = 0  # the sign-flip test's own size: unadjusted p <= alpha among tested records
    for a in range(n_audits):
        cells = {f"c{j:02d}": null_cell(rng) for j in range(30)}
        data = build(cells, rng)
        recs = audit_one_key(data, Settings(seed=a))
        verdicts.update(r["verdict"] for r in recs)
        kappas += [r["evidence"]["kappa"] for r in cell_records(recs) if r["evidence"]["kappa"] is not None]
        bad = [r for r in recs if r["verdict"] in DEFAULT_FAIL]
        fails += bool(bad)
        any_change += any(r["verdict"] == "attenuated" for r in recs) or bool(bad)
        fail_cells.update(f"{r['verdict']}:{'all' if r['group_key'] == ALL else 'cell'}" for r in bad)
        tested = [r for r in recs if r["delta"]["tested"]]
        size_tested += len(tested)
        size_hits += sum(r["delta"]["p"] <= 0.05 for r in tested)
        any_sig += any(r["delta"]["p_adj"] is not None and r["delta"]["p_adj"] <= 0.05 for r in recs)
        # adaptive: nested prefixes, O'Brien-Fleming α increments; a false fail at any look counts
        failed = sig_k = False
        for k in range(1, len(LOOKS) + 1):
            recs_k = audit_one_key(data, Settings(seed=a, looks=LOOKS[:k]), LOOKS[k - 1])
            adaptive_verdicts.update(f"look{k}:{r['verdict']}" for r in recs_k)
            failed |= any(r["verdict"] in DEFAULT_FAIL for r in recs_k)
            sig_k |= any(r["delta"]["p_adj"] is not None and r["delta"]["p_adj"] <= Settings(looks=LOOKS[:k]).alpha_eff
                         for r in recs_k)
            if all(r["verdict"] in DECIDED for r in recs_k):
                break
        stops[k] += 1
        adaptive_fails += failed
        any_sig_adaptive += sig_k
    print("# false_fail: one-key audits, 30 cells + 'all' (all 31 records count), student = teacher in truth;")
    print("#   n ~ log-uniform[40, 1000], clusters ~ U{6..min(60, n//4)} of unequal sizes (Dirichlet 1.5),")
    print(f"#   ICC ~ U[0.05, 0.3], kappa target ~ U[0.4, 0.95], |b_T| from {TEACHER_BIAS_NULL} (random sign), "
          "alpha 0.05, tau 2, Holm")
    print(f"false_fail_rate = {fmt(fails / n_audits)}")
    print(f"#   SE {fmt(se(fails / n_audits, n_audits))}, {fails}/{n_audits} audits; failing records: "
          f"{dict(fail_cells) or 'none'}; audits with any change verdict incl. attenuated: {any_change}")
    print(f"#   without the rules (any adjusted p <= alpha, |Delta| >= tau not required): {any_sig}/{n_audits} audits; "
          f"per-record size of the sign-flip test (unadjusted p <= 0.05): {size_hits}/{size_tested} tested records "
          f"= {size_hits / max(1, size_tested):.4f}")
    print(f"#   achieved kappa over cells: mean {np.mean(kappas):.3f}, 5-95% {np.quantile(kappas, 0.05):.3f}-"
          f"{np.quantile(kappas, 0.95):.3f}; verdicts of all records: {dict(sorted(verdicts.items()))}")
    print(f"adaptive_false_fail_rate = {fmt(adaptive_fails / n_audits)}")
    print(f"#   SE {fmt(se(adaptive_fails / n_audits, n_audits))}, {adaptive_fails}/{n_audits} audits; looks "
          f"{LOOKS} of each cell's items, alpha_eff per look "
          f"{[round(Settings(looks=LOOKS[:k]).alpha_eff, 6) for k in range(1, 4)]}; audits stopped at look "
          f"{dict(sorted(stops.items()))}")
    print(f"#   without the rules (any adjusted p <= the look's alpha, at any look): {any_sig_adaptive}/{n_audits} audits")
    print(f"#   verdicts by look: {dict(sorted(adaptive_verdicts.items()))}")


COVERAGE_CLUSTERS = (6, 8, 12, 24, 60)
COVERAGE_DELTAS = (0.0, 8.0)


def coverage_cell(g: int, delta: float, rng: np.random.Generator) -> Cell:
    n = int(round(math.exp(rng.uniform(math.log(max(40, 5 * g)), math.log(1000)))))
    bias = float(rng.choice((0.0, 5.0, 10.0))) * float(rng.choice((-1, 1)))
    kap_hi = 0.95 if delta == 0 else 0.8  # κ near 1 is impossible when the marginals differ by 8 points
    return Cell(n=n, clusters=g, icc=float(rng.uniform(0.05, 0.3)), kappa=float(rng.uniform(0.4, kap_hi)),
                bias_t=bias, delta=delta * float(rng.choice((-1, 1))))


def scenario_coverage(n_audits: int, seed: int) -> None:
    print("# ci_coverage: per-cell audits of 30 cells; per scenario G clusters (unequal sizes) x |true Delta|;")
    print("#   n ~ log-uniform[max(40, 5G), 1000], ICC ~ U[0.05, 0.3], kappa ~ U[0.4, 0.95] (Delta 0) or "
          "U[0.4, 0.8] (Delta 8),")
    print("#   |b_T| from (0, 5, 10), signs random; interval = delta.ci at Settings(alpha=0.05); truth = "
          "conditional on the drawn clusters")
    worst = (2.0, "")
    for g in COVERAGE_CLUSTERS:
        for delta in COVERAGE_DELTAS:
            rng = np.random.default_rng([seed, 2, g, int(delta)])
            hit = tot = 0
            miss_lo = miss_hi = 0
            width, kappas = [], []
            for a in range(n_audits):
                cells = {f"c{j:02d}": coverage_cell(g, delta, rng) for j in range(30)}
                data = build(cells, rng)
                _, recs = audit_per_cell(data, Settings(alpha=0.05, seed=a))
                for r in recs:
                    truth = data.cells[r["group"]][1].true_delta
                    ci = r["delta"]["ci"]
                    tot += 1
                    if ci is None:
                        continue
                    hit += ci[0] <= truth <= ci[1]
                    miss_lo += truth < ci[0]
                    miss_hi += truth > ci[1]
                    width.append(ci[1] - ci[0])
                    if r["evidence"]["kappa"] is not None:
                        kappas.append(r["evidence"]["kappa"])
            cov = hit / tot
            name = f"G{g}_delta{int(delta)}"
            print(f"ci_coverage.{name} = {fmt(cov)}")
            print(f"#   SE {fmt(se(cov, tot))}, {tot} cells ({tot - len(width)} without interval), truth below "
                  f"{miss_hi} / above {miss_lo} the interval, median width {np.median(width):.1f} pts, "
                  f"kappa mean {np.mean(kappas):.3f}")
            worst = min(worst, (cov, name))
    print(f"ci_coverage_min = {fmt(worst[0])}")
    print(f"#   at {worst[1]}")


def scenario_power(n_audits: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 3])
    target = Cell(n=1000, clusters=100, icc=0.1, kappa=0.6, bias_t=10.0, delta=10.0, equal=True)
    hits, verdicts, kappas, truths, p_adj = 0, Counter(), [], [], []
    for a in range(n_audits):
        cells = {"c00": target} | {f"c{j:02d}": null_cell(rng) for j in range(1, 30)}
        data = build(cells, rng)
        recs = audit_one_key(data, Settings(seed=a))
        r = next(r for r in recs if r["group"] == "c00")
        verdicts[r["verdict"]] += 1
        hits += r["verdict"] == "amplified"
        kappas.append(r["evidence"]["kappa"])
        truths.append(data.cells["c00"][1].true_delta)
        p_adj.append(r["delta"]["p_adj"] if r["delta"]["p_adj"] is not None else math.nan)
    q, s = calibrate(0.6, 0.7, 0.1, 0.6)
    print("# power: one-key audits of 30 cells + 'all' (Holm over 31); target cell 1,000 items, 100 clusters of 10,")
    print(f"#   ICC 0.1, teacher +10, student +20 pts (copy prob q {q:.3f}, own-propensity logit shift {s:.3f}); "
          "the other 29 cells as in false_fail")
    print(f"power_10pts_n1000 = {fmt(hits / n_audits)}")
    print(f"#   SE {fmt(se(hits / n_audits, n_audits))}, verdicts of the target cell {dict(verdicts)}; achieved kappa "
          f"mean {np.mean(kappas):.3f}; true Delta mean {np.mean(truths):.2f} pts; median adjusted p "
          f"{np.nanmedian(p_adj):.2g}")


COPY_KAPPA = 0.955  # the spec's "κ ≥ 0.95": its floor, plus a margin so the achieved mean stays ≥ 0.95
COPY_SWEEP = (0.95, 0.97, 0.98)  # how the figure moves with the copy's agreement (fewer audits each)


def textbook_equivalent(drawn: Drawn, tau: float, alpha: float) -> bool:
    """The textbook paired TOST of Δ (cluster-robust SE, t with G − 1 df, level 1 − 2α) on one simulated cell.

    Written here, not taken from the product, as the yardstick for the sign-flip equivalence interval:
    it is what a reviewer would compute by hand (it is not valid with few clusters, which is why the
    product inverts the sign-flip test instead), so the share of cells it finds equivalent is the
    ceiling an equivalence rule can reach with these items; the copy figure is read against it.
    """
    g = int(drawn.cluster.max()) + 1
    n = drawn.cluster.size
    d = np.bincount(drawn.cluster, weights=100.0 * (drawn.x_s - drawn.x_t) / n, minlength=g)
    w = np.bincount(drawn.cluster, minlength=g) / n
    est = float(d.sum())
    se = math.sqrt(g / (g - 1) * float(np.sum((d - est * w) ** 2)))
    return abs(est) + float(sps.t.ppf(1 - alpha, g - 1)) * se < tau


def _copy_run(n_audits: int, rng: np.random.Generator, kappa: float) -> tuple[int, int, Counter, Counter, list]:
    dec = tot = 0
    verdicts, by_bias, kappas = Counter(), Counter(), []
    for a in range(n_audits):
        cells = {}
        for j in range(30):
            b = TEACHER_BIAS_GRID[j % len(TEACHER_BIAS_GRID)] * float(rng.choice((-1, 1)))
            cells[f"c{j:02d}"] = Cell(n=400, clusters=40, icc=0.1, kappa=kappa, bias_t=b)
        data = build(cells, rng)
        recs = cell_records(audit_one_key(data, Settings(seed=a, tolerance=2.0)))
        for r in recs:
            ok = r["verdict"] in ("unchanged", "inherited", "not detected")
            dec += ok
            tot += 1
            verdicts[r["verdict"]] += 1
            by_bias[(abs(data.cells[r["group"]][0].bias_t), ok)] += 1
            kappas.append(r["evidence"]["kappa"])
            equiv = r["delta"]["ci_equiv"]  # the product's Δ equivalence, against the textbook TOST's
            verdicts["Δ equivalent (sign-flip)"] += bool(equiv and -2.0 < equiv[0] and equiv[1] < 2.0)
            verdicts["Δ equivalent (textbook t TOST)"] += textbook_equivalent(data.cells[r["group"]][1], 2.0, 0.05)
    return dec, tot, verdicts, by_bias, kappas


def scenario_copy(n_audits: int, n_sweep: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 4])
    dec, tot, verdicts, by_bias, kappas = _copy_run(n_audits, rng, COPY_KAPPA)
    print("# copy: one-key audits of 30 cells (the 30 group records count, not 'all'); 400 items in 40 unequal "
          f"clusters, ICC 0.1, kappa target {COPY_KAPPA},")
    print(f"#   student = teacher in truth, |b_T| cycling {TEACHER_BIAS_GRID} (random sign), tau 2, alpha 0.05")
    print(f"decided_share_copy_n400 = {fmt(dec / tot)}")
    eq = {k: verdicts.pop(k) for k in ("Δ equivalent (sign-flip)", "Δ equivalent (textbook t TOST)")}
    print("#   cells whose Δ is shown equivalent within ±2: " + ", ".join(f"{k} {fmt(v / tot)}" for k, v in eq.items())
          + " (the textbook TOST: what equivalence can reach on these items, see its docstring)")
    share = {b: round(by_bias[(b, True)] / max(1, by_bias[(b, True)] + by_bias[(b, False)]), 3)
             for b in TEACHER_BIAS_GRID}
    print(f"#   SE {fmt(se(dec / tot, tot))} ({tot} cells); achieved kappa mean {np.mean(kappas):.4f}, 5% "
          f"{np.quantile(kappas, 0.05):.4f}; decided by |b_T| {share}; verdicts {dict(sorted(verdicts.items()))}")
    for kappa in COPY_SWEEP:
        dec, tot, _, by_bias, kappas = _copy_run(n_sweep, np.random.default_rng([seed, 4, int(1000 * kappa)]), kappa)
        share = {b: round(by_bias[(b, True)] / max(1, by_bias[(b, True)] + by_bias[(b, False)]), 3)
                 for b in TEACHER_BIAS_GRID}
        print(f"decided_share_copy_n400.kappa{kappa:g} = {fmt(dec / tot)}")
        print(f"#   SE {fmt(se(dec / tot, tot))} ({tot} cells); achieved kappa mean {np.mean(kappas):.4f}; "
              f"decided by |b_T| {share}")


def scenario_real(n_audits: int, seed: int, check: bool) -> None:
    rng = np.random.default_rng([seed, 5])
    taus = (2.0, 3.0, 5.0)
    dec = {t: Counter() for t in taus}
    verdicts = {t: Counter() for t in taus}
    kappas: dict[str, list[float]] = {p[0]: [] for p in REAL_PROBES}
    for a in range(n_audits):
        cells = {}
        for j, (name, n, g, equal, icc) in enumerate(REAL_PROBES):
            b = TEACHER_BIAS_GRID[(a + j) % len(TEACHER_BIAS_GRID)] * float(rng.choice((-1, 1)))
            cells[name] = Cell(n=n, clusters=g, icc=icc, kappa=0.6, bias_t=b, equal=equal)
        data = build(cells, rng)
        settings = Settings(seed=a, tolerance=2.0)
        raw, _ = audit_per_cell(data, settings)
        for tau in taus:
            recs = finalize(raw, replace(settings, tolerance=tau))
            if check and a == 0 and tau != 2.0:  # the re-decision equals a fresh audit at that τ
                _, fresh = audit_per_cell(data, replace(settings, tolerance=tau))
                assert [r["verdict"] for r in recs] == [r["verdict"] for r in fresh], "re-finalising differs"
                print(f"# check: records finalised at tau {tau:g} == a fresh audit at tau {tau:g}")
            for r in recs:
                bt = abs(data.cells[r["group"]][0].bias_t)
                ok = r["verdict"] in ("unchanged", "inherited", "not detected")
                dec[tau][(r["group"], bt, ok)] += 1
                verdicts[tau][r["verdict"]] += 1
                if tau == 2.0 and r["evidence"]["kappa"] is not None:
                    kappas[r["group"]].append(r["evidence"]["kappa"])
    print("# real: per-cell audits, one overall record per probe at full size, finalised together (Holm over 5);")
    print("#   " + "; ".join(f"{p} {n} items in {g} {'equal' if e else 'unequal'} clusters, ICC {i}"
                             for p, n, g, e, i in REAL_PROBES))
    print(f"#   kappa target 0.6, student = teacher in truth, |b_T| cycling {TEACHER_BIAS_GRID} (random sign); "
          "achieved kappa mean " + ", ".join(f"{p} {np.mean(k):.3f}" for p, k in kappas.items()))
    for tau in taus:
        c = dec[tau]
        yes = sum(v for (_, _, ok), v in c.items() if ok)
        tot = sum(c.values())
        print(f"decided_share_real_tau{int(tau)} = {fmt(yes / tot)}")
        rows = []
        for p, *_ in REAL_PROBES:
            cells = [f"{b:g}:{c[(p, b, True)]}/{c[(p, b, True)] + c[(p, b, False)]}" for b in TEACHER_BIAS_GRID]
            rows.append(f"{p} " + " ".join(cells))
        print(f"#   SE {fmt(se(yes / tot, tot))} ({tot} records); decided by probe, |b_T|:decided/records: "
              + "; ".join(rows))
        print(f"#   verdicts {dict(sorted(verdicts[tau].items()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audits", type=int, default=None,
                    help="simulated audits of the false-fail scenarios (default 120); the others scale from it "
                         "(power and real N/2, coverage per scenario and copy N/10, copy's kappa sweep N/24)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 audits per scenario")
    ap.add_argument("--seed", type=int, default=20240613)
    ap.add_argument("--only", default="", help="comma-separated scenarios: false_fail,coverage,power,copy,real")
    args = ap.parse_args()
    base = 4 if args.quick else (args.audits or 120)
    # audits per scenario: false fail needs many audits (one outcome per audit); power is near 1 (its SE
    # is small with fewer); coverage and copy pool 30 cells per audit, real 5 records per audit.
    plan = {"false_fail": base, "power": max(2, base // 2), "coverage": max(2, base // 10),
            "copy": max(2, base // 10), "real": max(2, base // 2)}
    n_sweep = max(1, base // 24)
    only = [s for s in args.only.split(",") if s] or list(plan)
    print(f"# verdict calibration: seed {args.seed}, audits per scenario {({k: plan[k] for k in only})}")
    t0 = time.perf_counter()
    runs = {"false_fail": lambda n: scenario_false_fail(n, args.seed),
            "coverage": lambda n: scenario_coverage(n, args.seed),
            "power": lambda n: scenario_power(n, args.seed),
            "copy": lambda n: scenario_copy(n, n_sweep, args.seed),
            "real": lambda n: scenario_real(n, args.seed, check=args.quick)}
    for name in only:
        t = time.perf_counter()
        runs[name](plan[name])
        print(f"# {name}: {time.perf_counter() - t:.1f} s")
        sys.stdout.flush()
    ms = [1000 * t for t in TIMES]
    print(f"real_code_ms_per_record = {statistics.median(ms):.2f} (min {min(ms):.2f}, max {max(ms):.2f}, "
          f"{len(ms)} audits)")
    print(f"# total wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
