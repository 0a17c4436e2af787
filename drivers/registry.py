"""The protocol drivers the agent knows, one line each: the config's device union and the driver factory are built from it."""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from edge_agent.config_model import DeviceBase
from edge_agent.drivers.base import Driver, DriverPlugin, ReadingsCallback

#: Driver packages, each exporting PLUGIN (a DriverPlugin). Adding a protocol is adding its package and a line.
PACKAGES = (
    "edge_agent.drivers.modbus",
    "edge_agent.drivers.opcua",
)

DRIVERS: dict[str, DriverPlugin] = {}
for _package in PACKAGES:
    _plugin: DriverPlugin = importlib.import_module(_package).PLUGIN
    DRIVERS[_plugin.protocol] = _plugin

if TYPE_CHECKING:
    Device = DeviceBase
else:
    #: One `[[devices]]` entry: the union of the registered device models, told apart by `protocol`.
    Device = Annotated[
        functools.reduce(operator.or_, (p.device_model for p in DRIVERS.values())),
        Field(discriminator="protocol"),
    ]


def make_driver(
    device: DeviceBase,
    rows: Mapping[str, int],
    config_dir: Path,
    on_readings: ReadingsCallback | None = None,
) -> Driver:
    """Build the driver for a configured device; `rows` maps its signal names to signal-table rows."""
    return DRIVERS[device.protocol].open(device, rows, config_dir, on_readings)
