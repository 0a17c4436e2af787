"""Trace indicators of the core (edge_agent/core/traces.py) against pure-Python references, on random and hand-made traces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.core import traces as T
from edge_agent.core.traces import TraceReason as R
from tests import traces_reference as ref

RNG = np.random.default_rng(17)


def same(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    """Equal within tolerance, NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def stroke_traces(s: int, n: int = 720, rng: np.random.Generator = RNG) -> tuple[np.ndarray, np.ndarray]:
    """S forging strokes over 0..359.5° (TDC 0°): load from ~150°, peak near 177°, a reverse lobe after."""
    angle = np.arange(n) * 360.0 / n
    peak = rng.uniform(4000, 8000, (s, 1))
    at = rng.uniform(172, 182, (s, 1))
    rise = np.clip((angle - (at - 25.0)) / 25.0, 0, None) ** 3 * (angle <= at)
    fall = np.exp(-(((angle - at) / 3.0) ** 2)) * (angle > at)
    lobe = -0.06 * np.exp(-(((angle - at - 10.0) / 3.0) ** 2))
    f = peak * (rise + fall + lobe) + rng.normal(0, 15, (s, n))
    return f, angle


# --------------------------------------------------------------------------- shapes and reasons


def test_pack_traces_pads_cuts_and_flags_lengths() -> None:
    lengths = RNG.integers(0, 12, 40)
    lengths[:3] = (8, 0, 12)
    pieces = [RNG.normal(size=k) for k in lengths]
    x, reason = T.pack_traces(np.concatenate(pieces), lengths, 8)
    rows, reasons = ref.pack([list(p) for p in pieces], 8)
    np.testing.assert_array_equal(x, np.array(rows))
    assert reason.tolist() == reasons
    assert reason[:3].tolist() == [R.OK, R.SHORT, R.LONG]
    with pytest.raises(ValueError, match="add up to 5 points but 4 were given"):
        T.pack_traces([1, 2, 3, 4], [2, 3], 3)


def test_check_traces_keeps_earlier_reasons_and_counts_nan() -> None:
    x = np.ones((5, 10))
    x[1, 3] = np.nan
    x[2, :] = np.nan
    x[3, :2] = np.nan
    got = T.check_traces(x, [0, 0, 0, 0, R.SHORT])
    assert got.tolist() == [R.OK, R.NAN_POINTS, R.NO_DATA, R.NAN_POINTS, R.SHORT]
    assert T.check_traces(x, max_nan_fraction=0.1).tolist() == [R.OK, R.OK, R.NO_DATA, R.NAN_POINTS, R.OK]
    assert T.reason_counts(got) == {R.NAN_POINTS: 2, R.NO_DATA: 1, R.SHORT: 1}
    with pytest.raises(ValueError, match=r"2-D array \[traces, points\]"):
        T.check_traces(np.ones((2, 2, 2)))


# --------------------------------------------------------------------------- forging


def test_stroke_indicators_equal_the_reference_on_random_strokes() -> None:
    f, angle = stroke_traces(60)
    f[5, 100:103] = np.nan  # tolerated below
    f[6, :] = np.nan
    f[7, ::2] = np.nan  # too many
    height = T.ram_height(angle, 200.0, 800.0)
    cap_h, cap = T.mechanical_capacity_curve(10000.0, 12.7, 200.0, 800.0)
    given = np.zeros(60, np.uint8)
    given[8] = R.SHORT
    out = T.stroke_indicators(
        f,
        angle,
        10000.0,
        height=height,
        capacity_height=cap_h,
        capacity=cap,
        reason=given,
        max_nan_fraction=0.01,
    )
    for k in range(60):
        want = ref.stroke(
            list(f[k]), list(angle), 10000.0, list(height), list(cap_h), list(cap), int(given[k]), 0.01
        )
        assert out.reason[k] == want["reason"], k
        for name in (
            "peak",
            "peak_angle",
            "capacity_pct",
            "reverse",
            "reverse_pct",
            "curve_pct",
            "curve_angle",
        ):
            assert same(float(getattr(out, name)[k]), want[name]), (k, name)
        assert same(float(out.energy[k]), want["energy"], rel=1e-9, abs_=1e-6), k
    assert out.reason[5:9].tolist() == [R.OK, R.NO_DATA, R.NAN_POINTS, R.SHORT]
    assert np.isnan(out.peak[6:9]).all()
    # without a NaN anywhere the core takes its fast path (no filled copies, one weighted sum): same numbers
    rows = np.r_[0:5, 9:60]
    fast = T.stroke_indicators(f[rows], angle, 10000.0, height=height, capacity_height=cap_h, capacity=cap)
    for name in ("peak", "peak_angle", "reverse", "curve_pct", "curve_angle"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(out, name)[rows])
    np.testing.assert_allclose(fast.energy, out.energy[rows], rtol=1e-12)


