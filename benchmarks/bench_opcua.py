"""Benchmark the OPC UA driver against bare asyncua doing the same reads and subscription, side by side.

    python benchmarks/bench_opcua.py --json

An asyncua server with N Double variables runs in a child process (so the client's CPU time is the
client's alone); this process alternates bare asyncua and the driver on the same nodes and prints one
JSON object per line: name (read_1k, read_10k, subscribe_10k), values_per_s, client_cpu_s_per_value,
ratio_vs_raw (driver CPU per value / bare asyncua CPU per value) and the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, Server, ua

from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import OpcUaDriver
from edge_agent.simulators.opcua_server import free_port, nid, now_utc, to_datavalue
from edge_agent.types import Readings

NS_URI = "urn:edge-agent:bench"


async def serve(n: int, port: int, churn_s: float) -> None:
    """A server with n Double variables; every churn_s seconds all of them change (0 = never)."""
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NS_URI)
    folder = await server.nodes.objects.add_object(nid("Bench", idx), ua.QualifiedName("Bench", idx))
    nodes = [
        await folder.add_variable(nid(f"v{i}", idx), ua.QualifiedName(f"v{i}", idx), float(i))
        for i in range(n)
    ]
    async with server:
        print("ready", flush=True)
        k = 0
        while True:
            await asyncio.sleep(churn_s or 3600)
            k += 1
            when = now_utc()
            for i, node in enumerate(nodes):
                await server.write_attribute_value(
                    node.nodeid, to_datavalue(float(i + k), ua.VariantType.Double, when)
                )


def start_server(n: int, churn_s: float) -> tuple[subprocess.Popen[str], str]:
    """The server in a child process; returns it and its endpoint once it serves."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n), "--port", str(port), "--churn", str(churn_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return proc, f"opc.tcp://127.0.0.1:{port}/bench"


def device(endpoint: str, n: int, mode: str) -> OpcUaDevice:
    """A device with n tags on the benchmark server."""
    return OpcUaDevice.model_validate(
        {
            "name": "bench",
            "protocol": "opcua",
            "profile": "furnace",
            "endpoint": endpoint,
            "opcua": {
                "security_policy": "None",
                "security_mode": "None",
                "allow_insecure": True,
                "timeout": 30.0,
                "publishing_interval": 0.1,
            },
            "tags": [
                {
                    "name": f"v{i}",
                    "node": f"nsu={NS_URI};s=v{i}",
                    "mode": mode,
                    "interval": 0.1,
                    "queue_size": 1,
                }
                for i in range(n)
            ],
        }
    )


async def bench_read(n: int, reps: int) -> dict[str, Any]:
    """Batched reads of n nodes: driver.read(group) vs Client.read_values(nodes), alternating."""
    proc, endpoint = start_server(n, 0.0)
    try:
        dev = device(endpoint, n, "poll")
        driver = OpcUaDriver(dev, {t.name: i for i, t in enumerate(dev.tags)}, config_dir=Path.cwd())
        await driver.connect()
        group = driver.groups()[0]
        raw = Client(endpoint, timeout=30, watchdog_intervall=5.0)
        await raw.connect()
        idx = await raw.get_namespace_index(NS_URI)
        nodes = [raw.get_node(nid(f"v{i}", idx)) for i in range(n)]
        raw_cpu, raw_wall, drv_cpu, drv_wall = [], [], [], []
        for rep in range(reps + 1):
            c0, w0 = time.process_time(), time.perf_counter()
            values = await raw.read_values(nodes)
            c1, w1 = time.process_time(), time.perf_counter()
            batch = await driver.read(group)
            c2, w2 = time.process_time(), time.perf_counter()
            assert len(values) == n and len(batch) == n and not np.isnan(batch.value).any()
            if rep:  # the first round warms caches
                raw_cpu.append(c1 - c0)
                raw_wall.append(w1 - w0)
                drv_cpu.append(c2 - c1)
                drv_wall.append(w2 - w1)
        # a 10k-node Read must not trip the keep-alive watchdog into a reconnect
        assert driver.stats.connects == 1 and driver.connected
        await raw.disconnect()
        await driver.close()
    finally:
        proc.kill()
        proc.wait()
    return result(f"read_{n // 1000}k", n, drv_cpu, drv_wall, raw_cpu, raw_wall, reps)


