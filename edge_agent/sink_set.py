"""The agent's sinks at run time: records packed once, per sink an outbox on disk, the sink and its delivery loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import dataclass, field

from edge_agent.config import Config, configured_sinks
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, stored_size
from edge_agent.records import AgentStatus, Output, Record, RecordPacker, Source, StatusData, unpack
from edge_agent.sinks.base import Delivery, RunningSink, SinkContext
from edge_agent.sinks.delivery import Backoff, DeliveryLoop
from edge_agent.sinks.registry import SINKS
from edge_agent.types import SignalTable

log = logging.getLogger(__name__)

#: Bytes of records (counted as the outbox counts them) a sink keeps in memory while its outbox cannot store
#: them (disk full or failing); the outbox's own cap applies if it is smaller. Past it, records are dropped
#: by the outbox's policy and counted as its drops. The outbox's cap is sized for a disk, not for RAM.
PENDING_MAX_BYTES = 64 * 1024 * 1024


def preview(config: Config, table: SignalTable, outputs: list[Output]) -> list[Record]:
    """The records `run --once` prints, in the encoding of the first registered sink that can show one."""
    packer = RecordPacker(table)
    records = [r for out in outputs for r in packer.output(out)]
    for name, plugin in SINKS.items():
        if plugin.preview is not None:
            return plugin.preview(getattr(config.sinks, name), records)
    return records


@dataclass
class SinkChannel:
    """One output: where its records wait, the sink, and the loop that delivers them."""

    name: str
    outbox: Outbox
    sink: RunningSink
    loop: DeliveryLoop
    pending: list[Record] = field(default_factory=list)
    pending_bytes: int = 0
    pending_max_bytes: int = PENDING_MAX_BYTES
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    closing: bool = False
    give_up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at stop once the drain time is over: a put that fails then is not retried, its records are counted lost."""
    delivery_restarts: int = 0
    published_sent: int = 0
    published_dropped: int = 0
    published_retries: int = 0
    published_restarts: int = 0