def test_stroke_indicators_by_hand() -> None:
    angle = np.array([0.0, 90.0, 180.0, 270.0])
    force = np.array([[0.0, 100.0, 300.0, -40.0], [0.0, 0.0, 0.0, 0.0]])
    height = np.array([10.0, 8.0, 0.0, 6.0])
    out = T.stroke_indicators(force, angle, 1000.0, height=height)
    assert out.peak.tolist() == [300.0, 0.0]
    assert out.peak_angle.tolist() == [180.0, 0.0]
    assert out.capacity_pct.tolist() == [30.0, 0.0]
    assert out.reverse.tolist() == [40.0, 0.0] and out.reverse_pct.tolist() == [4.0, 0.0]
    # -∫F dh: 0.5*(0+100)*2 + 0.5*(100+300)*8 - 0.5*(300-40)*6 = 100 + 1600 - 780
    assert out.energy.tolist() == [920.0, 0.0]
    # a missing billet is a real stroke with no force, not "no data": the low limit must see it
    assert out.reason.tolist() == [R.OK, R.OK]
    # capacity curve: full 1000 up to 5 mm, half at 10 mm; 100 at h=8 is 100/(1000-... interp) = 100/700
    curve = T.stroke_indicators(
        force,
        angle,
        1000.0,
        height=height,
        capacity_height=[0.0, 5.0, 10.0],
        capacity=[1000.0, 1000.0, 500.0],
    )
    assert curve.curve_pct[0] == pytest.approx(30.0) and curve.curve_angle[0] == 180.0
    with pytest.raises(ValueError, match="capacity curve needs ascending heights"):
        T.stroke_indicators(
            force, angle, 1000.0, height=height, capacity_height=[0, 5, 4], capacity=[1, 1, 1]
        )
    with pytest.raises(ValueError, match="angle_deg has 3 points, the traces 4"):
        T.stroke_indicators(force, angle[:3], 1000.0)
    with pytest.raises(ValueError, match="rated force must be > 0"):
        T.stroke_indicators(force, angle, 0.0)


def test_ram_height_and_capacity_curve() -> None:
    h = T.ram_height([0.0, 90.0, 180.0, 270.0], 100.0, 400.0)
    assert h[0] == pytest.approx(200.0) and h[2] == pytest.approx(0.0)
    assert h[1] == pytest.approx(100.0 + 400.0 * (1 - math.sqrt(1 - 0.0625)))
    assert h[1] == pytest.approx(h[3])
    heights, cap = T.mechanical_capacity_curve(5000.0, 12.7, 100.0, 400.0)
    assert len(heights) == 15 and (np.diff(heights) > 0).all()
    assert cap[0] == cap[1] == 5000.0 and heights[1] == pytest.approx(12.7, abs=0.01)
    assert (np.diff(cap[1:]) < 0).all() and cap[-1] < 0.5 * 5000.0  # torque-limited far above BDC
    with pytest.raises(ValueError, match="rating_height < crank_radius"):
        T.mechanical_capacity_curve(5000.0, 150.0, 100.0, 400.0)


