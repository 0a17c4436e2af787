"""`edge-agent read`: poll every configured device once and print one JSON line per tag, to check a register map."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from edge_agent.config import Config, ConfigError, load_config
from edge_agent.config_model import DeviceBase
from edge_agent.drivers.base import Subscribing
from edge_agent.types import Quality, Readings, SignalTable

#: Qualities that mean "the device did not answer" (as opposed to answering with an error).
NO_ANSWER = frozenset({Quality.BAD_NOT_CONNECTED, Quality.BAD_TIMEOUT})

#: Seconds `read` and `discover` wait for a device that refuses connections (it may be starting).
DEFAULT_WAIT_S = 10.0


async def wait_until_listening(
    host: str, port: int, wait_s: float, note: Callable[[str], None] | None = None
) -> bool:
    """Wait up to `wait_s` for host:port to accept a TCP connection; only "refused" is retried.

    A device started a moment ago (a simulator put in the background) refuses until it listens;
    anything else (a name that does not resolve, no route, no answer) is not waited for: the
    caller's own connect reports it. True if a connection was accepted.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.1
    told = False
    while True:
        try:
            # a dropped SYN is not a refusal: one bounded attempt, then the caller's connect reports
            async with asyncio.timeout(min(max(deadline - loop.time(), 1.0), 3.0)):
                _, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            if loop.time() + delay > deadline:
                return False
            if note is not None and not told:
                note(f"nothing listens at {host}:{port} yet (connection refused); waiting up to {wait_s:g} s")
                told = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of a device endpoint URL, or None when it names no port."""
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


@dataclass
class DeviceResult:
    """What one device gave in one commissioning read."""

    device: str
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    """Why the device did not answer (None if it did)."""
    notes: list[str] = field(default_factory=list)
    """What the read could not show, and why (printed to stderr)."""


def _iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


async def read_device(
    device: DeviceBase, table: SignalTable, config_dir: Path, timeout_s: float = 30.0, wait_s: float = 0.0
) -> DeviceResult:
    """Connect (waiting up to `wait_s` for a refusing device), read every group once, close; failures become `error`."""
    from edge_agent.drivers.registry import make_driver

    result = DeviceResult(device.name)
    where = f"device {device.name} ({device.endpoint})"
    rows = {name: table.add(device.name, name) for name in device.signal_names()}
    try:
        driver = make_driver(device, rows, config_dir)
    except ModuleNotFoundError as exc:
        result.error = f"{where}: no driver for protocol {device.protocol!r} (module {exc.name} is missing)"
        return result
    except (ValueError, KeyError) as exc:
        result.error = f"{where}: {exc}"
        return result
    address = endpoint_address(device.endpoint)
    if address is not None and wait_s > 0:
        await wait_until_listening(
            *address, wait_s, note=lambda text: print(f"{where}: {text}", file=sys.stderr)
        )
    units = device.units()
    answered = False

    def add(readings: Readings) -> None:
        nonlocal answered
        for row, t, v, q in zip(
            readings.signal.tolist(),
            readings.t_ns.tolist(),
            readings.value.tolist(),
            readings.quality.tolist(),
            strict=True,
        ):
            quality = Quality(q)
            answered = answered or quality not in NO_ANSWER
            tag = table.tags[row]
            result.records.append(
                {
                    "device": device.name,
                    "tag": tag,
                    "value": None if np.isnan(v) else v,
                    "unit": units.get(tag, ""),
                    "quality": quality.name,
                    "timestamp": _iso(t),
                }
            )

    try:
        async with asyncio.timeout(timeout_s):
            await driver.connect()
            for group in driver.groups():
                add(await driver.read(group))
            if isinstance(driver, Subscribing):
                # the agent gets these by notification; one Read shows their current values
                add(await driver.read_subscribed())
                await _check_events(driver, result)
            # text tags (Modbus strings) are not numbers, so the driver keeps them aside
            texts: dict[str, tuple[str, Quality]] = getattr(driver, "last_strings", {})
            for tag, (text, quality) in texts.items():
                answered = answered or quality not in NO_ANSWER
                result.records.append(
                    {
                        "device": device.name,
                        "tag": tag,
                        "value": text if not quality.is_bad else None,
                        "unit": units.get(tag, ""),
                        "quality": quality.name,
                        "timestamp": _iso(int(datetime.now(UTC).timestamp() * 1e9)),
                    }
                )
    except TimeoutError:
        result.error = f"{where}: no complete answer within {timeout_s:g} s"
    except Exception as exc:
        result.error = f"{where}: {type(exc).__name__}: {exc}"
    finally:
        try:
            await driver.close()
        except Exception as exc:
            result.error = result.error or f"{where}: close failed: {exc}"
    order = {name: i for i, name in enumerate(device.signal_names())}
    result.records.sort(key=lambda r: order.get(r["tag"], len(order)))
    if result.error is None and not answered:
        reason = getattr(driver, "last_error", None) or "every value is bad (not connected or timed out)"
        result.error = f"{where}: no answer: {reason}"
    return result


async def _check_events(driver: Subscribing, result: DeviceResult) -> None:
    """Event fields have no value until an event comes: check them against the event type, note the rest."""
    problems = await driver.check_events()
    now = _iso(time.time_ns())
    for tag, why in problems.items():
        if why is not None:
            record = {"device": driver.name, "tag": tag, "value": None, "unit": "", "quality": "BAD_CONFIG"}
            result.records.append({**record, "timestamp": now, "problem": why})
    by_event: dict[str, list[str]] = {}
    for signal, event in driver.event_of_signal().items():
        if problems.get(signal, "") is None:
            by_event.setdefault(event, []).append(signal)
    for event, ok in by_event.items():
        result.notes.append(
            f"device {driver.name}: event {event!r}: {len(ok)} field(s) ({', '.join(ok)}) are in "
            "its event type but not shown: their values arrive only with an event (run the agent)"
        )


async def read_devices(
    config: Config, config_dir: Path, names: Sequence[str] | None = None, wait_s: float = 0.0
) -> list[DeviceResult]:
    """Read the selected devices (all enabled ones if `names` is None) concurrently, in config order."""
    devices = [
        d for d in config.devices if (names is None and d.enabled) or (names is not None and d.name in names)
    ]
    table = SignalTable()
    return list(await asyncio.gather(*(read_device(d, table, config_dir, wait_s=wait_s) for d in devices)))


def read_command(args: argparse.Namespace) -> int:
    """Entry of `edge-agent read -c FILE [--device NAME] [--wait S]`: 0 if every device answered, 1 if not, 2 on bad input."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    names: list[str] | None = args.device
    if names:
        known = [d.name for d in config.devices]
        unknown = [n for n in names if n not in known]
        if unknown:
            print(
                f"{args.config}: no device named {', '.join(map(repr, unknown))}; "
                f"devices in the file: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )
            return 2
    # Reconnect notices are for the long-running agent; here each failing device gets one
    # reason line below, so the drivers' and pymodbus' own lines would only repeat it
    # (unless --log-level asked for them).
    if not getattr(args, "log_level", None):
        for name in ("pymodbus", "edge_agent.modbus", "asyncua"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    wait_s = getattr(args, "wait", DEFAULT_WAIT_S)
    results = asyncio.run(read_devices(config, Path(args.config).resolve().parent, names, wait_s))
    out = sys.stdout.buffer
    for result in results:
        for record in result.records:
            out.write(orjson.dumps(record) + b"\n")
    out.flush()
    for result in results:
        for note in result.notes:
            print(note, file=sys.stderr)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(r.error, file=sys.stderr)
    if not results:
        print(f"{args.config}: no enabled device to read", file=sys.stderr)
        return 1
    return 1 if failed else 0
