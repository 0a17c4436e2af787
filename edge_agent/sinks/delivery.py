"""One delivery loop per sink: take a batch from the outbox, send it, ack it; capped exponential backoff with jitter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.outbox import Outbox
from edge_agent.records import Record

log = logging.getLogger(__name__)


class SinkError(Exception):
    """A send that failed and may succeed later; `retry_after` is the server's requested pause in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkConfigError(Exception):
    """A sink that cannot work as configured (refused credentials, untrusted certificate): a person must act."""


class Sink(Protocol):
    """What the delivery loop needs from a sink."""

    name: str

    async def send(self, records: Sequence[Record]) -> None:
        """Deliver every record (acknowledged by the server) or raise SinkError."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt k waits a random time in [cap_k / 2, cap_k]."""

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        cap = min(self.maximum, self.initial * self.factor ** min(attempt, 60))
        # half fixed, half random: spreads many agents after a broker restart without ever retrying at once
        return cap / 2 + random.uniform(0, cap / 2)


@dataclass
class DeliveryCounters:
    """Self-metrics of one delivery loop."""

    sent_records: int = 0
    sent_values: int = 0
    batches: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_unix: float = 0.0


class DeliveryLoop:
    """Moves records from one outbox to one sink, oldest first; a failing sink only ever waits on itself."""

    def __init__(
        self,
        outbox: Outbox,
        sink: Sink,
        batch_records: int = 1000,
        batch_values: int | None = None,
        linger: float = 0.0,
        idle_wait: float = 0.5,
        backoff: Backoff | None = None,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.batch_records = batch_records
        self.batch_values = batch_values
        self.linger = linger
        self.idle_wait = idle_wait
        self.backoff = backoff or Backoff()
        self.counters = DeliveryCounters()
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()  # set after every ack and every idle wait

    def start(self) -> asyncio.Task[None]:
        """Run the loop as a task of the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"delivery-{self.sink.name}")
        return self._task

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop the loop, after waiting up to `drain_timeout` seconds for the outbox to empty."""
        if drain_timeout > 0 and self._task is not None:
            await self.wait_drained(drain_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # what was in flight was not acknowledged: it is still in the outbox, offered again on the next start;
        # released on the outbox thread, after a take the cancelled loop may have left queued there
        await self.outbox.release_async()

    async def wait_drained(self, timeout: float) -> bool:
        """True once the outbox is empty (everything acknowledged), False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.outbox):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        batch = await self._take()
        while True:
            if not batch:
                self._progress.set()
                # the prefetch may have looked before the latest puts: look again, listening first
                watched = self.outbox.watch()
                batch = await self._take()
                if batch:
                    self.outbox.unwatch(watched)
                else:
                    await self.outbox.wait_for_data(self.idle_wait, watched)
                    batch = await self._take()
                continue
            records = [s.record for s in batch]
            # the next batch is read from disk while this one is on the wire; it is sent only after this
            # one is accepted, so sends stay strictly in outbox order
            upcoming = asyncio.ensure_future(self._take())
            try:
                await self._send_until_accepted(records)
                await self.outbox.ack_async([s.id for s in batch])
                c = self.counters
                c.batches += 1
                c.sent_records += len(records)
                c.sent_values += sum(r.n for r in records)
                c.last_success_unix = time.time()
                self._progress.set()
                batch = await upcoming
            finally:
                if not upcoming.done():
                    upcoming.cancel()

    async def _take(self) -> list:
        batch = await self.outbox.take_async(self.batch_records, None)
        if not batch or self.batch_values is None:
            return batch
        # fill up to batch_values (e.g. lines per InfluxDB write), waiting at most `linger` for more data
        values = sum(s.record.n for s in batch)
        deadline = time.monotonic() + self.linger
        while values < self.batch_values and len(batch) < self.batch_records:
            more = await self.outbox.take_async(self.batch_records - len(batch), None)
            if more:
                batch.extend(more)
                values += sum(s.record.n for s in more)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self.outbox.wait_for_data(remaining)
        return batch

    async def _send_until_accepted(self, records: Sequence[Record]) -> None:
        attempt = 0
        c = self.counters
        while True:
            try:
                await self.sink.send(records)
            except SinkError as exc:
                c.failures += 1
                c.consecutive_failures += 1
                c.last_error = str(exc)
                delay = self.backoff.delay(attempt)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                # the first failure of an outage is worth a line; the rest are counted, not logged
                if c.consecutive_failures == 1:
                    log.warning("sink %s: %s; retrying with backoff", self.sink.name, exc)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if c.consecutive_failures:
                log.info(
                    "sink %s: delivering again after %d failures", self.sink.name, c.consecutive_failures
                )
            c.consecutive_failures = 0
            return
