"""SpcEngine against the pure-Python reference on random data, and against published worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.core import constants as C
from edge_agent.core.spc import NoData, Rule, SpcEngine, SpcParams
from edge_agent.types import Quality, Readings
from tests.core_reference import RefSpc

# per-row configurations exercising every path: estimated and given limits, subgroups, specs, windows
CONFIGS = [
    dict(window=5, phase1_n=10, subgroup_n=1, lsl=-2.5, usl=3.0),
    dict(window=50, phase1_n=20, subgroup_n=5, lsl=-3.0, usl=3.0),
    dict(window=7, phase1_n=12, subgroup_n=3, usl=2.0),
    dict(window=64, phase1_n=30, subgroup_n=10, lsl=-1.0),
    dict(window=2, phase1_n=2, subgroup_n=2, ewma_lambda=0.05, ewma_L=2.615),
    dict(window=33, phase1_n=9, subgroup_n=1, centre=0.2, sigma=0.9, cusum_k=0.25, cusum_h=4.0),
    dict(window=16, phase1_n=8, subgroup_n=4, centre=0.0, sigma=1.0, lsl=-3, usl=3),
    dict(window=20, phase1_n=18, subgroup_n=6, centre=0.1),
    dict(window=11, phase1_n=14, subgroup_n=7, sigma=1.2),
    dict(window=40, phase1_n=25, subgroup_n=1, ewma_lambda=0.4, ewma_L=3.054),
]
REF_NAMES = dict(
    ewma_lambda="lam", ewma_L="L", cusum_k="k", cusum_h="h", subgroup_n="sub_n", sigma="sigma_given"
)


# capability indices fed by the period's Σ(x - ref) and Σ(x - ref)²: in lockstep those sums take a
# whole window at a time from the window sums (a reordered sum), elsewhere one sample at a time
CAP_SUM_KEYS = ("cap_mean", "sigma_overall", "cpk", "pp", "ppk")


def assert_same_snapshot(sa: dict[str, np.ndarray], sb: dict[str, np.ndarray]) -> None:
    """The same samples through two update paths: every indicator bit for bit, the CAP_SUM_KEYS to rounding (1e-12)."""
    for key in sa:
        if key in CAP_SUM_KEYS:
            np.testing.assert_allclose(sa[key], sb[key], rtol=1e-12, atol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def make_engine(configs: list[dict], capacity: int | None = None) -> SpcEngine:
    """An engine with one row per config (extra rows keep the defaults)."""
    eng = SpcEngine(capacity or len(configs), max_window=64)
    for row, cfg in enumerate(configs):
        eng.configure([row], SpcParams(**cfg))
    return eng


def make_refs(configs: list[dict]) -> list[RefSpc]:
    """One reference per config."""
    return [RefSpc(**{REF_NAMES.get(k, k): v for k, v in cfg.items()}) for cfg in configs]


def process_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """In-control noise with shifts, trends and alternation so every rule fires somewhere."""
    x = rng.standard_normal(n)
    seg = n // 6
    x[seg : 2 * seg] += 1.5  # shift: runs, CUSUM, EWMA
    x[2 * seg : 3 * seg] += np.linspace(0, 4, seg)  # trend: Nelson 3
    x[3 * seg : 4 * seg] = 0.1 * rng.standard_normal(seg)  # hugging: Nelson 7
    alt = np.where(np.arange(seg) % 2 == 0, 1.6, -1.6)
    x[4 * seg : 5 * seg] = alt + 0.1 * rng.standard_normal(seg)  # alternation and N8
    spikes = rng.random(n) < 0.01
    x[spikes] += rng.choice([-5.0, 5.0], spikes.sum())
    return x


def test_engine_matches_reference_on_random_batches() -> None:
    """Random subsets in random order, repeats within a batch, NaN and bad quality: masks and statistics match."""
    rng = np.random.default_rng(7)
    S = len(CONFIGS)
    eng, refs = make_engine(CONFIGS), make_refs(CONFIGS)
    per_row = 600
    values = np.stack([process_values(rng, per_row) for _ in range(S)])
    cursor = np.zeros(S, int)
    seq = 0
    expected: dict[tuple[int, int], int] = {}
    got: dict[tuple[int, int], int] = {}
    while (cursor < per_row).any():
        rows, ts, vals, qual = [], [], [], []
        for _ in range(int(rng.integers(1, 30))):
            live = np.flatnonzero(cursor < per_row)
            if live.size == 0:
                break
            r = int(rng.choice(live))
            v = float(values[r, cursor[r]])
            cursor[r] += 1
            q = Quality.GOOD
            u = rng.random()
            if u < 0.04:
                v = math.nan
            elif u < 0.08:
                q = Quality.BAD_TIMEOUT
            elif u < 0.10:
                q = Quality.UNCERTAIN_LAST_USABLE  # uncertain still counts as usable
            rows.append(r)
            ts.append(seq)
            vals.append(v)
            qual.append(int(q))
            good = q < Quality.BAD and not math.isnan(v)
            m = refs[r].add(v, good)
            if m:
                expected[(r, seq)] = m
            seq += 1
        upd = eng.update(Readings.of(rows, ts, vals, qual))
        for r, t, m in zip(upd.hits.row, upd.hits.t_ns, upd.hits.mask, strict=True):
            got[(int(r), int(t))] = int(m)
    assert len(expected) > 200
    fired = 0
    for m in expected.values():
        fired |= m
    assert fired == (1 << 23) - 1, f"some rule never fired in the test data: {fired:#x}"
    assert got == expected
    snap = eng.snapshot()
    for row, ref in enumerate(refs):
        st = ref.stats()
        for key, want in st.items():
            np.testing.assert_allclose(snap[key][row], want, rtol=1e-9, atol=1e-9, err_msg=f"row {row} {key}")


@pytest.mark.parametrize("settle", [False, True])
def test_full_tick_path_matches_reference(settle: bool) -> None:
    """The slice fast path (every row once, in order) gives the same answers as the reference.

    With `settle` no row has a slow EWMA (lambda 0.05), so the time-varying EWMA limits reach
    their asymptotes within the run and the engine switches to the precomputed ones.
    """
    rng = np.random.default_rng(3)
    pool = [c for c in CONFIGS if c.get("ewma_lambda", 0.2) > 0.1] if settle else CONFIGS
    cfgs = [pool[i % len(pool)] for i in range(30)]
    eng, refs = make_engine(cfgs), make_refs(cfgs)
    sig = np.arange(30, dtype=np.int32)
    ticks = 480 if settle else 240
    data = np.stack([process_values(rng, ticks) for _ in range(30)], axis=1)
    settled_at = None
    for i in range(ticks):
        upd = eng.update(Readings.of(sig, i, data[i]))
        want = {r: m for r in range(30) if (m := refs[r].add(float(data[i, r])))}
        assert dict(zip(upd.hits.row.tolist(), upd.hits.mask.tolist(), strict=True)) == want
        if settled_at is None and eng._ewma_settled:
            settled_at = i
    assert (settled_at is not None and settled_at < ticks - 200) == settle, settled_at
    snap = eng.snapshot()
    for r in range(30):
        for key, want in refs[r].stats().items():
            np.testing.assert_allclose(snap[key][r], want, rtol=1e-9, atol=1e-9, err_msg=f"row {r} {key}")


def test_missing_values_are_no_data_not_zero() -> None:
    """A signal that only ever saw bad values reports NaN with a reason, and counts the misses."""
    eng = SpcEngine(3, SpcParams(window=5, phase1_n=4, lsl=0, usl=10))
    eng.update(
        Readings.of([0, 0, 1, 2], 1, [1.0, 2.0, math.nan, 5.0], [0, 0, 0, int(Quality.BAD_COMM_FAILURE)])
    )
    s = eng.snapshot()
    assert s["missing"].tolist() == [0, 1, 1]
    assert np.isnan(s["mean"][1]) and s["reason_window"][1] == NoData.NO_SAMPLES
    assert s["mean"][0] == 1.5 and s["reason_window"][0] == NoData.OK
    assert np.isnan(s["sd"][2]) and np.isnan(s["cl"][0]) and s["reason_limits"][0] == NoData.BASELINE
    assert np.isnan(s["cpk"][1]) and s["reason_capability"][1] == NoData.NO_SAMPLES
    assert s["n"].tolist() == [2, 0, 0]


def test_rebaseline_restarts_phase1_with_new_limits() -> None:
    """After a re-baseline the limits come from the next phase1_n samples only."""
    eng = SpcEngine(1, SpcParams(window=10, phase1_n=4))
    eng.update(Readings.of([0] * 4, range(4), [1.0, 2.0, 1.0, 2.0]))
    assert eng.snapshot()["cl"][0] == pytest.approx(1.5)
    assert eng.snapshot()["sigma"][0] == pytest.approx(1.0 / 1.128)
    eng.rebaseline([0])
    assert eng.snapshot()["phase"][0] == 0 and np.isnan(eng.snapshot()["cl"][0])
    eng.update(Readings.of([0] * 4, range(4, 8), [10.0, 12.0, 10.0, 12.0]))
    assert eng.snapshot()["cl"][0] == pytest.approx(11.0)
    assert eng.snapshot()["sigma"][0] == pytest.approx(2.0 / 1.128)
    eng.rebaseline([0], centre=5.0, sigma=0.5)
    s = eng.snapshot()
    assert s["phase"][0] == 1 and s["ucl"][0] == pytest.approx(6.5)


def test_bad_config_and_rows_name_the_fix() -> None:
    """Invalid parameters and unknown rows raise errors that say where and what to do."""
    with pytest.raises(ValueError, match=r"row 0 has window=100; use 2..64"):
        SpcEngine(2, SpcParams(window=100))
    with pytest.raises(ValueError, match="multiple of subgroup_n"):
        SpcEngine(2, SpcParams(phase1_n=21, subgroup_n=5))
    with pytest.raises(ValueError, match="LSL must be below USL"):
        SpcEngine(1, SpcParams(lsl=5, usl=1))
    eng = SpcEngine(2)
    with pytest.raises(ValueError, match=r"row 7 is outside 0..1"):
        eng.update(Readings.of([7], 0, [1.0]))


# ASTM E2587 / Montgomery, Introduction to SQC, Appendix VI, rows as printed: n: d2, A2, D3, D4, A3, B3, B4
PUBLISHED_ROWS = {
    2: (1.128, 1.880, 0, 3.267, 2.659, 0, 3.267),
    3: (1.693, 1.023, 0, 2.574, 1.954, 0, 2.568),
    5: (2.326, 0.577, 0, 2.114, 1.427, 0, 2.089),
    6: (2.534, 0.483, 0, 2.004, 1.287, 0.030, 1.970),
    7: (2.704, 0.419, 0.076, 1.924, 1.182, 0.118, 1.882),
    10: (3.078, 0.308, 0.223, 1.777, 0.975, 0.284, 1.716),
    12: (3.258, 0.266, 0.283, 1.717, 0.886, 0.354, 1.646),
    15: (3.472, 0.223, 0.347, 1.653, 0.789, 0.428, 1.572),
    18: (3.640, 0.194, 0.391, 1.608, 0.718, 0.482, 1.518),
    19: (3.689, 0.187, 0.403, 1.597, 0.698, 0.497, 1.503),
    20: (3.735, 0.180, 0.415, 1.585, 0.680, 0.510, 1.490),
    25: (3.931, 0.153, 0.459, 1.541, 0.606, 0.565, 1.435),
}


def test_constants_are_the_published_values() -> None:
    """Every chart factor is the value printed in the published table (D4(2) 3.267, not 3.2686 from 3-decimal d2/d3)."""
    for n, row in PUBLISHED_ROWS.items():
        got = tuple(float(a[n]) for a in (C.D2, C.A2, C.D3, C.D4, C.A3, C.B3, C.B4))
        assert got == row, n
    assert C.D4_MR == 3.267 and C.D2_MR == 1.128
    assert C.C4[2] == pytest.approx(0.7979, abs=5e-5) and C.C4[25] == pytest.approx(0.9896, abs=5e-5)


def test_tabulated_constants_agree_with_their_formulas() -> None:
    """Each tabulated factor is within table rounding of its formula on d2, d3 and the exact c4 (catches a mistyped entry)."""
    for n in range(2, C.MAX_SUBGROUP + 1):
        d2, d3, c4 = C.D2[n], C.D3_SD[n], C.C4[n]
        s = math.sqrt(1 - c4 * c4) / c4
        derived = (
            (C.A2, 3 / (d2 * math.sqrt(n))),
            (C.D3, max(0.0, 1 - 3 * d3 / d2)),
            (C.D4, 1 + 3 * d3 / d2),
            (C.A3, 3 / (c4 * math.sqrt(n))),
            (C.B3, max(0.0, 1 - 3 * s)),
            (C.B4, 1 + 3 * s),
        )
        for arr, want in derived:
            assert arr[n] == pytest.approx(want, abs=2e-3), n
        assert C.D3[n] + C.D4[n] == pytest.approx(2.0, abs=1.5e-3) or C.D3[n] == 0.0


@pytest.mark.parametrize("n", [2, 18])
def test_chart_limits_use_the_published_factors(n: int) -> None:
    """With σ given, R̄ = d2·σ: the R UCL is D4·R̄, the X̄ limits X̄ ± A2·R̄ and the MR UCL 3.267·MR̄, with the printed factors."""
    eng = SpcEngine(1, SpcParams(window=max(n, 2), phase1_n=n, subgroup_n=n, centre=10.0, sigma=0.5))
    s = eng.snapshot()
    rbar = PUBLISHED_ROWS[n][0] * 0.5
    assert s["r_cl"][0] == pytest.approx(rbar, rel=1e-15)
    assert s["r_ucl"][0] == pytest.approx(PUBLISHED_ROWS[n][3] * rbar, rel=1e-15)
    assert s["xbar_ucl_r"][0] == pytest.approx(10.0 + PUBLISHED_ROWS[n][1] * rbar, rel=1e-15)
    assert s["mr_ucl"][0] == pytest.approx(3.267 * s["mr_cl"][0], rel=1e-15)


# Montgomery, Introduction to Statistical Quality Control, Table 6.3: piston-ring inside diameters (mm),
# 25 phase I subgroups of 5 and 15 later subgroups (the data as shipped with R's qcc, `pistonrings`).
PISTON = np.array(
    [
        [74.030, 74.002, 74.019, 73.992, 74.008], [73.995, 73.992, 74.001, 74.011, 74.004],
        [73.988, 74.024, 74.021, 74.005, 74.002], [74.002, 73.996, 73.993, 74.015, 74.009],
        [73.992, 74.007, 74.015, 73.989, 74.014], [74.009, 73.994, 73.997, 73.985, 73.993],
        [73.995, 74.006, 73.994, 74.000, 74.005], [73.985, 74.003, 73.993, 74.015, 73.988],
        [74.008, 73.995, 74.009, 74.005, 74.004], [73.998, 74.000, 73.990, 74.007, 73.995],
        [73.994, 73.998, 73.994, 73.995, 73.990], [74.004, 74.000, 74.007, 74.000, 73.996],
        [73.983, 74.002, 73.998, 73.997, 74.012], [74.006, 73.967, 73.994, 74.000, 73.984],
        [74.012, 74.014, 73.998, 73.999, 74.007], [74.000, 73.984, 74.005, 73.998, 73.996],
        [73.994, 74.012, 73.986, 74.005, 74.007], [74.006, 74.010, 74.018, 74.003, 74.000],
        [73.984, 74.002, 74.003, 74.005, 73.997], [74.000, 74.010, 74.013, 74.020, 74.003],
        [73.988, 74.001, 74.009, 74.005, 73.996], [74.004, 73.999, 73.990, 74.006, 74.009],
        [74.010, 73.989, 73.990, 74.009, 74.014], [74.015, 74.008, 73.993, 74.000, 74.010],
        [73.982, 73.984, 73.995, 74.017, 74.013],
        [74.012, 74.015, 74.030, 73.986, 74.000], [73.995, 74.010, 73.990, 74.015, 74.001],
        [73.987, 73.999, 73.985, 74.000, 73.990], [74.008, 74.010, 74.003, 73.991, 74.006],
        [74.003, 74.000, 74.001, 73.986, 73.997], [73.994, 74.003, 74.015, 74.020, 74.004],
        [74.008, 74.002, 74.018, 73.995, 74.005], [74.001, 74.004, 73.990, 73.996, 73.998],
        [74.015, 74.000, 74.016, 74.025, 74.000], [74.030, 74.005, 74.000, 74.016, 74.012],
        [74.001, 73.990, 73.995, 74.010, 74.024], [74.015, 74.020, 74.024, 74.005, 74.019],
        [74.035, 74.010, 74.012, 74.015, 74.026], [74.017, 74.013, 74.036, 74.025, 74.026],
        [74.010, 74.005, 74.029, 74.000, 74.020],
    ]
)  # fmt: skip


def test_piston_ring_xbar_r_and_s_charts_match_montgomery() -> None:
    """Published (Montgomery, Example 6.1): X̿ = 74.001, R̄ = 0.023, X̄ limits 74.014 / 73.988, R UCL 0.049, Cp = 1.68.

    The book rounds R̄ to 0.023 before using it; tolerances below are that rounding
    carried through the formula, not a fudge.
    """
    eng = SpcEngine(1, SpcParams(window=64, phase1_n=125, subgroup_n=5, lsl=73.95, usl=74.05))
    flat = PISTON.reshape(-1)
    upd1 = eng.update(Readings.of(np.zeros(125, int), np.arange(125), flat[:125]))
    assert len(upd1.hits) == 0
    s = eng.snapshot()
    rbar_lo, rbar_hi = 0.0225, 0.0235  # R̄ = 0.023 as published
    assert s["xbar_cl"][0] == pytest.approx(74.001, abs=5e-4)
    assert rbar_lo <= s["r_cl"][0] <= rbar_hi
    assert s["xbar_ucl_r"][0] == pytest.approx(74.014, abs=5e-4)
    assert s["xbar_lcl_r"][0] == pytest.approx(73.988, abs=5e-4)
    assert 2.114 * rbar_lo <= s["r_ucl"][0] <= 2.114 * rbar_hi and abs(s["r_ucl"][0] - 0.049) < 1.1e-3
    assert s["r_lcl"][0] == 0.0
    assert 0.1 / (6 * rbar_hi / 2.326) <= s["cp"][0] <= 0.1 / (6 * rbar_lo / 2.326)
    assert abs(s["cp"][0] - 1.68) < 0.03
    # X̄-S on the same data: s̄ is the mean subgroup sd; its X̄ limits land on the same published 74.014 / 73.988
    sbar = PISTON[:25].std(axis=1, ddof=1).mean()
    assert s["s_cl"][0] == pytest.approx(sbar, rel=1e-12)
    assert s["s_ucl"][0] == pytest.approx(C.B4[5] * sbar, rel=1e-12)
    assert s["xbar_ucl_s"][0] == pytest.approx(74.014, abs=5e-4)
    assert s["xbar_lcl_s"][0] == pytest.approx(73.988, abs=5e-4)
    upd2 = eng.update(Readings.of(np.zeros(75, int), np.arange(125, 200), flat[125:]))
    out = upd2.hits.t_ns[(upd2.hits.mask & Rule.XBAR_R) != 0]
    # the chart's story: subgroups 37, 38 and 39 plot above the X̄ UCL
    assert ((out // 5) + 1).tolist() == [37, 38, 39]


def test_capability_textbook_example_and_one_sided() -> None:
    """Montgomery: USL 62, LSL 38, μ 53, σ 2 gives Cp 2.0, Cpk 1.5; with only the USL, Cpk = Cpu = 1.5."""
    x = np.array([51.0, 55.0] * 50)  # mean 53, given σ = 2
    eng = SpcEngine(2, SpcParams(window=10, phase1_n=10, centre=53.0, sigma=2.0))
    eng.configure([0], SpcParams(window=10, centre=53.0, sigma=2.0, lsl=38.0, usl=62.0))
    eng.configure([1], SpcParams(window=10, centre=53.0, sigma=2.0, usl=62.0))
    for row in (0, 1):
        eng.update(Readings.of(np.full(100, row), np.arange(100), x))
    s = eng.snapshot()
    assert s["cp"][0] == pytest.approx(2.0) and s["cpk"][0] == pytest.approx(1.5)
    assert np.isnan(s["cp"][1]) and s["cpk"][1] == pytest.approx(1.5)
    # overall σ of the alternating data is 2·sqrt(100/99)
    assert s["pp"][0] == pytest.approx(24 / (6 * 2 * math.sqrt(100 / 99)))


@pytest.mark.parametrize("lockstep", [True, False])
def test_full_tick_path_equals_general_path(lockstep: bool) -> None:
    """Full ticks in row order (slice fast path) and the same ticks with the rows shuffled (fancy path) agree exactly."""
    rng = np.random.default_rng(11)
    S = 40
    cfgs = [dict(window=12, phase1_n=10, subgroup_n=5, lsl=-2.5, usl=2.5)] * S
    if not lockstep:  # mixed windows put the rows' ring positions out of step
        cfgs = [CONFIGS[i % len(CONFIGS)] for i in range(S)]
    fast = SpcEngine(S, max_window=64, alarm_on_delay_ns=2, alarm_off_delay_ns=1)
    slow = SpcEngine(S, max_window=64, alarm_on_delay_ns=2, alarm_off_delay_ns=1)
    for row, cfg in enumerate(cfgs):
        fast.configure([row], SpcParams(**cfg))
        slow.configure([row], SpcParams(**cfg))
    data = np.stack([process_values(rng, 300) for _ in range(S)], axis=1)
    sig = np.arange(S)
    n_hits = n_events = 0
    for i in range(300):
        if i == 152:  # off the subgroup boundary: those rows complete their subgroups on other ticks
            for eng in (fast, slow):
                eng.rebaseline([3, 7])
                eng.reset_capability([5])
        perm = rng.permutation(S)
        a = fast.update(Readings.of(sig, i, data[i]))
        b = slow.update(Readings.of(perm, i, data[i, perm]))
        got_a = sorted(zip(a.hits.row.tolist(), a.hits.mask.tolist(), strict=True))
        got_b = sorted(zip(b.hits.row.tolist(), b.hits.mask.tolist(), strict=True))
        assert got_a == got_b, i
        # repr makes NaN limits (no spec on that side) compare equal
        ev_a = sorted(tuple(map(repr, d.values())) for d in a.events.to_records())
        ev_b = sorted(tuple(map(repr, d.values())) for d in b.events.to_records())
        assert ev_a == ev_b, i
        n_hits += len(a.hits)
        n_events += len(a.events)
    assert n_hits > 500 and n_events > 100
    assert_same_snapshot(fast.snapshot(), slow.snapshot())


def test_alarms_without_delays_equal_the_tracker() -> None:
    """With no on/off delays the engine sets alarm bits directly; the events equal those of the full tracker."""
    rng = np.random.default_rng(5)
    S = 30
    cfgs = [CONFIGS[i % len(CONFIGS)] for i in range(S)]
    fast, slow = make_engine(cfgs), make_engine(cfgs)
    assert fast._instant_alarms
    slow._instant_alarms = False  # the general state machine with zero delays
    data = np.stack([process_values(rng, 300) for _ in range(S)], axis=1)
    n_events = 0
    for i in range(300):
        rows = rng.permutation(S)[: int(rng.integers(1, S + 1))]
        a = fast.update(Readings.of(rows, i, data[i, rows]))
        b = slow.update(Readings.of(rows, i, data[i, rows]))
        assert [tuple(map(repr, d.values())) for d in a.events.to_records()] == [
            tuple(map(repr, d.values())) for d in b.events.to_records()
        ], i
        n_events += len(a.events)
    assert n_events > 200
    np.testing.assert_array_equal(fast.alarms.active, slow.alarms.active)
    np.testing.assert_array_equal(fast.alarm_on, slow.alarm_on)


@pytest.mark.parametrize("full_ticks", [True, False])
def test_window_statistics_survive_a_spike_and_a_level_change(full_ticks: bool) -> None:
    """Running window sums: a 1e12 spike leaving the window and a jump of 1e6 do not leave rounding behind."""
    rng = np.random.default_rng(2)
    S, W, n = 4, 20, 400
    eng = SpcEngine(S, SpcParams(window=W, phase1_n=10), max_window=W)
    x = 1e4 + 1e-3 * rng.standard_normal((n, S))
    x[100, :] = 1e12  # a glitch
    x[250:, 1] += 1e6  # a unit change on one signal
    for i in range(n):
        rows = np.arange(S) if full_ticks else rng.permutation(S)
        eng.update(Readings.of(rows, i, x[i, rows]))
        if i in (110, 121, 130, 260, 275, n - 1):
            win = x[i - W + 1 : i + 1]
            s = eng.snapshot()
            np.testing.assert_allclose(s["mean"], win.mean(0), rtol=1e-12, err_msg=str(i))
            np.testing.assert_allclose(s["sd"], win.std(0, ddof=1), rtol=1e-7, err_msg=str(i))
            assert s["min"].tolist() == win.min(0).tolist() and s["max"].tolist() == win.max(0).tolist()


@pytest.mark.parametrize("level", [1e6, 1e9])
@pytest.mark.parametrize("window", [2, 5, 50])
def test_window_sd_at_a_large_level_is_numpys_two_pass(window: int, level: float) -> None:
    """Window sd of values at 1e6 and 1e9 with sd 1e-3 equals numpy's two-pass sd, over a stream long enough for dozens of re-bases.

    The reference is np.std(ddof=1) of the window taken about its first value: that shift is exact
    (the values are within a factor 2 of each other), so the reference does not round its mean at
    the level's magnitude. numpy's plain np.std(window) does (ulp(1e9) = 1.2e-7), and differs from
    the engine by no more than that rounding of its mean can explain. Before the fix (sums updated
    with x + old, re-based as if the rounded mean were exact) the sd was off by up to 1e-4 relative
    at 1e6 / window 2 and 2e-3 at 1e9 / window 5 (1.8 at 1e9 / window 2, two nearly equal values).
    """
    rng = np.random.default_rng(window)
    S = 3
    n = 40 * window + 400  # an exact recompute every 8 passes: 6 re-bases at window 50, 60 at window 2
    eng = SpcEngine(S, SpcParams(window=window, phase1_n=10), max_window=window)
    x = level + 1e-3 * rng.standard_normal((n, S))
    x[:, 1] = level + 1e-3 * np.cumsum(rng.standard_normal(n)) / 4  # wandering: the centre leaves the shift
    x[:, 2] = np.round(x[:, 2], 4)  # ties: windows of equal values have sd 0
    sig = np.arange(S)
    checked = 0
    for i in range(n):
        rows = sig if i % 3 else rng.permutation(S)  # full ticks (lockstep) and gathered rows
        eng.update(Readings.of(rows, i, x[i, rows]))
        if i >= window and i % 3 == 0:
            win = x[i - window + 1 : i + 1]
            s = eng.snapshot()
            dev = win - win[0]
            np.testing.assert_allclose(
                s["sd"], np.std(dev, axis=0, ddof=1), rtol=1e-12, atol=1e-18, err_msg=str(i)
            )
            np.testing.assert_allclose(s["mean"], win[0] + dev.mean(0), rtol=1e-15, err_msg=str(i))
            # numpy's plain two-pass gives sqrt(sd² + k·δ²), k = w/(w-1), δ the rounding of its own mean
            sd, k = np.std(dev, axis=0, ddof=1), window / (window - 1)
            delta = np.abs((win.mean(0) - win[0]) - dev.mean(0))  # the first difference is exact
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = np.fmin(np.sqrt(k) * delta, k * delta**2 / (2 * sd)) * 1.01 + 1e-12 * sd + 1e-18
            assert np.all(np.abs(s["sd"] - np.std(win, axis=0, ddof=1)) <= bound), i
            checked += 1
    assert checked > n // 4


def test_a_statistics_only_engine_keeps_window_and_capability_and_charts_nothing() -> None:
    """charts=False: the window statistics and capability of a full engine, bit for bit; no hits, no events, no limits."""
    rng = np.random.default_rng(17)
    S, n = 5, 300
    cfg = SpcParams(window=12, phase1_n=20, subgroup_n=[1, 1, 4, 1, 1], lsl=-2.0, usl=2.5)
    full = SpcEngine(S, cfg, max_window=12)
    stats = SpcEngine(S, cfg, max_window=12, charts=False)
    x = rng.standard_normal((n, S))
    x[150:] += 1.5  # a shift the full engine alarms on
    sig = np.arange(S)
    fired = 0
    for i in range(n):
        rows = sig if i % 5 else rng.permutation(S)[:3]
        a = full.update(Readings.of(rows, i, x[i, rows]))
        b = stats.update(Readings.of(rows, i, x[i, rows]))
        fired += len(a.hits)
        assert len(b.hits) == 0 and len(b.events) == 0, i
    assert fired > 0
    sa, sb = full.snapshot(), stats.snapshot()
    keys = ("n", "window_n", "mean", "sd", "min", "max", "cap_n", "sigma_within", "cp", "reason_capability")
    for key in keys + CAP_SUM_KEYS:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert np.isnan(sb["cl"]).all() and np.isnan(sb["ewma"]).all() and (sb["rule_mask"] == 0).all()


def test_row_without_sigma_fires_no_zone_rule() -> None:
    """A constant phase I gives no sigma: that row's zone rules (WE, N1/2/5-8), MR, EWMA and CUSUM never fire; trends still do."""
    rng = np.random.default_rng(4)
    S = 6
    eng = SpcEngine(S, SpcParams(window=10, phase1_n=10))
    sig = np.arange(S)
    seen = 0
    for i in range(200):
        x = rng.standard_normal(S)
        if i < 10:
            x[0] = 5.0
        elif i % 20 < 8:
            x[0] = 5.0 + 0.1 * (i % 20)  # rising runs: Nelson 3 fires on them
        upd = eng.update(Readings.of(sig, i, x))
        m0 = upd.hits.mask[upd.hits.row == 0]
        assert not (m0 & ~np.uint32(Rule.N3 | Rule.N4)).any(), (i, m0)
        seen |= int(np.bitwise_or.reduce(m0)) if m0.size else 0
    assert seen & Rule.N3
    s = eng.snapshot()
    assert np.isnan(s["sigma"][0]) and s["reason_limits"][0] == NoData.ZERO_SIGMA


