"""OEE, mould maintenance and the alarm tracker (against its reference)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.core.alarms import AlarmTracker, band_conditions
from edge_agent.core.mold import MoldMaintenance
from edge_agent.core.oee import OeeAccumulator
from edge_agent.core.spc import ALARM_KIND_NAMES, SpcEngine, SpcParams
from edge_agent.types import Readings
from tests.core_reference import RefAlarm

S = 1_000_000_000


def test_oee_shift_worked_example_with_counter_reset() -> None:
    """8 h shift, 30 min planned stop, 400 min producing, ideal 30 s / 2 cavities, 1500 parts, 1450 good.

    ISO 22400-2: availability 24000/27000 = 0.8889, effectiveness 15·1500/24000 = 0.9375,
    quality 1450/1500 = 0.9667, OEE = 0.8056. The counters reset half-way (a job change).
    """
    oee = OeeAccumulator(2, ideal_cycle_s=30.0, cavities=2, stop_gap_s=120.0)
    oee.start_period([0, 1], 0, planned_downtime_s=1800.0)
    polls = np.arange(0, 481)  # one poll a minute for 8 h
    parts = np.round(np.minimum(polls, 400) * 1500 / 400)
    good = np.round(np.minimum(polls, 400) * 1450 / 400)
    parts[200:] -= parts[199] + 3  # reset after poll 199: the counter restarts near 0 ...
    good[200:] -= good[199] + 3
    parts[200:] = np.maximum(parts[200:], 0)
    good[200:] = np.maximum(good[200:], 0)
    parts[200:] += 3 + np.round(200 * 1500 / 400) - np.round(200 * 1500 / 400)  # ... and keeps counting
    producing = polls < 400
    for i in polls:
        oee.update([0], int(i) * 60 * S, bool(producing[i]), float(parts[i]), float(good[i]))
    r = oee.result(480 * 60 * S)
    assert r["pbt_s"][0] == 27000.0 and r["apt_s"][0] == 24000.0
    assert r["availability"][0] == pytest.approx(24000 / 27000)
    # the reset loses nothing: the counter restarts at 3 (3 parts since the reset) and keeps counting
    assert r["pq"][0] == parts[199] + parts[480] and r["gq"][0] == good[199] + good[480]
    assert np.isnan(r["oee"][1]) and r["reason"][1] != 0  # machine 1 never reported: no data, not 0


def test_oee_exact_numbers_without_reset() -> None:
    """Same shift without the reset: the textbook numbers."""
    oee = OeeAccumulator(1, ideal_cycle_s=30.0, cavities=2, stop_gap_s=120.0)
    oee.start_period([0], 0, planned_downtime_s=1800.0)
    for i in range(481):
        n = min(i, 400)
        oee.update([0], i * 60 * S, i < 400, round(n * 1500 / 400), round(n * 1450 / 400))
    r = oee.result(480 * 60 * S)
    assert r["availability"][0] == pytest.approx(0.8889, abs=1e-4)
    assert r["performance"][0] == pytest.approx(0.9375)
    assert r["quality"][0] == pytest.approx(1450 / 1500)
    assert r["oee"][0] == pytest.approx(0.8056, abs=1e-4)


def test_oee_stop_gap_is_measured_between_parts_not_polls() -> None:
    """DOMAIN.md §1/§5: no part for longer than 2x the nominal cycle is a stop, however the machine is polled.

    A hole in the polls during which the counter kept its rate is running time (performance
    stays 1, not 6); a frozen counter in a producing state stops counting 2x nominal after the
    last part; polls sparser than the stop gap lose nothing while parts keep coming.
    """
    hole = OeeAccumulator(1, ideal_cycle_s=10.0, stop_gap_s=20.0)
    hole.start_period([0], 0)
    hole.update([0, 0, 0, 0], np.array([0, 60, 660, 720]) * S, True, [0, 6, 66, 72], [0, 6, 66, 72])
    r = hole.result(720 * S)
    assert r["apt_s"][0] == 720.0 and r["performance"][0] == 1.0

    frozen = OeeAccumulator(1, ideal_cycle_s=10.0, stop_gap_s=20.0)
    frozen.start_period([0], 0)
    t = np.arange(0, 901, 5)
    parts = np.where(t <= 150, t // 10, 15)  # 15 parts in 150 s, then 600 s without one, then 15 more
    parts = np.where(t >= 750, 15 + (t - 750) // 10, parts).astype(float)
    frozen.update(np.zeros(t.size, np.int64), t * S, True, parts, parts)
    # 150 s + 20 s of grace after the last part + 140 s from the first part after the stop
    assert frozen.result(900 * S)["apt_s"][0] == 310.0

    sparse = OeeAccumulator(1, ideal_cycle_s=4.0, stop_gap_s=8.0)
    sparse.start_period([0], 0)
    t = np.arange(0, 601, 10)
    sparse.update(np.zeros(t.size, np.int64), t * S, True, (t // 4).astype(float), (t // 4).astype(float))
    r = sparse.result(600 * S)
    assert r["apt_s"][0] == 600.0 and r["availability"][0] == 1.0 and r["performance"][0] == 1.0

    # no parts counter: only the polls tell, and a hole longer than the stop gap is not counted
    blind = OeeAccumulator(1, ideal_cycle_s=10.0, stop_gap_s=120.0)
    blind.start_period([0], 0)
    blind.update([0, 0, 0, 0], np.array([0, 60, 660, 720]) * S, True, np.nan, np.nan)
    assert blind.result(720 * S)["apt_s"][0] == 120.0


def test_oee_ignores_a_poll_older_than_the_last() -> None:
    """A late poll (stamped before the previous one) neither counts its interval twice nor reads as a counter reset."""
    oee = OeeAccumulator(1, ideal_cycle_s=10.0, stop_gap_s=120.0)
    oee.start_period([0], 0)
    oee.update([0, 0, 0, 0], np.array([0, 60, 30, 120]) * S, True, [0, 6, 3, 12], [0, 6, 3, 12])
    r = oee.result(120 * S)
    assert r["apt_s"][0] == 120.0 and r["availability"][0] == 1.0 and r["pq"][0] == 12.0


def test_oee_period_rolls_over_at_a_cycle_boundary_only() -> None:
    """Machine 0 produces (mid-cycle, then a part), machine 1 is stopped, machine 2 has no counter."""
    oee = OeeAccumulator(3, ideal_cycle_s=10.0)
    oee.update([0, 1, 2], 0, [True, False, True], [100.0, 7.0, np.nan], [100.0, 7.0, np.nan])
    # the first reading is only the counter's baseline: mid-cycle for a producing machine
    assert oee.roll_period([0, 1, 2], 0).tolist() == [False, True, True]
    oee.update([0], 4 * S, True, 100.0, 100.0)  # still mid-cycle
    assert oee.roll_period([0], 4 * S).tolist() == [False]
    oee.update([0], 10 * S, True, 101.0, 101.0)  # a part: the boundary
    assert oee.roll_period([0], 10 * S).tolist() == [True]
    oee.update([0], 20 * S, True, 102.0, 102.0)
    r = oee.result(20 * S, [0])
    # the period began with a part, so the next one is matched with its whole 10 s cycle
    assert r["pq"][0] == 1 and r["apt_s"][0] == 10.0 and r["performance"][0] == 1.0


def test_mold_maintenance_shots_and_status() -> None:
    """Interval 100k shots, PM at 250k: 340k is 90 % used (WARNING), 351k is DUE; unread moulds have no data."""
    mm = MoldMaintenance(3, interval_cycles=100_000)
    mm.record_pm([0, 1], [250_000, 0])
    st = mm.update([0, 1], [340_000, 351_000])
    assert st["shots_to_next"].tolist() == [10_000, -251_000]
    assert st["pct_used"][0] == 90.0 and st["status"].tolist() == [
        MoldMaintenance.WARNING,
        MoldMaintenance.DUE,
    ]
    assert mm.status([2])["status"][0] == -1 and np.isnan(mm.status([2])["pct_used"][0])
    # a mould repeated in one batch keeps its last good reading, not the counter from before the batch
    st = mm.update([0, 0], [345_000, np.nan])
    assert st["shots_used"].tolist() == [95_000, 95_000] and st["status"][0] == MoldMaintenance.WARNING


def test_alarm_tracker_matches_reference_with_delays_and_hysteresis() -> None:
    """Random values against a band with a deadband, delays, channels interleaved: same events as the reference."""
    rng = np.random.default_rng(5)
    C, n = 6, 4000
    on_d = rng.integers(0, 4, C) * S
    off_d = rng.integers(0, 4, C) * S
    tr = AlarmTracker(C, on_d, off_d)
    refs = [RefAlarm(int(on_d[c]), int(off_d[c])) for c in range(C)]
    v = np.cumsum(rng.normal(0, 0.6, (C, n)), axis=1) % 20 - 10
    t = np.arange(n) * S
    raised, cleared = band_conditions(v, -5.0, 5.0, deadband=1.0)
    got = []
    for start in range(0, n, 37):
        sl = slice(start, start + 37)
        ch = np.repeat(np.arange(C)[:, None], v[:, sl].shape[1], axis=1).T.reshape(-1)
        tt = np.broadcast_to(t[sl][:, None], (v[:, sl].shape[1], C)).reshape(-1)
        ev = tr.update(ch, tt, raised[:, sl].T.reshape(-1), cleared[:, sl].T.reshape(-1))
        got += list(zip(ev.row.tolist(), ev.t_ns.tolist(), ev.start.tolist(), strict=True))
    for c in range(C):
        for i in range(n):
            refs[c].add(int(t[i]), bool(raised[c, i]), bool(cleared[c, i]))
    want = [(c, tt, s) for c in range(C) for tt, s in refs[c].events]
    assert len(want) > 50
    assert sorted(got) == sorted(want)


def test_engine_alarm_is_one_start_and_one_clear() -> None:
    """A rule that fires on many consecutive samples gives one start and one clear event, not one per sample."""
    eng = SpcEngine(1, SpcParams(window=10, centre=0.0, sigma=1.0), alarm_off_delay_ns=3)
    calm = np.tile([0.1, -0.1, 0.2], 4)  # no rule fires on this pattern
    x = np.r_[calm[:10], np.full(10, 4.0), calm]
    upd = eng.update(Readings.of(np.zeros(x.size, int), np.arange(x.size), x))
    rules = [
        (int(t), bool(s))
        for k, t, s in zip(upd.events.kind, upd.events.t_ns, upd.events.start, strict=True)
        if ALARM_KIND_NAMES[int(k)] == "rules"
    ]
    assert rules[0] == (10, True) and rules[-1][1] is False and len(rules) == 2
    assert upd.events.to_records(ALARM_KIND_NAMES)[0]["state"] == "start"


def test_furnace_overshoot_follows_the_direction_of_the_setpoint_change() -> None:
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0, 0], tolerance_c=6.0)
    s = 1_000_000_000
    # heating to 900: overshoot is how far the hottest sensor goes above the setpoint
    for k, temps in enumerate([(880, 882), (899, 901), (905, 903), (902, 900)]):
        st = mon.update(k * s, temps, 900.0)
    assert st.overshoot_c[0] == 5.0
    # a step down to 850 starts from above: nothing is "overshoot" until the furnace crosses 850,
    # and then it is how far the coldest sensor falls below it
    st = mon.update(10 * s, (899, 897), 850.0)
    assert st.overshoot_c[0] == 0.0
    for k, temps in enumerate([(851, 849), (847, 846), (850, 849)]):
        st = mon.update((11 + k) * s, temps, 850.0)
    assert st.overshoot_c[0] == 4.0


def test_furnace_overshoot_during_a_ramp_counts_for_the_whole_approach() -> None:
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0], tolerance_c=6.0)
    s = 1_000_000_000
    # the setpoint ramps 850 -> 880 in steps; the furnace runs 12 °C ahead of it at 870
    steps = [(850, 850.0), (860, 858.0), (870, 882.0), (880, 884.0), (880, 881.0)]
    for k, (sp, temp) in enumerate(steps):
        st = mon.update(k * s, [temp], float(sp))
    assert st.overshoot_c[0] == 12.0
    # in band at the ramp's last step (t = 3 s): the time to temperature counts from the ramp's start
    assert st.time_to_temp_s[0] == 3.0
    # turning back down is a new approach
    st = mon.update(10 * s, [880.0], 860.0)
    assert st.overshoot_c[0] == 0.0


def test_furnace_first_setpoint_below_the_furnace_is_no_overshoot() -> None:
    """An agent started during a cool-down sees the furnace above its setpoint: it cools onto it, it never crossed it from below."""
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0, 0], tolerance_c=6.0)
    for k, temps in enumerate([(900, 902), (880, 878), (851, 850), (850, 849.5)]):
        st = mon.update(k * S, temps, 850.0)
    assert st.overshoot_c[0] == 0.5  # how far it fell below 850 after reaching it
    # heating towards 900 and still at 700 when the setpoint drops to 800: still an approach from below
    mon = FurnaceMonitor([0], tolerance_c=6.0)
    mon.update(0, [650.0], 900.0)
    st = mon.update(1 * S, [700.0], 800.0)
    assert st.overshoot_c[0] == 0.0
    st = mon.update(2 * S, [803.0], 800.0)
    assert st.overshoot_c[0] == 3.0


def test_furnace_bad_setpoint_read_and_late_scan_keep_the_soak() -> None:
    """A NaN setpoint is no setpoint change (the soak goes on); a scan stamped before the last one adds no negative time."""
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0, 0], tolerance_c=6.0)
    for k in range(10):
        st = mon.update(k * 60 * S, (850.0, 851.0), 850.0)
    assert st.soak_s[0] == 540.0
    st = mon.update(600 * S, (850.0, 851.0), np.nan)
    assert st.soak_s[0] == 600.0 and st.time_to_temp_s[0] == 0.0 and st.deviation.tolist() == [0.0, 1.0]
    st = mon.update(590 * S, (850.0, 851.0), 850.0)
    assert st.soak_s[0] == 600.0
    st = mon.update(660 * S, (850.0, 851.0), 850.0)
    assert st.soak_s[0] == 660.0


def test_furnace_ramp_rate_spans_the_window_however_often_it_is_updated() -> None:
    """A 5 °C/min ramp, then 2 min at 10 °C/min, updated every 0.25 s: the slope is fitted over the whole 3 min window."""
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0], tolerance_c=6.0, ramp_window_s=180.0)
    t = np.arange(0, 600.25, 0.25)
    temp = np.where(t < 480, 500 + t / 12, 540 + (t - 480) / 6)
    for ts, v in zip(t, temp, strict=True):
        st = mon.update(int(ts * S), [v], 900.0)
    # least squares over what the window keeps: one scan per 180/63 s bucket, the newest
    buckets = (t * S // (180 * S // 63)).astype(np.int64)
    keep = np.r_[buckets[1:] != buckets[:-1], True] & (t >= 600 - 180)
    expected = np.polyfit(t[keep] / 60, temp[keep], 1)[0]
    assert st.ramp_c_per_min[0] == pytest.approx(expected, rel=1e-9)
    assert 8.0 < st.ramp_c_per_min[0] < 9.5  # a 64-scan buffer (16 s) read 10.0


def test_furnace_ramp_rate_ignores_a_sensor_dropping_out() -> None:
    """Zones 8 °C apart ramp at 5 °C/min; the hottest burns out (upscale) half-way: the ramp stays 5, the mean would jump."""
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0, 0, 0, 0], tolerance_c=6.0, ramp_window_s=180.0, max_dev_c=50.0)
    offsets = np.array([8.0, 0.0, -3.0, 2.0])
    for k in range(0, 300):
        temps = 600.0 + k / 12 + offsets
        if k >= 240:
            temps[0] = 1300.0  # burnt out: far from the median, so invalid
        st = mon.update(k * S, temps, 900.0)
    assert st.valid.tolist() == [False, True, True, True]
    assert st.ramp_c_per_min[0] == pytest.approx(5.0, rel=1e-9)


def test_furnace_with_two_sensors_keeps_the_one_that_did_not_burn_out() -> None:
    """Two thermocouples have no majority: the one that jumps away from the furnace's last mean is the invalid one."""
    from edge_agent.core.furnace import FurnaceMonitor

    mon = FurnaceMonitor([0, 0], tolerance_c=6.0, max_dev_c=50.0)
    mon.update(0, (850.0, 852.0), 850.0)
    st = mon.update(1 * S, (1300.0, 851.0), 850.0)  # sensor 0 burns out upscale
    assert st.valid.tolist() == [False, True] and st.deviation[1] == 1.0
    st = mon.update(2 * S, (20.0, 851.0), 850.0)  # then reads ambient
    assert st.valid.tolist() == [False, True]
    # a fast heat-up with sparse scans moves both together: both stay valid
    mon = FurnaceMonitor([0, 0], tolerance_c=6.0, max_dev_c=50.0)
    mon.update(0, (20.0, 22.0), 850.0)
    st = mon.update(30 * S, (300.0, 305.0), 850.0)
    assert st.valid.tolist() == [True, True]


def test_oee_time_with_an_unknown_state_leaves_the_availability_denominator() -> None:
    """NaN for `producing` (state not read, disconnected) is no data: that time is neither running nor lost."""
    oee = OeeAccumulator(1, ideal_cycle_s=10.0, stop_gap_s=20.0)
    oee.start_period([0], 0)
    t = np.array([0, 60, 120, 180]) * S
    oee.update([0, 0, 0, 0], t, [True, np.nan, True, True], [0, 6, 6, 12], [0, 6, 6, 12])
    r = oee.result(180 * S)
    # 0-60 s producing, 60-120 s unknown (planned downtime now), 120-180 s producing
    assert r["pbt_s"][0] == 120.0 and r["apt_s"][0] == 120.0 and r["availability"][0] == 1.0
