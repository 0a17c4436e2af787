"""MQTT JSON payloads and unified-namespace topics (docs/schema.md), encoded from outbox records when they are sent."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Sequence

import orjson

from edge_agent.records import (
    AlarmData,
    Kind,
    KpiData,
    RawData,
    Record,
    RecordData,
    RecordFormatError,
    Source,
    StatusData,
    is_packed,
    unpack,
)
from edge_agent.sinks.mqtt.config import check_topic_template

log = logging.getLogger("edge_agent.sinks.mqtt")

#: Version of the MQTT JSON payloads; bumped on any change a consumer could notice.
MQTT_SCHEMA_VERSION = 1

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def iso_ms(t_ns: int) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, the timestamp form of the JSON payloads."""
    ms = t_ns // 1_000_000
    return f"{_iso_seconds(ms // 1000).decode()}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_seconds(s: int) -> bytes:
    # strftime is ~10 us; every message of a second (hundreds of devices) shares the same seconds
    return dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()


#: Cached topic and payload heads before the cache starts over (one per source and agent run).
_CACHE_SIZE = 4096


class MqttEncoder:
    """Encodes outbox records as MQTT messages: a Record whose key is the topic and whose payload is the JSON.

    Records an older version stored already encoded (topic and JSON) pass through unchanged, so an
    outbox written before the upgrade drains as it was written.
    """

    def __init__(
        self,
        topic_prefix: str = "spBv1.0-free/uns",
        topic_template: str = "{prefix}/{site}/{area}/{line}/{machine}/{kind}",
    ) -> None:
        try:
            check_topic_template(topic_template)
        except ValueError as exc:
            raise ValueError(f"sinks.mqtt.topic_template {exc}") from None
        self._prefix = topic_prefix
        self._template = topic_template
        self._topics: dict[tuple[Source, Kind], str] = {}
        self._raw_heads: dict[tuple[Source, int], tuple[str, bytes]] = {}
        self.unreadable = 0
        """Records skipped because they could not be unpacked (a newer format, damaged bytes)."""

    def topic(self, source: Source, kind: Kind) -> str:
        """The topic of `kind` messages of a source."""
        key = (source, kind)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._template.format(
                prefix=self._prefix,
                enterprise=source.enterprise,
                site=source.site,
                area=source.area,
                line=source.line,
                machine=source.machine,
                kind=kind.topic_name,
            )
            self._topics[key] = topic
        return topic

    def encode(self, records: Sequence[Record]) -> list[Record]:
        """The messages of a batch of outbox records, in order; a record that cannot be read is logged and left out."""
        out: list[Record] = []
        failed: list[str] = []
        for record in records:
            if not is_packed(record.payload):
                out.append(record)  # written by an older version: already the message
                continue
            try:
                data = unpack(record)
            except RecordFormatError as exc:
                failed.append(str(exc))
                continue
            out.append(self.message(data))
        if failed:
            # delivering the rest beats blocking the sink on a record no retry can read
            self.unreadable += len(failed)
            log.error("MQTT: %d records could not be read and are skipped: %s", len(failed), failed[0])
        return out

    def message(self, data: RecordData) -> Record:
        """One unpacked record as its message."""
        if isinstance(data, RawData):
            return self.raw(data)
        if isinstance(data, KpiData):
            return self.kpi(data)
        if isinstance(data, AlarmData):
            return self.alarm(data)
        if isinstance(data, StatusData):
            return self.status(data)
        raise TypeError(f"no encoding for {type(data).__name__}")

    def _header(self, data: RecordData, kind: Kind) -> tuple[str, dict[str, object]]:
        source = data.source
        return self.topic(source, kind), {
            "v": MQTT_SCHEMA_VERSION,
            "kind": kind.topic_name,
            "site": source.site,
            "area": source.area,
            "line": source.line,
            "machine": source.machine,
            "equipment": source.equipment,
            "boot": data.boot_ms,
            "seq": data.seq,
            "ts": iso_ms(data.t_ns),
            "ts_ms": data.t_ns // 1_000_000,
        }

    def raw(self, data: RawData) -> Record:
        """One message with every value of one poll of one device (columnar arrays, NaN -> null).

        The JSON is what orjson makes of `_header`'s object with the arrays after it, assembled from
        parts: the fields a source repeats in every message are encoded once (the hottest path of
        the MQTT sink; tests/test_records.py holds it to the bytes of the encoder before it).
        """
        key = (data.source, data.boot_ms)
        cached = self._raw_heads.get(key)
        if cached is None:
            topic, body = self._header(data, Kind.RAW)
            del body["seq"], body["ts"], body["ts_ms"]
            if len(self._raw_heads) >= _CACHE_SIZE:
                self._raw_heads.clear()
            cached = self._raw_heads[key] = (topic, orjson.dumps(body)[:-1])
        topic, head = cached
        ms = data.t_ns // 1_000_000
        arrays = orjson.dumps(
            # orjson writes NaN (bad quality) as null
            {"values": data.value, "quality": data.quality, "t_ms": data.t // 1_000_000},
            option=_NUMPY,
        )
        stamp = b',"seq":%d,"ts":"%s.%03dZ","ts_ms":%d,"signals":' % (
            data.seq,
            _iso_seconds(ms // 1000),
            ms % 1000,
            ms,
        )
        payload = b"".join((head, stamp, data.names, b',"units":', data.units, b",", arrays[1:]))
        return Record(Kind.RAW, topic, payload, len(data.value))

    def kpi(self, data: KpiData) -> Record:
        """One message with a set of indicator values per signal at one time."""
        topic, body = self._header(data, Kind.KPI)
        body["family"] = data.family
        body["signals"] = orjson.Fragment(data.names)
        body["units"] = orjson.Fragment(data.units)
        body["indicators"] = data.values
        n = sum(len(column) for column in data.values.values())
        return Record(Kind.KPI, topic, orjson.dumps(body, option=_NUMPY), n)

    def alarm(self, data: AlarmData) -> Record:
        """One message per alarm start or clear."""
        topic, body = self._header(data, Kind.ALARM)
        body.update(
            signal=data.signal,
            unit=data.unit,
            rule=data.rule,
            state=data.state,
            severity=data.severity,
            value=data.value,
            limit=data.limit,
            message=data.message,
        )
        return Record(Kind.ALARM, topic, orjson.dumps(body))

    def status(self, data: StatusData) -> Record:
        """The (retained) status message of a source; seq 0 marks the last will, which takes no place in the sequence.

        The broker sends the will only if the agent dies, at a time nobody knows in advance.
        """
        topic, body = self._header(data, Kind.STATUS)
        body["state"] = data.state
        body["health"] = data.health
        return Record(Kind.STATUS, topic, orjson.dumps(body))