async def bench_subscribe(n: int, window_s: float, rounds: int) -> dict[str, Any]:
    """n monitored items whose values all change every 0.5 s: CPU per notification, driver vs bare asyncua."""
    proc, endpoint = start_server(n, 0.5)
    try:
        dev = device(endpoint, n, "subscribe")
        counts = {"driver": 0, "raw": 0}

        def on_readings(batch: Readings) -> None:
            counts["driver"] += len(batch)

        def on_publish(result: ua.PublishResult) -> None:
            # bare asyncua consuming a publish as one batch: the values and their source timestamps
            for notif in result.NotificationMessage.NotificationData:
                if isinstance(notif, ua.DataChangeNotification):
                    items = notif.MonitoredItems
                    _ = [(it.ClientHandle, it.Value.Value.Value, it.Value.SourceTimestamp) for it in items]
                    counts["raw"] += len(items)

        raw_cpu, raw_wall, drv_cpu, drv_wall = [], [], [], []
        for _ in range(rounds):
            for side in ("raw", "driver"):
                if side == "driver":
                    driver = OpcUaDriver(
                        dev,
                        {t.name: i for i, t in enumerate(dev.tags)},
                        config_dir=Path.cwd(),
                        on_readings=on_readings,
                    )
                    await driver.connect()
                else:
                    # the driver's default keep-alive interval: at 1 s (asyncua's default) the probe times out
                    # while the server is busy rewriting 10k values, and the bare client drops the session
                    client = Client(endpoint, timeout=30, watchdog_intervall=5.0)
                    await client.connect()
                    idx = await client.get_namespace_index(NS_URI)
                    params = ua.CreateSubscriptionParameters(
                        RequestedPublishingInterval=100,
                        RequestedMaxKeepAliveCount=50,
                        RequestedLifetimeCount=500,
                    )
                    sub = await client.uaclient.create_subscription(params, on_publish)
                    create = ua.CreateMonitoredItemsParameters(SubscriptionId=sub.SubscriptionId)
                    for i in range(n):
                        req = ua.MonitoredItemCreateRequest()
                        req.ItemToMonitor = ua.ReadValueId(
                            NodeId=nid(f"v{i}", idx), AttributeId=ua.AttributeIds.Value
                        )
                        req.MonitoringMode = ua.MonitoringMode.Reporting
                        req.RequestedParameters = ua.MonitoringParameters(
                            ClientHandle=i, SamplingInterval=100, QueueSize=1
                        )
                        create.ItemsToCreate.append(req)
                    await client.uaclient.create_monitored_items(create)
                await asyncio.sleep(1.0)  # initial values and settling are not measured
                start = counts[side]
                c0, w0 = time.process_time(), time.perf_counter()
                await asyncio.sleep(window_s)
                c1, w1 = time.process_time(), time.perf_counter()
                got = counts[side] - start
                if got == 0:
                    raise RuntimeError(f"subscribe_{n // 1000}k: no notifications reached the {side} client")
                if side == "driver":
                    await driver.close()
                    drv_cpu.append((c1 - c0) / got * n)
                    drv_wall.append((w1 - w0) / got * n)
                else:
                    await client.disconnect()
                    raw_cpu.append((c1 - c0) / got * n)
                    raw_wall.append((w1 - w0) / got * n)
    finally:
        proc.kill()
        proc.wait()
    # normalised to "seconds per n values" so result() treats both benchmarks alike
    return result(f"subscribe_{n // 1000}k", n, drv_cpu, drv_wall, raw_cpu, raw_wall, rounds)


def result(
    name: str,
    n: int,
    drv_cpu: list[float],
    drv_wall: list[float],
    raw_cpu: list[float],
    raw_wall: list[float],
    reps: int,
) -> dict[str, Any]:
    """Medians of one benchmark as a JSON-ready dict."""
    d_cpu, r_cpu = statistics.median(drv_cpu), statistics.median(raw_cpu)
    return {
        "name": name,
        "values_per_s": round(n / statistics.median(drv_wall)),
        "client_cpu_s_per_value": d_cpu / n,
        "ratio_vs_raw": round(d_cpu / r_cpu, 3),
        "raw_values_per_s": round(n / statistics.median(raw_wall)),
        "raw_client_cpu_s_per_value": r_cpu / n,
        "repetitions": reps,
    }


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every benchmark in order."""
    return [
        await bench_read(1000, args.reps),
        await bench_read(10000, args.reps),
        await bench_subscribe(10000, args.window, args.rounds),
    ]


def main() -> int:
    """Command line: run the benchmarks (or, internally, the server child)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per benchmark")
    parser.add_argument("--reps", type=int, default=15, help="timed reads per size (default 15)")
    parser.add_argument(
        "--window", type=float, default=4.0, help="seconds per subscription window (default 4)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="raw/driver subscription rounds (default 3)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--churn", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.churn))
        return 0
    results = asyncio.run(run_all(args))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['name']:14s} {r['values_per_s']:>8d} values/s  {r['client_cpu_s_per_value'] * 1e6:6.2f} us CPU/value  "
                f"raw {r['raw_values_per_s']:>8d} values/s {r['raw_client_cpu_s_per_value'] * 1e6:6.2f} us  "
                f"ratio {r['ratio_vs_raw']:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
