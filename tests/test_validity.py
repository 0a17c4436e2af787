"""Validity of readings: a value outside its tag's valid range, or a raw sentinel, is BAD_SENSOR_FAILURE (NaN),
over Modbus and OPC UA against real servers; the profile's ranges reach the tags through the config loader."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from asyncua import Server, ua

from edge_agent.config import ConfigError, parse_config
from edge_agent.drivers.modbus.config import ModbusDevice
from edge_agent.drivers.modbus.connection import Backoff
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import OpcUaDriver
from edge_agent.simulators.modbus_server import RegisterField, RegisterMapServer, render_device_toml
from edge_agent.types import Quality, Readings, ValidityRules

FIELDS = [
    # a die thermocouple as the die-casting cell maps it: int16, tenths of a degree
    RegisterField("die_temp_1", "holding_register", 0, "int16", scale=0.1, unit="°C"),
    RegisterField("die_temp_2", "holding_register", 1, "int16", scale=0.1, unit="°C"),
    RegisterField("die_temp_3", "holding_register", 2, "int16", scale=0.1, unit="°C"),
    # not in the profile: only its own sentinels apply
    RegisterField("pressure", "holding_register", 3, "int16", scale=0.01, unit="bar"),
    RegisterField("level", "holding_register", 4, "uint16", unit="%"),
    RegisterField("melt_temp", "holding_register", 6, "float32", unit="°C"),
]


def by_tag(names: list[str], readings: Readings) -> dict[str, tuple[float, Quality]]:
    return {
        names[row]: (v, Quality(q))
        for row, v, q in zip(
            readings.signal.tolist(), readings.value.tolist(), readings.quality.tolist(), strict=True
        )
    }


def test_rules_check_ranges_and_raw_sentinels_per_tag() -> None:
    assert ValidityRules.of([(None, None, []), (None, None, [])]) is None  # nothing to check, no cost
    rules = ValidityRules.of([(-40.0, 800.0, []), (None, 10.0, [32767, -32768]), (None, None, [0])])
    assert rules is not None
    value = np.array([800.0, 3276.7, 5.0])
    raw = np.array([8000, 32767, 50])
    assert rules.invalid(value, raw).tolist() == [False, True, False]  # the range is inclusive
    assert rules.invalid(np.array([-40.1, 9.0, 0.0]), np.array([-401, 90, 0])).tolist() == [True, False, True]
    assert rules.invalid(np.array([np.nan, -3276.8, 1.0]), np.array([0, -32768, 1])).tolist() == [
        False,  # NaN is already BAD_VALUE: not this check's to relabel
        True,
        False,
    ]
    quality = np.array([0, 0, Quality.UNCERTAIN], np.uint8)
    value = np.array([1000.0, 1.0, 2.0])
    rules.apply(value, quality, raw=np.array([10000, 10, 0]))
    assert math.isnan(value[0]) and value[1] == 1.0 and math.isnan(value[2])
    assert quality.tolist() == [Quality.BAD_SENSOR_FAILURE, Quality.GOOD, Quality.BAD_SENSOR_FAILURE]


def test_rules_hold_sentinels_in_the_raw_type() -> None:
    # int16: a double holds every value, so the rules compare doubles
    rules = ValidityRules.of([(None, None, []), (None, None, [32767, -32768.0]), (None, None, [7])], np.int16)
    assert rules is not None and not rules.integer
    raw = np.array([0, 0, 7], np.int16)
    assert rules.invalid(raw.astype(np.float64), raw).tolist() == [False, False, True]
    raw = np.array([32767, -32768, 32767], np.int16)
    assert rules.invalid(raw.astype(np.float64), raw).tolist() == [False, True, False]
    assert rules.take(np.array([0, 2])).invalid(np.zeros(2), np.array([0, 7], np.int16)).tolist() == [
        False,
        True,
    ]
    # uint64: integers, exact beyond 2**53 where doubles cannot tell neighbours apart; a tag without
    # sentinels is padded with 0, which must not make a raw 0 a sentinel
    big = ValidityRules.of(
        [(None, None, [2**64 - 1]), (None, None, [2**53 + 1]), (None, None, [])], np.uint64
    )
    assert big is not None and big.integer
    raw64 = np.array([2**64 - 2, 2**53, 0], np.uint64)
    assert big.invalid(raw64.astype(np.float64), raw64).tolist() == [False, False, False]
    raw64 = np.array([2**64 - 1, 2**53 + 1, 2**64 - 1], np.uint64)
    assert big.invalid(raw64.astype(np.float64), raw64).tolist() == [True, True, False]
    assert big.take(np.array([2, 1])).invalid(np.zeros(2), raw64[[2, 1]]).tolist() == [False, True]
    # float32: rounded as the register holds it
    f32 = ValidityRules.of([(None, None, [-9999.9, 3.4028235e38])], np.float32)
    assert f32 is not None and f32.sentinels.tolist() == [
        [float(np.float32(-9999.9)), float(np.finfo(np.float32).max)]
    ]
    # OPC UA: the same double sentinel matches a Float value (single) but not a Double one
    opc = ValidityRules.of([(None, None, [-9999.9]), (None, None, [-9999.9])])
    assert opc is not None
    value = np.full(2, float(np.float32(-9999.9)))
    assert opc.invalid(value).tolist() == [False, False]
    assert opc.invalid(value, single=np.array([True, False])).tolist() == [True, False]


def test_profile_ranges_reach_the_tags_that_give_none() -> None:
    text = render_device_toml(FIELDS, name="dc", profile="die_casting", endpoint="modbus-tcp://h:1")
    text = text.replace('name = "die_temp_2"', 'name = "die_temp_2"\nvalid_max = 400.0', 1)
    text = text.replace('name = "pressure"', 'name = "pressure"\nsentinels = [-32768]', 1)
    device = parse_config(text).devices[0]
    ranges = {t.name: (t.valid_min, t.valid_max, t.sentinels) for t in device.tags}
    assert ranges["die_temp_1"] == (-40.0, 800.0, [])  # config/profiles/die_casting.toml
    assert ranges["die_temp_2"] == (None, 400.0, [])  # the tag's own replaces both of the profile's
    assert ranges["pressure"] == (None, None, [-32768.0])
    assert ranges["melt_temp"] == (-40.0, 1000.0, [])


def test_a_reversed_range_is_a_config_error_naming_the_tag(tmp_path: Path) -> None:
    text = render_device_toml(FIELDS[:1], name="dc", profile="die_casting", endpoint="modbus-tcp://h:1")
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace('unit = "°C"', 'unit = "°C"\nvalid_min = 5.0\nvalid_max = 5.0'))
    assert info.value.problems == ["devices[0].tags[0]: valid_min (5.0) must be below valid_max (5.0)"]
    # a profile's reversed range is named with the device, the tag and the way out
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hot.toml").write_text(
        'description = "x"\nmeasurement = "x"\n'
        '[[signals]]\nname = "die_temp_1"\nvalid_min = 900.0\nvalid_max = 100.0\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace('"die_casting"', '"hot"'), "agent.toml", tmp_path)
    assert info.value.problems == [
        "devices[0] (dc): tag die_temp_1 gets valid_min (900.0) >= valid_max (100.0) from profile 'hot'; "
        "correct the profile, or give the tag `valid_min` and `valid_max`, which replace the profile's"
    ]


@pytest.fixture
async def plc() -> AsyncIterator[RegisterMapServer]:
    server = RegisterMapServer(FIELDS)
    await server.start()
    yield server
    await server.stop()


async def test_modbus_readings_outside_their_range_or_at_a_sentinel_are_bad_sensor(
    plc: RegisterMapServer,
) -> None:
    text = render_device_toml(
        FIELDS, name="dc", profile="die_casting", endpoint=f"modbus-tcp://127.0.0.1:{plc.port}"
    )
    text = text.replace('name = "pressure"', 'name = "pressure"\nsentinels = [32767, -32768]', 1)
    text = text.replace('name = "level"', 'name = "level"\nvalid_min = 0.0\nvalid_max = 100.0', 1)
    device = parse_config(text).devices[0]
    assert isinstance(device, ModbusDevice)
    names = device.signal_names()
    driver = ModbusDriver(device, {n: i for i, n in enumerate(names)}, backoff=Backoff(0.05, 0.2))
    plc.write("die_temp_1", 212.5)
    plc.write_raw("die_temp_2", 32767)  # over-range: 3276.7 °C
    plc.write_raw("die_temp_3", -32768)  # under-range: -3276.8 °C
    plc.write_raw("pressure", -32768)  # the module's "no reading", -327.68 bar once scaled
    plc.write("level", 101)
    plc.write("melt_temp", 1500.0)  # a float beyond the profile's 1000 °C
    try:
        got = by_tag(names, Readings.concat([await driver.read(g) for g in driver.groups()]))
        assert got["die_temp_1"] == (212.5, Quality.GOOD)
        for name in ("die_temp_2", "die_temp_3", "pressure", "level", "melt_temp"):
            assert math.isnan(got[name][0]) and got[name][1] == Quality.BAD_SENSOR_FAILURE, name
        # the sensor mended: good again on the next poll
        plc.write("die_temp_2", 640.0)
        plc.write("pressure", -327.67)
        plc.write("level", 100)
        plc.write("melt_temp", 680.0)
        got = by_tag(names, Readings.concat([await driver.read(g) for g in driver.groups()]))
        assert got["die_temp_2"] == (640.0, Quality.GOOD)
        assert got["pressure"] == (-327.67, Quality.GOOD)
        assert got["level"] == (100.0, Quality.GOOD)
        assert got["melt_temp"] == (680.0, Quality.GOOD)
    finally:
        await driver.close()


class Notifications:
    """The batches a driver delivers on its own, handed out one by one as they come."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Readings] = asyncio.Queue()

    def __call__(self, batch: Readings) -> None:
        self.queue.put_nowait(batch)

    async def next(self, within_s: float = 5.0) -> Readings:
        return await asyncio.wait_for(self.queue.get(), within_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def opcua_server() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A plain asyncua server with two thermocouples and a level, on a free port."""
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/validity"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:validity")
    machine = await server.nodes.objects.add_object(ns, "Machine")
    nodes = {
        "zone_1_temp": await machine.add_variable(f"ns={ns};s=Zone1", "Zone1", 905.0),
        "zone_2_temp": await machine.add_variable(f"ns={ns};s=Zone2", "Zone2", 3276.7),
        "level": await machine.add_variable(f"ns={ns};s=Level", "Level", -32768.0),
    }
    async with server:
        yield endpoint, nodes


async def test_opcua_polled_and_subscribed_values_outside_their_range_are_bad_sensor(
    opcua_server: tuple[str, dict[str, object]],
) -> None:
    endpoint, nodes = opcua_server
    text = f"""
[[devices]]
name = "furnace"
protocol = "opcua"
profile = "furnace"
endpoint = "{endpoint}"
opcua = {{ security_policy = "None", security_mode = "None", allow_insecure = true }}
tags = [
  {{ name = "zone_1_temp", node = "ns=2;s=Zone1" }},
  {{ name = "zone_2_temp", node = "ns=2;s=Zone2" }},
  {{ name = "level", node = "ns=2;s=Level", sentinels = [-32768] }},
  {{ name = "zone_3_temp", node = "ns=2;s=Zone2", mode = "subscribe", interval = 0.05 }},
]
"""
    device = parse_config(text).devices[0]
    assert isinstance(device, OpcUaDevice)
    names = device.signal_names()
    notified = Notifications()
    driver = OpcUaDriver(
        device, {n: i for i, n in enumerate(names)}, config_dir=Path("."), on_readings=notified
    )
    await driver.connect()
    try:
        (group,) = driver.groups()
        got = by_tag(names, await driver.read(group))
        assert got["zone_1_temp"] == (905.0, Quality.GOOD)
        for name in ("zone_2_temp", "level"):
            assert math.isnan(got[name][0]) and got[name][1] == Quality.BAD_SENSOR_FAILURE, name
        # the subscribed thermocouple sits at 3276.7 too: its notification is refused the same way
        first = by_tag(names, await notified.next())
        assert math.isnan(first["zone_3_temp"][0]) and first["zone_3_temp"][1] == Quality.BAD_SENSOR_FAILURE
        sub = by_tag(names, await driver.read_subscribed())
        assert sub["zone_3_temp"][1] == Quality.BAD_SENSOR_FAILURE
        await nodes["zone_2_temp"].write_value(910.0)  # type: ignore[attr-defined]
        assert by_tag(names, await notified.next())["zone_3_temp"] == (910.0, Quality.GOOD)
        assert by_tag(names, await driver.read(group))["zone_2_temp"] == (910.0, Quality.GOOD)
    finally:
        await driver.close()


# Sentinels compared in the tag's wire type: a float32 register holding -9999.9 holds -9999.900390625,
# which a float64 sentinel -9999.9 never equals; 64-bit integers are compared as integers, not as doubles.
WIRE_FIELDS = [
    RegisterField("trip_setpoint", "holding_register", 0, "float32"),
    RegisterField("flow_max", "holding_register", 2, "float32"),
    RegisterField("flow_scaled", "holding_register", 4, "float32", scale=0.5),
    RegisterField("flow_cdab", "holding_register", 8, "float32", byte_order="CDAB"),
    RegisterField("energy", "holding_register", 12, "uint64"),
    RegisterField("strokes", "holding_register", 16, "int64"),
]
WIRE_SENTINELS = {
    "trip_setpoint": "[-9999.9]",
    "flow_max": "[3.4028235e38]",  # FLT_MAX as a datasheet prints it
    "flow_scaled": "[-9999.9]",  # raw, before the scale
    "flow_cdab": "[-9999.9]",
    "energy": "[18446744073709551615]",  # SunSpec's uint64 "not implemented"
    "strokes": "[9007199254740993]",  # 2**53 + 1: no double holds it
}


@pytest.fixture
async def wire_plc() -> AsyncIterator[RegisterMapServer]:
    server = RegisterMapServer(WIRE_FIELDS)
    await server.start()
    yield server
    await server.stop()


async def test_modbus_sentinels_are_compared_in_the_registers_own_type(wire_plc: RegisterMapServer) -> None:
    text = render_device_toml(
        WIRE_FIELDS, name="press", profile="die_casting", endpoint=f"modbus-tcp://127.0.0.1:{wire_plc.port}"
    )
    for name, sentinels in WIRE_SENTINELS.items():
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nsentinels = {sentinels}\n', 1)
    device = parse_config(text).devices[0]
    assert isinstance(device, ModbusDevice)
    assert {t.name: t.sentinels for t in device.tags}["energy"] == [2**64 - 1]  # kept an integer, exactly
    names = device.signal_names()
    driver = ModbusDriver(device, {n: i for i, n in enumerate(names)}, backoff=Backoff(0.05, 0.2))
    # the device sends exactly its sentinel, in its own register type
    for name in ("trip_setpoint", "flow_scaled", "flow_cdab"):
        wire_plc.write_raw(name, -9999.9)
    wire_plc.write_raw("flow_max", 3.4028235e38)
    wire_plc.write_raw("energy", 2**64 - 1)
    wire_plc.write_raw("strokes", 2**53 + 1)
    try:
        got = by_tag(names, Readings.concat([await driver.read(g) for g in driver.groups()]))
        for name in WIRE_SENTINELS:
            assert math.isnan(got[name][0]) and got[name][1] == Quality.BAD_SENSOR_FAILURE, (name, got[name])
        # neighbours of the sentinels are real readings
        for name in ("trip_setpoint", "flow_scaled", "flow_cdab"):
            wire_plc.write_raw(name, -9999.8)
        wire_plc.write_raw("flow_max", 3.4028233e38)
        wire_plc.write_raw("energy", 2**64 - 2)
        wire_plc.write_raw("strokes", 2**53)  # the double nearest 2**53 + 1: not the sentinel
        got = by_tag(names, Readings.concat([await driver.read(g) for g in driver.groups()]))
        near = float(np.float32(-9999.8))
        assert got["trip_setpoint"] == (near, Quality.GOOD)
        assert got["flow_scaled"] == (near * 0.5, Quality.GOOD)
        assert got["flow_cdab"] == (near, Quality.GOOD)
        assert got["flow_max"] == (float(np.float32(3.4028233e38)), Quality.GOOD)
        assert got["energy"] == (float(2**64 - 2), Quality.GOOD)
        assert got["strokes"] == (float(2**53), Quality.GOOD)
    finally:
        await driver.close()


@pytest.mark.parametrize(
    ("type_", "sentinels", "kept"),
    [
        ("float32", [-9999.9, 3.4028235e38], [-9999.9, 3.4028235e38]),  # compared after rounding to float32
        ("int16", [32767, -32768.0], [32767, -32768.0]),
        ("uint64", [0, 18446744073709551615], [0, 18446744073709551615]),
        ("float64", [-1e300], [-1e300]),
    ],
)
def test_modbus_sentinels_a_register_can_hold_are_accepted(
    type_: str, sentinels: list[float], kept: list[float]
) -> None:
    from edge_agent.drivers.modbus.config import ModbusTag

    assert ModbusTag(name="t", address=0, type=type_, sentinels=sentinels).sentinels == kept  # type: ignore[arg-type]


async def test_opcua_float_variables_match_their_sentinel_in_float32() -> None:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/float32"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:float32")
    machine = await server.nodes.objects.add_object(ns, "Machine")
    f32 = ua.VariantType.Float
    trip = await machine.add_variable(f"ns={ns};s=Trip", "Trip", ua.Variant(-9999.9, f32))
    await machine.add_variable(f"ns={ns};s=Max", "Max", ua.Variant(3.4028235e38, f32))
    # a Double holding the float32 neighbour of -9999.9 is a real reading: only Float is compared in float32
    await machine.add_variable(
        f"ns={ns};s=Wide", "Wide", ua.Variant(float(np.float32(-9999.9)), ua.VariantType.Double)
    )
    text = f"""
[[devices]]
name = "oven"
protocol = "opcua"
profile = "furnace"
endpoint = "{endpoint}"
opcua = {{ security_policy = "None", security_mode = "None", allow_insecure = true }}
tags = [
  {{ name = "trip", node = "ns=2;s=Trip", sentinels = [-9999.9] }},
  {{ name = "max", node = "ns=2;s=Max", sentinels = [3.4028235e38] }},
  {{ name = "wide", node = "ns=2;s=Wide", sentinels = [-9999.9] }},
  {{ name = "trip_sub", node = "ns=2;s=Trip", sentinels = [-9999.9], mode = "subscribe", interval = 0.05 }},
  {{ name = "trip_slow", node = "ns=2;s=Trip", sentinels = [-9999.9], interval = 5.0 }},
  {{ name = "ghost", node = "ns=2;s=NoSuchNode", interval = 5.0 }},
]
"""
    device = parse_config(text).devices[0]
    assert isinstance(device, OpcUaDevice)
    names = device.signal_names()
    notified = Notifications()
    driver = OpcUaDriver(
        device, {n: i for i, n in enumerate(names)}, config_dir=Path("."), on_readings=notified
    )
    async with server:
        await driver.connect()
        try:
            got = by_tag(names, Readings.concat([await driver.read(g) for g in driver.groups()]))
            for name in ("trip", "max", "trip_slow"):  # trip_slow shares its group with an unknown node
                assert math.isnan(got[name][0]) and got[name][1] == Quality.BAD_SENSOR_FAILURE, (
                    name,
                    got[name],
                )
            assert got["wide"] == (float(np.float32(-9999.9)), Quality.GOOD)
            assert got["ghost"][1] == Quality.BAD_CONFIG
            first = by_tag(names, await notified.next())
            assert math.isnan(first["trip_sub"][0]) and first["trip_sub"][1] == Quality.BAD_SENSOR_FAILURE
            sub = by_tag(names, await driver.read_subscribed())
            assert sub["trip_sub"][1] == Quality.BAD_SENSOR_FAILURE
            await trip.write_value(ua.Variant(-9999.8, f32))
            assert by_tag(names, await notified.next())["trip_sub"] == (
                float(np.float32(-9999.8)),
                Quality.GOOD,
            )
        finally:
            await driver.close()