@pytest.mark.parametrize("subgroup_n", [5, 9])
def test_one_row_at_a_time_equals_full_ticks(subgroup_n: int) -> None:
    """Rows updated one per call give the bits of full ticks: few gathered rows sum window and subgroup slots in the same order."""
    rng = np.random.default_rng(8)
    S, W, n = 8, 18, 200
    cfg = SpcParams(window=W, phase1_n=4 * subgroup_n, subgroup_n=subgroup_n, lsl=-3.0, usl=3.0)
    full, single = SpcEngine(S, cfg, max_window=W), SpcEngine(S, cfg, max_window=W)
    x = 1e3 + rng.standard_normal((n, S)) * rng.uniform(0.5, 50.0, S)
    x[60::37] += 1e5  # spikes: leaving the window they force exact recomputes of single rows
    sig = np.arange(S)
    for i in range(n):
        if i % 23 == 22:  # now and then two halves: the engine leaves lockstep and re-enters it
            a = [full.update(Readings.of(sig[h], i, x[i, h])).hits for h in (slice(0, 3), slice(3, S))]
        else:
            a = [full.update(Readings.of(sig, i, x[i])).hits]
        b = [single.update(Readings.of([row], i, [x[i, row]])).hits for row in rng.permutation(S)]
        got_a = sorted((int(r), int(m)) for h in a for r, m in zip(h.row, h.mask, strict=True))
        got_b = sorted((int(r), int(m)) for h in b for r, m in zip(h.row, h.mask, strict=True))
        assert got_a == got_b, i
    assert_same_snapshot(full.snapshot(), single.snapshot())