def test_reference_and_signature_deviation_equal_the_reference() -> None:
    good, angle = stroke_traces(25)
    r = T.reference_curve(good, min_strokes=20)
    assert np.allclose(r, ref.reference([list(x) for x in good], 20))
    assert np.isnan(T.reference_curve(good[:5], min_strokes=20)).all()
    f, _ = stroke_traces(30)
    f[3, 10] = np.nan
    f[4] *= 0.01  # a missing billet: no peak to place
    windows = [(0.0, 150.0), (150.0, 175.0), (170.0, 200.0), (200.0, 360.0)]
    out = T.signature_deviation(f, r, angle, windows, max_nan_fraction=0.01)
    assert out.rms.shape == (30, 4)
    for k in range(30):
        want, reason = ref.signature(list(f[k]), list(r), list(angle), windows, max_nan_fraction=0.01)
        assert out.reason[k] == reason
        for j in range(4):
            for got, exp in zip(
                (out.rms[k, j], out.max_abs[k, j], out.peak_shift[k, j]), want[j], strict=True
            ):
                assert same(float(got), exp), (k, j)
    assert np.isnan(out.peak_shift[4, 2]) and out.rms[4, 2] > 0.3
    rows = np.r_[0:3, 4:30]
    fast = T.signature_deviation(f[rows], r, angle, windows)  # no NaN: the fast path
    np.testing.assert_allclose(fast.rms, out.rms[rows], rtol=1e-12)
    np.testing.assert_array_equal(fast.max_abs, out.max_abs[rows])
    np.testing.assert_array_equal(fast.peak_shift, out.peak_shift[rows])
    shuffled = np.random.default_rng(3).permutation(720)  # an angle axis out of order: gathered windows
    slow = T.signature_deviation(f[rows][:, shuffled], r[shuffled], angle[shuffled], windows)
    np.testing.assert_allclose(slow.rms, fast.rms, rtol=1e-12)
    np.testing.assert_array_equal(slow.peak_shift, fast.peak_shift)
    assert np.isnan(out.peak_shift[:, 0]).all()  # the reference has no peak before touch
    none = T.signature_deviation(f, np.full(720, np.nan), angle, windows, max_nan_fraction=0.01)
    assert (none.reason == R.NO_REFERENCE).all() and np.isnan(none.rms).all()
    with pytest.raises(ValueError, match=r"window 0 \[400.0, 410.0\) holds no point"):
        T.signature_deviation(f, r, angle, [(400.0, 410.0)])


def test_signature_deviation_by_hand() -> None:
    angle = np.arange(360.0)
    base = np.exp(-(((angle - 178.0) / 4.0) ** 2)) * 1000.0
    shifted = np.exp(-(((angle - 174.0) / 4.0) ** 2)) * 1000.0
    out = T.signature_deviation(np.stack([base, shifted, base * 1.1]), base, angle, [(150.0, 200.0)])
    assert out.rms[0, 0] == 0.0 and out.peak_shift[0, 0] == 0.0
    assert out.peak_shift[1, 0] == -4.0  # earlier peak: thicker stock or shut height
    assert out.max_abs[2, 0] == pytest.approx(100.0)
    assert out.rms[2, 0] == pytest.approx(0.1 * np.sqrt(np.mean(base[150:200] ** 2)) / 1000.0)


def test_load_balance_equals_the_reference() -> None:
    x, y = np.array([-1.0, 1.0, -1.0, 1.0]), np.array([1.0, 1.0, -1.0, -1.0])
    peaks = RNG.uniform(500, 2000, (50, 4))
    peaks[3] = 0.0
    peaks[4, 2] = np.nan
    out = T.load_balance(peaks, x, y)
    for k in range(50):
        want = ref.balance(list(peaks[k]), list(x), list(y))
        assert out.reason[k] == want["reason"]
        for name in ("total", "left_right", "front_back", "x_c", "y_c", "moment_x", "moment_y"):
            assert same(float(getattr(out, name)[k]), want[name]), (k, name)
    assert out.reason[3] == R.NO_LOAD and out.reason[4] == R.NAN_POINTS
    # by hand: 60 % of the load on the left pair
    hand = T.load_balance([[300.0, 200.0, 300.0, 200.0]], x, y)
    assert hand.left_right[0] == pytest.approx(0.2) and hand.front_back[0] == 0.0
    assert hand.x_c[0] == pytest.approx(-0.2) and hand.moment_x[0] == pytest.approx(-200.0)
    two = T.load_balance([[300.0, 200.0]], [-1.0, 1.0])
    assert two.left_right[0] == pytest.approx(0.2) and np.isnan(two.front_back[0])


