"""The agent's sinks at run time: per sink an encoder, an outbox on disk, the sink and its delivery loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.config import Config
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, stored_size
from edge_agent.records import AgentStatus, Output, Record, Source
from edge_agent.sinks.delivery import Backoff, DeliveryLoop, Sink
from edge_agent.sinks.influx.encoder import LineProtocolEncoder
from edge_agent.sinks.mqtt.encoder import MqttEncoder
from edge_agent.types import SignalTable

log = logging.getLogger(__name__)

Encode = Callable[[Output], list[Record]]

#: MQTT delivery: records per take and batches on the wire at once (the publisher's own window,
#: sinks.mqtt.max_inflight, still caps the messages without PUBACK). A second batch lets a put go out
#: while the last batch waits for its PUBACKs; more batches or smaller ones cost throughput with a
#: backlog (bench_sinks: 2000 x 1 12.4k msg/s, 2000 x 2 11.3k, 1000 x 4 11.1k, 200 x 8 10.6k).
MQTT_BATCH_RECORDS = 1000
MQTT_BATCHES_IN_FLIGHT = 2
#: InfluxDB writes in flight at once: the next body is compressed and sent while the server stores the last
#: (bench_sinks: 1 in flight 261k points/s, 2 286k, 3 304k)
INFLUX_WRITES_IN_FLIGHT = 3
#: Bytes of records (counted as the outbox counts them) a sink keeps in memory while its outbox cannot store
#: them (disk full or failing); the outbox's own cap applies if it is smaller. Past it, records are dropped
#: by the outbox's policy and counted as its drops. The outbox's cap is sized for a disk, not for RAM.
PENDING_MAX_BYTES = 64 * 1024 * 1024


def encode_output(encoder: MqttEncoder | LineProtocolEncoder, out: Output) -> list[Record]:
    """One batch of pipeline output as records of one sink's encoding."""
    records = [encoder.raw(src, r) for src, r in out.raw]
    records += [encoder.kpi(src, b) for src, b in out.kpi]
    records += [encoder.alarm(src, a) for src, a in out.alarms]
    # a KPI line set with every indicator NaN encodes to nothing: no empty record in the outbox
    return [r for r in records if r.payload]


def preview(config: Config, table: SignalTable, outputs: list[Output]) -> list[Record]:
    """The records `run --once` prints: MQTT topics and JSON payloads of the outputs."""
    mqtt = config.sinks.mqtt
    encoder = MqttEncoder(table, topic_prefix=mqtt.topic_prefix if mqtt else "spBv1.0-free/uns")
    return [r for out in outputs for r in encode_output(encoder, out)]