class SinkSet:
    """Every configured sink; `publish` never blocks: packing is in memory, the outbox writes on their threads.

    A batch is packed once and the same records go to every sink's outbox; each sink encodes them
    when it sends them.
    """

    def __init__(self, config: Config, table: SignalTable, metrics: AgentMetrics) -> None:
        self.config = config
        self.table = table
        self.metrics = metrics
        self.channels: list[SinkChannel] = []
        site = config.site
        self.source = Source(config.agent.name, "agent", site.site, site.area, site.line, site.enterprise)
        #: one run of records: (boot, seq) numbers them across restarts, whatever sink they go to
        self.packer = RecordPacker(table)
        self._metrics_task: asyncio.Task[None] | None = None
        #: pauses between failed outbox writes and between restarts of a delivery loop that died
        self.backoff = Backoff()

    def _outbox(self, name: str) -> Outbox:
        ob = self.config.outbox
        return Outbox(
            ob.dir / f"{name}.sqlite",
            max_bytes=ob.max_bytes,
            when_full=ob.when_full,
            keep_priority=ob.keep_priority,
            sync=ob.sync,
            name=name,
        )

    async def start(self, status: AgentStatus) -> None:
        """Open the outboxes (backlog first), connect the sinks, start delivering."""
        online = unpack(self.packer.status(self.source, status))
        assert isinstance(online, StatusData)
        context = SinkContext(self.config.agent.name, self.config.outbox.dir, online)
        for name, section in configured_sinks(self.config.sinks).items():
            plugin = SINKS[name]
            sink = plugin.open(section, context)
            outbox = self._outbox(name)
            await self._start_sink(sink, outbox)
            self._add(name, outbox, sink, plugin.delivery(section))
        self._metrics_task = asyncio.create_task(self._export_metrics(), name="sink-metrics")

    @staticmethod
    async def _start_sink(sink: RunningSink, outbox: Outbox) -> None:
        """Start `sink`; if it cannot start, close its outbox (and its lock) before raising, so a later set can open it."""
        try:
            await sink.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await sink.stop()
            await outbox.close_async()
            raise

    def _add(self, name: str, outbox: Outbox, sink: RunningSink, delivery: Delivery) -> None:
        loop = DeliveryLoop(
            outbox,
            sink,
            batch_records=delivery.batch_records,
            batch_values=delivery.batch_values,
            linger=delivery.linger,
            in_flight=delivery.in_flight,
            backoff=self.backoff,
        )
        channel = SinkChannel(name, outbox, sink, loop)
        channel.pending_max_bytes = min(PENDING_MAX_BYTES, outbox.max_bytes)
        channel.writer = asyncio.create_task(self._write(channel), name=f"outbox-writer-{name}")
        loop.start()
        channel.supervisor = asyncio.create_task(self._supervise(channel), name=f"delivery-supervisor-{name}")
        self.channels.append(channel)

    def publish_status(self, status: AgentStatus) -> None:
        """Queue the agent's health for every sink (its status topic, its status measurement)."""
        if self.channels:
            self.publish_records([self.packer.status(self.source, status)])

    def publish(self, out: Output) -> None:
        """Pack one batch of output and queue it for every sink's outbox writer."""
        if self.channels:
            self.publish_records(self.packer.output(out))

    def publish_records(self, records: list[Record]) -> None:
        """Queue packed records for every sink's outbox writer (the same records: they are immutable)."""
        if records:
            size = sum(map(stored_size, records))
            for channel in self.channels:
                self._queue(channel, records, size)

    def _queue(self, channel: SinkChannel, records: list[Record], size: int) -> None:
        channel.pending.extend(records)
        channel.pending_bytes += size
        if channel.pending_bytes > channel.pending_max_bytes:
            _shed(channel)
        channel.wake.set()

    async def _write(self, channel: SinkChannel) -> None:
        # batches that arrived while the previous put was on disk go in one transaction together;
        # the task is never cancelled mid-put (that could lose the batch), it returns once closing
        failures = 0
        while True:
            await channel.wake.wait()
            channel.wake.clear()
            records, channel.pending = channel.pending, []
            size, channel.pending_bytes = channel.pending_bytes, 0
            if records:
                try:
                    await channel.outbox.put_async(records)
                except Exception as exc:
                    # a put is one transaction: none of these records was stored. They go back to the
                    # head of the queue, in order, and wait (bounded by pending_max_bytes) for room on disk
                    channel.pending[:0] = records
                    channel.pending_bytes += size
                    if channel.pending_bytes > channel.pending_max_bytes:
                        _shed(channel)
                    if failures == 0:
                        log.error(
                            "outbox %s: cannot store records (%s: %s); keeping up to %d bytes of them in "
                            "memory and retrying with backoff",
                            channel.name,
                            type(exc).__name__,
                            exc,
                            channel.pending_max_bytes,
                            # a full or failing disk says enough; anything else is a bug: show where
                            exc_info=not isinstance(exc, sqlite3.Error | OSError),
                        )
                    failures += 1
                    if channel.give_up.is_set():
                        _abandon(channel, exc)
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(channel.give_up.wait(), self.backoff.delay(failures - 1))
                    channel.wake.set()
                    continue
                if failures:
                    log.info(
                        "outbox %s: storing records again after %d failed writes", channel.name, failures
                    )
                    failures = 0
            if channel.closing and not channel.pending:
                return

    async def _supervise(self, channel: SinkChannel) -> None:
        # the loop retries outages itself; if it dies all the same (a bug, an error nobody expected) the
        # sink would stay silent until the agent restarts, with its records waiting on disk: say so, go on
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            task = channel.loop.start()
            began = loop.time()
            await asyncio.wait((task,))
            if task.cancelled() or task.exception() is None:
                return
            if loop.time() - began > self.backoff.maximum:
                attempt = 0  # it had worked for a while: this is a new failure, not the same one again
            delay = self.backoff.delay(attempt)
            attempt += 1
            channel.delivery_restarts += 1
            log.error(
                "delivery to %s stopped with an error; restarting it in %.1f s",
                channel.name,
                delay,
                exc_info=task.exception(),
            )
            await asyncio.sleep(delay)
            # the dead loop's batches are still in flight in the outbox: offer them again from the oldest
            await channel.outbox.release_async()

    async def _export_metrics(self) -> None:
        while True:
            self.export_metrics()
            await asyncio.sleep(1.0)

    def export_metrics(self) -> None:
        """Copy the outbox and delivery counters into the Prometheus metrics."""
        m = self.metrics
        for ch in self.channels:
            m.outbox_depth.labels(ch.name).set(len(ch.outbox))
            m.outbox_bytes.labels(ch.name).set(ch.outbox.bytes_used)
            sent = ch.outbox.counters.acked_records
            dropped = ch.outbox.counters.dropped_records
            retries = ch.loop.counters.failures
            m.sent.labels(ch.name).inc(sent - ch.published_sent)
            m.dropped.labels(ch.name).inc(dropped - ch.published_dropped)
            m.retries.labels(ch.name).inc(retries - ch.published_retries)
            ch.published_sent, ch.published_dropped, ch.published_retries = sent, dropped, retries
            connected = getattr(ch.sink, "connected", None)  # a sink that holds a connection says so
            if connected is not None:
                m.sink_connected.labels(ch.name).set(int(connected))
            # the sink's own restarts (a publisher process, a session), and the delivery loop's after it died
            restarts = getattr(ch.sink, "restarts", 0) + ch.delivery_restarts
            m.sink_restarts.labels(ch.name).inc(restarts - ch.published_restarts)
            ch.published_restarts = restarts

    async def stop(self, drain_s: float, status: AgentStatus | None = None) -> None:
        """Queue the final status, write what is queued, deliver for up to `drain_s` s, close; the rest waits on disk."""
        if status is not None:
            # a fresh offline status in sequence (the will is only for a death nobody announced)
            self.publish_status(status)
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        clock = asyncio.get_running_loop()
        deadline = clock.time() + drain_s
        for channel in self.channels:
            channel.closing = True
            channel.wake.set()
        writers = [ch.writer for ch in self.channels if ch.writer is not None]
        if writers:
            # a writer that cannot store (disk full) retries until the drain time is over, then once more
            await asyncio.wait(writers, timeout=drain_s)
            for channel in self.channels:
                channel.give_up.set()
            await asyncio.wait(writers)
            for channel in self.channels:
                if (
                    channel.writer is not None
                    and not channel.writer.cancelled()
                    and channel.writer.exception()
                ):
                    log.error("outbox writer %s failed", channel.name, exc_info=channel.writer.exception())
        reporter = asyncio.create_task(self._report_flush(drain_s), name="outbox-flush-progress")
        try:
            remaining = max(0.0, deadline - clock.time())
            if remaining > 0:
                # the supervisors still restart a loop that dies while it drains
                await asyncio.gather(*(ch.loop.wait_drained(remaining) for ch in self.channels))
            for channel in self.channels:
                if channel.supervisor is not None:
                    channel.supervisor.cancel()
            await asyncio.gather(
                *(ch.supervisor for ch in self.channels if ch.supervisor is not None), return_exceptions=True
            )
            for result in await asyncio.gather(
                *(ch.loop.stop() for ch in self.channels), return_exceptions=True
            ):
                if isinstance(result, Exception):
                    log.error("stopping a delivery loop failed", exc_info=result)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        left = sum(len(ch.outbox) for ch in self.channels)
        if left:
            log.warning("%d records stay in the outboxes; they are delivered at the next start", left)
        self.export_metrics()
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.sink.stop()
            try:
                await channel.outbox.close_async()
            except Exception:
                # what is stored is committed; only the closing checkpoint failed (disk full): close the others
                log.exception("closing outbox %s failed", channel.name)
        self.channels.clear()

    async def _report_flush(self, drain_s: float, every_s: float = 1.0) -> None:
        # a backlog after an outage can take minutes to deliver: say how it goes, once a second
        start = {ch.name: len(ch.outbox) for ch in self.channels}
        if not any(start.values()):
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            await asyncio.sleep(every_s)
            left = self.depth()
            elapsed = loop.time() - began
            log.info(
                "flushing outboxes before exit (%.0f of %g s): %s",
                elapsed,
                drain_s,
                ", ".join(
                    f"{name} {left[name]} left of {n} ({(n - left[name]) / elapsed:.0f} records/s)"
                    for name, n in start.items()
                ),
            )

    def depth(self) -> dict[str, int]:
        """Records waiting per sink."""
        return {ch.name: len(ch.outbox) for ch in self.channels}


