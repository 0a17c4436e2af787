"""A sink that is reachable again after an outage drains within 2 s, however long the back-off had grown:
MQTT against a real Mosquitto (both publishers), InfluxDB v2 writes against a real VictoriaMetrics.

Each test streams records, stops the server, keeps it down until the delivery loop has begun a back-off
pause of more than 4 s (at least 7 s down), starts it again and measures the resume delay: from the
server accepting connections again to the first batch it acknowledged. Every record must arrive (by
sequence number per device), none lost, and no task may end with an exception nobody read.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from edge_agent.outbox import Outbox
from edge_agent.records import Kind, Record, RecordPacker
from edge_agent.sinks.delivery import DeliveryLoop
from edge_agent.sinks.influx import PLUGIN as INFLUX
from edge_agent.sinks.influx.config import InfluxSink
from edge_agent.sinks.influx.writer import InfluxWriter
from edge_agent.sinks.mqtt import PLUGIN as MQTT
from edge_agent.sinks.mqtt.config import MqttSink
from edge_agent.sinks.mqtt.publisher import MqttPublisher
from tests.sink_services import PersistentMosquitto, Subscriber, TunedVictoriaMetrics
from tests.test_sink_mqtt import MACHINES, _assert_in_order, _poll, _table

pytestmark = pytest.mark.slow

#: What the issue asks for: delivery starts within 2 s of the server being back. The slack is for a
#: loaded machine; the back-off in progress at the restart is above 4 s, so the old behaviour
#: (waiting the pause out) fails this by seconds.
RESUME_LIMIT_S = 2.0
SLACK_S = 0.5
DOWN_AT_LEAST_S = 7.0
BACKOFF_GROWN_S = 4.0
TICK_S = 0.02


@dataclass
class Outage:
    """What one outage run measured."""

    down_s: float
    backoff_s: float  # the back-off pause the loop had just begun when the server came back
    start_s: float  # the server's start, until its readiness check (polled every 50-100 ms) saw it up
    resume_s: float  # server ready -> first batch acknowledged (0 if the agent got there first)


@pytest.fixture
async def unretrieved() -> AsyncIterator[list[dict[str, Any]]]:
    """Every context the event loop's exception handler gets (e.g. "Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(None)


async def _outage(
    outbox: Outbox,
    loop: DeliveryLoop,
    put_tick: Callable[[int], list[Record]],
    stop_server: Callable[[], None],
    start_server: Callable[[], None],
) -> tuple[Outage, int]:
    """Stream ticks into the outbox through an outage of the server; the measurements and the ticks put."""
    ticks = 0
    streaming = True

    async def produce() -> None:
        nonlocal ticks
        while streaming:
            await outbox.put_async(put_tick(ticks))
            ticks += 1
            await asyncio.sleep(TICK_S)

    producer = asyncio.create_task(produce())
    try:
        began = time.monotonic()
        while outbox.counters.acked_records == 0:  # the server takes the stream before the outage
            await asyncio.sleep(0.01)
            assert time.monotonic() - began < 10, "nothing was delivered before the outage"
        await asyncio.sleep(0.5)
        await asyncio.to_thread(stop_server)
        down_at = time.monotonic()
        # down until the loop starts a pause longer than BACKOFF_GROWN_S, and at least DOWN_AT_LEAST_S
        c = loop.counters
        seen_failures = c.failures
        while True:
            await asyncio.sleep(0.005)
            down = time.monotonic() - down_at
            assert down < 25, (
                f"the back-off never grew past {BACKOFF_GROWN_S} s (last {c.retry_delay_s:.1f} s)"
            )
            if c.failures != seen_failures:
                seen_failures = c.failures
                if down >= DOWN_AT_LEAST_S and c.retry_delay_s > BACKOFF_GROWN_S:
                    break
        backoff = c.retry_delay_s
        acked = outbox.counters.acked_records  # nothing is acknowledged while the server is down
        starting_at = time.monotonic()
        await asyncio.to_thread(start_server)
        back_at = time.monotonic()
        while outbox.counters.acked_records == acked:
            await asyncio.sleep(0.005)
            assert time.monotonic() - back_at < 40, "nothing delivered 40 s after the server came back"
        resumed = Outage(
            starting_at - down_at, backoff, back_at - starting_at, max(0.0, time.monotonic() - back_at)
        )
        await asyncio.sleep(1.0)  # live records after the outage too
    finally:
        streaming = False
        await producer
    assert await loop.wait_drained(30), f"{len(outbox)} records still in the outbox"
    return resumed, ticks