# --------------------------------------------------------------------------- spot welding


def spot_traces(s: int, n: int = 200, rng: np.random.Generator = RNG) -> tuple[np.ndarray, np.ndarray]:
    """Electrode voltage and current (A) of S spots: R falls to α, rises to β, falls; expulsion in some."""
    t = np.arange(n) / n
    r_uohm = (
        250.0 * np.exp(-t / 0.05) + 150.0 + 45.0 * np.exp(-(((t - 0.45) / 0.2) ** 2)) - 20.0 * t
    ) * rng.uniform(0.9, 1.1, (s, 1))
    expel = rng.random(s) < 0.3
    at = rng.integers(100, 170, s)
    r_uohm = np.where(expel[:, None] & (np.arange(n)[None, :] >= at[:, None]), r_uohm * 0.8, r_uohm)
    i = np.full((s, n), 9000.0) * (1 + rng.normal(0, 0.01, (s, n)))
    i[:, :5] = np.linspace(0, 9000, 5)  # up-slope: the first points are below min_current
    u = r_uohm * 1e-6 * i
    return u, i


def test_spot_weld_indicators_equal_the_reference() -> None:
    u, i = spot_traces(40)
    i[3] = 0.0  # no weld current
    u[4, 7] = np.nan
    out = T.spot_weld_indicators(u, i, 0.001, min_current=1000.0)
    for k in range(40):
        want = ref.spot(list(u[k]), list(i[k]), 0.001, 1000.0)
        assert out.reason[k] == want["reason"], k
        assert bool(out.expulsion[k]) == want["expulsion"], k
        for name in (
            "energy",
            "current_rms",
            "weld_time",
            "r_alpha",
            "r_beta",
            "t_beta",
            "r_end",
            "beta_drop",
            "expulsion_drop",
        ):
            assert same(float(getattr(out, name)[k]), want[name], rel=1e-9), (k, name)
    assert out.reason[3] == R.NO_CURRENT and out.reason[4] == R.NAN_POINTS


def test_spot_weld_by_hand() -> None:
    n = 100
    r = (
        np.concatenate([np.linspace(300, 150, 20), np.linspace(150, 200, 40), np.linspace(200, 180, 40)])
        * 1e-6
    )
    i = np.full(n, 10000.0)
    clean = T.spot_weld_indicators(r * i, i, 0.002, min_current=1000.0)
    assert clean.r_alpha[0] == pytest.approx(150e-6) and clean.r_beta[0] == pytest.approx(200e-6)
    assert clean.t_beta[0] == pytest.approx(59 * 0.002) and clean.r_end[0] == pytest.approx(180e-6)
    assert clean.energy[0] == pytest.approx(float((r * i * i).sum() * 0.002))  # Σ u·i·Δt, J
    assert not clean.expulsion[0]
    expelled = r.copy()
    expelled[70:] *= 0.75  # a sudden 25 % fall of R: expulsion
    out = T.spot_weld_indicators(expelled * i, i, 0.002, min_current=1000.0)
    assert out.expulsion[0] and out.expulsion_drop[0] > 0.2
    nothing = T.spot_weld_indicators(np.zeros((1, n)), np.zeros((1, n)), 0.002, min_current=1000.0)
    assert nothing.reason[0] == R.NO_CURRENT and np.isnan(nothing.energy[0]) and not nothing.expulsion[0]


# --------------------------------------------------------------------------- arc welding


