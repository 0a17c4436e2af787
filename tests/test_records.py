"""Records packed for the outbox and encoded by each sink when sent: the same bytes the agent published when it
encoded before the outbox (golden file from commit 828f028), a packed form that reads back exactly, older rows
passed through, a newer format refused without blocking the rest."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_agent.records import (
    RECORD_FORMAT,
    AgentStatus,
    AlarmData,
    AlarmEvent,
    IndicatorBatch,
    Kind,
    KpiData,
    RawData,
    Record,
    RecordFormatError,
    RecordPacker,
    Source,
    StatusData,
    is_packed,
    unpack,
)
from edge_agent.sinks.influx.encoder import LineProtocolEncoder
from edge_agent.sinks.mqtt.encoder import MqttEncoder
from edge_agent.types import Quality, Readings, SignalTable
from tests.fixtures.outbox_828f028 import inputs

T = 1_790_000_000_000_000_000


def _expected(sink: str) -> list[dict]:
    lines = (Path(inputs.__file__).parent / "expected.jsonl").read_bytes().splitlines()
    return [entry for entry in map(orjson.loads, lines) if entry["sink"] == sink]


def _packed_inputs() -> list[Record]:
    """inputs.py's batches packed in the order the old agent put them (ticks, then the statuses)."""
    table = inputs.table()
    packer = RecordPacker(table, boot_ms=inputs.BOOT_MS)
    records = [r for out in inputs.outputs(table) for r in packer.output(out)]
    return records + [packer.status(inputs.AGENT, status) for status in inputs.statuses()]


def test_mqtt_topics_and_payloads_are_those_of_the_version_that_encoded_before_the_outbox() -> None:
    messages = MqttEncoder(topic_prefix=inputs.TOPIC_PREFIX).encode(_packed_inputs())
    assert [(m.key, m.payload) for m in messages] == [
        (e["key"], e["payload"].encode()) for e in _expected("mqtt")
    ]


def test_line_protocol_is_that_of_the_version_that_encoded_before_the_outbox() -> None:
    encoder = LineProtocolEncoder()
    records = _packed_inputs()
    # that version stored one record per device and kind, and none for an indicator set with no defined value
    per_record = [body for body in (encoder.encode([r]) for r in records) if body]
    assert per_record == [e["payload"].encode() for e in _expected("influx")]
    # a whole batch, its raw values formatted as one column, gives the same body
    assert encoder.encode(records) == b"".join(per_record)


def test_a_record_reads_back_as_packed() -> None:
    table = SignalTable()
    rows = [table.add("m1", name, unit) for name, unit in (("a", "bar"), ('q"\\ü', ""), ("c", "°C"))]
    source = Source("m1", "press", "s", "a", "l", "e")
    packer = RecordPacker(table, boot_ms=7)
    readings = Readings.of(rows, [T, T + 5, T + 3], [1.5, np.nan, -0.0], [0, Quality.BAD_TIMEOUT, 0x41])
    raw = unpack(packer.raw(source, readings))
    assert isinstance(raw, RawData)
    assert (raw.source, raw.boot_ms, raw.seq, raw.t_ns) == (source, 7, 1, T + 5)  # the latest value's time
    assert orjson.loads(raw.names) == ["a", 'q"\\ü', "c"] and orjson.loads(raw.units) == ["bar", "", "°C"]
    assert raw.t.tolist() == [T, T + 5, T + 3] and raw.quality.tolist() == [0, 0x87, 0x41]
    assert np.array_equal(raw.value, readings.value, equal_nan=True) and math.copysign(1, raw.value[2]) == -1

    kpi = unpack(
        packer.kpi(source, IndicatorBatch(T, np.array(rows[:2]), {"mean": np.array([np.inf, np.nan])}))
    )
    assert isinstance(kpi, KpiData) and kpi.family == "kpi" and kpi.seq == 1
    assert kpi.values["mean"][0] == np.inf and np.isnan(kpi.values["mean"][1])

    event = AlarmEvent(T, rows[1], "usl", "start", np.float64(3.5), float("inf"), "critical", "over")
    alarm = unpack(packer.alarm(source, event))
    assert isinstance(alarm, AlarmData)
    assert (alarm.signal, alarm.unit, alarm.value, alarm.severity) == ('q"\\ü', "", 3.5, "critical")
    assert math.isnan(
        alarm.limit
    )  # a non-finite limit is no limit, in JSON (null) and line protocol (left out)

    health = {"n": np.int64(3), "ok": np.bool_(True), "load": np.float32(0.5), "lag": np.nan, "mode": "a b"}
    status = unpack(packer.status(source, AgentStatus(T, "online", health)))
    assert isinstance(status, StatusData)
    assert status.health == {"n": 3, "ok": True, "load": 0.5, "lag": status.health["lag"], "mode": "a b"}
    assert [type(v) for v in status.health.values()] == [int, bool, float, float, str]
    assert math.isnan(status.health["lag"])  # type: ignore[arg-type]


def test_sequence_numbers_count_per_source_and_kind_within_a_run() -> None:
    table = SignalTable()
    row = table.add("m1", "a")
    packer = RecordPacker(table)
    m1, m2 = Source("m1"), Source("m2")
    poll = Readings.of([row], T, [1.0])
    records = [packer.raw(m1, poll), packer.raw(m2, poll), packer.raw(m1, poll)]
    records.append(packer.status(m1, AgentStatus(T, "online")))
    seqs = [unpack(record).seq for record in records]
    assert seqs == [1, 1, 2, 1]
    assert unpack(packer.raw(m1, poll)).boot_ms == packer.boot_ms


