"""`edge-agent discover` against the simulators: the skeletons it prints are valid configs that read."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.drivers.modbus.discover import modbus_skeleton, probe_modbus
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.discover import browse_opcua, opcua_skeleton
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.imm import ImmSimulator
from edge_agent.simulators.opcua_server import SimSecurity, free_port

REPO = Path(__file__).resolve().parent.parent


async def test_opcua_discovery_recognises_euromap77_and_prints_a_valid_config(tmp_path: Path) -> None:
    sim = ImmSimulator(speed=20.0)
    endpoint = await sim.start("127.0.0.1", 0)
    try:
        found = await browse_opcua(endpoint)
    finally:
        await sim.stop()
    assert found.euromap
    text = opcua_skeleton(endpoint, found.variables, found.euromap, name="imm-9", events=found.events)
    config = parse_config(text, "discovered", tmp_path)
    device = config.devices[0]
    assert device.profile == "injection_molding"
    names = {t.name for t in device.tags}
    assert {"machine_mode", "job_cycle_counter", "job_good_parts_counter", "last_cycle_time"} <= names
    # namespace-URI NodeIds: they survive a server that renumbers its namespaces
    assert all(t.node is not None and t.node.startswith("nsu=") for t in device.tags)
    assert "ActualTemperature" in text  # the other variables are listed, commented out
    # the skeleton has the signals of the shipped config: job counters, barrel and mould zones, cycle event
    shipped = parse_config(sim.device_config(), "imm.toml", REPO / "config").devices[0]
    assert isinstance(shipped, OpcUaDevice) and isinstance(device, OpcUaDevice)
    assert sorted(device.signal_names()) == sorted(shipped.signal_names())
    assert {
        t.name: (t.node, t.mode, t.interval, t.deadband, t.unit) for t in device.tags if "zone" in t.name
    } == {t.name: (t.node, t.mode, t.interval, t.deadband, t.unit) for t in shipped.tags if "zone" in t.name}
    assert [(e.name, e.event_type, e.fields) for e in device.events] == [
        (e.name, e.event_type, e.fields) for e in shipped.events
    ]
    commented = re.findall(r'(?m)^# name = "(.*)"$', text)
    assert len(commented) == len(set(commented)), "commented tag names must be unique"
    assert not set(commented) & set(device.signal_names())


async def test_modbus_discovery_finds_the_unit_and_its_readable_ranges(tmp_path: Path) -> None:
    sim = DieCastingSimulator(speed=0.0)
    port = await sim.start("127.0.0.1", 0)
    try:
        units, ranges = await probe_modbus("127.0.0.1", port, [1, 2, 3], max_address=60)
    finally:
        await sim.stop()
    assert units == [1]  # units 2 and 3 answer with exception 0x0B: no device behind the gateway
    holding = [r for r in ranges if r.table == "holding_register"]
    assert holding and holding[0].start == 0
    text = modbus_skeleton("127.0.0.1", port, units, ranges, name="dc-9", profile="die_casting")
    config = parse_config(text, "discovered", tmp_path)
    assert len(config.devices[0].tags) == sum(r.count for r in ranges)


EDGE_AGENT = [sys.executable, "-m", "edge_agent.cli"]


async def _started(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *EDGE_AGENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_discover_waits_for_a_device_that_starts_listening_late() -> None:
    # the tutorial backgrounds a simulator and runs discover at once: the port is not open yet
    port = free_port()
    proc = await _started(
        "discover",
        "modbus",
        f"127.0.0.1:{port}",
        "--units",
        "1",
        "--max-address",
        "20",
        "--profile",
        "die_casting",
    )
    assert proc.stderr is not None
    sim = DieCastingSimulator(speed=0.0)
    try:
        note = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert f"nothing listens at 127.0.0.1:{port} yet" in note.decode()  # it was refused, and waits
        await sim.start("127.0.0.1", port)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 0, err.decode()
    config = parse_config(out.decode(), "discovered")
    assert len(config.devices[0].tags) == 40  # holding and input registers 0..19


async def test_discover_waits_only_for_a_refused_connection() -> None:
    start = time.monotonic()
    proc = await _started("discover", "modbus", "no-such-host.invalid:502", "--wait", "60")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith("discover modbus no-such-host.invalid:502: ")
    assert time.monotonic() - start < 30  # a name that does not resolve is not waited for


async def test_discover_of_a_device_that_never_answers_is_one_line_exit_2() -> None:
    sim = DieCastingSimulator(speed=0.0, faults=["silent"])
    port = await sim.start("127.0.0.1", 0)
    try:
        proc = await _started("discover", "modbus", f"127.0.0.1:{port}", "--units", "1-3")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 2
    assert out == b""  # no skeleton of nothing
    (line,) = err.decode().splitlines()  # no pymodbus frame dumps
    assert f"discover modbus 127.0.0.1:{port}: " in line
    assert "no unit id of 1-3 answered" in line and "--units" in line


async def test_modbus_skeleton_shows_each_register_value_and_guesses_float32_pairs(tmp_path: Path) -> None:
    sim = DieCastingSimulator(speed=0.0, seed=1)
    sim.advance(1800)  # a warm die, some shots: the per-shot floats have values
    port = await sim.start("127.0.0.1", 0)
    try:
        units, ranges = await probe_modbus("127.0.0.1", port, [1], max_address=40)
    finally:
        await sim.stop()
    text = modbus_skeleton("127.0.0.1", port, units, ranges, name="dc-9", profile="die_casting")
    parse_config(text, "discovered", tmp_path)
    words = sim.server.units[1].words
    shown = {
        (table, int(address)): int(value)
        for table, address, value in re.findall(r'name = "u1_(hr|ir)(\d+)"  # = (\d+) ', text)
    }
    assert len(shown) == 80
    for (table, address), value in shown.items():
        assert value == words["holding_register" if table == "hr" else "input_register"][address]
    guesses = {
        (int(a), order): float(value)
        for a, pairs in re.findall(r"(?m)^# hr (\d+)-\d+ as float32: (.*)$", text)
        for order, value in re.findall(r"(ABCD|CDAB) ([-+.e0-9]+)", pairs)
    }
    values = sim.values()
    for name, order in (("phase2_velocity_max", "CDAB"), ("fill_time", "ABCD"), ("melt_temp", "CDAB")):
        field = sim.server.fields[name]
        assert guesses[(field.address, order)] == pytest.approx(values[name], rel=1e-6), name
    # registers holding integers (state, counters, scaled int16 temperatures) are not float candidates
    ints = {f.address for f in sim.FIELDS if f.type in ("uint16", "int16")}
    assert not [a for a, _ in guesses if {a, a + 1} <= ints]


async def test_discover_opcua_of_a_secure_only_server_is_one_line_exit_2(tmp_path: Path) -> None:
    security = SimSecurity.secure(tmp_path, "urn:edge-agent:sim:imm:server", allow_anonymous=True)
    sim = ImmSimulator(speed=1.0, security=security)
    endpoint = await sim.start("127.0.0.1", 0)
    try:
        proc = await _started("discover", "opcua", endpoint)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 2
    assert out == b""
    (line,) = err.decode().splitlines()  # no asyncua traceback
    assert line.startswith(f"discover opcua {endpoint}: ") and "SecurityPolicy None" in line


async def test_discover_opcua_of_a_port_that_never_answers_is_one_line_exit_2() -> None:
    # a hostile server: it accepts the connection and never says a word
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await _started("discover", "opcua", f"opc.tcp://127.0.0.1:{port}", "--timeout", "1")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.close()
    assert proc.returncode == 2
    assert out == b""
    (line,) = err.decode().splitlines()
    assert f"discover opcua opc.tcp://127.0.0.1:{port}: no OPC UA answer within 1 s" in line
