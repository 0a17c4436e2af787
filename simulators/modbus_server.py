"""Shared Modbus TCP server plumbing of the simulators: register maps, typed register encoding, injectable wire faults.

A simulator describes its registers once as a list of `RegisterField`s; the same
list writes values into the server's tables and renders the device config the
agent loads (`render_device_toml`), so the two cannot disagree.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from edge_agent.simulators.command import bind_error, cannot_listen, fault_list

log = logging.getLogger("edge_agent.simulators.modbus")

TABLES = ("coil", "discrete_input", "holding_register", "input_register")
_FUNCTION_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input_register"}
_FUNCTION_TABLE.update({fc: "holding_register" for fc in (3, 6, 16, 22, 23)})
_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
_INT_RANGE = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}


@dataclass(frozen=True, slots=True)
class RegisterField:
    """One value in a simulator's register map, described as the agent's config describes a tag."""

    name: str
    table: str
    address: int
    """Protocol (0-based) address."""
    type: str = "uint16"
    byte_order: str = "ABCD"
    scale: float = 1.0
    """Engineering value = raw * scale + offset (the simulator divides when it writes)."""
    offset: float = 0.0
    unit: str = ""
    bit: int | None = None
    length: int | None = None
    """Registers of a string."""
    unit_id: int | None = None
    """None: the map's default unit id."""

    @property
    def width(self) -> int:
        """Registers (or bits) the field occupies."""
        if self.table in ("coil", "discrete_input") or self.type == "bool":
            return 1
        if self.type == "string":
            return self.length or 1
        return struct.calcsize(">" + _STRUCT[self.type]) // 2


def encode_registers(value: float | int, type_: str, byte_order: str = "ABCD") -> list[int]:
    """Raw value -> registers as they go on the wire, with struct (independent of the driver's numpy decoder)."""
    code = _STRUCT[type_]
    if type_ in _INT_RANGE:
        low, high = _INT_RANGE[type_]
        raw = int(value)
        if not low <= raw <= high:
            raise ValueError(f"{value} does not fit {type_} ({low}..{high})")
        data = struct.pack(">" + code, raw)
    else:
        data = struct.pack(">" + code, float(value))
    if byte_order in ("BADC", "DCBA"):
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order in ("CDAB", "DCBA"):
        words.reverse()
    return words


