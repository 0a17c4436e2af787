"""Polls one device's scan classes on a monotonic clock: overruns are counted and skipped, never piled up."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.drivers.base import Driver, TagGroup
from edge_agent.types import Readings

log = logging.getLogger(__name__)

#: Receives every batch a poll produced: (device name, group, readings, read latency in s).
PollSink = Callable[[str, TagGroup, Readings, float], None]


@dataclass
class PollStats:
    """Counters of one device's poller, read by the self-metrics."""

    polls: int = 0
    overruns: int = 0
    skipped: int = 0
    values: int = 0
    errors: int = 0
    last_latency_s: float = math.nan
    latencies: list[float] = field(default_factory=list)

    def take_latencies(self) -> list[float]:
        """Latencies since the last call (for a histogram), emptying the buffer."""
        out, self.latencies = self.latencies, []
        return out


@dataclass
class _Slot:
    group: TagGroup
    due: float
    phase: float = 0.0
    """Offset of this slot's grid, applied once after the first read."""


#: Phases are whole multiples of this: devices that share one are processed and sent together.
PHASE_STEP_S = 0.05


def phase_of(device: str, interval_s: float) -> float:
    """Where in its period a device's scan class polls: a stable offset per device, on a 50 ms grid.

    A hundred devices started together would otherwise poll in the same instant every period,
    and the whole agent would work in bursts (each sample waiting behind the other 99). Spread
    one by one, every poll would go through the sinks alone (an outbox transaction, a send, an
    ack each) and the agent would spend three times the CPU. On a 50 ms grid, at most 20
    groups a second go through together, whatever the number of devices. The offset comes from
    a hash of the name, so it survives restarts and reloads (Prometheus spreads scrapes alike).
    """
    steps = math.floor(interval_s / PHASE_STEP_S)
    if steps <= 1:
        return 0.0
    return (zlib.crc32(device.encode()) % steps) * PHASE_STEP_S


class DevicePoller:
    """One task per device connection; each tag group (scan class) has its own period on that task.

    Groups share the connection, so their reads are sequential; a group whose read ends after its
    next due time has overrun: the missed slots are skipped and counted, so a slow device falls
    behind by whole periods instead of queueing reads it can no longer use.
    """

    def __init__(
        self,
        driver: Driver,
        deliver: PollSink,
        clock: Callable[[], float] = time.monotonic,
        spread: bool = True,
    ) -> None:
        self.driver = driver
        self.deliver = deliver
        self.clock = clock
        self.spread = spread
        self.stats = PollStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> asyncio.Task[None]:
        """Start polling in a task of the running loop."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"poll:{self.driver.name}")
        return self._task

    async def stop(self) -> None:
        """Stop polling and wait for the task to end (the driver stays open)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        start = self.clock()
        # the first read of every group at once (a fresh start shows values immediately), then each
        # group on its own grid, offset by the device's phase
        slots = [
            _Slot(g, start, phase_of(self.driver.name, g.interval_s) if self.spread else 0.0)
            for g in self.driver.groups()
        ]
        if not slots:
            return
        task = asyncio.current_task()
        while not self._stopping:
            slot = min(slots, key=lambda s: s.due)
            delay = slot.due - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._poll(slot.group)
            if task is not None and task.cancelling():
                # a protocol library swallowed our cancellation inside the read (seen with pymodbus
                # under load): honour it here, or stop() would wait on a poller that never ends
                raise asyncio.CancelledError
            self._advance(slot)

    async def _poll(self, group: TagGroup) -> None:
        began = self.clock()
        try:
            readings = await self.driver.read(group)
        except Exception:
            # drivers report per-tag failures as qualities; an exception here is a driver bug,
            # logged with its traceback once per poll rather than killing the device's task
            self.stats.errors += 1
            log.exception("device %s: read of %d tags failed", self.driver.name, len(group.tags))
            return
        latency = self.clock() - began
        self.stats.polls += 1
        self.stats.values += len(readings)
        self.stats.last_latency_s = latency
        self.stats.latencies.append(latency)
        self.deliver(self.driver.name, group, readings, latency)

    def _advance(self, slot: _Slot) -> None:
        period = slot.group.interval_s
        slot.due += slot.phase
        slot.phase = 0.0
        now = self.clock()
        if now <= slot.due + period:
            slot.due += period
            return
        # the read ended after the next slot began: skip every slot that began meanwhile
        missed = math.floor((now - slot.due) / period)
        self.stats.overruns += 1
        self.stats.skipped += missed
        slot.due += (missed + 1) * period
