"""Throughput of the sinks through the on-disk outbox to a real Mosquitto and a real VictoriaMetrics, with reference
ceilings (no outbox) measured side by side in the same run; `lost` is counted by reading everything back.
`mqtt_qos1` runs paho in a publisher process of its own (sinks.mqtt.publisher = "process"),
`mqtt_qos1_thread_publisher` on a thread of this process (the default), in the same runs.

    .venv/bin/python benchmarks/bench_sinks.py --json [--messages 30000] [--points 500000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.outbox import Outbox  # noqa: E402
from edge_agent.records import RecordPacker, Source  # noqa: E402
from edge_agent.sinks.base import Delivery  # noqa: E402
from edge_agent.sinks.delivery import DeliveryLoop, Sink  # noqa: E402
from edge_agent.sinks.influx import PLUGIN as INFLUX  # noqa: E402
from edge_agent.sinks.influx.config import InfluxSink  # noqa: E402
from edge_agent.sinks.influx.encoder import LineProtocolEncoder  # noqa: E402
from edge_agent.sinks.influx.writer import InfluxWriter  # noqa: E402
from edge_agent.sinks.mqtt import PLUGIN as MQTT  # noqa: E402
from edge_agent.sinks.mqtt.config import MqttSink  # noqa: E402
from edge_agent.sinks.mqtt.encoder import MqttEncoder  # noqa: E402
from edge_agent.sinks.mqtt.publisher import MqttPublisher  # noqa: E402
from edge_agent.types import Readings, SignalTable  # noqa: E402
from tests.services import Mosquitto, VictoriaMetrics  # noqa: E402

VALUES_PER_MESSAGE = 20
MACHINES = [Source(f"imm-{i:02d}", equipment="injection_molding") for i in range(20)]


def _table() -> SignalTable:
    table = SignalTable()
    for m in MACHINES:
        for s in range(VALUES_PER_MESSAGE):
            table.add(m.machine, f"sig_{s:02d}", "bar")
    return table


def _poll(table: SignalTable, m: Source, k: int) -> Readings:
    rows = table.rows_of(m.machine)
    return Readings.of(rows, 1_790_000_000_000_000_000 + k * 1_000_000, 100.0 + (rows % 7) * 1.25 + k * 0.001)


def _polls(table: SignalTable, polls: int) -> list[list[Readings]]:
    """`polls` rounds of one poll per machine, built before the clock starts: the devices are not what is measured."""
    return [[_poll(table, m, k) for m in MACHINES] for k in range(polls)]


def _loop(outbox: Outbox, sink: Sink, delivery: Delivery) -> DeliveryLoop:
    """A delivery loop with the agent's settings for the sink."""
    return DeliveryLoop(
        outbox,
        sink,
        batch_records=delivery.batch_records,
        batch_values=delivery.batch_values,
        linger=delivery.linger,
        in_flight=delivery.in_flight,
    )