def test_configure_while_rows_are_in_lockstep_restarts_the_ring() -> None:
    """Reconfiguring a row while every row shares one ring position starts its window afresh (min/max/mean of its new samples only)."""
    rng = np.random.default_rng(0)
    S, W = 4, 50
    eng = SpcEngine(S, SpcParams(window=W, phase1_n=10), max_window=W)
    sig = np.arange(S)
    for i in range(80):  # a full window, then the ring position stops at 30 of 50
        eng.update(Readings.of(sig, i, 5 + rng.random(S)))
    eng.configure([1], SpcParams(window=W, phase1_n=10))
    x = 5 + rng.random((21, S))
    for i in range(21):  # wraps past slot 0 of the reconfigured row's ring
        eng.update(Readings.of(sig, 80 + i, x[i]))
    s = eng.snapshot()
    assert s["window_n"][1] == 21
    assert s["min"][1] == x[:, 1].min() and s["max"][1] == x[:, 1].max()
    assert s["mean"][1] == pytest.approx(x[:, 1].mean(), rel=1e-12)


def test_lockstep_capability_sums_match_the_period_values() -> None:
    """In lockstep the capability sums come a window at a time from the window sums: same mean and sd as the period's values.

    Snapshots at several ring phases (each adds the pending samples from the buffer), a capability
    period restarted mid-pass on two rows, and a level shift far from the period's first value.
    """
    rng = np.random.default_rng(21)
    S, W = 6, 10
    eng = SpcEngine(S, SpcParams(window=W, phase1_n=10, lsl=990.0, usl=1010.0), max_window=W)
    sig = np.arange(S)
    period: list[list[float]] = [[] for _ in range(S)]
    x = 1e3 + rng.standard_normal((230, S)) * rng.uniform(0.01, 2.0, S)
    x[120:] += 7.0  # a level shift: the window's centre moves far from the period's first value
    checked = 0
    for i in range(230):
        if i == 37:
            eng.reset_capability([2, 4])
            period[2], period[4] = [], []
        eng.update(Readings.of(sig, i, x[i]))
        for r in range(S):
            period[r].append(float(x[i, r]))
        if i > W:
            assert eng._lock is not None, i  # every row in step: the lockstep path runs
        if i in (25, 40, 59, 60, 99, 143, 170, 229):
            s = eng.snapshot()
            for r in range(S):
                v = np.array(period[r])
                assert s["cap_n"][r] == v.size
                np.testing.assert_allclose(s["cap_mean"][r], math.fsum(v) / v.size, rtol=1e-12)
                sd = math.sqrt(math.fsum((v - math.fsum(v) / v.size) ** 2) / (v.size - 1))
                np.testing.assert_allclose(s["sigma_overall"][r], sd, rtol=1e-12)
                checked += 1
    assert checked == 8 * S