@dataclass
class SinkChannel:
    """One output: how to encode for it, where its records wait, and the loop that delivers them."""

    name: str
    encode: Encode
    outbox: Outbox
    sink: Sink
    loop: DeliveryLoop
    encode_status: Callable[[AgentStatus], Record] | None = None
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
    """Every configured sink; `publish` never blocks: encoding is in memory, the outbox write on its thread."""

    def __init__(self, config: Config, table: SignalTable, metrics: AgentMetrics) -> None:
        self.config = config
        self.table = table
        self.metrics = metrics
        self.channels: list[SinkChannel] = []
        site = config.site
        self.source = Source(config.agent.name, "agent", site.site, site.area, site.line, site.enterprise)
        mqtt_cfg = config.sinks.mqtt
        self.mqtt_encoder = (
            MqttEncoder(table, topic_prefix=mqtt_cfg.topic_prefix, topic_template=mqtt_cfg.topic_template)
            if mqtt_cfg
            else None
        )
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
        cfg = self.config.sinks
        if cfg.mqtt is not None and self.mqtt_encoder is not None:
            from edge_agent.sinks.mqtt.publisher import MqttPublisher

            online = self.mqtt_encoder.status(self.source, status)
            will = self.mqtt_encoder.status(self.source, AgentStatus(status.t_ns, "offline", {}), will=True)
            client_id = cfg.mqtt.client_id or f"edge-agent-{self.config.agent.name}-{socket.gethostname()}"
            publisher = MqttPublisher(cfg.mqtt, client_id=client_id, online=online, will=will)
            outbox = self._outbox("mqtt")
            await self._start_sink(publisher, outbox)
            mqtt_encoder = self.mqtt_encoder
            self._add(
                "mqtt",
                functools.partial(encode_output, mqtt_encoder),
                outbox,
                publisher,
                batch_records=MQTT_BATCH_RECORDS,
                in_flight=MQTT_BATCHES_IN_FLIGHT,
                status=lambda st: mqtt_encoder.status(self.source, st),
            )
        if cfg.influx is not None:
            from edge_agent.sinks.influx.writer import InfluxWriter

            dead_letter = cfg.influx.dead_letter or self.config.outbox.dir / "influx.deadletter"
            writer = InfluxWriter(cfg.influx, dead_letter=dead_letter)
            outbox = self._outbox("influx")
            await self._start_sink(writer, outbox)
            line_encoder = LineProtocolEncoder(self.table)
            self._add(
                "influx",
                functools.partial(encode_output, line_encoder),
                outbox,
                writer,
                batch_records=1000,
                batch_values=cfg.influx.batch_size,
                linger=cfg.influx.flush_interval,
                in_flight=INFLUX_WRITES_IN_FLIGHT,
                status=lambda st: line_encoder.status(self.source, st),
            )
        self._metrics_task = asyncio.create_task(self._export_metrics(), name="sink-metrics")

    @staticmethod
    async def _start_sink(sink: Sink, outbox: Outbox) -> None:
        """Start `sink`; if it cannot start, close its outbox (and its lock) before raising, so a later set can open it."""
        try:
            await sink.start()  # type: ignore[attr-defined]
        except BaseException:
            with contextlib.suppress(Exception):
                await sink.stop()  # type: ignore[attr-defined]
            await outbox.close_async()
            raise

    def _add(
        self,
        name: str,
        encode: Encode,
        outbox: Outbox,
        sink: Sink,
        batch_records: int,
        batch_values: int | None = None,
        linger: float = 0.0,
        in_flight: int = 2,
        status: Callable[[AgentStatus], Record] | None = None,
    ) -> None:
        loop = DeliveryLoop(
            outbox,
            sink,
            batch_records=batch_records,
            batch_values=batch_values,
            linger=linger,
            in_flight=in_flight,
            backoff=self.backoff,
        )
        channel = SinkChannel(name, encode, outbox, sink, loop, encode_status=status)
        channel.pending_max_bytes = min(PENDING_MAX_BYTES, outbox.max_bytes)
        channel.writer = asyncio.create_task(self._write(channel), name=f"outbox-writer-{name}")
        loop.start()
        channel.supervisor = asyncio.create_task(self._supervise(channel), name=f"delivery-supervisor-{name}")
        self.channels.append(channel)

    def publish_status(self, status: AgentStatus) -> None:
        """Queue the agent's health for every sink (retained on MQTT, `agent_status` in InfluxDB)."""
        for channel in self.channels:
            if channel.encode_status is not None:
                self._queue(channel, [channel.encode_status(status)])

    def publish(self, out: Output) -> None:
        """Encode one batch of output for every sink and queue it for that sink's outbox writer."""
        for channel in self.channels:
            records = channel.encode(out)
            if records:
                self._queue(channel, records)

    def _queue(self, channel: SinkChannel, records: list[Record]) -> None:
        channel.pending.extend(records)
        channel.pending_bytes += sum(stored_size(r) for r in records)
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
            connected = getattr(ch.sink, "connected", None)  # the MQTT publisher's; HTTP has no connection
            if connected is not None:
                m.sink_connected.labels(ch.name).set(int(connected))
            # the MQTT publisher's own restarts, and the delivery loop's after it died (any sink)
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
                if channel.name == "mqtt":
                    await channel.sink.stop(publish_offline=False)  # type: ignore[attr-defined]
                else:
                    await channel.sink.stop()  # type: ignore[attr-defined]
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
