"""Outbox records and their encoders: a device's batch becomes MQTT JSON or InfluxDB line protocol, once, from the arrays.

The schemas written here are documented and versioned in docs/schema.md; change both together.
"""

from __future__ import annotations

import datetime as dt
import functools
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from edge_agent.types import BAD_THRESHOLD, Readings, SignalTable

#: Version of the MQTT JSON payloads; bumped on any change a consumer could notice.
MQTT_SCHEMA_VERSION = 1


class Kind(IntEnum):
    """What a record carries; also the last topic level (`raw`, `kpi`, `alarm`, `status`)."""

    RAW = 0
    KPI = 1
    ALARM = 2
    STATUS = 3

    @property
    def topic_name(self) -> str:
        """The topic level of this kind."""
        return self.name.lower()

    @property
    def drop_rank(self) -> int:
        """Order of dropping when an outbox is full and keeps priority: lower rank goes first."""
        return _DROP_RANK[self]


# Raw samples are the cheapest to lose (the indicators summarise them), alarms the dearest.
_DROP_RANK = {Kind.RAW: 0, Kind.STATUS: 1, Kind.KPI: 1, Kind.ALARM: 2}


@dataclass(frozen=True, slots=True)
class Record:
    """One unit of store-and-forward: already encoded for one sink, sent and acknowledged as a whole.

    `key` is the MQTT topic for the MQTT sink and the series key (machine) for InfluxDB;
    `payload` is the JSON message or the line-protocol lines; `n` counts the values inside.
    """

    kind: Kind
    key: str
    payload: bytes
    n: int = 1


@dataclass(frozen=True, slots=True)
class Stored:
    """A record read back from an outbox, with the id that acknowledges it."""

    id: int
    record: Record


@dataclass(frozen=True, slots=True)
class Source:
    """Where a batch comes from in the ISA-95 hierarchy, and what kind of equipment it is."""

    machine: str
    equipment: str = "machine"
    site: str = "plant1"
    area: str = "area1"
    line: str = "line1"
    enterprise: str = "acme"


@dataclass(frozen=True, slots=True)
class IndicatorBatch:
    """Indicator values of one device at one time: `values[name][i]` belongs to signal row `signal[i]`."""

    t_ns: int
    signal: NDArray[np.int32]
    values: Mapping[str, NDArray[np.float64]]
    family: str = "kpi"

    def __post_init__(self) -> None:
        for name, column in self.values.items():
            if column.shape != self.signal.shape:
                raise ValueError(
                    f"indicator {name!r} has {column.shape[0]} values for {self.signal.shape[0]} signals"
                )


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm starting or clearing on one signal."""

    t_ns: int
    signal: int
    rule: str
    state: Literal["start", "clear"]
    value: float
    limit: float
    severity: str = "warning"
    message: str = ""


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Online/offline state and health figures of the agent or of one device."""

    t_ns: int
    state: Literal["online", "offline"]
    health: Mapping[str, float | int | str] = field(default_factory=dict)


def iso_ms(t_ns: int) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, the timestamp form of the JSON payloads."""
    ms = t_ns // 1_000_000
    return f"{_iso_seconds(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_seconds(s: int) -> str:
    # strftime is ~10 us; every message of a second (hundreds of devices) shares the same seconds
    return dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


class SignalNames:
    """Signal names and units of a SignalTable as numpy object arrays, so a batch looks them up by fancy indexing."""

    def __init__(self, table: SignalTable) -> None:
        self._table = table
        self._size = -1
        self.names: NDArray[np.object_] = np.empty(0, dtype=object)
        self.units: NDArray[np.object_] = np.empty(0, dtype=object)

    def refresh(self) -> None:
        """Pick up rows added since the last call (rows are append-only, so this is a length check)."""
        if len(self._table) != self._size:
            self.names = np.array(self._table.tags, dtype=object)
            self.units = np.array(self._table.units, dtype=object)
            self._size = len(self._table)


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


# Line protocol escaping (https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/#special-characters)
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\", "\n": r"\n"})
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\", "\n": r"\n"})


def lp_measurement(name: str) -> str:
    """A measurement name escaped for line protocol."""
    return name.translate(_MEASUREMENT_ESCAPES)


def lp_tag(text: str) -> str:
    """A tag key, tag value or field key escaped for line protocol."""
    return text.translate(_TAG_ESCAPES)


def lp_string(text: str) -> str:
    """A string field value, quoted and escaped for line protocol."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _float_texts(values: NDArray[np.float64]) -> list[str]:
    # repr of a list formats every float in C (shortest round-trip form): ~3x cheaper than a Python call per value
    text = repr(values.tolist())[1:-1]
    return text.split(", ") if text else []


