"""One delivery loop per sink: take a batch from the outbox, send it, ack it; capped exponential backoff with jitter."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.outbox import Outbox, Watch
from edge_agent.records import Record, Stored

log = logging.getLogger(__name__)


class SinkError(Exception):
    """A send that failed and may succeed later; `retry_after` is the server's requested pause in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: Failures a later attempt may not meet: a sink's outage, and the disk under the outbox or the dead-letter
#: file being full or failing (OSError, SQLite's "database or disk is full"). Anything else is a bug.
RETRYABLE: tuple[type[Exception], ...] = (SinkError, OSError, sqlite3.OperationalError)


class SinkConfigError(Exception):
    """A sink that cannot work as configured (refused credentials, untrusted certificate): a person must act."""


class Sink(Protocol):
    """What the delivery loop needs from a sink.

    A sink may also have `async def wait_ready(self) -> None`, which returns once the sink has found its
    server reachable again after its last failed send (MQTT: a new CONNACK; HTTP: a probe answered), and
    never when it has nothing better to say than the back-off. The loop then retries at once instead of
    waiting out a back-off that may have grown to 30 s.
    """

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
    retry_delay_s: float = 0.0
    """The back-off pause drawn after the last failed send (the longest it waits before the next try)."""


class DeliveryLoop:
    """Moves records from one outbox to one sink, oldest first; a failing sink only ever waits on itself.

    Up to `in_flight` batches are sent at once (a stream of PUBACKs, several HTTP writes), and a batch is
    sent as soon as it is taken, without waiting for the earlier ones to be acknowledged. Acks stay in
    outbox order: a batch is acknowledged once it and every batch before it were accepted. When a send
    fails, the batches after it are let finish, then all of them are sent again one by one, in order,
    with backoff: a record may arrive twice (at least once), but the last copies arrive in order.
    """

    def __init__(
        self,
        outbox: Outbox,
        sink: Sink,
        batch_records: int = 1000,
        batch_values: int | None = None,
        linger: float = 0.0,
        idle_wait: float = 0.5,
        backoff: Backoff | None = None,
        in_flight: int = 2,
    ) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1 (got {in_flight})")
        self.outbox = outbox
        self.sink = sink
        self.batch_records = batch_records
        self.batch_values = batch_values
        self.linger = linger
        self.idle_wait = idle_wait
        self.backoff = backoff or Backoff()
        self.in_flight = in_flight
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
            task, self._task = self._task, None
            task.cancel()
            # a loop that died has said why (its supervisor logs it at once): stopping must still release
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is not None:
                log.warning("delivery to %s had ended: %r", self.sink.name, task.exception())
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
        window: deque[tuple[list[Stored], asyncio.Future[None]]] = deque()  # sent, not yet acknowledged
        watched: Watch | None = None
        try:
            while True:
                # top up the window; listen for puts before each take, so a put just after an empty take wakes us
                while len(window) < self.in_flight:
                    if watched is None:
                        watched = self.outbox.watch()
                    batch = await self._take()
                    if not batch:
                        break
                    self.outbox.unwatch(watched)
                    watched = None
                    window.append((batch, asyncio.ensure_future(self.sink.send([s.record for s in batch]))))
                if not window:
                    self._progress.set()
                    assert watched is not None
                    await self.outbox.wait_for_data(self.idle_wait, watched)
                    watched = None
                    continue
                oldest = window[0][1]
                if watched is not None:
                    # room in the window: send new data as it comes, without waiting for the oldest's acks
                    news = asyncio.ensure_future(watched[1].wait())
                    try:
                        await asyncio.wait((oldest, news), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        news.cancel()
                    if not oldest.done():
                        self.outbox.unwatch(watched)
                        watched = None
                        continue
                else:
                    await asyncio.wait((oldest,))
                if oldest.exception() is None:
                    batch, _ = window.popleft()
                    await self._acknowledge(batch)
                else:
                    await self._resend_in_order(window)
        finally:
            if watched is not None:
                self.outbox.unwatch(watched)
            for _, sending in window:
                sending.cancel()

    async def _acknowledge(self, batch: list[Stored]) -> None:
        ids = [s.id for s in batch]
        attempt = 0
        while True:
            try:
                await self.outbox.ack_async(ids)
                break
            except (OSError, sqlite3.OperationalError) as exc:
                # the ack's transaction rolled back, the batch is still in flight: acking it again is safe,
                # and sending it again would only duplicate it
                self._count_failure(exc, f"outbox {self.outbox.name}: ack failed")
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
        c = self.counters
        if attempt:
            self._recovered()
        c.batches += 1
        c.sent_records += len(batch)
        c.sent_values += sum(s.record.n for s in batch)
        c.last_success_unix = time.time()
        self._progress.set()

    async def _resend_in_order(self, window: deque[tuple[list[Stored], asyncio.Future[None]]]) -> None:
        """The oldest send failed: let the later ones finish, then send all of them again in order, acking each."""
        await asyncio.wait([sending for _, sending in window])
        # every failure is read, not only the oldest's: asyncio logs an exception nobody read
        # ("Task exception was never retrieved") when its task is collected
        errors = [e for _, sending in window if (e := sending.exception()) is not None]
        outages = [e for e in errors if isinstance(e, RETRYABLE)]
        if len(outages) < len(errors):
            # a bug, not an outage: let the task fail loudly
            raise next(e for e in errors if not isinstance(e, RETRYABLE))
        error = outages[0]  # the oldest's
        self._count_failure(error)
        await self._pause(error, 0)
        while window:
            batch, _ = window[0]
            await self._send_until_accepted([s.record for s in batch], attempt=1)
            window.popleft()
            await self._acknowledge(batch)

    async def _take(self) -> list[Stored]:
        # the first take is not capped at batch_values: with a backlog, bodies of up to batch_records
        # records are ~13 % faster into VictoriaMetrics than bodies capped at 5,000 lines (bench_sinks)
        batch = await self.outbox.take_async(self.batch_records)
        if not batch or self.batch_values is None:
            return batch
        # fill up to batch_values (e.g. lines per InfluxDB write), waiting at most `linger` for more data
        values = sum(s.record.n for s in batch)
        deadline = time.monotonic() + self.linger
        while values < self.batch_values and len(batch) < self.batch_records:
            more = await self.outbox.take_async(
                self.batch_records - len(batch), None, self.batch_values - values
            )
            if more:
                batch.extend(more)
                values += sum(s.record.n for s in more)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self.outbox.wait_for_data(remaining)
        return batch

    async def _send_until_accepted(self, records: Sequence[Record], attempt: int = 0) -> None:
        c = self.counters
        while True:
            try:
                await self.sink.send(records)
            except RETRYABLE as exc:
                self._count_failure(exc)
                await self._pause(exc, attempt)
                attempt += 1
                continue
            if c.consecutive_failures:
                self._recovered()
            return

    def _recovered(self) -> None:
        c = self.counters
        if c.consecutive_failures:
            log.info("sink %s: delivering again after %d failures", self.sink.name, c.consecutive_failures)
        c.consecutive_failures = 0

    def _count_failure(self, exc: Exception, what: str | None = None) -> None:
        c = self.counters
        c.failures += 1
        c.consecutive_failures += 1
        # an OSError's text alone ("[Errno 28] No space left on device") does not say what failed
        reason = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
        c.last_error = reason
        # the first failure of an outage is worth a line; the rest are counted, not logged
        if c.consecutive_failures == 1:
            log.warning("%s: %s; retrying with backoff", what or f"sink {self.sink.name}", reason)

    async def _pause(self, exc: Exception, attempt: int) -> None:
        """Back off after a failed send; cut short when the sink finds its server reachable again."""
        delay = self.backoff.delay(attempt)
        retry_after = exc.retry_after if isinstance(exc, SinkError) else None
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.counters.retry_delay_s = delay
        wait_ready = getattr(self.sink, "wait_ready", None)
        if wait_ready is None or retry_after is not None:
            # a server that asked for a pause (Retry-After) gets it, reachable or not
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await wait_ready()
        except TimeoutError:
            pass
