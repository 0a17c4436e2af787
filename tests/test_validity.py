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
