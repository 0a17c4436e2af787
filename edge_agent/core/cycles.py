"""Cycles: counter-driven per-cycle latching for many devices, and threshold segmentation of continuous traces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core._batch import check_rows, last_occurrences, occurrence_rounds
from edge_agent.types import BAD_THRESHOLD, Quality, Readings

_NO_T = np.iinfo(np.int64).min
# a counter wrap is believed when its cycles took at least this share of the nominal cycle each
_MIN_CYCLE_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class CycleEvents:
    """Counter movements, one entry per device and poll where the counter moved or was reset.

    `cycles` is how many cycles the counter advanced (rollover handled); `cycle_time_s`
    is the mean time per cycle since the previous increment, NaN after a stop or for
    the first increment; `stop` marks a gap longer than 2x the nominal cycle.
    """

    device: NDArray[np.int64]
    t_ns: NDArray[np.int64]
    cycles: NDArray[np.int64]
    cycle_time_s: NDArray[np.float64]
    stop: NDArray[np.bool_]
    reset: NDArray[np.bool_]
    rollover: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.device.shape[0])


@dataclass(frozen=True, slots=True)
class CycleBatch:
    """What one poll produced: the counter events and the latched per-cycle values as Readings for SpcEngine."""

    events: CycleEvents
    readings: Readings


class CycleLatch:
    """Per-cycle sampling from a cycle counter, for many devices at once.

    Each device has one counter row and up to K latched rows (the per-cycle signals,
    -1 pads). When a device's counter advances, the latest values of its latched rows
    (from the same poll or earlier ones) are emitted as Readings stamped with the
    counter's time, plus the measured cycle time on `cycle_time_row` when given.
    A negative counter step is a rollover when the counter has a `modulus` (65536 for
    UInt16) and the wrapped step is below half of it; otherwise it is a reset, and the
    counter's new value is the number of cycles since the reset.
    """

    def __init__(
        self,
        n_rows: int,
        counter_row: ArrayLike,
        latched_rows: ArrayLike,
        nominal_cycle_s: ArrayLike,
        modulus: ArrayLike = 0,
        cycle_time_row: ArrayLike = -1,
    ) -> None:
        self.counter_row = np.asarray(counter_row, dtype=np.int64).reshape(-1)
        D = self.counter_row.shape[0]
        self.n_devices = D
        lat = np.asarray(latched_rows, dtype=np.int64)
        if lat.ndim != 2 or lat.shape[0] != D:
            raise ValueError(f"CycleLatch: latched_rows must have shape [{D} devices, K], got {lat.shape}")
        self.latched_rows = lat
        self.nominal_ns = np.broadcast_to(np.asarray(nominal_cycle_s, np.float64) * 1e9, (D,)).copy()
        if not (self.nominal_ns > 0).all():
            raise ValueError("CycleLatch: nominal_cycle_s must be > 0 for every device")
        self.modulus = np.broadcast_to(np.asarray(modulus, np.int64), (D,)).copy()
        self.cycle_time_row = np.broadcast_to(np.asarray(cycle_time_row, np.int64), (D,)).copy()
        used = np.concatenate(
            [self.counter_row, lat[lat >= 0], self.cycle_time_row[self.cycle_time_row >= 0]]
        )
        check_rows("CycleLatch rows", used, n_rows)
        self.n_rows = n_rows
        self.device_of_counter = np.full(n_rows, -1, np.int64)
        self.device_of_counter[self.counter_row] = np.arange(D)
        self.value = np.full(n_rows, np.nan)
        self.quality = np.full(n_rows, int(Quality.BAD_WAITING_FOR_INITIAL), np.uint8)
        self.count = np.zeros(D, np.int64)
        self.has_count = np.zeros(D, bool)
        self.last_inc_t = np.full(D, _NO_T, np.int64)

    def stopped(self, t_ns: int) -> NDArray[np.bool_]:
        """Devices whose counter has not moved for longer than 2x the nominal cycle at `t_ns` (or never moved)."""
        return (self.last_inc_t == _NO_T) | ((t_ns - self.last_inc_t) > 2.0 * self.nominal_ns)

    def update(self, readings: Readings) -> CycleBatch:
        """Take one poll (values of one batch are simultaneous); return counter events and latched readings."""
        check_rows("CycleLatch.update Readings.signal", readings.signal, self.n_rows)
        sig = readings.signal.astype(np.int64)
        dev = self.device_of_counter[sig]
        use = (dev >= 0) & (readings.quality < BAD_THRESHOLD) & np.isfinite(readings.value)
        idx = np.flatnonzero(use)
        parts: list[tuple[NDArray[np.int64], ...]] = []
        for rnd in occurrence_rounds(dev[idx]):
            i = idx[rnd]
            parts.append(self._round(dev[i], readings.t_ns[i], np.rint(readings.value[i]).astype(np.int64)))
        if parts:
            cols = [np.concatenate([p[j] for p in parts]) for j in range(7)]
            ev = CycleEvents(
                cols[0], cols[1], cols[2], cols[3].astype(np.float64), cols[4].astype(bool), cols[5].astype(bool),
                cols[6].astype(bool),
            )  # fmt: skip
        else:
            e = np.empty(0, np.int64)
            ev = CycleEvents(e, e, e, np.empty(0), np.empty(0, bool), np.empty(0, bool), np.empty(0, bool))
        latched = self._latched(ev, sig, readings)
        # then the latest value per row for later polls: the last occurrence wins, as in the poll order
        last = last_occurrences(sig)
        self.value[sig[last]] = readings.value[last]
        self.quality[sig[last]] = readings.quality[last]
        return CycleBatch(ev, latched)

    def _round(self, d: NDArray[np.int64], t: NDArray[np.int64], c: NDArray[np.int64]) -> tuple[NDArray, ...]:
        have = self.has_count[d]
        last = self.count[d]
        mod = self.modulus[d]
        raw = c - last
        prev_t = self.last_inc_t[d]
        first = prev_t == _NO_T
        gap = np.where(first, 0, t - prev_t).astype(np.float64)
        # a wrap of a counter with a modulus adds raw + mod cycles: plausible only when they fit into
        # the time since the last increment (a job-counter reset from 40000 to 3 is no 25538 cycles)
        fits = first | ((raw + mod) * self.nominal_ns[d] * _MIN_CYCLE_FRACTION <= gap)
        rollover = have & (raw < 0) & (mod > 0) & (raw + mod < mod // 2) & fits
        reset = have & (raw < 0) & ~rollover
        cycles = np.where(rollover, raw + mod, np.where(reset, c, raw))
        cycles = np.where(have, cycles, 0)
        self.count[d] = c
        self.has_count[d] = True
        moved = cycles > 0
        stop = moved & ~first & (gap > 2.0 * self.nominal_ns[d] * np.maximum(cycles, 1))
        # equal or backward times (jitter, two increments with one source time) measure no cycle time
        timed = moved & ~first & ~stop & (gap > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ct = np.where(timed, gap / np.maximum(cycles, 1) / 1e9, np.nan)
        self.last_inc_t[d] = np.where(moved, np.maximum(t, prev_t), prev_t)
        ev = moved | reset
        return d[ev], t[ev], cycles[ev], ct[ev], stop[ev], reset[ev], rollover[ev]

    def _latched(self, ev: CycleEvents, sig: NDArray[np.int64], readings: Readings) -> Readings:
        """The latched rows' values at each counter increment: the latest sample at or before its time.

        Samples come from this batch (one OPC UA publish may carry several increments of a
        device with their values) or, when the batch has none for a row by then, from earlier ones.
        """
        moved = ev.cycles > 0
        if not moved.any():
            return Readings.empty()
        d, t = ev.device[moved], ev.t_ns[moved]
        rows = self.latched_rows[d]
        tt = np.broadcast_to(t[:, None], rows.shape)
        keep = rows >= 0
        r, tt = rows[keep], tt[keep]
        val, q = self.value[r], self.quality[r]
        if sig.shape[0]:
            # search (row, time) pairs: times as ranks so that one int64 key orders both
            times, rank = np.unique(np.concatenate([readings.t_ns, tt]), return_inverse=True)
            width = times.shape[0] + 1
            key = sig * width + rank[: sig.shape[0]]
            order = np.argsort(key, kind="stable")  # equal keys stay in batch order: the last one wins
            sk = key[order]
            at = np.searchsorted(sk, r * width + rank[sig.shape[0] :], side="right") - 1
            found = at >= 0
            found[found] = sig[order[at[found]]] == r[found]
            src = order[at[found]]
            val, q = val.copy(), q.copy()
            val[found] = readings.value[src]
            q[found] = readings.quality[src]
        ctr = self.cycle_time_row[d]
        has_ct = ctr >= 0
        if has_ct.any():
            ct = ev.cycle_time_s[moved][has_ct]
            r = np.concatenate([r, ctr[has_ct]])
            tt = np.concatenate([tt, t[has_ct]])
            val = np.concatenate([val, ct])
            q = np.concatenate(
                [q, np.where(np.isnan(ct), np.uint8(Quality.BAD_VALUE), np.uint8(Quality.GOOD))]
            )
        return Readings.of(r, tt, val, q)


@dataclass(frozen=True, slots=True)
class TraceCycles:
    """Completed cycles cut from continuous traces: one entry per cycle."""

    channel: NDArray[np.int64]
    start_ns: NDArray[np.int64]
    end_ns: NDArray[np.int64]
    duration_s: NDArray[np.float64]
    peak: NDArray[np.float64]
    time_to_peak_s: NDArray[np.float64]
    integral: NDArray[np.float64]  # value·seconds, trapezoidal, from the start sample to the end sample

    def __len__(self) -> int:
        return int(self.channel.shape[0])


class TraceSegmenter:
    """Cuts continuous traces (many channels) into cycles by threshold with hysteresis.

    A cycle starts at the first sample >= `on` and ends at the first later sample
    <= `off` (off < on); in between it accumulates peak, time-to-peak and the
    trapezoidal integral. Cycles may span any number of batches. Samples of one
    channel must arrive in time order; NaN samples are skipped.
    """

    def __init__(self, n_channels: int, on: ArrayLike, off: ArrayLike) -> None:
        self.n = n_channels
        self.on = np.broadcast_to(np.asarray(on, np.float64), (n_channels,)).copy()
        self.off = np.broadcast_to(np.asarray(off, np.float64), (n_channels,)).copy()
        if not (self.off < self.on).all():
            raise ValueError(
                "TraceSegmenter: the off threshold must be below the on threshold on every channel"
            )
        self.in_cycle = np.zeros(n_channels, bool)
        self.start_t = np.zeros(n_channels, np.int64)
        self.peak = np.full(n_channels, -np.inf)
        self.peak_t = np.zeros(n_channels, np.int64)
        self.integral = np.zeros(n_channels)
        self.last_t = np.zeros(n_channels, np.int64)
        self.last_v = np.zeros(n_channels)

    def update(self, channel: ArrayLike, t_ns: ArrayLike, value: ArrayLike) -> TraceCycles:
        """Feed samples (channels interleaved in any way, each channel in time order); return completed cycles."""
        ch = np.asarray(channel, np.int64).reshape(-1)
        t = np.broadcast_to(np.asarray(t_ns, np.int64), ch.shape)
        v = np.broadcast_to(np.asarray(value, np.float64), ch.shape)
        check_rows("TraceSegmenter.update channel", ch, self.n)
        ok = ~np.isnan(v)
        order = np.argsort(ch[ok], kind="stable")
        ch, t, v = ch[ok][order], t[ok][order], v[ok][order]
        n = ch.shape[0]
        if n == 0:
            return _no_cycles()
        pos = np.arange(n)
        gstart = np.empty(n, bool)
        gstart[0] = True
        np.not_equal(ch[1:], ch[:-1], out=gstart[1:])
        gfirst = np.maximum.accumulate(np.where(gstart, pos, 0))
        s0 = self.in_cycle[ch].astype(np.int8)
        dec = np.where(v >= self.on[ch], 1, np.where(v <= self.off[ch], 0, -1)).astype(np.int8)
        li = np.maximum.accumulate(np.where(dec >= 0, pos, -1))
        after = np.where(li >= gfirst, dec[np.maximum(li, 0)], s0)
        before = np.empty(n, np.int8)
        before[0] = s0[0]
        before[1:] = after[:-1]
        before = np.where(gstart, s0, before)
        start = (before == 0) & (after == 1)
        end = (before == 1) & (after == 0)
        inside = (after == 1) | end
        # trapezoid from the previous sample; at a batch boundary the previous sample is the carried one
        pt = np.where(gstart, self.last_t[ch], np.roll(t, 1))
        pv = np.where(gstart, self.last_v[ch], np.roll(v, 1))
        piece = np.where(inside & ~start, 0.5 * (v + pv) * (t - pt) / 1e9, 0.0)
        label = np.cumsum(start | gstart) - 1
        out = _no_cycles()
        ins = np.flatnonzero(inside)
        if ins.size:
            lab = label[ins]
            b = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
            last_i = ins[np.r_[b[1:], ins.size] - 1]
            first_i = ins[b]
            c = ch[first_i]
            integ = np.add.reduceat(piece[ins], b)
            pk = np.maximum.reduceat(v[ins], b)
            counts = np.diff(np.r_[b, ins.size])
            at_pk = v[ins] == np.repeat(pk, counts)
            pk_t = np.minimum.reduceat(np.where(at_pk, t[ins], np.iinfo(np.int64).max), b)
            st = t[first_i]
            cont = ~start[first_i]
            if cont.any():
                cc = c[cont]
                integ[cont] += self.integral[cc]
                st[cont] = self.start_t[cc]
                keep_old = self.peak[cc] >= pk[cont]
                pk[cont] = np.where(keep_old, self.peak[cc], pk[cont])
                pk_t[cont] = np.where(keep_old, self.peak_t[cc], pk_t[cont])
            ended = end[last_i]
            if ended.any():
                e_t = t[last_i][ended]
                out = TraceCycles(
                    c[ended], st[ended], e_t, (e_t - st[ended]) / 1e9, pk[ended],
                    (pk_t[ended] - st[ended]) / 1e9, integ[ended],
                )  # fmt: skip
            open_ = ~ended
            oc = c[open_]
            self.start_t[oc], self.peak[oc], self.peak_t[oc] = st[open_], pk[open_], pk_t[open_]
            self.integral[oc] = integ[open_]
        glast = np.r_[np.flatnonzero(gstart)[1:], n] - 1
        cl = ch[glast]
        self.in_cycle[cl] = after[glast] == 1
        self.last_t[cl], self.last_v[cl] = t[glast], v[glast]
        return out


def _no_cycles() -> TraceCycles:
    e = np.empty(0, np.int64)
    f = np.empty(0)
    return TraceCycles(e, e, e, f, f, f, f)
