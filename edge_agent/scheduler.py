"""Polls one device's scan classes on a monotonic clock: overruns are counted and skipped, never piled up."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import Driver, TagGroup
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
    ) -> None:
        self.driver = driver
        self.deliver = deliver
        self.clock = clock
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
        slots = [_Slot(g, start) for g in self.driver.groups()]
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
        now = self.clock()
        if now <= slot.due + period:
            slot.due += period
            return
        # the read ended after the next slot began: skip every slot that began meanwhile
        missed = math.floor((now - slot.due) / period)
        self.stats.overruns += 1
        self.stats.skipped += missed
        slot.due += (missed + 1) * period
