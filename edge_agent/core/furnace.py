"""Heat-treatment furnace indicators (DOMAIN.md §4), vectorized across sensors and furnaces."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core import constants as C
from edge_agent.core._batch import check_rows


def ams2750_tolerance(furnace_class: ArrayLike) -> NDArray[np.float64]:
    """Uniformity tolerance (±°C) of AMS2750F furnace classes 1-6; ValueError names an unknown class."""
    cls = np.asarray(furnace_class, np.int64).reshape(-1)
    bad = ~np.isin(cls, list(C.AMS2750_TOLERANCE_C))
    if bad.any():
        raise ValueError(f"AMS2750 furnace class {int(cls[bad][0])} is unknown; use a class from 1 to 6")
    return np.array([C.AMS2750_TOLERANCE_C[int(c)] for c in cls])


@dataclass(frozen=True, slots=True)
class FurnaceStatus:
    """One scan's indicators: per sensor (deviation, valid, in band) and per furnace (the rest). NaN = no data."""

    deviation: NDArray[np.float64]  # T_i - SP, NaN for invalid sensors
    valid: NDArray[np.bool_]  # finite, in the plausible range, near its furnace's median (TC burnout / short)
    in_band: NDArray[np.bool_]  # valid and |e_i| <= tolerance
    spread: NDArray[np.float64]  # max_i T - min_i T over valid sensors
    all_in_band: NDArray[np.bool_]  # every sensor valid and in band
    soak_s: NDArray[np.float64]
    ramp_c_per_min: NDArray[np.float64]  # least-squares slope over the ramp window, one offset per sensor
    overshoot_c: NDArray[
        np.float64
    ]  # beyond SP after first crossing it: max T - SP heating, SP - min T cooling
    time_to_temp_s: NDArray[np.float64]  # from the setpoint change to all sensors in band, NaN until then


