"""Upper bound of a process-sharded indicator core: N engine processes of S/N rows each, ticking at once, against one engine of S rows.

The sharded runs have no inter-process traffic at all (each process draws its own
readings and keeps its own results), so they bound from above what splitting the
engine's rows over processes could give; a real sharded engine would add the
hand-over of every tick's readings and the return of its rule hits and alarm events.
The runs go A, B, A (one engine, N shards, one engine) so a change in the machine's
load shows up as a gap between the two A runs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from multiprocessing.synchronize import Barrier
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_core import EngineRun
from edge_agent.core.spc import SpcEngine


def _shard(rows: int, ticks: int, repeats: int, seed: int, barrier: Barrier, out: mp.Queue) -> None:
    """One process: warm an engine of `rows` rows, wait for the others, time `repeats` runs of `ticks` ticks."""
    run = EngineRun(SpcEngine, rows, 200, 100, False, seed)
    barrier.wait()
    for _ in range(repeats):
        run.run(ticks)
    out.put(run.result()["tick_s"])


def measure(processes: int, S: int, ticks: int, repeats: int, seed: int) -> list[float]:
    """Median run-mean tick of each of `processes` concurrent engines of S/processes rows."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    barrier = ctx.Barrier(processes)
    procs = [
        ctx.Process(target=_shard, args=(S // processes, ticks, repeats, seed + i, barrier, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    ticks_s = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return ticks_s


def main(argv: list[str] | None = None) -> None:
    """Run one engine, N shards, one engine; print one JSON object per line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=100_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    for label, n in (("one_engine", 1), ("shards", a.processes), ("one_engine_again", 1)):
        ticks_s = measure(n, a.signals, a.ticks, a.repeats, a.seed)
        slowest = max(ticks_s)
        rec = {
            "name": label,
            "signals": a.signals,
            "processes": n,
            "tick_ms_per_process": [round(t * 1e3, 3) for t in ticks_s],
            # a tick is done when the slowest shard is
            "samples_per_s": round(a.signals / slowest),
            "samples_per_core_s": round(a.signals / sum(ticks_s)),
        }
        print(orjson.dumps(rec).decode(), flush=True)


if __name__ == "__main__":
    main()