def encode_string(text: str, registers: int, byte_order: str = "ABCD") -> list[int]:
    """ASCII text, two characters per register, NUL padded; BADC/DCBA swap the bytes of each register."""
    data = text.encode("ascii")[: registers * 2].ljust(registers * 2, b"\x00")
    if byte_order in ("BADC", "DCBA"):
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class RegisterTables:
    """The four Modbus tables of one unit id, as numpy arrays (all addresses 0..size-1 readable)."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.bits = {t: np.zeros(size, dtype=bool) for t in ("coil", "discrete_input")}
        self.words = {t: np.zeros(size, dtype=np.uint16) for t in ("holding_register", "input_register")}

    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | None:
        """Values at address..address+count-1, or None if the range is outside the table."""
        if address < 0 or count < 1 or address + count > self.size:
            return None
        if table in self.bits:
            return self.bits[table][address : address + count].tolist()
        return self.words[table][address : address + count].tolist()

    def write(self, table: str, address: int, values: Sequence[int] | Sequence[bool]) -> bool:
        """Store values; False if the range is outside the table."""
        if address < 0 or address + len(values) > self.size:
            return False
        target = self.bits[table] if table in self.bits else self.words[table]
        target[address : address + len(values)] = values
        return True


@dataclass
class WireFaults:
    """Faults of the Modbus link itself, switchable while the server runs."""

    exception_code: int | None = None
    """Answer requests with this Modbus exception code (e.g. 2, 6, 10, 11)."""
    exception_probability: float = 1.0
    """Share of requests that get the exception."""
    exception_table: str | None = None
    """Only requests to this table get the exception (None: all)."""
    delay_s: float = 0.0
    """Wall seconds to wait before answering (slow responses)."""
    silent: bool = False
    """Accept requests and never answer (a hung device or gateway)."""


class _FaultyContext(SimCore):
    """The server's datastore: numpy tables per unit id with the wire faults applied in front."""

    def __init__(self, units: dict[int, RegisterTables], faults: WireFaults, rng: random.Random) -> None:
        # SimCore's constructor builds pymodbus' own simulator memory; this store replaces it.
        self.units = units
        self.faults = faults
        self.rng = rng
        self.wake = asyncio.Event()
        self.requests = 0

    def device_ids(self) -> list[int]:
        """Unit ids served."""
        return sorted(self.units)

    async def _gate(self, func_code: int) -> ExcCodes | None:
        self.requests += 1
        faults = self.faults
        if faults.silent:
            await self.wake.wait()
            # pymodbus sends nothing for an unknown id when ignore_missing_devices is set:
            # that is exactly a request that is never answered.
            raise NoSuchIdException("silenced")
        if faults.delay_s > 0.0:
            await asyncio.sleep(faults.delay_s)
        if faults.exception_code is not None:
            table = _FUNCTION_TABLE.get(func_code)
            if (faults.exception_table is None or faults.exception_table == table) and (
                self.rng.random() < faults.exception_probability
            ):
                return ExcCodes(faults.exception_code)
        return None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Answer a read (or the read half of a write)."""
        if (exc := await self._gate(func_code)) is not None:
            return exc
        tables = self.units.get(device_id)
        if tables is None:
            return ExcCodes.GATEWAY_NO_RESPONSE  # as a TCP/RTU gateway answers for an absent unit
        table = _FUNCTION_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = tables.read(table, address, count)
        return ExcCodes.ILLEGAL_ADDRESS if values is None else values

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        """Store a write from a client (setpoints, commands)."""
        tables = self.units.get(device_id)
        if tables is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FUNCTION_TABLE.get(func_code)
        if table is None or table in ("discrete_input", "input_register"):
            return ExcCodes.ILLEGAL_FUNCTION
        return None if tables.write(table, address, values) else ExcCodes.ILLEGAL_ADDRESS


class RegisterMapServer:
    """A Modbus TCP server for one register map, serving one or more unit ids, with injectable wire faults."""

    def __init__(
        self,
        fields: Sequence[RegisterField],
        *,
        unit_ids: Sequence[int] = (1,),
        size: int = 2048,
        seed: int = 0,
    ) -> None:
        if not unit_ids:
            raise ValueError("a server needs at least one unit id")
        self.fields = {f.name: f for f in fields}
        if len(self.fields) != len(fields):
            raise ValueError("register map has duplicate field names")
        self.default_unit = unit_ids[0]
        self.units = {u: RegisterTables(size) for u in unit_ids}
        self.faults = WireFaults()
        self._context = _FaultyContext(self.units, self.faults, random.Random(seed))
        self._server: ModbusTcpServer | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def requests_served(self) -> int:
        """Requests received since start (answered or not)."""
        return self._context.requests

    def write(self, name: str, value: float | int | str | bool, unit_id: int | None = None) -> float:
        """Put an engineering value into the field's registers; returns the value a reader will decode.

        Integers are rounded and saturate at the type's range, as a PLC's registers do;
        float32 keeps float32 precision; strings return NaN.
        """
        f = self.fields[name]
        tables = self.units[unit_id if unit_id is not None else (f.unit_id or self.default_unit)]
        if f.table in ("coil", "discrete_input"):
            tables.write(f.table, f.address, [bool(value)])
            return float(bool(value))
        if f.type == "string":
            tables.write(f.table, f.address, encode_string(str(value), f.width, f.byte_order))
            return math.nan
        if f.type == "bool":
            assert f.bit is not None
            word = int(tables.words[f.table][f.address])
            word = word | (1 << f.bit) if value else word & ~(1 << f.bit)
            tables.write(f.table, f.address, [word])
            return float(bool(value))
        raw: float = (float(value) - f.offset) / f.scale
        if f.type in _INT_RANGE:
            low, high = _INT_RANGE[f.type]
            raw = min(max(round(raw), low), high)
        elif f.type == "float32":
            raw = struct.unpack(">f", struct.pack(">f", raw))[0]
        tables.write(f.table, f.address, encode_registers(raw, f.type, f.byte_order))
        return raw * f.scale + f.offset

    def write_raw(self, name: str, raw: float | int, unit_id: int | None = None) -> None:
        """Put a raw (unscaled) value, e.g. a counter that must wrap exactly."""
        f = self.fields[name]
        tables = self.units[unit_id if unit_id is not None else (f.unit_id or self.default_unit)]
        tables.write(f.table, f.address, encode_registers(raw, f.type, f.byte_order))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port) and return the bound port."""
        if self._server is not None:
            raise RuntimeError("server already running; stop it first")
        placeholder = SimDevice(0, simdata=SimData(0))
        server = ModbusTcpServer(placeholder, address=(host, port), ignore_missing_devices=True)
        server.context = self._context
        # pymodbus logs the bind error and raises a RuntimeError without it: the OSError says why
        pymodbus_log = logging.getLogger("pymodbus")
        level = pymodbus_log.level
        pymodbus_log.setLevel(logging.CRITICAL)
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise bind_error(host, port) from None
        finally:
            pymodbus_log.setLevel(level)
        sockets = getattr(server.transport, "sockets", None)
        if not sockets:
            raise bind_error(host, port)
        self._server = server
        self._context.wake = asyncio.Event()
        self.host, self.port = host, int(sockets[0].getsockname()[1])
        return self.port

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._server is not None

    def drop_connections(self) -> int:
        """Close every client connection now (the server keeps listening); returns how many."""
        if self._server is None:
            return 0
        handlers = list(self._server.active_connections.values())
        for handler in handlers:
            handler.close()
        return len(handlers)

    def set_silent(self, silent: bool) -> None:
        """Stop (or resume) answering requests without closing connections."""
        self.faults.silent = silent
        if not silent:
            self._context.wake.set()
            self._context.wake = asyncio.Event()

    async def stop(self) -> None:
        """Close all connections and stop listening; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._context.wake.set()
        await server.shutdown()
        # let the handler tasks of dropped requests finish before the loop may close
        await asyncio.sleep(0)


def render_device_toml(
    fields: Sequence[RegisterField],
    *,
    name: str,
    profile: str,
    endpoint: str,
    unit_id: int = 1,
    poll_interval: float = 1.0,
    byte_order: str = "ABCD",
    header: str = "",
    extra_options: str = "",
) -> str:
    """A `[[devices]]` block for the agent, one `[[devices.tags]]` per field, addresses as on the wire (base 0)."""
    lines = [header.rstrip()] if header else []
    lines += [
        "[[devices]]",
        f'name = "{name}"',
        'protocol = "modbus"',
        f'profile = "{profile}"',
        f'endpoint = "{endpoint}"',
        f"poll_interval = {poll_interval!r}",
        "",
        "[devices.modbus]",
        f"unit_id = {unit_id}",
        "address_base = 0",
        f'byte_order = "{byte_order}"',
    ]
    if extra_options:
        lines.append(extra_options.rstrip())
    for f in fields:
        lines += [
            "",
            "[[devices.tags]]",
            f'name = "{f.name}"',
            f'table = "{f.table}"',
            f"address = {f.address}",
        ]
        if f.table not in ("coil", "discrete_input"):
            lines.append(f'type = "{f.type}"')
        else:
            lines.append('type = "bool"')
        if f.bit is not None:
            lines.append(f"bit = {f.bit}")
        if f.length is not None:
            lines.append(f"length = {f.length}")
        if f.table not in ("coil", "discrete_input") and f.type != "bool" and f.byte_order != byte_order:
            lines.append(f'byte_order = "{f.byte_order}"')
        if f.scale != 1.0:
            lines.append(f"scale = {f.scale!r}")
        if f.offset != 0.0:
            lines.append(f"offset = {f.offset!r}")
        if f.unit:
            lines.append(f'unit = "{f.unit}"')
        if f.unit_id is not None and f.unit_id != unit_id:
            lines.append(f"unit_id = {f.unit_id}")
    return "\n".join(lines) + "\n"


#: Faults of the link, common to every Modbus simulator: name -> (parameters, what it does).
WIRE_FAULTS: dict[str, str] = {
    "modbus_exception": "answer requests with exception `code` (default 6 busy; 2 illegal address, "
    "10 gateway path, 11 gateway target), for a share `probability` (default 1), "
    "optionally only on `table`",
    "slow_response": "wait `delay_s` wall seconds (default 2) before every answer",
    "dropped_connection": "close every client connection now, then every `every_s` wall seconds (default 5)",
    "silent": "accept requests and never answer them (a hung device); connections stay open",
}


def parse_fault(text: str) -> tuple[str, dict[str, float | str]]:
    """`name` or `name:key=value,key=value` (numbers become floats) -> (name, params)."""
    name, _, rest = text.partition(":")
    params: dict[str, float | str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"fault {text!r}: parameters are key=value separated by commas, e.g. slow_response:delay_s=2"
            )
        try:
            params[key.strip()] = float(value)
        except ValueError:
            params[key.strip()] = value.strip()
    return name.strip().replace("-", "_"), params


class ModbusMachine:
    """Base of a simulated machine behind a Modbus TCP server: simulated clock, faults, config rendering.

    Subclasses give the register map (`FIELDS`), their process faults
    (`PROCESS_FAULTS`) and `_tick(dt)`, which advances the physics one fixed
    simulated step. Simulated time runs `speed` times faster than wall time; the
    values depend only on the seed and the number of steps taken, so two runs with
    one seed see the same values for the same simulated time.
    """

    FIELDS: ClassVar[tuple[RegisterField, ...]] = ()
    PROFILE = ""
    KIND = ""
    """Name on the command line (`edge-agent simulate KIND`)."""
    DEFAULT_NAME = ""
    DEFAULT_PORT = 5020
    """Port of `edge-agent simulate KIND` when none is given: the one in the shipped config/KIND.toml."""
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {}
    STEP_S = 1.0
    """Simulated seconds per physics step."""
    WALL_TICK_S = 0.05
    """How often the clock task wakes (wall seconds)."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0 = clock stopped, advance() by hand), got {speed}")
        self.speed = speed
        self.seed = seed
        self.server = RegisterMapServer(self.FIELDS, unit_ids=unit_ids, seed=seed)
        self.sim_time_s = 0.0
        self._steps = 0
        self.active_faults: dict[str, dict[str, float | str]] = {}
        self._clock: asyncio.Task[None] | None = None
        self._dropper: asyncio.Task[None] | None = None
        items = faults.items() if isinstance(faults, dict) else (parse_fault(f) for f in faults)
        requested = [(name, dict(params)) for name, params in items]
        for name, _ in requested:
            self._check_fault_name(name)
        # Subclasses call this last, so their models exist: faults apply at once, except the
        # connection dropper, which needs the server running.
        self._pending_faults = [(n, p) for n, p in requested if n == "dropped_connection"]
        for name, params in requested:
            if name != "dropped_connection":
                self.set_fault(name, True, **params)

    # ----------------------------------------------------------------- faults

    @classmethod
    def known_faults(cls) -> dict[str, str]:
        """Every fault this machine takes: name -> description."""
        return {**cls.PROCESS_FAULTS, **WIRE_FAULTS}

    def _check_fault_name(self, name: str) -> None:
        if name not in self.known_faults():
            raise ValueError(
                f"unknown fault {name!r} for the {self.KIND} simulator; known: {', '.join(sorted(self.known_faults()))}"
            )

    def set_fault(self, name: str, on: bool = True, **params: float | str) -> None:
        """Switch a fault on (with parameters) or off, at any time."""
        self._check_fault_name(name)
        if on:
            self.active_faults[name] = dict(params)
        else:
            self.active_faults.pop(name, None)
        if name in WIRE_FAULTS:
            self._apply_wire_fault(name, on, params)
        else:
            self._apply_process_fault(name, on, params)

    def _apply_wire_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        faults = self.server.faults
        if name == "modbus_exception":
            faults.exception_code = int(params.get("code", 6)) if on else None
            faults.exception_probability = float(params.get("probability", 1.0))
            table = params.get("table")
            faults.exception_table = str(table) if on and table is not None else None
        elif name == "slow_response":
            faults.delay_s = float(params.get("delay_s", 2.0)) if on else 0.0
        elif name == "silent":
            self.server.set_silent(on)
        elif name == "dropped_connection":
            if self._dropper is not None:
                self._dropper.cancel()
                self._dropper = None
            if on and self.server.running:
                self.server.drop_connections()
                self._dropper = asyncio.create_task(self._drop_every(float(params.get("every_s", 5.0))))

    async def _drop_every(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.server.drop_connections()

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        """Subclasses switch their process models here."""

    # ----------------------------------------------------------------- time

    def _tick(self, dt_s: float) -> None:
        """Advance the physics one step of `dt_s` simulated seconds and write the registers."""

    def advance(self, sim_seconds: float) -> int:
        """Run the physics forward by `sim_seconds` of simulated time; returns the steps taken."""
        target = self.sim_time_s + sim_seconds
        steps = int((target + 1e-9) // self.STEP_S) - self._steps
        for _ in range(max(0, steps)):
            self._steps += 1
            self._tick(self.STEP_S)
        self.sim_time_s = target
        return max(0, steps)

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.WALL_TICK_S)
            now = loop.time()
            self.advance((now - last) * self.speed)
            last = now

    # ----------------------------------------------------------------- server

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start serving (port 0 picks a free port), start the clock if speed > 0; returns the bound port."""
        self._tick(0.0)
        port = await self.server.start(host, port)
        pending, self._pending_faults = self._pending_faults, []
        for name, params in pending:
            self.set_fault(name, True, **params)
        if self.speed > 0:
            self._clock = asyncio.create_task(self._run_clock())
        return port

    async def stop(self) -> None:
        """Stop the clock and the server; idempotent."""
        for task in (self._clock, self._dropper):
            if task is not None:
                task.cancel()
        for task in (self._clock, self._dropper):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._clock = self._dropper = None
        await self.server.stop()

    @property
    def port(self) -> int:
        """Bound port (0 before start)."""
        return self.server.port

    @property
    def endpoint(self) -> str:
        """`modbus-tcp://host:port` of the running server."""
        return f"modbus-tcp://{self.server.host}:{self.server.port}"

    def device_config(
        self, name: str | None = None, endpoint: str | None = None, poll_interval: float = 1.0
    ) -> str:
        """The `[[devices]]` TOML block the agent needs for this machine (default: the running endpoint)."""
        return render_device_toml(
            self.FIELDS,
            name=name or self.DEFAULT_NAME,
            profile=self.PROFILE,
            endpoint=endpoint or self.endpoint,
            unit_id=self.server.default_unit,
            poll_interval=poll_interval,
        )

    @classmethod
    def config_file_text(cls, endpoint: str) -> str:
        """The shipped `config/<kind>.toml`: a complete agent config with this one device and no sinks."""
        header = (
            f"# Device config of the {cls.KIND} simulator (`edge-agent simulate {cls.KIND} --port PORT`).\n"
            f"# Generated from simulators/{cls.KIND.replace('-', '_')}.py: `edge-agent simulate {cls.KIND} "
            "--print-config`.\n# Register addresses are protocol addresses (address_base = 0).\n"
        )
        machine = cls()
        return render_device_toml(
            cls.FIELDS,
            name=cls.DEFAULT_NAME,
            profile=cls.PROFILE,
            endpoint=endpoint,
            unit_id=machine.server.default_unit,
            header=header,
        )

    def values(self) -> dict[str, float]:
        """Engineering values as the simulator last wrote them (what a correct driver must read)."""
        return {}


def simulator_main(machine_cls: type[ModbusMachine], argv: Sequence[str] | None) -> int:
    """Command line of a simulator: serve until Ctrl-C, or print its device config."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog=f"edge-agent simulate {machine_cls.KIND}",
        description=f"Simulated {machine_cls.KIND} behind a Modbus TCP server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fault_list(machine_cls.known_faults()),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    port = machine_cls.DEFAULT_PORT
    config = f"config/{machine_cls.KIND}.toml"
    parser.add_argument(
        "--port",
        type=int,
        default=port,
        help=f"TCP port (default {port}, as in {config}; 0 picks a free one)",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--fault", action="append", default=[], help="inject a fault from the start (repeatable)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the agent config for this simulator and exit"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.print_config:
        print(machine_cls.config_file_text(f"modbus-tcp://{args.host}:{args.port}"), end="")
        return 0
    try:
        machine = machine_cls(speed=args.speed, seed=args.seed, faults=args.fault)
    except ValueError as exc:
        print(f"edge-agent simulate {machine_cls.KIND}: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        port = await machine.start(args.host, args.port)
        active = ", ".join(sorted(machine.active_faults)) or "none"
        print(
            f"{machine_cls.KIND} simulator on modbus-tcp://{args.host}:{port} "
            f"(speed {args.speed:g}x, seed {args.seed}, faults: {active}); Ctrl-C stops it",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await machine.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(cannot_listen(machine_cls.KIND, args.host, args.port, exc), file=sys.stderr)
        return 2
    return 0