class FurnaceMonitor:
    """Deviation, uniformity spread, in-band check, soak timer, ramp rate, overshoot, time to temperature, quench delay.

    `sensor_furnace[i]` is the furnace of sensor i and must be sorted (each furnace's
    sensors together). A sensor is invalid when it is NaN, outside `valid_range_c` or
    further than `max_dev_c` from the median of its furnace's in-range sensors (a
    thermocouple burning out jumps upscale or to ambient, away from its neighbours,
    while a fast ramp moves all sensors together); invalid sensors count as out of
    band, so the soak timer stops. `soak_policy` says whether an excursion pauses or resets it.
    """

    def __init__(
        self,
        sensor_furnace: ArrayLike,
        tolerance_c: ArrayLike,
        soak_policy: Literal["pause", "reset"] = "pause",
        ramp_window_s: float = 180.0,
        ramp_capacity: int = 64,
        valid_range_c: tuple[float, float] = (-50.0, 1400.0),
        max_dev_c: float = 50.0,
    ) -> None:
        sf = np.asarray(sensor_furnace, np.int64).reshape(-1)
        if sf.size == 0 or (np.diff(sf) < 0).any() or sf[0] < 0:
            raise ValueError(
                "FurnaceMonitor: sensor_furnace must be non-empty, >= 0 and sorted (group each furnace's sensors)"
            )
        if soak_policy not in ("pause", "reset"):
            raise ValueError(f"FurnaceMonitor: soak_policy must be 'pause' or 'reset', got {soak_policy!r}")
        F = int(sf.max()) + 1
        if (np.bincount(sf, minlength=F) == 0).any():
            raise ValueError("FurnaceMonitor: every furnace 0..max needs at least one sensor")
        self.sf, self.n_furnaces, self.n_sensors = sf, F, sf.size
        self.first = np.flatnonzero(np.r_[True, sf[1:] != sf[:-1]])
        self.tol = np.broadcast_to(np.asarray(tolerance_c, np.float64), (F,)).copy()
        self.reset_on_excursion = soak_policy == "reset"
        self.ramp_window_ns = ramp_window_s * 1e9
        self.vmin, self.vmax = valid_range_c
        self.max_dev = max_dev_c
        # padded [furnace, slot] layout for the per-furnace median
        self.slot = np.arange(self.n_sensors) - self.first[sf]
        self.pad_shape = (F, int(self.slot.max()) + 1)
        self.sp = np.full(F, np.nan)
        self.last_mean = np.full(F, np.nan)  # mean of the valid sensors at the last scan that had one
        self.sp_t = np.zeros(F, np.int64)
        self.last_t = np.full(F, -1, np.int64)
        self.was_in_band = np.zeros(F, bool)
        self.soak_ns = np.zeros(F)
        self.crossed = np.zeros(F, bool)
        self.rising = np.ones(F, bool)  # direction of the current approach
        self.approaching = np.zeros(F, bool)  # a setpoint was seen (the first one starts an approach)
        self.overshoot = np.zeros(F)
        self.ttt = np.full(F, np.nan)
        if ramp_capacity < 2 or not ramp_window_s > 0:
            raise ValueError("FurnaceMonitor: ramp_capacity must be >= 2 and ramp_window_s > 0")
        self.ramp_bucket_ns = max(1, int(self.ramp_window_ns // (ramp_capacity - 1)))
        self.rb_t = np.zeros(ramp_capacity, np.int64)  # one scan time for every furnace's sensors
        self.rb_v = np.full((self.n_sensors, ramp_capacity), np.nan)  # valid sensors' temperatures
        self.door_t = np.full(F, -1, np.int64)

    def update(self, t_ns: int, temps: ArrayLike, setpoint: ArrayLike) -> FurnaceStatus:
        """One scan of every sensor at `t_ns` with the current setpoint of every furnace."""
        T = np.asarray(temps, np.float64).reshape(-1)
        if T.size != self.n_sensors:
            raise ValueError(f"FurnaceMonitor.update: got {T.size} temperatures for {self.n_sensors} sensors")
        sp_in = np.broadcast_to(np.asarray(setpoint, np.float64), (self.n_furnaces,))
        # a bad setpoint read (NaN) changes nothing: the last good setpoint still applies
        sp = np.where(np.isfinite(sp_in), sp_in, self.sp)
        f = self.sf
        with np.errstate(invalid="ignore"):
            in_range = np.isfinite(T) & (self.vmin <= T) & (self.vmax >= T)
            pad = np.full(self.pad_shape, np.nan)
            pad[f, self.slot] = np.where(in_range, T, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", RuntimeWarning
                )  # a furnace with no sensor in range: median NaN
                med = np.nanmedian(pad, axis=1)
            valid = in_range & (np.abs(T - med[f]) <= self.max_dev)
            # two sensors have no majority: their median is their mean, so when one burns out neither
            # passes; the one nearer the furnace's previous mean is the one still following it
            pair = (np.add.reduceat(in_range.astype(np.int64), self.first) == 2) & np.isfinite(self.last_mean)
            split = pair & ~np.logical_or.reduceat(valid, self.first)
            if split.any():
                dist = np.where(in_range, np.abs(T - self.last_mean[f]), np.inf)
                nearest = dist == np.minimum.reduceat(dist, self.first)[f]
                alone = np.add.reduceat(nearest.astype(np.int64), self.first) == 1  # a tie decides nothing
                valid |= split[f] & alone[f] & nearest
        nvalid = np.add.reduceat(valid.astype(np.int64), self.first)
        mean = np.where(
            nvalid > 0, np.add.reduceat(np.where(valid, T, 0.0), self.first) / np.maximum(nvalid, 1), np.nan
        )
        self.last_mean = np.where(np.isfinite(mean), mean, self.last_mean)
        changed = np.isfinite(sp) & ~(sp == self.sp)
        if changed.any():
            # a new setpoint restarts the soak and the time to temperature; it starts a new approach
            # (overshoot measured afresh) unless it continues a ramp in the same direction: a furnace
            # that runs ahead of its ramp overshoots during the ramp, and that counts
            up = sp > self.sp
            down = sp < self.sp
            continues = changed & self.approaching & ((self.rising & up) | (~self.rising & down))
            fresh = changed & ~continues
            self.sp_t[fresh] = t_ns
            self.crossed[fresh] = False
            self.overshoot[fresh] = 0.0
            # the approach goes from where the furnace is towards the setpoint: heating from below,
            # cooling from above (a step down, or the first setpoint seen while the furnace is above
            # it); its "overshoot" when cooling is how far the furnace undershoots
            # (a furnace exactly at the new setpoint, or without a valid sensor, goes by the setpoint's step)
            toward = np.where(mean < sp, True, np.where(mean > sp, False, ~down))
            self.rising[fresh] = toward[fresh]
            self.approaching[fresh] = True
            self.soak_ns[changed] = 0.0
            self.ttt[changed] = np.nan
            self.was_in_band[changed] = False
            self.sp = sp.copy()
        dev = np.where(valid, T - sp[f], np.nan)
        in_band = valid & (np.abs(dev) <= self.tol[f])
        Tv = np.where(valid, T, np.nan)
        tmax = np.fmax.reduceat(Tv, self.first)
        tmin = np.fmin.reduceat(Tv, self.first)
        spread = tmax - tmin
        all_in = np.logical_and.reduceat(in_band, self.first)
        # soak: the interval since the last scan counts when the furnace was in band at both ends; a
        # scan stamped before the last one (batches of two scan classes out of order) adds nothing
        dt = np.where(self.last_t >= 0, np.maximum(t_ns - self.last_t, 0), 0).astype(np.float64)
        self.soak_ns += np.where(all_in & self.was_in_band, dt, 0.0)
        if self.reset_on_excursion:
            self.soak_ns[~all_in] = 0.0
        first_in = all_in & np.isnan(self.ttt)
        self.ttt[first_in] = (t_ns - self.sp_t[first_in]) / 1e9
        self.was_in_band = all_in
        self.last_t[:] = np.maximum(self.last_t, t_ns)
        with np.errstate(invalid="ignore"):
            self.crossed |= np.where(self.rising, tmax >= sp, tmin <= sp)
            beyond = np.where(self.rising, tmax - sp, sp - tmin)
            self.overshoot = np.where(self.crossed, np.fmax(self.overshoot, beyond), self.overshoot)
        ramp = self._ramp(t_ns, Tv)
        return FurnaceStatus(
            dev,
            valid,
            in_band,
            spread,
            all_in,
            self.soak_ns / 1e9,
            ramp,
            self.overshoot.copy(),
            self.ttt.copy(),
        )

    def _ramp(self, t_ns: int, Tv: NDArray[np.float64]) -> NDArray[np.float64]:
        """Least-squares slope (°C/min) of each furnace's temperature over the ramp window, NaN for valid-sensor-less furnaces.

        One slope for all of a furnace's sensors with an offset each (the pooled within-sensor
        fit): a sensor that turns invalid or comes back changes which points are fitted, not the
        level they are fitted at, where the slope of the furnace mean would jump by its offset.
        """
        # one slot per time bucket of window/(capacity - 1), the newest scan of a bucket kept: the fit
        # spans the whole window however often update() is called (polls, subscription batches)
        slot = (t_ns // self.ramp_bucket_ns) % self.rb_t.shape[0]
        self.rb_t[slot] = t_ns
        self.rb_v[:, slot] = Tv
        use = np.isfinite(self.rb_v) & (self.rb_t >= t_ns - self.ramp_window_ns)
        n = use.sum(1)
        ts = np.where(use, (self.rb_t - t_ns) / 60e9, 0.0)  # minutes, relative to now for conditioning
        vs = np.where(use, self.rb_v, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mt, mv = ts.sum(1) / n, vs.sum(1) / n
        dt = np.where(use, ts - mt[:, None], 0.0)
        dv = np.where(use, vs - mv[:, None], 0.0)
        sxy = np.add.reduceat((dt * dv).sum(1), self.first)
        sxx = np.add.reduceat((dt * dt).sum(1), self.first)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sxx > 0, sxy / sxx, np.nan)

    def door_open(self, furnaces: ArrayLike, t_ns: int) -> None:
        """Record the door opening that starts a transfer to quench."""
        m = np.asarray(furnaces, np.int64).reshape(-1)
        check_rows("FurnaceMonitor.door_open furnaces", m, self.n_furnaces)
        self.door_t[m] = t_ns

    def quench(self, furnaces: ArrayLike, t_ns: int) -> NDArray[np.float64]:
        """Quench delay in s (t(quench) - t(door open)); NaN where no door opening was recorded."""
        m = np.asarray(furnaces, np.int64).reshape(-1)
        check_rows("FurnaceMonitor.quench furnaces", m, self.n_furnaces)
        d = self.door_t[m]
        out = np.where(d >= 0, (t_ns - d) / 1e9, np.nan)
        self.door_t[m] = -1
        return out
