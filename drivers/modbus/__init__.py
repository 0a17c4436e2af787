"""Modbus TCP driver: request planning, decoding, shared connections with reconnect backoff (README.md here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from edge_agent.drivers.base import DriverPlugin, ReadingsCallback
from edge_agent.drivers.modbus.config import ModbusDevice, ModbusOptions, ModbusTag
from edge_agent.drivers.modbus.discover import DISCOVERY

if TYPE_CHECKING:
    from edge_agent.config_model import DeviceBase
    from edge_agent.drivers.modbus.driver import ModbusDriver


def _open(
    device: DeviceBase, rows: Mapping[str, int], config_dir: Path, on_readings: ReadingsCallback | None
) -> ModbusDriver:
    from edge_agent.drivers.modbus.driver import ModbusDriver  # pymodbus only when a Modbus device is polled

    return ModbusDriver(cast(ModbusDevice, device), rows)


PLUGIN = DriverPlugin(
    protocol="modbus",
    device_model=ModbusDevice,
    open=_open,
    discovery=DISCOVERY,
    sections=(
        ('[[devices]] with protocol = "modbus"', ModbusDevice),
        ("[devices.modbus]", ModbusOptions),
        ("[[devices.tags]] of a Modbus device", ModbusTag),
    ),
)
