"""OEE per ISO 22400-2 for many machines at once: availability, performance (effectiveness), quality, OEE."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core._batch import check_rows, occurrence_rounds
from edge_agent.core.spc import NoData

_NO_T = np.iinfo(np.int64).min


class OeeAccumulator:
    """Accumulates, per machine and period (e.g. a shift), APT, PQ and GQ from state and part counters.

    ISO 22400-2: PBT = POT - PDOT; availability = APT/PBT; effectiveness = PRI·PQ/APT
    with PRI = ideal cycle time / cavities; quality rate = GQ/PQ; OEE = the product.
    The interval between two updates of a machine counts as APT when the machine
    was producing at its start, except a stop: once no part has come for `stop_gap_s`
    (2x the nominal cycle), the time after that is not APT until the parts counter
    moves again at a plausible rate (DOMAIN.md §1, §5). A machine without a parts
    counter has only its polls: an interval longer than `stop_gap_s` is not counted.
    A negative counter step is a reset: the new counter value is the count since the
    reset. An update stamped before the machine's latest one is ignored.
    """

    def __init__(
        self,
        n_machines: int,
        ideal_cycle_s: ArrayLike,
        cavities: ArrayLike = 1,
        stop_gap_s: ArrayLike = np.inf,
    ) -> None:
        M = n_machines
        self.n = M
        self.ideal = np.broadcast_to(np.asarray(ideal_cycle_s, np.float64), (M,)).copy()
        self.cavities = np.broadcast_to(np.asarray(cavities, np.float64), (M,)).copy()
        self.stop_gap_ns = np.broadcast_to(np.asarray(stop_gap_s, np.float64) * 1e9, (M,)).copy()
        if not ((self.ideal > 0).all() and (self.cavities >= 1).all() and (self.stop_gap_ns > 0).all()):
            raise ValueError(
                "OeeAccumulator: ideal_cycle_s > 0, cavities >= 1 and stop_gap_s > 0 are required"
            )
        self.period_start = np.full(M, -1, np.int64)
        self.pdot_s = np.zeros(M)
        self.apt_ns = np.zeros(M)
        self.pq = np.zeros(M)
        self.gq = np.zeros(M)
        self.last_t = np.full(M, -1, np.int64)
        self.last_producing = np.zeros(M, bool)
        self.last_known = np.ones(M, bool)  # the state at the latest update was known
        self.last_parts = np.full(M, np.nan)
        self.last_good = np.full(M, np.nan)
        self.last_step = np.zeros(M)  # parts the latest update counted (0: mid-cycle)
        self.last_inc_t = np.full(M, _NO_T, np.int64)  # time of the latest part (or first counter reading)

    def start_period(self, machines: ArrayLike, t_ns: ArrayLike, planned_downtime_s: ArrayLike = 0.0) -> None:
        """Begin a new period at `t_ns` (counter baselines are kept, so no part is lost between periods)."""
        m = np.asarray(machines, np.int64).reshape(-1)
        check_rows("OeeAccumulator.start_period machines", m, self.n)
        self.period_start[m] = t_ns
        self.pdot_s[m] = planned_downtime_s
        self.apt_ns[m] = 0.0
        self.pq[m] = 0.0
        self.gq[m] = 0.0
        self.last_t[m] = np.where(self.last_t[m] >= 0, np.maximum(self.last_t[m], t_ns), -1)

    def roll_period(
        self, machines: ArrayLike, t_ns: int, planned_downtime_s: ArrayLike = 0.0
    ) -> NDArray[np.bool_]:
        """Start a new period for those of `machines` at a cycle boundary now; return which did.

        A producing machine's period starts just after a part (its latest update counted one):
        started mid-cycle, the first part would be counted against a fraction of its cycle and
        performance would read above 1, and the part that ends a period stays that period's, with
        its time. A machine that is not producing, or has never read its counter, starts at once.
        """
        m = np.asarray(machines, np.int64).reshape(-1)
        check_rows("OeeAccumulator.roll_period machines", m, self.n)
        ready = (self.last_step[m] > 0) | ~self.last_producing[m] | np.isnan(self.last_parts[m])
        pdot = np.broadcast_to(np.asarray(planned_downtime_s, np.float64), m.shape)
        self.start_period(m[ready], t_ns, pdot[ready])
        return ready

    def add_planned_downtime(self, machines: ArrayLike, seconds: ArrayLike) -> None:
        """Add planned downtime (breaks, planned maintenance) to the current period."""
        m = np.asarray(machines, np.int64).reshape(-1)
        np.add.at(self.pdot_s, m, np.broadcast_to(np.asarray(seconds, np.float64), m.shape))

    def update(
        self, machine: ArrayLike, t_ns: ArrayLike, producing: ArrayLike, parts: ArrayLike, good: ArrayLike
    ) -> None:
        """Feed polls (machines may repeat, in time order); NaN counters are skipped for counting only.

        `producing` is True/False, or NaN where the machine's state is unknown (not configured,
        not read yet, read bad): an interval that starts unknown is neither running time nor lost
        availability, so it is added to the period's planned downtime (it leaves PBT).
        """
        m = np.asarray(machine, np.int64).reshape(-1)
        check_rows("OeeAccumulator.update machine", m, self.n)
        k = m.shape[0]
        t = np.broadcast_to(np.asarray(t_ns, np.int64), (k,))
        prod = np.broadcast_to(np.asarray(producing, np.float64), (k,))
        pa = np.broadcast_to(np.asarray(parts, np.float64), (k,))
        gd = np.broadcast_to(np.asarray(good, np.float64), (k,))
        for i in occurrence_rounds(m):
            self._round(m[i], t[i], prod[i], pa[i], gd[i])

    def _round(
        self,
        m: NDArray[np.int64],
        t: NDArray[np.int64],
        prod: NDArray[np.float64],
        pa: NDArray[np.float64],
        gd: NDArray[np.float64],
    ) -> None:
        lt = self.last_t[m]
        # a poll stamped before the machine's latest one (a late batch) is stale: it would count its
        # interval twice and read as a counter reset
        fresh = (lt < 0) | (t >= lt)
        if not fresh.all():
            m, t, prod, pa, gd, lt = m[fresh], t[fresh], prod[fresh], pa[fresh], gd[fresh], lt[fresh]
        dt = (t - lt).astype(np.float64)
        gap = self.stop_gap_ns[m]
        step = _counter_step(self.last_parts[m], pa)
        li = self.last_inc_t[m]
        # running time of the interval. With a counter: all of it while parts come at a plausible rate
        # (no more than the stop gap per cycle), else only up to the stop gap after the last part: a
        # longer silence is a stop, however often the machine is polled. Without a counter, an
        # interval longer than the stop gap is a hole in the polls and not counted
        cycles = np.maximum(step / self.cavities[m], 1.0)
        steady = (step > 0) & ((t - li) <= gap * cycles)
        after_last = np.clip((li - lt).astype(np.float64) + gap, 0.0, dt)
        run = np.where(li != _NO_T, np.where(steady, dt, after_last), np.where(dt <= gap, dt, 0.0))
        in_period = (lt >= 0) & (self.period_start[m] >= 0) & (dt > 0)
        self.apt_ns[m] += np.where(in_period & self.last_producing[m], run, 0.0)
        self.pdot_s[m] += np.where(in_period & ~self.last_known[m], dt / 1e9, 0.0)
        # the counter's clock starts at its first reading and restarts with every part
        first_reading = np.isnan(self.last_parts[m]) & ~np.isnan(pa)
        self.last_inc_t[m] = np.where((step > 0) | first_reading, t, li)
        self.last_step[m] = step
        self.pq[m] += step * (self.period_start[m] >= 0)
        self.gq[m] += _counter_step(self.last_good[m], gd) * (self.period_start[m] >= 0)
        self.last_parts[m] = np.where(np.isnan(pa), self.last_parts[m], pa)
        self.last_good[m] = np.where(np.isnan(gd), self.last_good[m], gd)
        self.last_t[m] = t
        self.last_known[m] = ~np.isnan(prod)
        self.last_producing[m] = prod == 1.0

    def result(self, t_ns: int, machines: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """KPIs of the current period up to `t_ns`; NaN with reason NO_SAMPLES / TOO_FEW where a denominator is 0."""
        m = np.arange(self.n) if machines is None else np.asarray(machines, np.int64).reshape(-1)
        started = self.period_start[m] >= 0
        pot = np.where(started, (t_ns - self.period_start[m]) / 1e9, np.nan)
        pbt = pot - self.pdot_s[m]
        apt = self.apt_ns[m] / 1e9
        pq, gq = self.pq[m], self.gq[m]
        pri = self.ideal[m] / self.cavities[m]
        with np.errstate(invalid="ignore", divide="ignore"):
            avail = np.where(pbt > 0, apt / pbt, np.nan)
            perf = np.where(apt > 0, pri * pq / apt, np.nan)
            qual = np.where(pq > 0, gq / pq, np.nan)
        oee = avail * perf * qual
        reason = np.where(
            ~started, NoData.NO_SAMPLES, np.where(np.isnan(oee), NoData.TOO_FEW, NoData.OK)
        ).astype(np.uint8)
        return {
            "machine": m,
            "pot_s": pot,
            "pbt_s": pbt,
            "apt_s": apt,
            "pq": pq.copy(),
            "gq": gq.copy(),
            "availability": avail,
            "performance": perf,
            "quality": qual,
            "oee": oee,
            "reason": reason,
        }


def _counter_step(last: NDArray[np.float64], now: NDArray[np.float64]) -> NDArray[np.float64]:
    """Parts added between two counter readings; a negative step is a reset (count since the reset)."""
    step = now - last
    out = np.where(step < 0, now, step)
    return np.where(np.isnan(out), 0.0, out)
