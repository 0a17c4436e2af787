"""The driver contract: connect, read a tag group as one Readings batch, close; and the factory that picks one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.config import ModbusDevice, OpcUaDevice
from edge_agent.types import Readings


@dataclass(frozen=True, slots=True)
class TagGroup:
    """Tags of one device polled together at one interval (a scan class)."""

    interval_s: float
    """Poll interval of the group."""
    tags: tuple[str, ...]
    """Tag names, in config order."""


def scan_groups(tags: Sequence[tuple[str, float | None, bool]], default_interval: float) -> list[TagGroup]:
    """Group (name, interval, polled) tags by interval, fastest first; tags not polled are left out."""
    by_interval: dict[float, list[str]] = {}
    for name, interval, polled in tags:
        if polled:
            by_interval.setdefault(interval or default_interval, []).append(name)
    return [TagGroup(iv, tuple(names)) for iv, names in sorted(by_interval.items())]


#: Called with every batch a driver receives on its own (subscriptions, events).
ReadingsCallback = Callable[[Readings], None]


class Driver(Protocol):
    """What the scheduler needs from a protocol driver."""

    name: str

    def groups(self) -> list[TagGroup]:
        """The polled tag groups (scan classes) of the device."""

    async def connect(self) -> None:
        """Open the connection (and subscriptions); retried by the driver itself after a loss."""

    async def read(self, group: TagGroup) -> Readings:
        """One batched read of a group; per-tag failures are bad qualities, not exceptions."""

    async def close(self) -> None:
        """Close the connection; idempotent."""


def make_driver(
    device: ModbusDevice | OpcUaDevice,
    rows: Mapping[str, int],
    config_dir: Path,
    on_readings: ReadingsCallback | None = None,
) -> Driver:
    """Build the driver for a configured device; `rows` maps its signal names to signal-table rows."""
    if isinstance(device, ModbusDevice):
        from drivers.modbus import ModbusDriver

        return ModbusDriver(device, rows)
    from drivers.opcua import OpcUaDriver

    return OpcUaDriver(device, rows, config_dir=config_dir, on_readings=on_readings)
