"""Each injected fault of DOMAIN.md §7, generated as data, is flagged by the detector the table names."""

from __future__ import annotations

import numpy as np

from edge_agent.core.alarms import AlarmTracker, band_conditions
from edge_agent.core.furnace import FurnaceMonitor, ams2750_tolerance
from edge_agent.core.mold import heat_removed_kw, outside_tolerance
from edge_agent.core.spc import Rule, SpcEngine, SpcParams
from edge_agent.types import Readings

S = 1_000_000_000


def ar1(rng: np.random.Generator, n: int, phi: float = 0.3) -> np.ndarray:
    """Unit-variance AR(1) noise, as real processes are autocorrelated (DOMAIN.md §7)."""
    e = rng.standard_normal(n) * np.sqrt(1 - phi * phi)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def fired(series: np.ndarray, params: SpcParams) -> int:
    """OR of all rule bits fired after phase I on one per-cycle series."""
    eng = SpcEngine(1, params)
    upd = eng.update(Readings.of(np.zeros(series.size, int), np.arange(series.size), series))
    m = 0
    for v in upd.hits.mask:
        m |= int(v)
    return m


BASE = SpcParams(window=50, phase1_n=100)


def test_check_ring_wear_drift_flags_ewma_cusum_and_nelson3() -> None:
    """Cushion drifting towards 0 (5 mm, σ 0.1 mm): EWMA and CUSUM alarm low, and the trend shows as Nelson 3."""
    rng = np.random.default_rng(1)
    n = 300
    x = 5.0 + 0.1 * rng.standard_normal(n)
    x[100:] -= np.linspace(0, 2.5, 200)  # wear: cushion falls 2.5 mm over 200 cycles
    x[250:256] = x[249] - 0.2 * np.arange(1, 7)  # the late, fast part of the wear: six falling shots
    m = fired(x, BASE)
    assert m & Rule.EWMA_LOW and m & Rule.CUSUM_NEG and m & Rule.N3


def test_material_lot_step_flags_cusum_and_nelson2() -> None:
    """Peak pressure +6 % with a new lot (CV 3 %): CUSUM and 9-in-a-row (Nelson 2)."""
    rng = np.random.default_rng(2)
    x = 1000 * (1 + 0.03 * ar1(rng, 300))
    x[150:] *= 1.06
    m = fired(x, BASE)
    assert m & Rule.CUSUM_POS and m & Rule.N2


def test_short_shot_flags_nelson1() -> None:
    """One cavity-pressure maximum far down (short shot): Nelson 1."""
    rng = np.random.default_rng(3)
    x = 600 + 10 * rng.standard_normal(200)
    x[170] = 480
    eng = SpcEngine(1, BASE)
    upd = eng.update(Readings.of(np.zeros(200, int), np.arange(200), x))
    n1 = upd.hits.t_ns[(upd.hits.mask & Rule.N1) != 0]
    assert 170 in n1.tolist()


def test_two_cavities_mixed_alternation_and_hugging() -> None:
    """Two cavities sampled alternately: alternation (Nelson 4); stratified sampling hugging the centre (Nelson 7)."""
    rng = np.random.default_rng(4)
    x = 10 + rng.standard_normal(200)
    x[120:140] = 10 + np.where(np.arange(20) % 2 == 0, 0.8, -0.8) + 0.05 * rng.standard_normal(20)
    assert fired(x, BASE) & Rule.N4
    y = 10 + rng.standard_normal(200)
    y[120:140] = 10 + 0.2 * rng.standard_normal(20)
    assert fired(y, BASE) & Rule.N7


def test_over_adjustment_flags_nelson8() -> None:
    """An operator over-correcting each shot: swings across the centre, outside ±1σ on both sides (Nelson 8)."""
    rng = np.random.default_rng(5)
    x = 50 + rng.standard_normal(200)
    x[150:160] = 50 + np.array([1.8, -1.6, 2.0, -1.9, 1.5, -1.7, 1.6, -2.1, 1.9, -1.5])
    assert fired(x, BASE) & Rule.N8


def test_hpdc_accumulator_loss_flags_rule1_and_cusum() -> None:
    """Intensification pressure steps down 15 % (σ 2 %): beyond 3σ and CUSUM low."""
    rng = np.random.default_rng(6)
    x = 800 * (1 + 0.02 * rng.standard_normal(200))
    x[150:] *= 0.85
    m = fired(x, BASE)
    assert m & Rule.WE1 and m & Rule.CUSUM_NEG


def test_hpdc_dosing_drift_flags_ewma() -> None:
    """Biscuit length creeping up 1.5σ over 80 shots: EWMA alarms high."""
    rng = np.random.default_rng(7)
    x = 25 + 1.0 * ar1(rng, 220, 0.5)
    x[120:] += np.linspace(0, 1.5, 100)
    x[200:] += 1.5
    assert fired(x, BASE) & Rule.EWMA_HIGH