def _report(sink: str, outage: Outage, unretrieved: list[dict[str, Any]]) -> None:
    gc.collect()  # a task that ended with an exception nobody read reports it when collected
    print(
        f"\n{sink}: down {outage.down_s:.1f} s, back-off in progress {outage.backoff_s:.1f} s, "
        f"server start {outage.start_s:.2f} s, resume delay {outage.resume_s:.2f} s (limit {RESUME_LIMIT_S} s), "
        f"{len(unretrieved)} exceptions never retrieved"
    )


@pytest.mark.parametrize("where", ["thread", "process"])
async def test_mqtt_delivery_resumes_within_2_s_of_the_broker_coming_back(
    tmp_path: Path, unretrieved: list[dict[str, Any]], where: Literal["thread", "process"]
) -> None:
    broker = PersistentMosquitto(tmp_path / "broker")
    broker.start()
    table = _table()
    packer = RecordPacker(table)
    sub = Subscriber(broker.port, "resume/#", client_id=f"sub-resume-{where}")
    config = MqttSink(url=broker.url, publisher=where, topic_prefix="resume")
    publisher = MqttPublisher(config, client_id=f"pub-resume-{where}")
    await publisher.start()
    outbox = Outbox(tmp_path / "mqtt.sqlite")
    # the agent's own settings, and its default back-off (up to 30 s)
    delivery = MQTT.delivery(config)
    loop = DeliveryLoop(outbox, publisher, batch_records=delivery.batch_records, in_flight=delivery.in_flight)
    loop.start()
    try:
        outage, ticks = await _outage(
            outbox,
            loop,
            lambda k: [packer.raw(m, _poll(table, m, k)) for m in MACHINES],
            broker.stop,
            broker.start,
        )
        sent = ticks * len(MACHINES)
        assert await asyncio.to_thread(sub.wait_for, sent, 20) >= sent
    finally:
        await loop.stop()
        await publisher.stop()
        await outbox.close_async()
        sub.close()
        broker.stop()
    _report(f"MQTT ({where} publisher)", outage, unretrieved)
    assert outage.backoff_s > BACKOFF_GROWN_S
    assert outage.resume_s <= RESUME_LIMIT_S + SLACK_S
    assert outbox.counters.acked_records == sent and outbox.counters.dropped_records == 0
    _assert_in_order(sub, packer, sent)
    assert [c.get("message") for c in unretrieved] == []


T0 = 1_780_000_000_000_000_000  # ns
DEVICES = [f"m{d}" for d in range(3)]


def _tick_lines(k: int) -> list[Record]:
    """One record per device: its value is the tick number, at a timestamp of its own."""
    return [
        Record(
            Kind.RAW,
            device,
            f"resume,machine={device},signal=s value={k} {T0 + k * 10_000_000}\n".encode(),
            1,
        )
        for device in DEVICES
    ]


async def test_influx_delivery_resumes_within_2_s_of_the_server_coming_back(
    tmp_path: Path, unretrieved: list[dict[str, Any]]
) -> None:
    # deduplication on, as a production VictoriaMetrics that may receive a point twice runs it: a write the
    # server stored while its answer was lost to the stop is sent again
    vm = TunedVictoriaMetrics(tmp_path / "vm", flags=["-dedup.minScrapeInterval=1ms"])
    vm.start()
    writer = InfluxWriter(InfluxSink(url=vm.url), tmp_path / "dead.jsonl")
    outbox = Outbox(tmp_path / "influx.sqlite")
    delivery = INFLUX.delivery(InfluxSink(url=vm.url))  # the agent's own settings
    loop = DeliveryLoop(
        outbox,
        writer,
        batch_records=delivery.batch_records,
        batch_values=delivery.batch_values,
        linger=delivery.linger,
        in_flight=delivery.in_flight,
    )
    loop.start()
    try:
        outage, ticks = await _outage(outbox, loop, _tick_lines, vm.stop, vm.start)
        series = await asyncio.to_thread(vm.export, '{__name__="resume_value"}')
    finally:
        await loop.stop()
        await writer.stop()
        await outbox.close_async()
        vm.stop()
    _report("InfluxDB v2 write (VictoriaMetrics)", outage, unretrieved)
    assert outage.backoff_s > BACKOFF_GROWN_S
    assert outage.resume_s <= RESUME_LIMIT_S + SLACK_S
    assert outbox.counters.acked_records == ticks * len(DEVICES) and outbox.counters.dropped_records == 0
    by_device = {s["metric"]["machine"]: s for s in series}
    assert sorted(by_device) == DEVICES
    for device, s in by_device.items():
        # every tick once, at its own timestamp (a TSDB orders points by time, not by arrival)
        assert s["values"] == [float(k) for k in range(ticks)], device
        assert s["timestamps"] == [(T0 + k * 10_000_000) // 1_000_000 for k in range(ticks)], device
    assert not (tmp_path / "dead.jsonl").exists()
    assert [c.get("message") for c in unretrieved] == []