class _Writer:
    """Puts as the agent's outbox writer task does: the next batch is packed while the last one is on disk."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.on_disk: asyncio.Future[None] | None = None

    async def put(self, batch: list) -> None:
        """Wait for the previous put, start this one."""
        await self.flush()
        self.on_disk = asyncio.ensure_future(self.outbox.put_async(batch))

    async def flush(self) -> None:
        """Wait for the last put."""
        if self.on_disk is not None:
            await self.on_disk
            self.on_disk = None


class _Counter:
    """mosquitto_sub (C, its own process) at QoS 1 writing every message to a file; distinct messages counted after.

    A Python subscriber used as much CPU as the publisher under test on these 2 cores, so it set the
    pace of both MQTT rows; the C client leaves the cores to the publisher and the broker.
    """

    def __init__(self, port: int, topic: str, workdir: Path) -> None:
        self.out = workdir / f"counted-{topic.strip('/#')}.txt"
        self.file = self.out.open("wb")
        self.proc = subprocess.Popen(
            [
                "stdbuf",  # line-buffered: the probe below must come out at once
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                topic,
                "-q",
                "1",
                "-i",
                f"count-{topic}",
            ],
            stdout=self.file,
        )
        # subscribed once a probe published to the topic comes out
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{topic}", protocol=mqtt.MQTTv311)
        probe.connect("127.0.0.1", port)
        probe.loop_start()
        deadline = time.monotonic() + 10
        while self.out.stat().st_size == 0 and time.monotonic() < deadline:
            probe.publish(topic.replace("#", "probe"), b"probe", qos=1).wait_for_publish(1)
            time.sleep(0.1)
        probe.disconnect()
        probe.loop_stop()

    def count(self, want: int) -> int:
        """Distinct messages received, once `want` arrived or nothing came for 10 s."""
        last, size = time.monotonic(), -1
        while time.monotonic() - last < 10:
            seen = {line[:200] for line in self.out.read_bytes().splitlines() if line != b"probe"}
            if len(seen) >= want:
                break
            if self.out.stat().st_size != size:
                last, size = time.monotonic(), self.out.stat().st_size
            time.sleep(0.2)
        self.proc.terminate()
        self.proc.wait()
        self.file.close()
        return len(seen)


async def mqtt_through_outbox(
    broker: Mosquitto, workdir: Path, messages: int, run: int, publisher_in: Literal["thread", "process"]
) -> dict:
    """Pack, put (100 messages per transaction), deliver (encoding at send) with PUBACKs; count at a subscriber.

    `publisher_in` is sinks.mqtt.publisher: paho on a thread of this process, or in a process of its own.
    """
    table = _table()
    packer = RecordPacker(table)
    polls = _polls(table, -(-messages // len(MACHINES)) + 5)
    counter = _Counter(broker.port, f"bench{run}{publisher_in}/#", workdir)
    outbox = Outbox(
        workdir / f"mqtt{run}{publisher_in}.db", max_bytes=1 << 30
    )  # default sync="full": fsync per put
    config = MqttSink(url=broker.url, publisher=publisher_in, topic_prefix=f"bench{run}{publisher_in}")
    publisher = MqttPublisher(config, client_id=f"bench-pub-{run}-{publisher_in}")
    await publisher.start()
    loop = _loop(outbox, publisher, MQTT.delivery(config))  # as the agent runs it
    writer = _Writer(outbox)
    t0 = time.perf_counter()
    loop.start()
    k = 0
    while k * len(MACHINES) < messages:
        batch = []
        for _ in range(5):
            batch += [packer.raw(m, r) for m, r in zip(MACHINES, polls[k], strict=True)]
            k += 1
        await writer.put(batch[: messages - (k - 5) * len(MACHINES)])
    await writer.flush()
    assert await loop.wait_drained(120)
    elapsed = time.perf_counter() - t0
    await loop.stop()
    await publisher.stop()
    outbox.close()
    received = counter.count(messages)
    return {
        "name": "mqtt_qos1" if publisher_in == "process" else "mqtt_qos1_thread_publisher",
        "publisher": publisher_in,
        "messages_per_s": messages / elapsed,
        "values_per_s": messages * VALUES_PER_MESSAGE / elapsed,
        "lost": messages - received,
        "sync": outbox.sync,
    }


def mqtt_reference(broker: Mosquitto, workdir: Path, messages: int, run: int) -> dict:
    """paho alone (its own network thread), QoS 1, same payloads, no outbox, same subscriber load: the ceiling.

    paho's own in-flight limit is off (0): with a limit, paho walks every message it holds at each PUBACK
    (`_update_inflight`), which is quadratic in the messages queued and held this reference at a third of
    paho's speed. Without it, paho writes every message at once and the socket buffers are the window.
    """
    table = _table()
    packer = RecordPacker(table)
    payloads = MqttEncoder(topic_prefix=f"ref{run}").encode(
        [packer.raw(m, _poll(table, m, k)) for k in range(messages // len(MACHINES) + 1) for m in MACHINES]
    )
    counter = _Counter(broker.port, f"ref{run}/#", workdir)
    # the protocol the sink speaks by default, so the two rows compare like with like
    protocol = mqtt.MQTTv5 if MqttSink().protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-ref-{run}", protocol=protocol)
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    infos = [client.publish(p.key, p.payload, qos=1) for p in payloads[:messages]]
    for info in infos:
        info.wait_for_publish(60)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    received = counter.count(messages)
    return {"name": "mqtt_qos1_paho_only", "messages_per_s": messages / elapsed, "lost": messages - received}


async def influx_through_outbox(vm: VictoriaMetrics, workdir: Path, points: int, run: int) -> dict:
    """Pack, put, deliver (line protocol encoded at send, columnar per batch) in gzip bodies; count by export."""
    table = _table()
    packer = RecordPacker(table)
    outbox = Outbox(workdir / f"influx{run}.db", max_bytes=1 << 30)  # default sync="full": fsync per put
    config = InfluxSink(url=vm.url, flush_interval=0.05)
    writer = InfluxWriter(config, workdir / "dead.jsonl")
    await writer.start()
    loop = _loop(outbox, writer, INFLUX.delivery(config))
    measurement = f"benchrun{run}"
    sources = [Source(m.machine, equipment=measurement) for m in MACHINES]
    polls = _polls(table, -(-points // (len(sources) * VALUES_PER_MESSAGE)) + 25)
    producer = _Writer(outbox)
    t0 = time.perf_counter()
    loop.start()
    k = 0
    while k * len(sources) * VALUES_PER_MESSAGE < points:
        batch = []
        for _ in range(25):  # 25 polls of 20 machines per transaction
            batch += [packer.raw(s, r) for s, r in zip(sources, polls[k], strict=True)]
            k += 1
        await producer.put(batch)
    await producer.flush()
    total = k * len(sources) * VALUES_PER_MESSAGE
    assert await loop.wait_drained(300)
    elapsed = time.perf_counter() - t0
    await loop.stop()
    await writer.stop()
    outbox.close()
    # VictoriaMetrics makes rows searchable asynchronously: count once the number settles
    stored = vm.settled_count(f'{{__name__="{measurement}_value"}}', total)
    return {"name": "influx", "points_per_s": total / elapsed, "lost": total - stored, "sync": outbox.sync}


async def influx_reference(vm: VictoriaMetrics, points: int, run: int) -> dict:
    """Pre-serialized 5,000-line bodies posted directly (gzip level 1), no outbox: the ceiling."""
    table = _table()
    packer = RecordPacker(table)
    sources = [Source(m.machine, equipment=f"benchref{run}") for m in MACHINES]
    body = LineProtocolEncoder().encode(
        [packer.raw(s, _poll(table, m, k)) for k in range(13) for s, m in zip(sources, MACHINES, strict=True)]
    )
    lines = body.splitlines(keepends=True)[:5000]
    chunk = b"".join(lines)
    writer = InfluxWriter(InfluxSink(url=vm.url), Path(tempfile.gettempdir()) / "bench-dead.jsonl")
    await writer.start()
    t0 = time.perf_counter()
    for _ in range(points // 5000):
        await writer._post(chunk)
    elapsed = time.perf_counter() - t0
    await writer.stop()
    return {"name": "influx_direct_5000_line_bodies", "points_per_s": (points // 5000) * 5000 / elapsed}


def main() -> None:
    """Run each case `--repeat` times and print the medians, one JSON object per line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per line (the default output)")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--points", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        # no cap on the subscriber's queue (default 1000 at QoS 1): a subscriber that falls behind must
        # not show up as `lost`, which is meant to count what the publishers lost
        broker.extra_config = (
            f"listener {broker.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        )
        vm = VictoriaMetrics(work / "vm")
        broker.start()
        vm.start()
        try:
            results: dict[str, list[dict]] = {}
            for run in range(args.repeat):
                for result in (
                    mqtt_reference(broker, work, args.messages, run),
                    asyncio.run(mqtt_through_outbox(broker, work, args.messages, run, "process")),
                    asyncio.run(mqtt_through_outbox(broker, work, args.messages, run, "thread")),
                    asyncio.run(influx_reference(vm, args.points, run)),
                    asyncio.run(influx_through_outbox(vm, work, args.points, run)),
                ):
                    results.setdefault(result["name"], []).append(result)
        finally:
            broker.stop()
            vm.stop()
    for name, runs in results.items():
        merged: dict[str, object] = {"name": name}
        for key in runs[0]:
            if key == "name":
                continue
            values = [r[key] for r in runs]
            if key == "lost":
                merged[key] = max(values)
            elif isinstance(values[0], str):
                merged[key] = values[0]
            else:
                merged[key] = round(statistics.median(values), 1)
        merged["runs"] = len(runs)
        print(orjson.dumps(merged).decode())


if __name__ == "__main__":
    main()
