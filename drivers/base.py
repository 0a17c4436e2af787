"""The driver contract: connect, read a tag group as one Readings batch, close; and what a driver package registers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edge_agent.config_model import DeviceBase
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


@runtime_checkable
class Subscribing(Protocol):
    """A driver that also gets values by notification (subscriptions, events); `edge-agent read` shows them."""

    name: str

    async def read_subscribed(self) -> Readings:
        """One Read of the subscribed tags, for a person checking a config."""

    async def check_events(self) -> dict[str, str | None]:
        """Each event-field signal -> None if its event type has the field, else what is wrong."""

    def event_of_signal(self) -> dict[str, str]:
        """Each event-field signal -> the name of its event, in config order."""


class DiscoveryError(Exception):
    """Discovery found nothing usable; the message is one line saying where and what to check."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """A driver's `edge-agent discover PROTOCOL TARGET`: what TARGET is, the driver's options, the browse itself."""

    summary: str
    """What it does, one line for `edge-agent discover --help`."""
    target: str
    """What TARGET looks like, for the help (e.g. `HOST:PORT`)."""
    address: Callable[[str], tuple[str, int]]
    """TARGET -> (host, port) the command waits for; raises ValueError saying the expected form."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the driver's own options; the command adds TARGET, --name, --profile and --wait."""
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, str]]
    """Browses the target and returns the config skeleton; raises DiscoveryError if there is nothing to write."""
    quiet_loggers: tuple[str, ...] = ()
    """Loggers of the protocol library that discovery silences: the command reports a failure in one line."""


#: Builds a device's driver: (device config, signal name -> signal-table row, config folder, callback).
DriverFactory = Callable[[DeviceBase, Mapping[str, int], Path, ReadingsCallback | None], Driver]


@dataclass(frozen=True, slots=True)
class DriverPlugin:
    """What a driver package exports as `PLUGIN`; drivers/registry.py lists the packages, one line each."""

    protocol: str
    """The `protocol` value of its `[[devices]]` entries."""
    device_model: type[DeviceBase]
    """The pydantic model of such a device (with `protocol: Literal[...]`), the config schema's union member."""
    open: DriverFactory
    """Builds the driver; imports the protocol library only when called, so loading a config stays light."""
    sections: tuple[tuple[str, type], ...] = ()
    """(TOML header, model) of the driver's config sections, in reading order, for docs/configuration.md."""
    discovery: Discovery | None = None
    """`edge-agent discover PROTOCOL`, if the protocol can browse a device; None: not offered."""
