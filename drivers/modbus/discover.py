"""`edge-agent discover modbus HOST:PORT`: find the unit ids that answer and their readable registers, print a skeleton."""

from __future__ import annotations

import argparse
import math
import struct
from dataclasses import dataclass
from typing import Any

from edge_agent.drivers.base import Discovery, DiscoveryError
from edge_agent.drivers.skeleton import device_header, progress

#: Modbus exceptions a TCP gateway returns for a unit id with no device behind it.
GATEWAY_EXCEPTIONS = (0x0A, 0x0B)


#: A float32 guess must decode to a finite value with a magnitude in this range: process values
#: (temperatures, pressures, speeds, times) sit well inside it, while two integer registers read
#: as a float almost always give a denormal-small or a huge number.
PLAUSIBLE_FLOAT = (1e-3, 1e6)

#: Registers per request when reading a found range's values (the Modbus limit is 125).
_BLOCK = 125


@dataclass(frozen=True)
class RegisterRange:
    """A run of readable registers in one table of one unit, with their values when probed."""

    unit: int
    table: str
    start: int
    count: int
    values: tuple[int, ...] = ()
    """The registers' values, read together (one request per 125) after the range was found."""


def _unit_list(units: list[int]) -> str:
    """1,2,3,5 -> '1-3,5'."""
    runs: list[list[int]] = []
    for unit in sorted(units):
        if runs and unit == runs[-1][-1] + 1:
            runs[-1].append(unit)
        else:
            runs.append([unit])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


async def probe_modbus(
    host: str, port: int, units: list[int], max_address: int, response_timeout: float = 0.5
) -> tuple[list[int], list[RegisterRange]]:
    """Find the unit ids that answer and the readable holding/input register ranges of each, with values.

    Raises ConnectionError if the device refuses the connection, DiscoveryError if no unit id answers.
    """
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    client = AsyncModbusTcpClient(host, port=port, timeout=response_timeout, retries=0)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {host}:{port}: is the device on and the port right?")
    present: list[int] = []
    ranges: list[RegisterRange] = []
    gateway_said_absent = False

    async def read(unit: int, table: str, address: int, count: int) -> list[int] | None:
        """The registers; [] if the device answered with an exception; None if no device answered."""
        nonlocal gateway_said_absent
        request = (
            client.read_holding_registers if table == "holding_register" else client.read_input_registers
        )
        try:
            rr = await request(address, count=count, device_id=unit)
        except ModbusException:
            return None  # no answer at all: no such unit behind the gateway, or not Modbus
        if rr.isError():
            if getattr(rr, "exception_code", 0) in GATEWAY_EXCEPTIONS:
                gateway_said_absent = True
                return None  # the gateway answered for a unit that is not there
            return []
        return list(rr.registers)

    try:
        with progress() as bar:
            task = bar.add_task("probing", total=None)
            for unit in units:
                bar.update(task, description=f"probing {host}:{port} unit {unit}")
                answer = await read(unit, "holding_register", 0, 1)
                if answer is None:
                    answer = await read(unit, "input_register", 0, 1)
                if answer is None:
                    continue
                present.append(unit)
                for table in ("holding_register", "input_register"):
                    found: list[tuple[int, int]] = []
                    start: int | None = None
                    for address in range(0, max_address, 1):
                        if address % 50 == 0:
                            bar.update(task, description=f"unit {unit} {table} {address}/{max_address}")
                        ok = bool(await read(unit, table, address, 1))
                        if ok and start is None:
                            start = address
                        elif not ok and start is not None:
                            found.append((start, address - start))
                            start = None
                    if start is not None:
                        found.append((start, max_address - start))
                    for first, count in found:
                        ranges.append(
                            RegisterRange(
                                unit, table, first, count, await _values(read, unit, table, first, count)
                            )
                        )
    finally:
        client.close()
    if not present:
        tried = _unit_list(units)
        if gateway_said_absent:
            raise DiscoveryError(
                f"no unit id of {tried} answered: the gateway reports no device behind them "
                "(exception 10/11); give the right unit ids with --units"
            )
        raise DiscoveryError(
            f"no unit id of {tried} answered within {response_timeout:g} s although the connection was "
            "accepted; check the unit ids (--units) and that a Modbus TCP device listens on this port"
        )
    return present, ranges


async def _values(read: Any, unit: int, table: str, start: int, count: int) -> tuple[int, ...]:
    """A range's values read together, so the two halves of a 32-bit value belong to one moment."""
    values: list[int] = []
    for first in range(start, start + count, _BLOCK):
        n = min(_BLOCK, start + count - first)
        block = await read(unit, table, first, n)
        if not block or len(block) != n:
            return ()  # the device takes only shorter reads: no values rather than torn ones
        values += block
    return tuple(values)


def float32_guesses(values: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """Offset i -> {word order: value} for adjacent registers i, i+1 that read as a plausible float32."""
    low, high = PLAUSIBLE_FLOAT
    out: dict[int, dict[str, float]] = {}
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        for order, (hi, lo) in (("ABCD", (a, b)), ("CDAB", (b, a))):
            (x,) = struct.unpack(">f", struct.pack(">HH", hi, lo))
            if math.isfinite(x) and low <= abs(x) <= high:
                out.setdefault(i, {})[order] = x
    return out


def _value_comment(value: int) -> str:
    signed = f", int16 {value - 0x10000}" if value >= 0x8000 else ""
    return f"  # = {value} (0x{value:04X}{signed})"


def modbus_skeleton(
    host: str,
    port: int,
    units: list[int],
    ranges: list[RegisterRange],
    name: str = "machine-1",
    profile: str = "CHOOSE_A_PROFILE",
) -> str:
    """A device config listing every readable register as a uint16 tag with its value, and float32 guesses."""
    lines = [
        f"# discovered at {host}:{port}: unit ids {', '.join(map(str, units)) or 'none'}",
        "# every readable register is listed as uint16 with the value it had (# = ...); rename the tags",
        "# after the profile's signals and merge pairs into 32-bit types. '# hr A-B as float32: ORDER VALUE'",
        "# marks adjacent registers that read as a plausible float32 in that word order (a guess: compare",
        '# with the machine\'s display, then give register A type = "float32", byte_order = ORDER, drop B)',
        *device_header(name, "modbus", profile, f"modbus-tcp://{host}:{port}"),
        "",
        "[devices.modbus]",
        f"unit_id = {units[0] if units else 1}",
        "",
    ]
    for r in ranges:
        short = "hr" if r.table == "holding_register" else "ir"
        lines.append(f"# unit {r.unit} {r.table} {r.start}..{r.start + r.count - 1} readable")
        guesses = float32_guesses(r.values)
        for offset, address in enumerate(range(r.start, r.start + r.count)):
            if offset in guesses:
                orders = "; ".join(f"{order} {x:.7g}" for order, x in guesses[offset].items())
                lines.append(f"# {short} {address}-{address + 1} as float32: {orders}")
            value = _value_comment(r.values[offset]) if r.values else ""
            lines += [
                "[[devices.tags]]",
                f'name = "u{r.unit}_{short}{address}"{value}',
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
    quiet_loggers=("pymodbus",),
)