def gmaw_traces(
    s: int, n: int = 2000, cv: float = 0.2, rng: np.random.Generator = RNG
) -> tuple[np.ndarray, np.ndarray]:
    """Short-circuit GMAW at 10 kHz: arcs of ~8 ms at 19 V, shorts of ~2 ms at 3 V with a current ramp."""
    u = np.empty((s, n))
    i = np.empty((s, n))
    for k in range(s):
        pos, arcing = 0, True
        while pos < n:
            length = max(1, int(rng.normal(80 if arcing else 20, (80 if arcing else 20) * cv)))
            seg = slice(pos, min(pos + length, n))
            m = seg.stop - seg.start
            if arcing:
                u[k, seg] = 19.0 + rng.normal(0, 0.3, m)
                i[k, seg] = np.linspace(250, 120, m)
            else:
                u[k, seg] = 3.0 + rng.normal(0, 0.3, m)
                i[k, seg] = np.linspace(120, 300, m)
            pos += length
            arcing = not arcing
    return u, i


def test_arc_indicators_equal_the_reference() -> None:
    u, i = gmaw_traces(12)
    i[2] = 0.0  # no arc
    u[3, 50] = np.nan
    out = T.arc_indicators(u, i, 1e-4)
    for k in range(12):
        want = ref.arc(list(u[k]), list(i[k]), 1e-4)
        assert out.reason[k] == want["reason"], k
        for name in want:
            if name != "reason":
                assert same(float(getattr(out, name)[k]), want[name], rel=1e-7, abs_=1e-12), (k, name)
    assert out.reason[2] == R.NO_CURRENT and out.reason[3] == R.NAN_POINTS
    ok = out.reason == R.OK
    assert (out.short_rate[ok] > 50).all() and (out.short_rate[ok] < 150).all()  # ~100 shorts/s


def test_arc_stability_rises_with_an_unstable_transfer() -> None:
    stable = T.arc_indicators(*gmaw_traces(10, cv=0.1), 1e-4)
    unstable = T.arc_indicators(*gmaw_traces(10, cv=0.5), 1e-4)
    assert np.median(unstable.short_period_cv) > 2 * np.median(stable.short_period_cv)


def test_arc_by_hand() -> None:
    u = np.array([[20.0, 20.0, 2.0, 2.0, 20.0, 2.0, 20.0, 20.0, 2.0]])
    i = np.array([[100.0, 100.0, 200.0, 200.0, 100.0, 200.0, 100.0, 5.0, 5.0]])
    out = T.arc_indicators(u, i, 0.001)
    assert out.arc_time[0] == pytest.approx(0.007)  # the last two points: current below 10 A, no arc
    assert out.short_count[0] == 2  # runs at 2-3 and 5; the last point has no arc
    assert out.short_time_mean[0] == pytest.approx(0.0015)
    assert out.energy[0] == pytest.approx((4 * 2000 + 3 * 400) * 0.001)
    assert out.power[0] == pytest.approx((4 * 2000 + 3 * 400) / 7)  # mean of u·i, not Ū·Ī
    assert np.isnan(out.short_period_cv[0])  # two shorts, one period


def test_heat_input_and_deposition() -> None:
    # EN 1011-1: MAG, 20 V, 200 A, 300 mm/min -> 0.8 * 4000 * 60 / 300000 = 0.64 kJ/mm
    assert T.heat_input_kj_per_mm(4000.0, 300.0, T.ARC_EFFICIENCY["MAG"]) == pytest.approx(0.64)
    q = T.heat_input_kj_per_mm([4000.0, 4000.0], [300.0, 0.0], 0.8)
    assert np.isnan(q[1])  # no travel: no heat input per mm, not infinity
    # the same weld from its arc energy: 60 s at 4 kW over 300 mm
    assert T.heat_input_from_energy(240000.0, 300.0, 0.8) == pytest.approx(0.64)
    # DOMAIN-ROOT.md §2: 1.2 mm wire at 10 m/min -> 5.3 kg/h
    assert T.deposition_kg_per_h(10.0, 1.2) == pytest.approx(5.33, abs=0.01)


# --------------------------------------------------------------------------- plating and anodizing


@pytest.mark.parametrize(
    ("metal", "table"),
    [
        ("Zn", 0.286),
        ("Ni", 0.205),
        ("Cu2", 0.222),
        ("Cu1", 0.443),
        ("Cr6", 0.076),
        ("Sn2", 0.506),
        ("Sn4", 0.253),
        ("Cd", 0.405),
        ("Ag", 0.639),
    ],
)
def test_faraday_rates_match_the_domain_table(metal: str, table: float) -> None:
    # the table was recomputed with slightly different densities (Cr 0.0750 from 7.19 g/cm³ against 0.076)
    assert T.faraday_rate_um(metal) == pytest.approx(table, rel=0.015)


