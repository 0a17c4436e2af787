"""`edge-agent discover modbus HOST:PORT`: find the unit ids that answer and their readable registers, print a skeleton."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edge_agent.drivers.base import Discovery
from edge_agent.drivers.skeleton import device_header, progress

#: Modbus exceptions a TCP gateway returns for a unit id with no device behind it.
GATEWAY_EXCEPTIONS = (0x0A, 0x0B)


@dataclass(frozen=True)
class RegisterRange:
    """A run of readable registers in one table of one unit."""

    unit: int
    table: str
    start: int
    count: int


async def probe_modbus(
    host: str, port: int, units: list[int], max_address: int, response_timeout: float = 0.5
) -> tuple[list[int], list[RegisterRange]]:
    """Find the unit ids that answer and the readable holding/input register ranges of each."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    client = AsyncModbusTcpClient(host, port=port, timeout=response_timeout, retries=0)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {host}:{port}: is the device on and the port right?")
    present: list[int] = []
    ranges: list[RegisterRange] = []

    async def readable(unit: int, table: str, address: int, count: int) -> bool | None:
        read = client.read_holding_registers if table == "holding_register" else client.read_input_registers
        try:
            rr = await read(address, count=count, device_id=unit)
        except ModbusException:
            return None  # no answer at all: no such unit behind the gateway
        if rr.isError() and getattr(rr, "exception_code", 0) in GATEWAY_EXCEPTIONS:
            return None  # the gateway answered for a unit that is not there
        return not rr.isError()

    try:
        with progress() as bar:
            task = bar.add_task("probing", total=None)
            for unit in units:
                bar.update(task, description=f"probing {host}:{port} unit {unit}")
                answer = await readable(unit, "holding_register", 0, 1)
                if answer is None:
                    answer = await readable(unit, "input_register", 0, 1)
                if answer is None:
                    continue
                present.append(unit)
                for table in ("holding_register", "input_register"):
                    start: int | None = None
                    for address in range(0, max_address, 1):
                        if address % 50 == 0:
                            bar.update(task, description=f"unit {unit} {table} {address}/{max_address}")
                        ok = await readable(unit, table, address, 1)
                        if ok and start is None:
                            start = address
                        elif not ok and start is not None:
                            ranges.append(RegisterRange(unit, table, start, address - start))
                            start = None
                    if start is not None:
                        ranges.append(RegisterRange(unit, table, start, max_address - start))
    finally:
        client.close()
    return present, ranges


def modbus_skeleton(
    host: str,
    port: int,
    units: list[int],
    ranges: list[RegisterRange],
    name: str = "machine-1",
    profile: str = "CHOOSE_A_PROFILE",
) -> str:
    """A device config listing every readable register as a uint16 tag, to be renamed and typed."""
    lines = [
        f"# discovered at {host}:{port}: unit ids {', '.join(map(str, units)) or 'none'}",
        "# every readable register is listed as uint16; merge pairs into 32-bit types and name them",
        *device_header(name, "modbus", profile, f"modbus-tcp://{host}:{port}"),
        "",
        "[devices.modbus]",
        f"unit_id = {units[0] if units else 1}",
        "",
    ]
    for r in ranges:
        lines.append(f"# unit {r.unit} {r.table} {r.start}..{r.start + r.count - 1} readable")
        for address in range(r.start, r.start + r.count):
            short = "hr" if r.table == "holding_register" else "ir"
            lines += [
                "[[devices.tags]]",
                f'name = "u{r.unit}_{short}{address}"',
                f'table = "{r.table}"',
                f"address = {address}",
                'type = "uint16"',
                *([f"unit_id = {r.unit}"] if units and r.unit != units[0] else []),
                "",
            ]
    return "\n".join(lines) + "\n"


def _units(spec: str) -> list[int]:
    """Unit ids from `1-10`, `1,2,5` or a mix."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 0 or max(out) > 255:
        raise ValueError(f"unit ids {spec!r}: give numbers 0-255, e.g. 1-10 or 1,2,5")
    return out


def _address(target: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port)."""
    host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{target!r} is not HOST:PORT, e.g. 192.0.2.10:502")
    return host, int(port_text)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--units", default="1-10", help="unit ids to probe, e.g. 1-10 or 1,2,5 (default 1-10)"
    )
    parser.add_argument(
        "--max-address", type=int, default=200, help="probe registers below this address (default 200)"
    )


async def _run(args: argparse.Namespace) -> str:
    host, port = _address(args.target)
    present, ranges = await probe_modbus(host, port, _units(args.units), args.max_address)
    return modbus_skeleton(host, port, present, ranges, args.name, args.profile or "CHOOSE_A_PROFILE")


DISCOVERY = Discovery(
    summary="probe a Modbus TCP device: the unit ids that answer and their readable registers",
    target="HOST:PORT",
    address=_address,
    add_arguments=_add_arguments,
    run=_run,
)