def _shed(channel: SinkChannel) -> None:
    """Drop queued records by the outbox's policy down to 90 % of the memory cap, counted as the outbox's drops."""
    ob = channel.outbox
    pending = channel.pending
    newest_first = ob.when_full == "drop_newest"

    def victim_order(i: int) -> tuple[int, int]:
        return (pending[i].kind.drop_rank if ob.keep_priority else 0, -i if newest_first else i)

    # down to 90 %, not to the cap: a full queue is then sorted once per 10 % of growth, not at every publish
    excess = channel.pending_bytes - channel.pending_max_bytes * 9 // 10
    victims: set[int] = set()
    for i in sorted(range(len(pending)), key=victim_order):
        if excess <= 0:
            break
        victims.add(i)
        excess -= stored_size(pending[i])
    dropped = [r for i, r in enumerate(pending) if i in victims]
    channel.pending = [r for i, r in enumerate(pending) if i not in victims]
    channel.pending_bytes -= sum(stored_size(r) for r in dropped)
    ob.count_dropped(dropped)


def _abandon(channel: SinkChannel, error: Exception) -> None:
    """At exit, count the records the outbox could not store as dropped (they are lost with the process)."""
    lost, channel.pending, channel.pending_bytes = channel.pending, [], 0
    channel.outbox.count_dropped(lost)
    log.error(
        "outbox %s: %d records could not be stored before exit (%s) and are lost",
        channel.name,
        len(lost),
        error,
    )
