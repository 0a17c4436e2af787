"""Benchmark of the indicator core: per-tick updates of the full SPC suite at S signals, side by side with pure Python and pandas.

Per tick every signal gets one new sample and every per-sample indicator is updated
(rolling mean/sd/min/max, I-MR, X̄-R and X̄-S with subgroups of 5, Western Electric
and Nelson rules, EWMA, CUSUM, spec limits, alarm tracking). Capability indices are
published every `--capability-every` ticks: the timed loop calls snapshot() at that
rate, so its cost is inside the tick time.
The tick time is the mean over a run of `--ticks` consecutive ticks (the median of
`--repeats` runs): it counts every kind of tick in its proportion, those that complete a
subgroup (1 in 5), end a pass over the window (1 in 50) or publish a snapshot (1 in 100);
samples_per_s is based on it. median_tick_ms is the median single tick without a snapshot.
With --compare-with the two engines' runs alternate (A, B, A, B, ...), on the same data, so a
change in a shared machine's load hits both columns alike.
The engine is measured in steady state: `--warmup` ticks first finish phase I and let the
EWMA limits reach their asymptote. It has no Python loop per value or per signal: whole-array
numpy passes, plus short loops over window slots, subgroup slots and row blocks (see the
docstring of edge_agent/core/spc.py).
The pure-Python reference (tests/core_reference.py) and pandas run on a subset of
signals and ticks (they are slow) and are normalized per sample. pandas computes the
same statistics in one batch over the whole block (rolling mean/std/min/max, ewm,
rolling zone counts for the rules, moving ranges) plus a row loop for the recursive
CUSUM: a batch is pandas' best case, the engine works tick by tick.

`--traces` runs the trace row instead: per-cycle indicators of S forging strokes of 720 points
(0.5° of crank angle) in one batch (edge_agent/core/traces.py: peak and its angle, % of rated,
reverse load, % of a capacity-vs-height curve, energy, deviation from a reference signature in
four crank-angle windows), against the pure-Python reference (tests/traces_reference.py) on
`--ref-traces` strokes in the same run, per sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_agent.core.spc import SpcEngine, SpcParams
from edge_agent.types import Readings
from tests import traces_reference as tref
from tests.core_reference import RefSpc

PARAMS = dict(window=50, phase1_n=50, subgroup_n=5, lsl=-4.0, usl=4.0)


class EngineRun:
    """One engine with the full suite in steady state, timed in runs of consecutive ticks."""

    def __init__(self, engine: type, S: int, warmup: int, cap_every: int, shuffled: bool, seed: int) -> None:
        self.eng = engine(S, SpcParams(**PARAMS), max_window=50)
        self.S, self.cap_every = S, cap_every
        self.rng = np.random.default_rng(seed)
        self.sig = np.arange(S, dtype=np.int32)
        self.q = np.zeros(S, np.uint8)
        # fresh values every tick (drawn outside the timed region): a short repeating block would put
        # ties in the window that no real signal has
        for i in range(warmup):
            self.eng.update(Readings(self.sig, np.full(S, i, np.int64), self.rng.standard_normal(S), self.q))
        if shuffled:
            self.sig = self.rng.permutation(S).astype(np.int32)
        self.tick = warmup
        self.run_means: list[float] = []
        self.single: list[float] = []

    def run(self, ticks: int) -> None:
        """Time `ticks` consecutive ticks (a snapshot every cap_every of them, inside the timing)."""
        total = 0.0
        for i in range(ticks):
            r = Readings(
                self.sig, np.full(self.S, self.tick, np.int64), self.rng.standard_normal(self.S), self.q
            )
            self.tick += 1
            start = time.perf_counter()
            self.eng.update(r)
            snap = i % self.cap_every == self.cap_every - 1
            if snap:
                self.eng.snapshot()
            elapsed = time.perf_counter() - start
            total += elapsed
            if not snap:
                self.single.append(elapsed)
        self.run_means.append(total / ticks)

    def result(self) -> dict[str, float]:
        """Median run mean, median single tick without a snapshot, state bytes per signal."""
        return {
            "tick_s": statistics.median(self.run_means),
            "median_tick_s": statistics.median(self.single),
            "state_bytes_per_signal": self.eng.state_bytes() / self.S,
        }


class StateFloor:
    """The memory floor of a full tick: one in-place numpy pass over each per-row array a steady-state tick touches, nothing else.

    A full tick of the engine (lockstep ring, phase II, settled EWMA, spec limits, subgroups of 5)
    reads and writes these per-row arrays: 8 float64 read-modify-write (window s1 and s2, ring-pass
    min and max, moving-range sum, EWMA, C+ and C-), 6 float64 read-only (the evicted and the
    previous ring slot, window reference, centre line, sigma, MR limit), the evicted slot and the
    last time written (float64, int64), 2 int32 CUSUM run counters, 10 uint8 rule histories and run
    counters, 3 uint8 mask bytes. The rest of the engine's state is allocated too and touched
    between ticks, so the arrays come from the same cache level as the engine's. The ratio of the
    engine's tick to this one says how many state sweeps' worth of work a tick does.
    """

    def __init__(self, S: int, state_bytes: int, seed: int) -> None:
        self.S = S
        self.rng = np.random.default_rng(seed)
        self.buf = np.zeros((50, S))
        self.rmw = [np.zeros(S) for _ in range(8)]
        self.ro = [self.rng.random(S) for _ in range(5)]
        self.last_t = np.zeros(S, np.int64)
        self.i32 = [np.zeros(S, np.int32) for _ in range(2)]
        self.u8 = [np.zeros(S, np.uint8) for _ in range(10)]
        self.mask = np.zeros((3, S), np.uint8)
        used = self.buf.nbytes + 8 * S * 14 + 4 * S * 2 + S * 13
        self.rest = np.zeros(max(0, state_bytes - used) // 8)
        self.acc = np.zeros(S)
        self.tick = 0
        self.run_means: list[float] = []

    def run(self, ticks: int) -> None:
        """Time `ticks` floor ticks; the rest of the state is swept between them, outside the timing."""
        total = 0.0
        part = max(1, self.rest.shape[0] // 50)
        for _ in range(ticks):
            x = self.rng.standard_normal(self.S)
            t = np.full(self.S, self.tick, np.int64)
            p = self.tick % 50
            start = time.perf_counter()
            np.subtract(x, self.buf[p], out=self.acc)
            np.add(self.acc, self.buf[p - 1], out=self.acc)
            self.buf[p] = x
            for a in self.ro:
                self.acc += a
            for a in self.rmw:
                a += x
            self.last_t[:] = t
            for b in self.i32:
                b += 1
            for u in self.u8:
                u += 1
            self.mask[:] = 0
            total += time.perf_counter() - start
            # the engine's other state (suffix extremes, subgroup and capability sums, alarms) moves
            # through the caches too: a share of it per tick
            self.rest[(self.tick % 50) * part : (self.tick % 50 + 1) * part] += 1.0
            self.tick += 1
        self.run_means.append(total / ticks)


def bench_python(S: int, ticks: int, seed: int) -> float:
    """Samples per second of the pure-Python reference (same parameters, same warm-up)."""
    refs = [RefSpc(window=50, phase1_n=50, sub_n=5, lsl=-4.0, usl=4.0) for _ in range(S)]
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((ticks + 55, S)).tolist()
    for row in data[:55]:
        for r, x in zip(refs, row, strict=True):
            r.add(x)
    start = time.perf_counter()
    for row in data[55:]:
        for r, x in zip(refs, row, strict=True):
            r.add(x)
    return S * ticks / (time.perf_counter() - start)


def bench_pandas(S: int, ticks: int, seed: int) -> float:
    """Samples per second of the same statistics in pandas (batch over a [ticks, S] block)."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.standard_normal((ticks, S)))
    start = time.perf_counter()
    cl, sigma, lam = 0.0, 1.0, 0.2
    roll = x.rolling(50, min_periods=1)
    out = [roll.mean(), roll.std(), roll.min(), roll.max()]
    mr = x.diff().abs()
    out.append(mr.rolling(50, min_periods=1).mean())
    out.append(x.ewm(alpha=lam, adjust=False).mean())
    z = (x - cl) / sigma
    for lim, n in ((2, 3), (1, 5)):
        out.append((z > lim).rolling(n, min_periods=1).sum() >= n - 1)
        out.append((z < -lim).rolling(n, min_periods=1).sum() >= n - 1)
    for n in (8, 9):
        out.append((z > 0).rolling(n).sum() == n)
        out.append((z < 0).rolling(n).sum() == n)
    d = x.diff()
    out.append((d > 0).rolling(5).sum() == 5)
    out.append((d < 0).rolling(5).sum() == 5)
    sign = np.sign(d)
    out.append((sign * sign.shift(1) < 0).rolling(13).sum() == 13)
    out.append((z.abs() <= 1).rolling(15).sum() == 15)
    out.append((z.abs() > 1).rolling(8).sum() == 8)
    grp = x.groupby(np.arange(ticks) // 5)
    out += [grp.mean(), grp.max() - grp.min(), grp.std()]
    # CUSUM is recursive: no pandas primitive, one numpy step per row
    xv = x.to_numpy()
    cp = np.zeros(S)
    cn = np.zeros(S)
    for row in xv:
        cp = np.maximum(0.0, row - (cl + 0.5) + cp)
        cn = np.maximum(0.0, (cl - 0.5) - row + cn)
    elapsed = time.perf_counter() - start
    assert len(out) > 10
    return S * ticks / elapsed


TRACE_POINTS = 720
TRACE_WINDOWS = [(150.0, 170.0), (170.0, 180.0), (180.0, 190.0), (190.0, 210.0)]


def forging_strokes(S: int, rng: np.random.Generator) -> np.ndarray:
    """S force signatures over 0..359.5° (TDC 0°): load from touch to a peak near BDC, a reverse lobe after, noise."""
    angle = np.arange(TRACE_POINTS) * 360.0 / TRACE_POINTS
    peak = rng.uniform(6000.0, 7000.0, (S, 1))
    at = rng.uniform(175.0, 179.0, (S, 1))
    rise = np.clip((angle - (at - 25.0)) / 25.0, 0, None) ** 3 * (angle <= at)
    fall = np.exp(-(((angle - at) / 3.0) ** 2)) * (angle > at)
    lobe = -0.06 * np.exp(-(((angle - at - 10.0) / 3.0) ** 2))
    return peak * (rise + fall + lobe) + rng.normal(0.0, 30.0, (S, TRACE_POINTS))


def bench_traces(a: argparse.Namespace) -> None:
    """The trace row: S strokes of 720 points per batch, samples/s and the ratio against pure Python."""
    from edge_agent.core import traces as T

    rng = np.random.default_rng(a.seed)
    angle = np.arange(TRACE_POINTS) * 360.0 / TRACE_POINTS
    height = T.ram_height(angle, 200.0, 800.0)
    cap_h, cap = T.mechanical_capacity_curve(10_000.0, 12.7, 200.0, 800.0)
    reference = T.reference_curve(forging_strokes(50, rng))

    def suite(f: np.ndarray) -> None:
        T.stroke_indicators(f, angle, 10_000.0, height=height, capacity_height=cap_h, capacity=cap)
        T.signature_deviation(f, reference, angle, TRACE_WINDOWS)

    ref_f = forging_strokes(a.ref_traces, rng).tolist()
    lists = (angle.tolist(), height.tolist(), cap_h.tolist(), cap.tolist(), reference.tolist())
    start = time.perf_counter()
    for f in ref_f:
        tref.stroke(f, lists[0], 10_000.0, lists[1], lists[2], lists[3])
        tref.signature(f, lists[4], lists[0], TRACE_WINDOWS)
    py = a.ref_traces * TRACE_POINTS / (time.perf_counter() - start)
    for S in a.trace_counts:
        f = forging_strokes(S, rng)
        suite(f)  # first call: page faults and caches, not the steady state
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            suite(f)
            times.append(time.perf_counter() - start)
        batch_s = statistics.median(times)
        sps = S * TRACE_POINTS / batch_s
        rec = {
            "name": "trace_indicators",
            "traces": S,
            "points": TRACE_POINTS,
            "batch_ms": round(batch_s * 1e3, 3),
            "traces_per_s": round(S / batch_s),
            "samples_per_s": round(sps),
            "python_samples_per_s": round(py),
            "ratio_vs_python": round(sps / py, 1),
            "note": f"stroke_indicators + signature_deviation (4 windows) on one [S, 720] batch, median of "
            f"{a.repeats} runs; python on {a.ref_traces} strokes, per sample",
        }
        if a.json:
            print(orjson.dumps(rec).decode(), flush=True)
        else:
            print(
                f"{'trace_indicators':26s} S={S:>7d} x {TRACE_POINTS} points  batch {rec['batch_ms']:9.3f} ms "
                f"{sps / 1e6:7.2f} M samples/s  {rec['traces_per_s']:>9d} traces/s  "
                f"x{rec['ratio_vs_python']} python",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; --json prints one JSON object per line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--signals", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument(
        "--ticks", type=int, default=100, help="timed ticks per run (a multiple of 100 sees every tick kind)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per size; the median run counts")
    ap.add_argument("--warmup", type=int, default=200, help="ticks before timing (phase I is 50)")
    ap.add_argument(
        "--compare-with",
        type=Path,
        help="another spc.py (e.g. from `git show REV:edge_agent/core/spc.py`) measured in the same run",
    )
    ap.add_argument("--capability-every", type=int, default=100, help="ticks between capability snapshots")
    ap.add_argument("--ref-signals", type=int, default=200, help="signals for the Python/pandas comparison")
    ap.add_argument("--ref-ticks", type=int, default=200, help="ticks for the Python/pandas comparison")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--traces", action="store_true", help="run the trace row (S strokes of 720 points) only")
    ap.add_argument("--trace-counts", type=int, nargs="+", default=[1_000, 10_000], help="S of the trace row")
    ap.add_argument(
        "--ref-traces", type=int, default=100, help="strokes for the trace row's Python reference"
    )
    a = ap.parse_args(argv)
    if a.traces:
        bench_traces(a)
        return
    py = bench_python(a.ref_signals, a.ref_ticks, a.seed)
    pdr = bench_pandas(max(a.ref_signals, 1000), max(a.ref_ticks, 1000), a.seed)
    engines: list[tuple[str, type]] = [("current", SpcEngine)]
    if a.compare_with:
        spec = importlib.util.spec_from_file_location("spc_compare", a.compare_with)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["spc_compare"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        engines.append((str(a.compare_with), mod.SpcEngine))
    for S in a.signals:
        for shuffled in (False, True):
            runs = [
                EngineRun(engine, S, a.warmup, a.capability_every, shuffled, a.seed) for _, engine in engines
            ]
            floor = None if shuffled else StateFloor(S, runs[0].eng.state_bytes(), a.seed)
            # the engines' runs alternate, so a change in the machine's load hits both columns alike
            for _ in range(a.repeats):
                for run in runs:
                    run.run(a.ticks)
                if floor is not None:
                    floor.run(a.ticks)
            for (label, _), run in zip(engines, runs, strict=True):
                report(a, label, S, shuffled, run.result(), py, pdr)
            if floor is not None:
                report_floor(a, S, statistics.median(floor.run_means), runs[0].result()["tick_s"])
            del runs, floor


def report(
    a: argparse.Namespace, label: str, S: int, shuffled: bool, e: dict[str, float], py: float, pdr: float
) -> None:
    """Print one result line (JSON with --json)."""
    sps = S / e["tick_s"]
    rec = {
        "name": "full_suite" if not shuffled else "full_suite_shuffled_rows",
        "engine": label,
        "signals": S,
        "ticks": a.ticks * a.repeats,
        "tick_ms": round(e["tick_s"] * 1e3, 3),
        "median_tick_ms": round(e["median_tick_s"] * 1e3, 3),
        "samples_per_s": round(sps),
        "state_bytes_per_signal": round(e["state_bytes_per_signal"]),
        "python_samples_per_s": round(py),
        "pandas_samples_per_s": round(pdr),
        "ratio_vs_python": round(sps / py, 1),
        "ratio_vs_pandas": round(sps / pdr, 2),
        "note": (
            f"tick_ms: mean over {a.ticks} consecutive ticks (every tick kind, a capability snapshot "
            f"every {a.capability_every}), median of {a.repeats} runs, after {a.warmup} warm-up ticks; "
            f"python on {a.ref_signals} signals x {a.ref_ticks} ticks, pandas batch on "
            f"{max(a.ref_signals, 1000)} x {max(a.ref_ticks, 1000)}, both per sample"
        ),
    }
    if a.json:
        print(orjson.dumps(rec).decode(), flush=True)
    else:
        print(
            f"{rec['name']:26s} {label[-20:]:>20s} S={S:>7d} tick {rec['tick_ms']:8.3f} ms "
            f"(median {rec['median_tick_ms']:.3f}) {sps / 1e6:7.2f} M samples/s  x{rec['ratio_vs_python']} "
            f"python  x{rec['ratio_vs_pandas']} pandas  {rec['state_bytes_per_signal']} B/signal",
            flush=True,
        )


def report_floor(a: argparse.Namespace, S: int, floor_s: float, engine_s: float) -> None:
    """Print the state-floor line: its tick, and the engine's tick (first engine) as a multiple of it, from the same run."""
    rec = {
        "name": "state_floor",
        "signals": S,
        "tick_ms": round(floor_s * 1e3, 3),
        "samples_per_s": round(S / floor_s),
        "engine_tick_over_floor": round(engine_s / floor_s, 2),
        "note": "one in-place numpy pass over each per-row array a full tick touches (StateFloor), "
        "median of the runs alternated with the engine's",
    }
    if a.json:
        print(orjson.dumps(rec).decode(), flush=True)
    else:
        print(
            f"{'state_floor':26s} {'':>20s} S={S:>7d} tick {rec['tick_ms']:8.3f} ms "
            f"{S / floor_s / 1e6:7.2f} M samples/s  engine tick = {rec['engine_tick_over_floor']}x floor",
            flush=True,
        )


if __name__ == "__main__":
    main()
