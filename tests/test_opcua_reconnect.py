"""OPC UA reconnects for real: start before the server, server restarts with reordered namespaces, outages."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import OpcUaDriver
from edge_agent.simulators.imm import IMM2MES_URI, SIM_URI, ImmSimulator
from edge_agent.simulators.opcua_server import free_port
from edge_agent.types import Quality, Readings

pytestmark = pytest.mark.slow
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
EVENT_SIGNALS = ("cushion", "injection_time", "dosing_time", "peak_pressure", "vp_position", "cycle_time")


def device_of(sim: ImmSimulator) -> tuple[OpcUaDevice, dict[str, int]]:
    """The shipped IMM config pointed at `sim`, with its signal rows."""
    device = parse_config(sim.device_config(), base_dir=CONFIG_DIR).devices[0]
    assert isinstance(device, OpcUaDevice)
    return device, {name: i for i, name in enumerate(device.signal_names())}


async def until(predicate: object, within_s: float, what: str) -> None:
    """Wait until `predicate()` is true."""
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_starting_while_the_server_is_down(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    sim = ImmSimulator(speed=10.0, cycle_s=2.0)
    sim.endpoint = f"opc.tcp://127.0.0.1:{port}/imm"
    device, rows = device_of(sim)
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR, retry_delay=(0.1, 0.3))
    with caplog.at_level(logging.INFO, logger="edge_agent.drivers.opcua"):
        await driver.connect()  # does not raise: the device may come up later
        try:
            assert not driver.connected
            batch = await driver.read(driver.groups()[0])
            assert (batch.quality == Quality.BAD_NOT_CONNECTED).all() and np.isnan(batch.value).all()
            await asyncio.sleep(1.0)  # several retries
            await sim.start(port=port)
            await until(lambda: driver.connected, 5.0, "the driver to connect")
            batch = await driver.read(driver.groups()[0])
            assert (batch.quality == Quality.GOOD).all()
        finally:
            await driver.close()
            await sim.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.drivers.opcua"]
    assert sum("cannot connect" in line for line in lines) == 1, lines  # one line per state change
    assert sum(line.endswith(": connected") for line in lines) == 1, lines


async def test_restart_with_reordered_namespaces_resubscribes_once() -> None:
    sim = ImmSimulator(speed=10.0, cycle_s=1.0, seed=3)
    await sim.start()
    device, rows = device_of(sim)
    batches: list[Readings] = []
    driver = OpcUaDriver(
        device, rows, config_dir=CONFIG_DIR, on_readings=batches.append, retry_delay=(0.1, 0.5)
    )
    event_rows = {rows[s] for s in EVENT_SIGNALS}

    def events() -> list[Readings]:
        return [
            b for b in batches if set(b.signal.tolist()) == event_rows and (b.quality == Quality.GOOD).all()
        ]

    try:
        await driver.connect()
        await until(lambda: len(events()) >= 5, 5.0, "events")
        items_before = sim.monitored_item_count()
        assert items_before == 5  # four zones and one event item
        ns_before = dict(sim.ns)
        down_at = time.time_ns()
        await sim.restart(reorder_namespaces=True, downtime_s=1.0)
        up_at = time.time_ns()
        assert sim.ns[SIM_URI] != ns_before[SIM_URI] and sim.ns[IMM2MES_URI] != ns_before[IMM2MES_URI]
        await until(lambda: driver.stats.connects == 2 and driver.connected, 10.0, "the reconnect")
        n_events = len(events())
        await until(lambda: len(events()) >= n_events + 5, 5.0, "events after the restart")
        # re-created exactly once: the same number of monitored items, one session's worth
        assert sim.monitored_item_count() == items_before
        assert driver.stats.connects == 2
        # values resolved through the new namespace indices
        for group in driver.groups():
            batch = await driver.read(group)
            assert (batch.quality == Quality.GOOD).all(), batch.quality
        mode = (await driver.read(driver.groups()[0])).value[0]
        assert mode == 1.0
        # subscribed signals were reported not connected during the outage
        assert any((b.quality == Quality.BAD_NOT_CONNECTED).all() for b in batches)
        # no duplicate events: each cycle counter value arrives once
        stamps = [int(b.t_ns[0]) for b in events()]
        assert len(stamps) == len(set(stamps))
        # the gap in the event stream is the outage, not more
        gaps = np.diff(np.array(stamps))
        outage_ns = up_at - down_at
        assert gaps.max() >= 1.0e9  # the server really was down for a second
        assert gaps.max() <= outage_ns + 1.0e9, (gaps.max() / 1e9, outage_ns / 1e9)
    finally:
        await driver.close()
        await sim.stop()