def test_lines_follow_the_signals_in_any_order_and_rows_added_later() -> None:
    table = SignalTable()
    for i in range(6):
        table.add("other", f"o{i}")
    rows = [table.add("imm1", f"t{i}", "bar" if i % 2 else "") for i in range(6)]
    packer = RecordPacker(table)
    encoder = LineProtocolEncoder()
    src = Source("imm1", "imm")

    def lines(rows: list[int]) -> list[str]:
        record = packer.raw(src, Readings.of(rows, T, [float(r) for r in rows]))
        return encoder.encode([record]).decode().splitlines()

    head = "imm,area=area1,line=line1,machine=imm1,site=plant1,signal="
    assert lines([rows[4], rows[2]]) == [
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}t2 value=8.0,quality=0i {T}",
    ]
    late = table.add("imm1", "late", "K")  # a tag added by a reload lands after every other row
    assert lines([rows[0], rows[5], rows[4], rows[4], late]) == [
        f"{head}t0 value=6.0,quality=0i {T}",
        f"{head}t5,unit=bar value=11.0,quality=0i {T}",
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}late,unit=K value=12.0,quality=0i {T}",
    ]
    # another source's rows never pick up this source's tags
    other = packer.raw(Source("other", "press"), Readings.of([0], T, [1.0]))
    assert encoder.encode([other]).startswith(b"press,area=area1,line=line1,machine=other,")
    assert encoder.encode([packer.raw(src, Readings.empty())]) == b""


def test_status_fields_keep_their_type_for_numpy_scalars() -> None:
    """Health figures typed as numpy scalars are integer/float fields, never strings (a type conflict in InfluxDB)."""
    health = {
        "devices": np.int64(3),
        "ok": np.bool_(True),
        "load": np.float32(0.5),
        "lag_s": np.float64(np.nan),
    }
    record = RecordPacker(SignalTable()).status(Source("edge-1", "agent"), AgentStatus(T, "online", health))
    line = LineProtocolEncoder().encode([record]).decode()
    assert line.split(" ")[1] == "online=1i,devices=3i,ok=1i,load=0.5"
    body = orjson.loads(MqttEncoder().encode([record])[0].payload)
    assert body["health"] == {"devices": 3, "ok": True, "load": 0.5, "lag_s": None}


def test_rows_of_older_outboxes_pass_through_in_order_between_packed_records() -> None:
    table = SignalTable()
    row = table.add("m1", "a")
    packer = RecordPacker(table)
    poll = Readings.of([row], T, [2.0])
    old_json = Record(Kind.RAW, "old/topic", b'{"v":1}', 1)
    old_lines = Record(Kind.RAW, "m1", b"old,machine=m1 value=1 5\n", 1)
    assert not is_packed(old_json.payload) and not is_packed(old_lines.payload)
    assert is_packed(packer.raw(Source("m1"), poll).payload)

    mqtt = MqttEncoder().encode([old_json, packer.raw(Source("m1"), poll), old_json])
    assert [m.key for m in mqtt] == ["old/topic", "spBv1.0-free/uns/plant1/area1/line1/m1/raw", "old/topic"]
    assert mqtt[0] is old_json and mqtt[2] is old_json
    body = LineProtocolEncoder().encode(
        [packer.raw(Source("m1"), poll), old_lines, packer.raw(Source("m1"), poll)]
    )
    new = f"machine,area=area1,line=line1,machine=m1,site=plant1,signal=a value=2.0,quality=0i {T}\n".encode()
    assert body == new + old_lines.payload + new


def test_a_record_of_a_newer_format_is_skipped_with_an_error_and_the_rest_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = SignalTable()
    row = table.add("m1", "a")
    packer = RecordPacker(table)
    good = packer.raw(Source("m1"), Readings.of([row], T, [2.0]))
    payload = bytearray(good.payload)
    payload[3] = RECORD_FORMAT + 1
    newer = dataclasses.replace(good, payload=bytes(payload))
    with pytest.raises(RecordFormatError, match=f"record format {RECORD_FORMAT + 1} is newer"):
        unpack(newer)
    truncated = dataclasses.replace(good, payload=good.payload[:-5])
    with pytest.raises(RecordFormatError, match="does not parse"):
        unpack(truncated)
    caplog.set_level(logging.ERROR)
    mqtt = MqttEncoder()
    assert [m.key for m in mqtt.encode([newer, good, truncated])] == [
        "spBv1.0-free/uns/plant1/area1/line1/m1/raw"
    ]
    assert mqtt.unreadable == 2
    influx = LineProtocolEncoder()
    assert influx.encode([newer, good]).count(b"\n") == 1 and influx.unreadable == 1
    assert any("could not be read and are skipped" in r.getMessage() for r in caplog.records)


def test_a_changed_topic_template_applies_to_records_already_stored() -> None:
    """The outbox keeps records, not messages: the topic is the template's when the record is sent."""
    table = SignalTable()
    row = table.add("press-1", "force", "kN")
    stored = RecordPacker(table).raw(Source("press-1", area="hall 2"), Readings.of([row], T, [12.5]))
    before = MqttEncoder(topic_prefix="uns").encode([stored])[0]
    after = MqttEncoder(topic_prefix="plant", topic_template="{prefix}/{area}/{machine}/{kind}").encode(
        [stored]
    )[0]
    assert (before.key, after.key) == ("uns/plant1/hall 2/line1/press-1/raw", "plant/hall 2/press-1/raw")
    assert before.payload == after.payload
