"""CycleLatch and TraceSegmenter: rollover, resets, stops, latching; segmentation against the reference."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.core.cycles import CycleLatch, TraceSegmenter
from edge_agent.types import Quality, Readings
from tests.core_reference import RefSegmenter

S = 1_000_000_000  # ns per second


def test_latch_rollover_reset_stop_and_latched_values() -> None:
    """UInt16 rollover counts through 65535 -> 0; a drop to a small value is a reset; a long gap is a stop."""
    # device 0: counter row 0, cushion row 1, peak row 2, cycle time row 3; device 1: counter row 4, row 5
    latch = CycleLatch(
        6, counter_row=[0, 4], latched_rows=[[1, 2], [5, -1]], nominal_cycle_s=10.0, modulus=[65536, 0],
        cycle_time_row=[3, -1],
    )  # fmt: skip
    b = latch.update(Readings.of([0, 1, 2, 4, 5], 0, [65534, 5.0, 900.0, 100, 7.0]))
    assert len(b.events) == 0 and len(b.readings) == 0  # first reading is only a baseline
    b = latch.update(Readings.of([1, 2, 0], 10 * S, [5.1, 910.0, 65535]))
    assert b.events.cycles.tolist() == [1] and np.isnan(
        b.events.cycle_time_s[0]
    )  # first increment: no time yet
    lat = b.readings.signal != 3
    assert sorted(zip(b.readings.signal[lat].tolist(), b.readings.value[lat].tolist(), strict=True)) == [
        (1, 5.1),
        (2, 910.0),
    ]
    assert b.readings.quality[b.readings.signal == 3][0] == Quality.BAD_VALUE  # cycle time "no data"
    b = latch.update(Readings.of([0, 1], 30 * S, [1, 5.2]))  # 65535 -> 1 is two cycles through the wrap
    assert b.events.rollover.tolist() == [True] and b.events.cycles.tolist() == [2]
    assert b.events.cycle_time_s.tolist() == [10.0] and not b.events.stop[0]
    ct = b.readings.value[b.readings.signal == 3]
    assert ct.tolist() == [10.0]
    b = latch.update(Readings.of([0], 80 * S, [2]))  # 50 s for one cycle of 10 s nominal: a stop
    assert b.events.stop.tolist() == [True] and np.isnan(b.events.cycle_time_s[0])
    assert latch.stopped(80 * S + 21 * S).tolist() == [True, True] and latch.stopped(90 * S).tolist() == [
        False,
        True,
    ]
    b = latch.update(Readings.of([4, 4], [5 * S, 6 * S], [103, 2]))  # device 1: +3, then a reset to 2
    assert b.events.cycles.tolist() == [3, 2] and b.events.reset.tolist() == [False, True]
    assert b.events.rollover.tolist() == [False, False]
    b = latch.update(Readings.of([0, 0], 90 * S, [np.nan, 3], [int(Quality.BAD_TIMEOUT), 0]))
    assert b.events.cycles.tolist() == [1]  # the bad counter value is ignored


def test_latch_rejects_bad_shapes() -> None:
    """Config errors name the argument."""
    with pytest.raises(ValueError, match="latched_rows must have shape"):
        CycleLatch(4, [0], [1, 2], 5.0)
    with pytest.raises(ValueError, match="row 9 is outside"):
        CycleLatch(4, [0], [[9]], 5.0)


def test_segmenter_matches_reference_with_random_chunking() -> None:
    """Pulses on several channels, fed interleaved in random chunks, cut exactly like the reference."""
    rng = np.random.default_rng(11)
    C, n = 5, 3000
    t = np.cumsum(rng.integers(5, 15, size=(C, n)), axis=1) * 1_000_000
    phase = np.arange(n) / rng.uniform(80, 200, size=(C, 1))
    v = 100 * np.maximum(0, np.sin(2 * np.pi * phase)) ** 2 + rng.normal(0, 3, (C, n))
    v[rng.random((C, n)) < 0.02] = np.nan
    on, off = 50.0, 20.0
    refs = [RefSegmenter(on, off) for _ in range(C)]
    seg = TraceSegmenter(C, on, off)
    got: list[tuple[int, int, int, float, float, float]] = []
    cur = np.zeros(C, int)
    while (cur < n).any():
        chans, ts, vs = [], [], []
        for c in range(C):
            k = int(rng.integers(0, 120))
            sl = slice(cur[c], min(n, cur[c] + k))
            chans += [c] * (sl.stop - sl.start)
            ts += t[c, sl].tolist()
            vs += v[c, sl].tolist()
            for tt, vv in zip(t[c, sl], v[c, sl], strict=True):
                refs[c].add(int(tt), float(vv))
            cur[c] = sl.stop
        # random interleaving that keeps each channel's own order: sorted random keys handed out per channel
        ch_arr, t_arr, v_arr = np.array(chans), np.array(ts), np.array(vs)
        keys = rng.random(len(chans))
        for c in range(C):
            own = np.flatnonzero(ch_arr == c)
            keys[own] = np.sort(keys[own])
        idx = np.argsort(keys)
        out = seg.update(ch_arr[idx], t_arr[idx], v_arr[idx])
        for i in range(len(out)):
            got.append(
                (int(out.channel[i]), int(out.start_ns[i]), int(out.end_ns[i]), float(out.peak[i]),
                 float(out.time_to_peak_s[i]), float(out.integral[i]))
            )  # fmt: skip
    want = [(c, *cyc) for c in range(C) for cyc in refs[c].out]
    assert len(want) > 60
    got.sort()
    want.sort()
    assert [g[:4] for g in got] == [w[:4] for w in want]
    np.testing.assert_allclose([g[4:] for g in got], [w[4:] for w in want], rtol=1e-9)
    durations = [(g[2] - g[1]) / 1e9 for g in got]
    assert all(d > 0 for d in durations)


def test_segmenter_hysteresis_single_cycle_numbers() -> None:
    """A hand-checked trace: values dithering between off and on do not cut the cycle."""
    seg = TraceSegmenter(1, on=10.0, off=2.0)
    t = np.arange(8) * S
    v = [0.0, 12.0, 5.0, 11.0, 20.0, 5.0, 1.0, 15.0]
    out = seg.update(np.zeros(8, int), t, v)
    assert len(out) == 1
    assert out.start_ns[0] == 1 * S and out.end_ns[0] == 6 * S and out.duration_s[0] == 5.0
    assert out.peak[0] == 20.0 and out.time_to_peak_s[0] == 3.0
    # trapezoids: (12+5)/2 + (5+11)/2 + (11+20)/2 + (20+5)/2 + (5+1)/2 = 47.5
    assert out.integral[0] == pytest.approx(47.5)
    assert seg.in_cycle[0]  # the last sample (15) opened the next cycle


def test_latch_gives_each_increment_its_own_values_however_the_polls_are_batched() -> None:
    """One OPC UA publish can carry two increments with their values: each cycle latches its own, as polled one by one."""

    def latch() -> CycleLatch:
        return CycleLatch(3, counter_row=[0], latched_rows=[[1, 2]], nominal_cycle_s=10.0)

    polls = [([0, 1, 2], 0, [100, 5.0, 900.0]), ([1, 2, 0], 10 * S, [5.1, 910.0, 101]),
             ([1, 0, 2], 20 * S, [5.2, 102, 920.0])]  # fmt: skip
    one_by_one = latch()
    got = [one_by_one.update(Readings.of(*p)).readings for p in polls]
    expected = Readings.concat(got)
    batched = latch()
    batched.update(Readings.of(*polls[0]))
    rows = np.concatenate([np.asarray(p[0]) for p in polls[1:]])
    t = np.repeat([p[1] for p in polls[1:]], 3)
    b = batched.update(Readings.of(rows, t, np.concatenate([p[2] for p in polls[1:]])))
    pairs = sorted(
        zip(b.readings.signal.tolist(), b.readings.t_ns.tolist(), b.readings.value.tolist(), strict=True)
    )
    assert pairs == sorted(
        zip(expected.signal.tolist(), expected.t_ns.tolist(), expected.value.tolist(), strict=True)
    )
    assert (1, 10 * S, 5.1) in pairs and (1, 20 * S, 5.2) in pairs  # not 5.2 twice
    # later polls still see each row's latest value
    b = batched.update(Readings.of([0], 30 * S, [103]))
    assert sorted(b.readings.value.tolist()) == [5.2, 920.0]


def test_latch_has_no_cycle_time_for_equal_or_backward_times() -> None:
    """Jitter can stamp an increment at or before the previous one: that cycle time is no data, never 0 or negative."""
    latch = CycleLatch(2, counter_row=[0], latched_rows=[[-1]], nominal_cycle_s=10.0, cycle_time_row=[1])
    latch.update(Readings.of([0], 0, [100]))
    latch.update(Readings.of([0], 10 * S, [101]))
    b = latch.update(Readings.of([0], 9 * S, [102]))
    assert np.isnan(b.events.cycle_time_s[0]) and b.readings.quality.tolist() == [Quality.BAD_VALUE]
    b = latch.update(Readings.of([0, 0], [20 * S, 20 * S], [103, 104]))
    # 10 s since the newest increment (not the backward one), then none between the two equal times
    assert b.events.cycle_time_s[0] == 10.0 and np.isnan(b.events.cycle_time_s[1])


def test_latch_reset_of_a_uint16_counter_from_above_half_is_not_a_wrap() -> None:
    """40000 -> 3 within 10 s is a job-counter reset: 25538 cycles of 10 s nominal cannot fit; 65530 -> 4 in 100 s can."""
    latch = CycleLatch(1, counter_row=[0], latched_rows=[[-1]], nominal_cycle_s=10.0, modulus=65536)
    latch.update(Readings.of([0], 0, [39_999]))
    latch.update(Readings.of([0], 10 * S, [40_000]))
    b = latch.update(Readings.of([0], 20 * S, [3]))
    assert b.events.reset.tolist() == [True] and b.events.rollover.tolist() == [False]
    assert b.events.cycles.tolist() == [3]
    latch.update(Readings.of([0], 30 * S, [65_530]))
    b = latch.update(Readings.of([0], 130 * S, [4]))
    assert b.events.rollover.tolist() == [True] and b.events.cycles.tolist() == [10]
    assert b.events.cycle_time_s.tolist() == [10.0]
