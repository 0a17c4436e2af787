"""MQTT JSON payloads and unified-namespace topics (docs/schema.md), from a device's batch arrays."""

from __future__ import annotations

import time

import orjson

from edge_agent.records import (
    AgentStatus,
    AlarmEvent,
    IndicatorBatch,
    Kind,
    Record,
    SignalNames,
    Source,
    iso_ms,
)
from edge_agent.types import Readings, SignalTable

#: Version of the MQTT JSON payloads; bumped on any change a consumer could notice.
MQTT_SCHEMA_VERSION = 1


class MqttEncoder:
    """Encodes batches into MQTT records: the unified-namespace topic and the JSON payload of docs/schema.md."""

    def __init__(
        self,
        table: SignalTable,
        topic_prefix: str = "spBv1.0-free/uns",
        topic_template: str = "{prefix}/{site}/{area}/{line}/{machine}/{kind}",
        boot_ms: int | None = None,
    ) -> None:
        self._signals = SignalNames(table)
        self._prefix = topic_prefix
        self._template = topic_template
        #: Start of this agent run (epoch ms); with `seq` it makes (boot, seq) unique across restarts.
        self.boot_ms = boot_ms if boot_ms is not None else time.time_ns() // 1_000_000
        self._seq: dict[str, int] = {}
        self._topics: dict[tuple[Source, Kind], str] = {}
        try:
            self.topic(Source("m"), Kind.RAW)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"sinks.mqtt.topic_template {topic_template!r} is not usable ({exc}); "
                "placeholders: prefix, enterprise, site, area, line, machine, kind"
            ) from None

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

    def _header(
        self, source: Source, kind: Kind, t_ns: int, sequenced: bool = True
    ) -> tuple[str, dict[str, object]]:
        topic = self.topic(source, kind)
        seq = 0
        if sequenced:
            seq = self._seq.get(topic, 0) + 1
            self._seq[topic] = seq
        return topic, {
            "v": MQTT_SCHEMA_VERSION,
            "kind": kind.topic_name,
            "site": source.site,
            "area": source.area,
            "line": source.line,
            "machine": source.machine,
            "equipment": source.equipment,
            "boot": self.boot_ms,
            "seq": seq,
            "ts": iso_ms(t_ns),
            "ts_ms": t_ns // 1_000_000,
        }

    def raw(self, source: Source, readings: Readings) -> Record:
        """One message with every value of one poll of one device (columnar arrays, NaN -> null)."""
        self._signals.refresh()
        rows = readings.signal
        t_ns = int(readings.t_ns.max()) if len(readings) else time.time_ns()
        topic, body = self._header(source, Kind.RAW, t_ns)
        body["signals"] = self._signals.names[rows].tolist()
        body["units"] = self._signals.units[rows].tolist()
        body["values"] = readings.value  # orjson writes NaN (bad quality) as null
        body["quality"] = readings.quality
        body["t_ms"] = readings.t_ns // 1_000_000
        return Record(Kind.RAW, topic, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), len(readings))

    def kpi(self, source: Source, batch: IndicatorBatch) -> Record:
        """One message with a set of indicator values per signal at one time."""
        self._signals.refresh()
        topic, body = self._header(source, Kind.KPI, batch.t_ns)
        body["family"] = batch.family
        body["signals"] = self._signals.names[batch.signal].tolist()
        body["units"] = self._signals.units[batch.signal].tolist()
        body["indicators"] = dict(batch.values)
        n = len(batch.signal) * len(batch.values)
        return Record(Kind.KPI, topic, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), n)

    def alarm(self, source: Source, event: AlarmEvent) -> Record:
        """One message per alarm start or clear."""
        self._signals.refresh()
        topic, body = self._header(source, Kind.ALARM, event.t_ns)
        body.update(
            signal=self._signals.names[event.signal],
            unit=self._signals.units[event.signal],
            rule=event.rule,
            state=event.state,
            severity=event.severity,
            value=event.value,
            limit=event.limit,
            message=event.message,
        )
        return Record(Kind.ALARM, topic, orjson.dumps(body))

    def status(self, source: Source, status: AgentStatus, will: bool = False) -> Record:
        """The (retained) status message of a source; `will=True` makes the last will, with seq 0.

        The broker sends the will only if the agent dies, at a time nobody knows in advance, so it
        takes no place in the topic's sequence (seq 0 means "outside the sequence").
        """
        topic, body = self._header(source, Kind.STATUS, status.t_ns, sequenced=not will)
        body["state"] = status.state
        body["health"] = dict(status.health)
        return Record(Kind.STATUS, topic, orjson.dumps(body))