def test_faraday_thickness_and_the_720_rule() -> None:
    # 4 A/dm² on 40 dm² for 20 min = 53.33 Ah; Ni at 95 %: 0.2049 * 0.95 * 80 A·min/dm²
    d = T.faraday_thickness_um(160.0 * 20 / 60, 40.0, 0.95, "Ni")
    assert d == pytest.approx(T.faraday_rate_um("Ni") * 0.95 * 80.0)
    assert np.isnan(T.faraday_thickness_um(10.0, 0.0, 0.95, "Ni"))
    assert T.anodize_720_um(1.5, 30.0) == pytest.approx(14.7, abs=0.05)  # DOMAIN-ROOT.md §3
    with pytest.raises(ValueError, match="unknown deposit 'Au'"):
        T.faraday_rate_um("Au")
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        T.faraday_thickness_um(1.0, 1.0, 95.0, "Ni")


def test_current_density_reasons() -> None:
    j, reason = T.current_density(
        [160.0, 0.0, 0.0, 160.0, np.nan], [40.0, 40.0, 40.0, 0.0, 40.0], [6.0, 6.0, 0.0, 6.0, 6.0]
    )
    assert j[0] == 4.0 and j[2] == 0.0  # a rectifier switched off is 0 A/dm², honestly
    assert reason.tolist() == [R.OK, R.OPEN_CIRCUIT, R.OK, R.NO_LOAD, R.NO_DATA]
    assert np.isnan(j[[1, 3, 4]]).all()


def test_ampere_hours_equal_the_reference() -> None:
    t = np.cumsum(RNG.uniform(0.5, 1.5, (20, 300)), axis=1)
    i = RNG.uniform(100, 200, (20, 300))
    i[4, 9] = np.nan
    ah, reason = T.ampere_hours(i, t)
    for k in range(20):
        want, why = ref.ampere_hours(list(i[k]), list(t[k]))
        assert reason[k] == why and same(float(ah[k]), want, rel=1e-12)
    assert reason[4] == R.NAN_POINTS
    flat, _ = T.ampere_hours(np.full((1, 3601), 100.0), np.arange(3601.0))
    assert flat[0] == pytest.approx(100.0)  # 100 A for an hour
    with pytest.raises(ValueError, match="must not go backwards"):
        T.ampere_hours([[1.0, 1.0]], [1.0, 0.0])


def test_voltage_rise_equals_the_reference_and_finds_the_slope() -> None:
    t = np.arange(600.0)
    ramp = np.clip(t / 60.0, 0, 1)
    i = 150.0 * ramp * (1 + RNG.normal(0, 0.003, (8, 600)))
    u = 12.0 + 0.004 * t + RNG.normal(0, 0.02, (8, 600))
    u[1] = 12.0 + RNG.normal(0, 0.02, 600)  # healthy: no rise
    i[2] = 0.0  # rectifier reads 0 A while the voltage is up
    i[3], u[3] = 0.0, 0.0  # switched off
    i[4, 400:] = 75.0  # current halved for the last third: the steady part still dominates
    i[5] = np.linspace(10, 150, 600)  # a ramp only: never steady
    out = T.voltage_rise(t, u, i)
    for k in range(8):
        want = ref.voltage_rise(list(t), list(u[k]), list(i[k]))
        assert out.reason[k] == want["reason"], k
        for name in ("slope", "resistance_slope", "current", "points"):
            assert same(float(getattr(out, name)[k]), want[name], rel=1e-9, abs_=1e-12), (k, name)
    assert out.reason[:6].tolist() == [R.OK, R.OK, R.OPEN_CIRCUIT, R.NO_CURRENT, R.OK, R.NOT_STEADY]
    assert out.slope[0] == pytest.approx(0.004, rel=0.05) and abs(out.slope[1]) < 0.0005
    assert out.resistance_slope[0] == pytest.approx(0.004 / 150.0, rel=0.05)
