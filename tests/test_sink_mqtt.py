"""MQTT sink through the on-disk outbox against a real Mosquitto: payloads, status/will, broker outage, TLS and passwords."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import SecretStr

from edge_agent.outbox import Outbox
from edge_agent.records import AgentStatus, Kind, Record, RecordPacker, Source, unpack
from edge_agent.sinks.delivery import Backoff, DeliveryLoop, SinkConfigError, SinkError
from edge_agent.sinks.mqtt.config import MqttSink, TlsOptions
from edge_agent.sinks.mqtt.encoder import MqttEncoder
from edge_agent.sinks.mqtt.publisher import MqttPublisher
from edge_agent.types import Quality, Readings, SignalTable
from tests.services import Mosquitto
from tests.sink_services import PersistentMosquitto, Subscriber, TlsMosquitto, make_tls_files

#: The issue asks for a 30 s outage; the behaviour (paho reconnecting, the outbox holding the backlog) is the
#: same for 5 s, which keeps the suite fast. EDGE_AGENT_OUTAGE_S=30 runs the full-length version.
REPO = Path(__file__).resolve().parent.parent

OUTAGE_S = float(os.environ.get("EDGE_AGENT_OUTAGE_S", "5"))

MACHINES = [Source(f"imm-{i}", equipment="injection_molding") for i in range(3)]


def _table() -> SignalTable:
    table = SignalTable()
    for source in MACHINES:
        table.add(source.machine, "melt_temp", "°C")
        table.add(source.machine, "inj_pressure", "bar")
        table.add(source.machine, "cycle_time", "s")
    return table


def _poll(table: SignalTable, source: Source, k: int) -> Readings:
    rows = table.rows_of(source.machine)
    return Readings.of(
        rows,
        1_795_000_000_000_000_000 + k * 10_000_000,
        [230.0 + k, 800.5, 12.25 if k % 5 else float("nan")],
        [Quality.GOOD, Quality.UNCERTAIN, Quality.GOOD if k % 5 else Quality.BAD_TIMEOUT],
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "mqtt.db", max_bytes=64 * 1024 * 1024)
    yield box
    box.close()


@pytest.mark.parametrize(("protocol", "where"), [("3.1.1", "process"), ("5", "process"), ("3.1.1", "thread")])
async def test_records_arrive_with_schema_status_and_will(
    mosquitto: Mosquitto, outbox: Outbox, protocol: Literal["3.1.1", "5"], where: Literal["process", "thread"]
) -> None:
    table = _table()
    # a prefix per protocol: the retained status of one run must not meet the other
    prefix = f"t{protocol}{where}/uns"
    packer = RecordPacker(table)
    encoder = MqttEncoder(topic_prefix=prefix)
    agent = Source("edge-1", equipment="agent")
    online = encoder.message(
        unpack(packer.status(agent, AgentStatus(time.time_ns(), "online", {"uptime_s": 0})))
    )
    offline = encoder.message(unpack(packer.status(agent, AgentStatus(time.time_ns(), "offline"))))
    sub = Subscriber(mosquitto.port, f"{prefix}/#", client_id=f"sub-schema-{protocol}-{where}")
    publisher = MqttPublisher(
        MqttSink(url=mosquitto.url, protocol=protocol, publisher=where, topic_prefix=prefix),
        client_id=f"pub-schema-{protocol}-{where}",
        online=online,
        will=offline,
    )
    await publisher.start()
    loop = DeliveryLoop(outbox, publisher, batch_records=100)
    loop.start()
    try:
        await outbox.put_async([packer.raw(MACHINES[0], _poll(table, MACHINES[0], k)) for k in range(5)])
        assert await asyncio.to_thread(sub.wait_for, 6, 10) == 6  # online status + 5 polls
    finally:
        await loop.stop(drain_timeout=5)
        await publisher.stop()
    assert sub.wait_for(7, 5) == 7  # the offline status on a clean stop
    topics = [t for t, _ in sub.messages]
    assert topics[0] == f"{prefix}/plant1/area1/line1/edge-1/status"
    assert sub.messages[0][1]["state"] == "online"
    assert sub.raw[0][2] is False  # a live delivery of a retained publish is not flagged retained
    assert topics[1:6] == [f"{prefix}/plant1/area1/line1/imm-0/raw"] * 5
    assert sub.messages[6][1]["state"] == "offline"
    first = sub.messages[1][1]
    assert first["v"] == 1 and first["kind"] == "raw" and first["machine"] == "imm-0"
    assert first["signals"] == ["melt_temp", "inj_pressure", "cycle_time"]
    assert first["units"] == ["°C", "bar", "s"]
    assert first["values"] == [230.0, 800.5, None]  # k = 0: cycle_time timed out, so no value
    assert first["quality"] == [0, int(Quality.UNCERTAIN), int(Quality.BAD_TIMEOUT)]
    assert first["ts_ms"] == 1_795_000_000_000 and first["ts"] == "2026-11-18T11:06:40.000Z"
    assert [m["seq"] for _, m in sub.messages[1:6]] == [1, 2, 3, 4, 5]
    assert sub.messages[2][1]["values"] == [231.0, 800.5, 12.25]
    assert outbox.counters.acked_records == 5 and len(outbox) == 0
    sub.close()
    # the broker keeps the last status for late subscribers: a new one gets "offline", flagged retained
    late = Subscriber(
        mosquitto.port, f"{prefix}/+/+/+/edge-1/status", client_id=f"sub-late-{protocol}-{where}"
    )
    assert late.wait_for(1, 5) == 1
    assert late.messages[0][1]["state"] == "offline" and late.raw[0][2] is True
    late.close()


@pytest.mark.parametrize("where", ["process", "thread"])
async def test_broker_outage_loses_nothing_and_keeps_order(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture, where: Literal["process", "thread"]
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.mqtt")
    broker = PersistentMosquitto(tmp_path / "broker")
    broker.start()
    table = _table()
    packer = RecordPacker(table)
    sub = Subscriber(broker.port, "outage/#", client_id="sub-outage")
    publisher = MqttPublisher(
        MqttSink(url=broker.url, keepalive=5, publisher=where, topic_prefix="outage"),
        client_id=f"pub-outage-{where}",
    )
    await publisher.start()
    loop = DeliveryLoop(outbox, publisher, batch_records=200, backoff=Backoff(initial=0.1, maximum=1.0))
    loop.start()
    sent = 0
    try:
        t0 = time.monotonic()
        stopped = restarted = False
        k = 0
        while time.monotonic() - t0 < OUTAGE_S + 4:
            elapsed = time.monotonic() - t0
            if not stopped and elapsed > 1.5:
                await asyncio.to_thread(broker.stop)
                stopped = True
            if stopped and not restarted and elapsed > 1.5 + OUTAGE_S:
                await asyncio.to_thread(broker.start)
                restarted = True
            await outbox.put_async([packer.raw(m, _poll(table, m, k)) for m in MACHINES])
            sent += len(MACHINES)
            k += 1
            await asyncio.sleep(0.02)
        assert stopped and restarted
        assert publisher.disconnects >= 1  # the outage really hit the publisher
        # the session's log line reaches the agent's log, from the publisher process too
        assert any(
            "reconnecting" in r.getMessage() for r in caplog.records if r.name == "edge_agent.sinks.mqtt"
        )
        assert await loop.wait_drained(30)
        assert len(outbox) == 0
        await asyncio.to_thread(sub.wait_for, sent, 20)
    finally:
        await loop.stop()
        await publisher.stop()
        sub.close()
        broker.stop()
    assert loop.counters.failures >= 1
    _assert_in_order(sub, packer, sent)


def _assert_in_order(sub: Subscriber, packer: RecordPacker, sent: int) -> None:
    """Every machine's messages 1..N arrived, in order once duplicates are dropped."""
    per_machine: dict[str, list[int]] = {}
    for topic, message in sub.messages:
        assert message["boot"] == packer.boot_ms
        per_machine.setdefault(topic.split("/")[-2], []).append(message["seq"])
    assert sorted(per_machine) == [m.machine for m in MACHINES]
    for machine, seqs in per_machine.items():
        # a consumer drops what it has seen (at-least-once); what is left must be 1..N in order
        last = 0
        kept = []
        for s in seqs:
            if s > last:
                kept.append(s)
                last = s
        assert kept == list(range(1, sent // len(MACHINES) + 1)), machine
        # duplicates only ever repeat an earlier message, never skip ahead
        assert set(seqs) == set(kept)


class MuteBroker:
    """An MQTT 3.1.1 server that accepts logins (CONNACK) and pings but never acknowledges a PUBLISH."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> MuteBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_all()
        self._server.close()
        await self._server.wait_closed()

    def drop_all(self) -> None:
        """Close every client connection, as a broker restart does."""
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                kind = (await reader.readexactly(1))[0] >> 4
                length, shift = 0, 0
                while True:  # MQTT's variable-length "remaining length"
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                await reader.readexactly(length)
                if kind == 1:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_wait_ready_waits_for_a_new_connection_not_for_the_one_that_failed() -> None:
    # a send that failed on a live connection (no PUBACK) must not be retried at once: that would
    # spin; a reconnect after it is what says the broker may take it now
    async with MuteBroker() as broker:
        publisher = MqttPublisher(
            MqttSink(url=f"mqtt://127.0.0.1:{broker.port}", publisher="thread"),
            client_id="pub-mute",
            ack_timeout=0.5,
        )
        await publisher.start()
        try:
            assert publisher.connected and publisher.connects == 1
            with pytest.raises(SinkError, match=r"no PUBACK within 0\.5 s"):
                await publisher.send([Record(Kind.RAW, "mute/a", b"{}", 1)])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(publisher.wait_ready(), 1.5)
            assert publisher.connected  # still on the connection that failed the send
            broker.drop_all()
            await asyncio.wait_for(publisher.wait_ready(), 5.0)
            assert publisher.connects == 2
        finally:
            await publisher.stop()


async def test_publisher_process_killed_is_restarted_and_loses_nothing(
    mosquitto: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    table = _table()
    packer = RecordPacker(table)
    sub = Subscriber(mosquitto.port, "killed/#", client_id="sub-killed")
    publisher = MqttPublisher(
        MqttSink(url=mosquitto.url, publisher="process", topic_prefix="killed"), client_id="pub-killed"
    )
    await publisher.start()
    first_pid = publisher.pid
    loop = DeliveryLoop(outbox, publisher, batch_records=50, backoff=Backoff(initial=0.1, maximum=0.5))
    loop.start()
    sent = 0
    try:
        for k in range(150):
            if k == 20:
                assert first_pid is not None
                # what a Ctrl-C or systemd's stop sends to every process of the agent: the publisher
                # process leaves its end to the agent (restarts stays 1 below)
                os.kill(first_pid, signal.SIGINT)
                os.kill(first_pid, signal.SIGTERM)
            if k == 50:
                assert first_pid is not None
                os.kill(first_pid, signal.SIGKILL)  # mid-stream, batches in flight
            await outbox.put_async([packer.raw(m, _poll(table, m, k)) for m in MACHINES])
            sent += len(MACHINES)
            await asyncio.sleep(0.01)
        assert await loop.wait_drained(30)
        await asyncio.to_thread(sub.wait_for, sent, 20)
    finally:
        await loop.stop()
        await publisher.stop()
        sub.close()
    assert publisher.restarts == 1 and publisher.pid != first_pid
    assert any("publisher process exited (code -9)" in r.getMessage() for r in caplog.records)
    assert outbox.counters.acked_records == sent and len(outbox) == 0
    _assert_in_order(sub, packer, sent)


@pytest.mark.parametrize("where", ["process", "thread"])
async def test_a_failing_session_is_replaced_not_hung(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture, where: Literal["process", "thread"]
) -> None:
    # paho refuses to publish to a topic with a wildcard (the config rejects them; a bug might not):
    # the I/O thread fails, the batch fails at once, and the next one goes through a new session
    sub = Subscriber(mosquitto.port, "renew/#", client_id=f"sub-renew-{where}")
    publisher = MqttPublisher(MqttSink(url=mosquitto.url, publisher=where), client_id=f"pub-renew-{where}")
    await publisher.start()
    try:
        with pytest.raises(SinkError):
            await asyncio.wait_for(publisher.send([Record(Kind.RAW, "renew/#", b"{}", 1)]), 20)
        deadline = time.monotonic() + 20
        while True:  # until the new session is up (process: restarted after a 1 s back-off)
            try:
                await asyncio.wait_for(publisher.send([Record(Kind.RAW, "renew/ok", b"{}", 1)]), 20)
                break
            except SinkError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await asyncio.to_thread(sub.wait_for, 1, 10) == 1
    finally:
        await publisher.stop()
        sub.close()
    assert publisher.restarts == 1
    assert [t for t, _, _ in sub.raw] == ["renew/ok"]
    assert any("I/O thread failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("where", ["process", "thread"])
async def test_unreadable_tls_file_is_a_config_error(
    tmp_path: Path, mosquitto: Mosquitto, where: Literal["process", "thread"]
) -> None:
    config = MqttSink(
        url=f"mqtts://127.0.0.1:{mosquitto.port}",
        tls=TlsOptions(ca_file=tmp_path / "no-such-ca.pem"),
        publisher=where,
    )
    with pytest.raises(
        SinkConfigError,
        match=r"cannot set up the MQTT client .*sinks\.mqtt\.tls names readable files \(ca_file = '.*no-such-ca\.pem'\)",
    ):
        await MqttPublisher(config, client_id=f"pub-no-ca-{where}").start()


async def test_last_will_when_the_agent_is_killed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # a process standing in for the agent: starts a publisher with a will, says so, then waits to be killed
    script = tmp_path / "agent.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from edge_agent.records import AgentStatus, RecordPacker, Source, unpack\n"
        "from edge_agent.sinks.base import SinkContext\n"
        "from edge_agent.sinks.mqtt import PLUGIN\n"
        "from edge_agent.sinks.mqtt.config import MqttSink\n"
        "from edge_agent.types import SignalTable\n"
        "async def main():\n"
        "    online = unpack(RecordPacker(SignalTable()).status(Source('edge-9', equipment='agent'), AgentStatus(time.time_ns(), 'online')))\n"
        f"    config = MqttSink(url='{mosquitto.url}', publisher='process', client_id='pub-will', topic_prefix='will')\n"
        "    publisher = PLUGIN.open(config, SinkContext('edge-9', Path('.'), online))\n"
        "    await publisher.start()\n"
        "    print(publisher.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    sub = Subscriber(mosquitto.port, "will/#", client_id="sub-will")
    agent = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert agent.stdout is not None
        publisher_pid = int(await asyncio.wait_for(agent.stdout.readline(), 30))
        assert await asyncio.to_thread(sub.wait_for, 1, 10) == 1
        agent.kill()  # SIGKILL: no shutdown code runs in the agent
        await agent.wait()
        assert await asyncio.to_thread(sub.wait_for, 2, 10) == 2
    finally:
        if agent.returncode is None:
            agent.kill()
        sub.close()
    assert [m["state"] for _, m in sub.messages] == ["online", "offline"]
    assert sub.messages[1][1]["seq"] == 0  # the will, not a status the agent sent
    assert await asyncio.to_thread(
        _gone, publisher_pid, 10.0
    )  # the publisher process does not outlive the agent


def _gone(pid: int, timeout: float) -> bool:
    """True once no process `pid` exists, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


async def test_tls_with_password_file(
    tmp_path: Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = make_tls_files(tmp_path / "pki")
    broker = TlsMosquitto(tmp_path / "tls-broker", tls=tls, users={"edge": "s3cret-pw"})
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    try:
        good = MqttSink(
            url=url,
            username="edge",
            password=SecretStr("s3cret-pw"),
            tls=TlsOptions(ca_file=tls.ca),
            publisher="process",
        )
        publisher = MqttPublisher(good, client_id="pub-tls")
        await publisher.start()
        assert publisher.connected
        table = _table()
        await outbox.put_async([RecordPacker(table).raw(MACHINES[1], _poll(table, MACHINES[1], 1))])
        loop = DeliveryLoop(outbox, publisher)
        loop.start()
        await loop.stop(drain_timeout=10)
        await publisher.stop()
        assert outbox.counters.acked_records == 1

        wrong_ca = good.model_copy(update={"tls": TlsOptions(ca_file=tls.other_ca)})
        with pytest.raises(SinkConfigError, match=r"not trusted .*sinks\.mqtt\.tls\.ca_file"):
            await MqttPublisher(wrong_ca, client_id="pub-wrong-ca").start()

        wrong_pw = good.model_copy(update={"password": SecretStr("nope")})
        with pytest.raises(SinkConfigError, match=r"refused user 'edge'.*password"):
            await MqttPublisher(wrong_pw, client_id="pub-wrong-pw").start()
        in_thread = wrong_pw.model_copy(update={"publisher": "thread"})
        with pytest.raises(SinkConfigError, match=r"refused user 'edge'.*password"):
            await MqttPublisher(in_thread, client_id="pub-wrong-pw-thread").start()

        # the password really comes from the environment through the config schema
        monkeypatch.setenv("EDGE_TEST_MQTT_PW", "s3cret-pw")
        from_env = MqttSink.model_validate(
            {
                "url": url,
                "username": "edge",
                "password": "${EDGE_TEST_MQTT_PW}",
                "tls": {"ca_file": str(tls.ca)},
            }
        )
        publisher = MqttPublisher(from_env, client_id="pub-env")
        await publisher.start()
        assert publisher.connected
        await publisher.stop()
    finally:
        broker.stop()


def test_raw_payload_is_columnar_and_vectorized() -> None:
    table = _table()
    packer = RecordPacker(table, boot_ms=123)
    readings = Readings.of(np.array([2, 0]), [10**18, 10**18 + 5_000_000], [1.5, 2.5])
    [record] = MqttEncoder().encode([packer.raw(MACHINES[0], readings)])
    assert record.key == "spBv1.0-free/uns/plant1/area1/line1/imm-0/raw"
    assert record.n == 2
    import orjson

    body = orjson.loads(record.payload)
    assert body["signals"] == ["cycle_time", "melt_temp"]
    assert body["t_ms"] == [10**12, 10**12 + 5]
    assert body["ts"] == "2001-09-09T01:46:40.005Z"
    assert body["boot"] == 123 and body["seq"] == 1
