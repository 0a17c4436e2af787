"""The web page's own CPU at 100 devices x 100 tags x 10 Hz, measured in-process without the noise of a whole agent.

    python benchmarks/bench_web.py

A real IndicatorPipeline (the benchmark profile of bench_agent.py: every tag in the rolling
statistics) processes one batch per device every simulated 0.1 s; its outputs go to the web page's
LiveState exactly as Agent.on_output hands them over. Only the page's work is timed (process CPU
time): taking the batches, the flushes (two per update interval), and with pages open the JSON of
the overview and of one machine page once per interval (what the server sends each open page; a
view is rendered once per interval however many pages show it). Prints one JSON line per case:
  web_cores      the page's CPU seconds per second of agent time
  pipeline_cores the indicator pipeline's, for scale (the agent's whole CPU at 100k values/s is
                 bench_agent.py's agent_cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_agent import _profile  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from edge_agent.simulators.modbus_server import RegisterField, render_device_toml  # noqa: E402
from edge_agent.types import Readings  # noqa: E402
from edge_agent.web.state import LiveState  # noqa: E402


def _agent(workdir: Path, devices: int, tags: int, interval: float) -> Agent:
    (workdir / "profiles").mkdir()
    (workdir / "profiles" / "bench.toml").write_text(_profile(tags))
    fields = [RegisterField(f"r{i}", "holding_register", i, "uint16") for i in range(tags)]
    text = f'profiles_dir = "{workdir / "profiles"}"\n[agent]\nname = "bench"\n\n' + "\n".join(
        render_device_toml(
            fields,
            name=f"dev{k:03d}",
            profile="bench",
            endpoint="modbus-tcp://127.0.0.1:1",
            poll_interval=interval,
        )
        for k in range(devices)
    )
    return Agent(parse_config(text, str(workdir / "agent.toml"), workdir), workdir, sinks=False)


def run(
    pages: int, seconds: float, devices: int = 100, tags: int = 100, interval: float = 0.1
) -> dict[str, object]:
    """Simulate `seconds` of agent time with `pages` pages open (0, 1 or 2: overview, then one machine)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    agent = _agent(workdir, devices, tags, interval)
    state = LiveState(agent)
    update_interval = 0.5  # WebConfig's default
    rng = np.random.default_rng(0)
    rows = {
        name: np.fromiter(agent.pipeline.rows_of(name).values(), np.int32)[:tags]
        for name in agent.pipeline.devices
    }
    web_s = pipeline_s = 0.0
    next_flush = next_render = 0.0
    t0 = time.time_ns()
    ticks = round(seconds / interval)
    for tick in range(ticks):
        now = tick * interval
        t_ns = t0 + int(now * 1e9)
        batches = [
            (name, Readings.of(r, t_ns, rng.integers(0, 65535, tags).astype(float)))
            for name, r in rows.items()
        ]
        began = time.process_time()
        outs = agent.pipeline.process_many(batches, t_ns)
        pipeline_s += time.process_time() - began
        began = time.process_time()
        for (name, _r), out in zip(batches, outs, strict=True):
            state.feed(name, out)
        if now >= next_flush:
            state.flush()
            next_flush += update_interval / 2
        if pages and now >= next_render:
            orjson.dumps(state.overview(), option=orjson.OPT_SERIALIZE_NUMPY)
            if pages > 1:
                orjson.dumps(state.machine("dev000"), option=orjson.OPT_SERIALIZE_NUMPY)
            next_render += update_interval
        web_s += time.process_time() - began
    return {
        "name": f"web_{pages}_pages",
        "devices": devices,
        "tags": tags,
        "values_per_s": round(devices * tags / interval),
        "pages": pages,
        "web_cores": round(web_s / seconds, 4),
        "pipeline_cores": round(pipeline_s / seconds, 3),
    }


def main() -> int:
    """Run the page closed, one page open, two pages open."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated agent time per case")
    args = parser.parse_args()
    for pages in (0, 1, 2):
        print(orjson.dumps(run(pages, args.seconds)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
