"""The whole agent under load: N Modbus devices x M tags at rate R to real Mosquitto and VictoriaMetrics.

    python benchmarks/bench_agent.py --json

A child process serves N simulated Modbus devices of M uint16 registers; the agent runs as its own
process (`edge-agent run`) with every tag in the indicator core (rolling statistics) and both sinks;
this process subscribes to the raw topics. Each workload prints one JSON line:
  values_per_s  values the agent read per second, sustained over the measurement window
  agent_cores   agent CPU seconds per wall second (user + system, from /proc), its MQTT publisher process included
  rss_mb        agent resident memory at the end of the window, its MQTT publisher process included
  publisher_rss_mb   of which the MQTT publisher process
  pss_mb        the same processes' proportional set size (pages shared between them counted once)
  mqtt_publisher     where paho runs (sinks.mqtt.publisher; --mqtt-publisher)
  p50_ms/p99_ms sample timestamp (poll time) to arrival at a subscriber of the broker
  lost          values read but not on MQTT, plus values on MQTT but not in the TSDB (must be 0)
  page_updates  (agent_100k_web) live updates the two open pages of the web page received
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import Mosquitto, VictoriaMetrics, free_port  # noqa: E402

WORKLOADS = {
    # name: (devices, tags, poll interval s)
    "agent_20k": (100, 100, 0.5),
    "agent_100k": (100, 100, 0.1),
    # more offered than the 100k target, so the rate the agent sustains is what it can do, not
    # the most the workload asks for (at 100k nominal, every late poll shows as a shortfall)
    "agent_150k": (150, 100, 0.1),
    # agent_100k with two pages of its web page open (overview and one machine), side by side with it
    "agent_100k_web": (100, 100, 0.1),
}


def _profile(tags: int) -> str:
    lines = ['description = "benchmark device"', 'measurement = "bench"', ""]
    for i in range(tags):
        lines += ["[[signals]]", f'name = "r{i}"', 'indicators = ["rolling"]', ""]
    return "\n".join(lines)


def _config(
    ports: list[int],
    tags: int,
    interval: float,
    mqtt_url: str,
    influx_url: str,
    workdir: Path,
    publisher: str,
    web_port: int | None = None,
) -> str:
    from edge_agent.simulators.modbus_server import RegisterField, render_device_toml

    fields = [RegisterField(f"r{i}", "holding_register", i, "uint16") for i in range(tags)]
    web = f"[web]\nenabled = true\nport = {web_port}\n\n" if web_port else ""
    devices = "\n".join(
        render_device_toml(
            fields,
            name=f"dev{k:03d}",
            profile="bench",
            endpoint=f"modbus-tcp://127.0.0.1:{p}",
            poll_interval=interval,
        )
        for k, p in enumerate(ports)
    )
    return (
        f'profiles_dir = "{workdir / "profiles"}"\n[agent]\nname = "bench"\n'
        f'[sinks.mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "bench"\npublisher = "{publisher}"\n'
        f'[sinks.influx]\nurl = "{influx_url}"\nbatch_size = 5000\nflush_interval = 0.2\n'
        f'[outbox]\ndir = "{workdir / "outbox"}"\n\n{web}{devices}'
    )


class OpenPages:
    """Two browser pages of the agent's web page: each loads the page's files, then reads its live stream."""

    PAGES = ("/api/overview/stream", "/api/machines/dev000/stream")

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.events = 0
        self.running = True
        self.threads = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in self.PAGES]
        for t in self.threads:
            t.start()

    def _read(self, stream: str) -> None:
        import urllib.request

        for _attempt in range(100):  # the page answers once the agent has started
            try:
                for name in ("/", "/static/app.js", "/static/app.css"):
                    urllib.request.urlopen(self.base + name, timeout=5).read()
                with urllib.request.urlopen(self.base + stream, timeout=10) as answer:
                    while self.running:
                        line = answer.readline()
                        if not line:
                            break  # the agent stopped
                        if line.startswith(b"data: "):
                            self.events += 1
                return
            except OSError:
                time.sleep(0.2)


def _family(pid: int) -> list[int]:
    """The agent and its child processes (the MQTT publisher)."""
    # a child is listed under the thread that started it, which is not always the main thread
    children = [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    return [pid, *children]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RawListener:
    """Counts raw values per message and the latency from sample time to arrival."""

    def __init__(self, broker: Mosquitto) -> None:
        self.lock = threading.Lock()
        self.values = 0
        self.latencies_ms: list[float] = []
        self.seqs: dict[str, list[int]] = {}
        self.measuring = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("bench/+/+/+/+/raw", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        now_ms = time.time() * 1000
        body = orjson.loads(msg.payload)
        with self.lock:
            self.values += len(body["values"])
            self.seqs.setdefault(msg.topic, []).append(body["seq"])
            if self.measuring:
                self.latencies_ms.append(now_ms - max(body["t_ms"]))

    def close(self) -> None:
        """Stop listening."""
        self.client.loop_stop()
        self.client.disconnect()


def run_workload(
    name: str, devices: int, tags: int, interval: float, seconds: float, publisher: str = "thread"
) -> dict[str, object]:
    """Start servers, broker, TSDB and the agent; measure; stop; count what landed."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    (workdir / "profiles").mkdir()
    (workdir / "profiles" / "bench.toml").write_text(_profile(tags))
    broker = Mosquitto(workdir / "mosquitto")
    vm = VictoriaMetrics(workdir / "vm")
    broker.start()
    vm.start()
    servers = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "bench_modbus.py"), "--serve", str(devices), "--registers", str(tags)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert servers.stdout is not None
    ports = orjson.loads(servers.stdout.readline())
    config = workdir / "agent.toml"
    web_port = free_port() if name.endswith("_web") else None
    config.write_text(_config(ports, tags, interval, broker.url, vm.url, workdir, publisher, web_port))
    listener = RawListener(broker)
    pages = OpenPages(web_port) if web_port else None
    with (workdir / "agent.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "-c", str(config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        time.sleep(5.0)  # connect, fill the windows, reach a steady state
        with listener.lock:
            listener.measuring = True
            values_before = listener.values
        family = _family(agent.pid)
        cpu_before, wall_before = sum(map(_proc_cpu_s, family)), time.monotonic()
        time.sleep(seconds)
        cpu_after, wall_after = sum(map(_proc_cpu_s, family)), time.monotonic()
        rss_of = {pid: _proc_rss_mb(pid) for pid in family}
        rss = sum(rss_of.values())
        publisher_rss = rss - rss_of[agent.pid]
        pss = sum(map(_proc_pss_mb, family))
        with listener.lock:
            listener.measuring = False
            values_window = listener.values - values_before
        if pages is not None:
            pages.running = False
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        time.sleep(1.0)
    finally:
        if agent.poll() is None:
            agent.kill()
        servers.stdin.close()  # type: ignore[union-attr]
        servers.wait(30)
    listener.close()
    missing_msgs = sum(max(s) - len(set(s)) for s in listener.seqs.values())
    stored = vm.settled_count('{__name__="bench_value"}', listener.values)
    lost = missing_msgs * tags + abs(stored - listener.values)
    broker.stop()
    vm.stop()
    wall = wall_after - wall_before
    lat = np.array(listener.latencies_ms)
    return {
        "name": name,
        "devices": devices,
        "tags": tags,
        "poll_interval_s": interval,
        "target_values_per_s": round(devices * tags / interval),
        "values_per_s": round(values_window / wall),
        "agent_cores": round((cpu_after - cpu_before) / wall, 3),
        "rss_mb": round(rss, 1),
        "publisher_rss_mb": round(publisher_rss, 1),
        "pss_mb": round(pss, 1),
        "mqtt_publisher": publisher,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "lost": int(lost),
        "mqtt_values": listener.values,
        "tsdb_values": stored,
        "window_s": round(wall, 1),
        **({"page_updates": pages.events} if pages is not None else {}),
    }


def main() -> int:
    """Run the workloads and print one line each."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line (the default output)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per workload")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only these workloads")
    parser.add_argument(
        "--mqtt-publisher", choices=["process", "thread"], default="thread", help="sinks.mqtt.publisher"
    )
    args = parser.parse_args()
    for name in args.only or list(WORKLOADS):
        devices, tags, interval = WORKLOADS[name]
        print(
            orjson.dumps(
                run_workload(name, devices, tags, interval, args.seconds, args.mqtt_publisher)
            ).decode(),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