def test_heater_band_failure_raises_one_deviation_alarm() -> None:
    """A barrel zone at 230 °C loses a heater band and sags 25 K: one start event after the 60 s persistence."""
    t = np.arange(0, 600, 5) * S
    temp = np.full(t.size, 230.0) + np.random.default_rng(8).normal(0, 0.5, t.size)
    temp[60:] -= np.minimum(np.arange(t.size - 60) * 1.0, 25.0)  # sags from t = 300 s
    raised, cleared = band_conditions(temp, 230 - 10, 230 + 10, deadband=2.0)
    tracker = AlarmTracker(1, on_delay_ns=60 * S, off_delay_ns=30 * S)
    ev = tracker.update(np.zeros(t.size, int), t, raised, cleared, temp, 220.0)
    assert ev.start.tolist() == [True]
    first_out = t[np.argmax(raised)]
    assert ev.t_ns[0] == first_out + 60 * S


def test_tcu_flow_loss_shows_in_tolerance_and_heat_removal() -> None:
    """Flow drops from 20 to 12 L/min at constant load: flow out of its 10 % tolerance, ΔT up."""
    flow = np.array([20.0, 19.8, 12.0])
    supply = np.array([40.0, 40.0, 40.0])
    ret = np.array([43.0, 43.0, 45.0])
    p, dt = heat_removed_kw(flow, supply, ret)
    assert outside_tolerance(flow, 20.0, 0.10).tolist() == [False, False, True]
    assert dt.tolist() == [3.0, 3.0, 5.0]
    assert p[0] == np.float64(0.0697 * 20 * 3)


def heat_up(n: int, sp: float, over: float = 0.0) -> np.ndarray:
    """A first-order approach to the setpoint, with an optional overshoot bump."""
    k = np.arange(n)
    return 20 + (sp - 20) * (1 - np.exp(-k / 15.0)) + over * np.exp(-(((k - 90) / 8.0) ** 2))


def test_furnace_tc_burnout_is_caught_by_the_validity_check() -> None:
    """A thermocouple jumping upscale (open TC) or to ambient is invalid and stops the soak."""
    fm = FurnaceMonitor([0, 0, 0], ams2750_tolerance(2), max_dev_c=40.0)
    for i in range(10):
        st = fm.update(i * 60 * S, [850.0, 851.0, 849.0], 850.0)
    assert st.all_in_band[0] and st.soak_s[0] == 9 * 60
    st = fm.update(10 * 60 * S, [850.0, 1372.0, 849.0], 850.0)  # upscale burnout
    assert st.valid.tolist() == [True, False, True] and not st.all_in_band[0]
    st = fm.update(11 * 60 * S, [850.0, 1372.0, 25.0], 850.0)  # a second TC drops to ambient
    assert st.valid.tolist() == [True, False, False] and np.isnan(st.spread[0]) is np.False_
    assert st.spread[0] == 0.0 and st.soak_s[0] == 9 * 60


def test_furnace_zone_heater_failure_spreads_and_resets_soak() -> None:
    """One zone falls 15 K below a class 2 (±6 °C) band: spread rises and the soak (reset policy) restarts."""
    fm = FurnaceMonitor([0, 0, 0, 0], ams2750_tolerance([2]), soak_policy="reset")
    for i in range(20):
        st = fm.update(i * 60 * S, [900.0, 901.0, 899.0, 900.5], 900.0)
    assert st.soak_s[0] == 19 * 60 and st.spread[0] == 2.0
    for i in range(20, 25):
        st = fm.update(i * 60 * S, [900.0, 901.0, 899.0, 900.5 - 3 * (i - 19)], 900.0)
    assert st.spread[0] == 15.5 and not st.all_in_band[0] and st.soak_s[0] == 0.0


def test_furnace_overshoot_alarm() -> None:
    """A PID overshooting ~14 K over an 8 °C class 3 band gives one overshoot alarm; time to temperature is recorded."""
    fm = FurnaceMonitor([0, 0], 8.0)
    tracker = AlarmTracker(1)
    temps = heat_up(150, 860.0, over=16.0)
    starts = 0
    for i, v in enumerate(temps):
        st = fm.update(i * 30 * S, [v, v - 1.0], 860.0)
        ev = tracker.update([0], i * 30 * S, st.overshoot_c > 8.0)
        starts += int(ev.start.sum())
    assert starts == 1
    assert 8.0 < st.overshoot_c[0] < 16.0
    assert st.time_to_temp_s[0] > 0 and np.isfinite(st.ramp_c_per_min[0])
