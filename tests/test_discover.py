"""`edge-agent discover` against the simulators: the skeletons it prints are valid configs that read."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.drivers.modbus.discover import modbus_skeleton, probe_modbus
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.discover import browse_opcua, opcua_skeleton
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.imm import ImmSimulator

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
