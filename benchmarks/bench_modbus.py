"""Modbus driver benchmark: client CPU per request, driver vs raw pymodbus side by side, and request planning.

    python benchmarks/bench_modbus.py --json

The servers (simulator plumbing, one asyncio loop) run in a child process so the
client's CPU time (time.process_time of this process) holds only client work.
Raw pymodbus, the driver, raw pymodbus keeping the response bytes (the driver's
response classes, no decoding at all), and the latter plus the fewest numpy calls that
make a Readings batch (the floor of the driver's per-request work) poll the same
servers in alternating rounds; the reported numbers are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


#: User-mode CPU seconds of each run, in run order (the kernel's share of a request,
#: the socket send and the wake-up of the peer, depends on load and rate, not on the client's code).
USER_S: list[float] = []


def _user_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


async def serve(n: int, registers: int) -> None:
    """Child process: n servers of `registers` uint16 holding registers on free ports; print the ports; run until stdin closes."""
    from edge_agent.simulators.modbus_server import RegisterField, RegisterMapServer

    fields = [RegisterField(f"r{i}", "holding_register", i, "uint16") for i in range(registers)]
    servers = []
    for _ in range(n):
        server = RegisterMapServer(fields)
        for i in range(registers):
            server.write(f"r{i}", i * 7)
        await server.start()
        servers.append(server)
    print(orjson.dumps([s.port for s in servers]).decode(), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop()


def device_toml(name: str, port: int, registers: int) -> str:
    from edge_agent.simulators.modbus_server import RegisterField, render_device_toml

    fields = [RegisterField(f"r{i}", "holding_register", i, "uint16") for i in range(registers)]
    return render_device_toml(
        fields, name=name, profile="mold_tcu", endpoint=f"modbus-tcp://127.0.0.1:{port}"
    )


async def run_raw(
    ports: list[int], registers: int, duration: float, keep_bytes: bool = False, to_readings: bool = False
) -> tuple[int, float, float]:
    """Raw pymodbus: one client per server, back-to-back reads; returns (requests, wall s, client CPU s).

    With `keep_bytes`, the clients get the driver's response classes (the data bytes are
    kept instead of decoded to a list of ints); with `to_readings` as well, each answer is
    turned into a Readings batch with the fewest numpy calls (three columns and one
    conversion, no fault handling): the floor of what the driver does per request.
    """
    import numpy as np
    from pymodbus.client import AsyncModbusTcpClient

    from edge_agent.drivers.modbus.connection import _PAYLOAD_RESPONSES
    from edge_agent.types import Readings

    keep_bytes = keep_bytes or to_readings
    rows = np.arange(registers, dtype=np.int32)

    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, retries=0, reconnect_delay=0) for p in ports]
    for c in clients:
        if keep_bytes:
            for response_class in _PAYLOAD_RESPONSES:
                c.register(response_class)
        await c.connect()
    count = 0
    stop = time.monotonic() + duration

    async def loop(client: AsyncModbusTcpClient) -> None:
        nonlocal count
        while time.monotonic() < stop:
            response = await client.read_holding_registers(0, count=registers, device_id=1)
            assert not response.isError() and (keep_bytes or len(response.registers) == registers)
            if to_readings:
                t_ns = np.empty(registers, np.int64)
                t_ns[:] = time.time_ns()
                values = np.frombuffer(response.payload, ">u2").astype(np.float64)  # type: ignore[attr-defined]
                Readings(rows, t_ns, values, np.zeros(registers, np.uint8))
            count += 1

    cpu0, user0, wall0 = time.process_time(), _user_s(), time.monotonic()
    await asyncio.gather(*(loop(c) for c in clients))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    USER_S.append(_user_s() - user0)
    for c in clients:
        c.close()
    return count, wall, cpu


async def run_driver(ports: list[int], registers: int, duration: float) -> tuple[int, float, float]:
    """The driver: one ModbusDriver per server (100 uint16 tags -> one planned request), back-to-back polls."""
    from edge_agent.config import parse_config
    from edge_agent.drivers.modbus.config import ModbusDevice
    from edge_agent.drivers.modbus.driver import ModbusDriver
    from edge_agent.types import Quality

    text = "\n".join(device_toml(f"dev{i}", p, registers) for i, p in enumerate(ports))
    config = parse_config(text)
    drivers = []
    for device in config.devices:
        assert isinstance(device, ModbusDevice)
        rows = {t.name: i for i, t in enumerate(device.tags)}
        drivers.append(ModbusDriver(device, rows))
    for d in drivers:
        await d.connect()
    count = 0
    stop = time.monotonic() + duration

    async def loop(driver: ModbusDriver) -> None:
        nonlocal count
        group = driver.groups()[0]
        readings = None
        while time.monotonic() < stop:
            readings = await driver.read(group)
            # the same per-request check as the raw side (answered, no error); the qualities
            # are checked once at the end, a numpy reduction per poll would be bench cost
            assert driver.last_error is None and len(readings) == registers
            count += 1
        assert readings is not None and int(readings.quality.max()) == Quality.GOOD

    cpu0, user0, wall0 = time.process_time(), _user_s(), time.monotonic()
    await asyncio.gather(*(loop(d) for d in drivers))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    USER_S.append(_user_s() - user0)
    for d in drivers:
        await d.close()
    return count, wall, cpu


def planning() -> dict[str, object]:
    """Requests one poll of the shipped die-casting map needs."""
    from edge_agent.config import load_config
    from edge_agent.drivers.modbus.driver import ModbusDriver

    device = load_config(ROOT / "config" / "die-casting.toml").devices[0]
    rows = {name: i for i, name in enumerate(device.signal_names())}
    driver = ModbusDriver(device, rows)  # type: ignore[arg-type]
    planned = sum(len(driver.plan(g)) for g in driver.groups())
    tags = len(device.tags)  # type: ignore[union-attr]
    return {
        "name": "planning_die_casting",
        "tags": tags,
        "requests_planned": planned,
        "requests_per_tag": round(planned / tags, 4),
        "reduction_vs_one_per_tag": round(tags / planned, 1),
    }


async def measure(args: argparse.Namespace, ports: list[int]) -> list[dict[str, object]]:
    """Alternating raw/driver/raw-bytes/raw-readings rounds against the child's servers; medians and ratios."""
    raw, drv, raw_bytes, raw_readings = [], [], [], []
    await run_raw(ports, args.registers, 0.5)  # warm-up: imports, connections, caches
    await run_driver(ports, args.registers, 0.5)
    await run_raw(ports, args.registers, 0.5, keep_bytes=True)
    await run_raw(ports, args.registers, 0.5, to_readings=True)
    USER_S.clear()
    for _ in range(args.rounds):
        raw.append(await run_raw(ports, args.registers, args.duration))
        drv.append(await run_driver(ports, args.registers, args.duration))
        raw_bytes.append(await run_raw(ports, args.registers, args.duration, keep_bytes=True))
        raw_readings.append(await run_raw(ports, args.registers, args.duration, to_readings=True))

    def med(runs: list[tuple[int, float, float]], what: str) -> float:
        values = {
            "rps": [n / w for n, w, _ in runs],
            "cpu": [c / n for n, _, c in runs],
        }[what]
        return statistics.median(values)

    ratios = [(dc / dn) / (rc / rn) for (rn, _, rc), (dn, _, dc) in zip(raw, drv, strict=True)]
    bytes_ratios = [(dc / dn) / (bc / bn) for (bn, _, bc), (dn, _, dc) in zip(raw_bytes, drv, strict=True)]
    floor_ratios = [(dc / dn) / (fc / fn) for (fn, _, fc), (dn, _, dc) in zip(raw_readings, drv, strict=True)]
    drv_rps = med(drv, "rps")
    raw_user = [u / n for u, (n, _, _) in zip(USER_S[0::4], raw, strict=True)]
    drv_user = [u / n for u, (n, _, _) in zip(USER_S[1::4], drv, strict=True)]
    user_ratios = [d / r for r, d in zip(raw_user, drv_user, strict=True)]
    return [
        {
            "name": f"poll_{args.devices}x{args.registers}",
            "values_per_s": round(drv_rps * args.registers),
            "requests_per_s": round(drv_rps),
            "client_cpu_s_per_value": med(drv, "cpu") / args.registers,
            "client_cpu_us_per_request": round(med(drv, "cpu") * 1e6, 1),
            "raw_requests_per_s": round(med(raw, "rps")),
            "raw_client_cpu_us_per_request": round(med(raw, "cpu") * 1e6, 1),
            "overhead_vs_raw": round(statistics.median(ratios), 3),
            "client_user_cpu_us_per_request": round(statistics.median(drv_user) * 1e6, 1),
            "raw_client_user_cpu_us_per_request": round(statistics.median(raw_user) * 1e6, 1),
            "overhead_vs_raw_user_cpu": round(statistics.median(user_ratios), 3),
            "raw_bytes_client_cpu_us_per_request": round(med(raw_bytes, "cpu") * 1e6, 1),
            "overhead_vs_raw_bytes": round(statistics.median(bytes_ratios), 3),
            "raw_readings_client_cpu_us_per_request": round(med(raw_readings, "cpu") * 1e6, 1),
            "overhead_vs_raw_readings": round(statistics.median(floor_ratios), 3),
            "rounds": args.rounds,
            "duration_s": args.duration,
        },
        planning(),
    ]


def main() -> int:
    """Run the benchmark (or, with --serve, the server child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line per measurement")
    parser.add_argument("--devices", type=int, default=50, help="servers/devices (default 50)")
    parser.add_argument("--registers", type=int, default=100, help="registers per device (default 100)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the four sides (default 3)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.registers))
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.devices), "--registers", str(args.registers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ports = orjson.loads(child.stdout.readline())
        results = asyncio.run(measure(args, ports))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
    for result in results:
        if args.json:
            print(orjson.dumps(result).decode())
        else:
            print(", ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
