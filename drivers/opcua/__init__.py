"""OPC UA driver: batched reads, subscriptions, cycle events, every security policy, reconnect (README.md here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from edge_agent.drivers.base import DriverPlugin, ReadingsCallback
from edge_agent.drivers.opcua.config import OpcUaDevice, OpcUaEvent, OpcUaOptions, OpcUaTag
from edge_agent.drivers.opcua.discover import DISCOVERY

if TYPE_CHECKING:
    from edge_agent.config_model import DeviceBase
    from edge_agent.drivers.opcua.driver import OpcUaDriver


def _open(
    device: DeviceBase, rows: Mapping[str, int], config_dir: Path, on_readings: ReadingsCallback | None
) -> OpcUaDriver:
    from edge_agent.drivers.opcua.driver import OpcUaDriver  # asyncua only when an OPC UA device is read

    return OpcUaDriver(cast(OpcUaDevice, device), rows, config_dir=config_dir, on_readings=on_readings)


PLUGIN = DriverPlugin(
    protocol="opcua",
    device_model=OpcUaDevice,
    open=_open,
    discovery=DISCOVERY,
    sections=(
        ('[[devices]] with protocol = "opcua"', OpcUaDevice),
        ("[devices.opcua]", OpcUaOptions),
        ("[[devices.tags]] of an OPC UA device", OpcUaTag),
        ("[[devices.events]]", OpcUaEvent),
    ),
)