@pytest.mark.parametrize("path", ["full", "rows", "mixed"])
def test_cusum_run_counts_past_255(path: str) -> None:
    """The CUSUM run counters count runs of hundreds of samples on every update path; cusum_shift uses them."""
    rng = np.random.default_rng(4)
    S, n = 6, 1400
    cfg = dict(window=10, phase1_n=10, centre=0.0, sigma=1.0)
    eng, refs = make_engine([cfg] * S), make_refs([cfg] * S)
    x = rng.standard_normal((n, S))
    x[100:700, :3] += 1.5  # C+ stays above 0: runs of ~600 samples (two wraps of the low byte)
    x[300:1200, 3:5] -= 2.0  # C- likewise, ending later
    x[700:705, :3] -= 200.0  # C+ back to 0: the runs end (and in-control ones follow)
    x[1200:1205, 3:5] += 400.0
    long_seen = 0
    sig = np.arange(S)
    for i in range(n):
        if path == "full" or (path == "mixed" and i % 97 < 60):
            eng.update(Readings.of(sig, i, x[i]))
        else:
            for row in rng.permutation(S):
                eng.update(Readings.of([row], i, [x[i, row]]))
        for r in range(S):
            refs[r].add(float(x[i, r]))
        if i in (649, 1149):
            long_seen += int(eng.npos[:3].min() >= 512) + int(eng.nneg[3:5].min() >= 256)
        if i % 50 == 49:
            assert [int(eng.npos[r]) for r in range(S)] == [rf.npos for rf in refs], i
            assert [int(eng.nneg[r]) for r in range(S)] == [rf.nneg for rf in refs], i
            s = eng.snapshot()
            for r, rf in enumerate(refs):
                if rf.cpos > rf.h:
                    assert s["cusum_shift"][r] == pytest.approx(rf.k + rf.cpos / rf.npos, rel=1e-9)
    assert long_seen == 3
    # the long runs ended (and the drop of C+ started a long C- run)
    assert int(eng.npos[:3].max()) < 256 and int(eng.nneg[3:5].max()) < 256
    assert int(eng.nneg[:3].min()) >= 256