class _Prefixes:
    """Line prefixes of one source and measurement over the span of rows it has sent."""

    def __init__(self) -> None:
        self.base = 0
        self.text: NDArray[np.object_] = np.empty(0, dtype=object)
        self.filled: NDArray[np.bool_] = np.empty(0, dtype=bool)

    def grow(self, lo: int, hi: int) -> None:
        """Cover rows lo..hi-1 as well, keeping what is built."""
        if self.text.shape[0]:
            lo, hi = min(lo, self.base), max(hi, self.base + self.text.shape[0])
        text = np.full(hi - lo, None, dtype=object)
        filled = np.zeros(hi - lo, dtype=bool)
        if self.text.shape[0]:
            text[self.base - lo : self.base - lo + self.text.shape[0]] = self.text
            filled[self.base - lo : self.base - lo + self.text.shape[0]] = self.filled
        self.base, self.text, self.filled = lo, text, filled


class LineProtocolEncoder:
    """Encodes batches into InfluxDB line protocol (docs/schema.md), vectorized over a batch's arrays."""

    def __init__(self, table: SignalTable) -> None:
        self._signals = SignalNames(table)
        # per (source, measurement): the line prefixes ("measurement,tags,signal=.. ") of the rows the
        # source sends, in an object array over the span of its rows (a device's rows are contiguous)
        self._prefixes: dict[tuple[Source, str], _Prefixes] = {}

    def _tags(self, source: Source) -> str:
        return (
            f"area={lp_tag(source.area)},line={lp_tag(source.line)},"
            f"machine={lp_tag(source.machine)},site={lp_tag(source.site)}"
        )

    def _row_prefixes(
        self, source: Source, measurement: str, rows: NDArray[np.integer]
    ) -> NDArray[np.object_]:
        """The line prefixes of `rows` for this source and measurement, built once per row on first use.

        Only the span of rows a source really sends is held: an array over the whole table per
        source and measurement cost 8 bytes x signals x sources x 2 (17 MB at 100 devices of 100
        tags), and testing it for gaps at every batch cost more than the lines themselves.
        """
        key = (source, measurement)
        cache = self._prefixes.get(key)
        if cache is None:
            cache = self._prefixes[key] = _Prefixes()
        if rows.size == 0:
            return np.empty(0, dtype=object)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if lo < cache.base or hi > cache.base + cache.text.shape[0]:
            cache.grow(lo, hi)
        at = rows - cache.base
        missing = rows[~cache.filled[at]]
        if missing.size:
            self._signals.refresh()
            missing = np.unique(missing)
            head = f"{lp_measurement(measurement)},{self._tags(source)},signal="
            names = self._signals.names[missing].tolist()
            units = self._signals.units[missing].tolist()
            cache.text[missing - cache.base] = [
                f"{head}{lp_tag(name)}{',unit=' + lp_tag(unit) if unit else ''} "
                for name, unit in zip(names, units, strict=True)
            ]
            cache.filled[missing - cache.base] = True
        return cache.text[at]

    def raw(self, source: Source, readings: Readings) -> Record:
        """Lines `{equipment},tags,signal=.. value=..,quality=..i t_ns`; a bad value carries only its quality."""
        n = len(readings)
        prefixes = self._row_prefixes(source, source.equipment, readings.signal).tolist()
        quality = readings.quality.tolist()
        stamps = readings.t_ns.tolist()
        bad = readings.quality >= BAD_THRESHOLD
        if not bad.any():
            values = _float_texts(readings.value)
            text = "".join(
                [
                    f"{p}value={v},quality={q}i {t}\n"
                    for p, v, q, t in zip(prefixes, values, quality, stamps, strict=True)
                ]
            )
        else:
            # line protocol has no NaN: a bad value is a line with the quality field only
            values = _float_texts(np.where(bad, 0.0, readings.value))
            bad_list = bad.tolist()
            text = "".join(
                [
                    f"{p}quality={q}i {t}\n" if b else f"{p}value={v},quality={q}i {t}\n"
                    for p, v, q, t, b in zip(prefixes, values, quality, stamps, bad_list, strict=True)
                ]
            )
        return Record(Kind.RAW, source.machine, text.encode(), n)

    def kpi(self, source: Source, batch: IndicatorBatch) -> Record:
        """One line per signal: `{family},tags,signal=.. name=value,... t_ns`; NaN indicators are left out."""
        prefixes = self._row_prefixes(source, batch.family, batch.signal).tolist()
        names = [lp_tag(k) for k in batch.values]
        columns = [_float_texts(np.nan_to_num(col, nan=0.0)) for col in batch.values.values()]
        finite = [np.isfinite(col).tolist() for col in batch.values.values()]
        lines = []
        stamp = batch.t_ns
        for i, prefix in enumerate(prefixes):
            fields = ",".join(
                [f"{name}={col[i]}" for name, col, ok in zip(names, columns, finite, strict=True) if ok[i]]
            )
            if fields:
                lines.append(f"{prefix}{fields} {stamp}\n")
        n = sum(1 for ok in finite for x in ok if x)
        return Record(Kind.KPI, source.machine, "".join(lines).encode(), n)

    def alarm(self, source: Source, event: AlarmEvent) -> Record:
        """One line `alarm,tags,signal=..,rule=.. active=1i|0i,value=..,limit=..,severity="..",message=".." t_ns`."""
        prefix = self._row_prefixes(source, "alarm", np.array([event.signal]))[0]
        fields = [f"active={1 if event.state == 'start' else 0}i"]
        for name, number in (("value", event.value), ("limit", event.limit)):
            if np.isfinite(number):
                fields.append(f"{name}={float(number)!r}")
        fields.append(f"severity={lp_string(event.severity)}")
        if event.message:
            fields.append(f"message={lp_string(event.message)}")
        line = f"{prefix[:-1]},rule={lp_tag(event.rule)} {','.join(fields)} {event.t_ns}\n"
        return Record(Kind.ALARM, source.machine, line.encode())

    def status(self, source: Source, status: AgentStatus) -> Record:
        """One line `agent_status,tags online=1i|0i,<numeric health fields> t_ns`."""
        fields = [f"online={1 if status.state == 'online' else 0}i"]
        for name, value in status.health.items():
            # numpy scalars count as the numbers they are: a field written once as an integer and
            # once as a string is a type conflict InfluxDB refuses for the rest of the shard
            if isinstance(value, bool | np.bool_ | numbers.Integral):
                fields.append(f"{lp_tag(name)}={int(value)}i")
            elif isinstance(value, numbers.Real):
                if np.isfinite(value):
                    fields.append(f"{lp_tag(name)}={float(value)!r}")
            else:
                fields.append(f"{lp_tag(name)}={lp_string(str(value))}")
        line = f"agent_status,{self._tags(source)} {','.join(fields)} {status.t_ns}\n"
        return Record(Kind.STATUS, source.machine, line.encode())


@dataclass
class Output:
    """What one batch produced, per device, ready to be encoded for the sinks."""

    raw: list[tuple[Source, Readings]] = field(default_factory=list)
    kpi: list[tuple[Source, IndicatorBatch]] = field(default_factory=list)
    alarms: list[tuple[Source, AlarmEvent]] = field(default_factory=list)