def test_reconfigure_and_rebaseline_mid_subgroup_in_lockstep() -> None:
    """Rows in step (ring, subgroup phase, pending capability samples) reconfigured or rebaselined mid-subgroup: same as one row per call."""
    rng = np.random.default_rng(13)
    S, W = 6, 15
    cfg = SpcParams(window=W, phase1_n=10, subgroup_n=5, lsl=-3.0, usl=3.0)
    full, single = SpcEngine(S, cfg, max_window=W), SpcEngine(S, cfg, max_window=W)
    x = rng.standard_normal((160, S))
    sig = np.arange(S)
    for i in range(160):
        if i == 57:  # 57 samples: 2 into a subgroup, 12 into a ring pass
            assert full._lock is not None and full._sg_lock is not None and full._cap_pend > 0
            for eng in (full, single):
                eng.configure([1], SpcParams(window=W, phase1_n=15, subgroup_n=5))
        if i == 103:
            for eng in (full, single):
                eng.rebaseline([4])
                eng.reset_capability([2])
        a = full.update(Readings.of(sig, i, x[i])).hits
        b = [single.update(Readings.of([row], i, [x[i, row]])).hits for row in rng.permutation(S)]
        got_a = sorted(zip(a.row.tolist(), a.mask.tolist(), strict=True))
        got_b = sorted((int(r), int(m)) for h in b for r, m in zip(h.row, h.mask, strict=True))
        assert got_a == got_b, i
        if i in (60, 104, 130):
            assert_same_snapshot(full.snapshot(), single.snapshot())
    assert full._sg_lock is None  # rows 1 and 4 restarted their subgroups out of phase with the others
    assert_same_snapshot(full.snapshot(), single.snapshot())
