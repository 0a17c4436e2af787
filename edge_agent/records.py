"""Records: what the pipeline hands the sinks, and the form in which they wait in the outbox.

A record is packed once (`RecordPacker`), into a compact, versioned, sink-independent form, and the
same bytes go into every sink's outbox. Each sink unpacks and encodes its records when it sends
them (MQTT JSON and topics, InfluxDB line protocol: docs/schema.md), so a changed topic template
applies to a backlog too, and a sink may keep per-connection state. Outboxes written by versions
before this format hold rows already encoded for their sink; `is_packed` tells the two apart and
the sinks send such rows as they are.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from edge_agent.types import Readings, SignalTable


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
    """One unit of store-and-forward, sent and acknowledged as a whole.

    `payload` is a record packed by `RecordPacker` (`key` is then its machine, for people reading
    the outbox file), or, in an outbox written before that format, the sink's own encoding (`key`
    the MQTT topic, or the machine for InfluxDB line protocol). `n` counts the values inside.
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


@dataclass
class Output:
    """What one batch produced, per device, ready to be encoded for the sinks."""

    raw: list[tuple[Source, Readings]] = field(default_factory=list)
    kpi: list[tuple[Source, IndicatorBatch]] = field(default_factory=list)
    alarms: list[tuple[Source, AlarmEvent]] = field(default_factory=list)


# --------------------------------------------------------------------------- the outbox form of a record
#
# Layout (little-endian): a 56-byte header, four JSON segments, zero padding to a multiple of 8, then
# the array columns, which numpy reads in place (aligned). Reading a batch of raw values parses no JSON.
#   header:  magic b"\x00ea", format u8, kind u8, 3 zero bytes, boot i64 (ms), seq i64, t i64 (ns),
#            n u32 (raw: values; kpi: signals), then the lengths (u32) of the four segments:
#   src:     [machine, equipment, site, area, line, enterprise]
#   meta:    per kind: raw `{}`; kpi {"fam", "ind": indicator names in column order};
#            alarm {"sig", "unit", "rule", "state", "value", "limit", "sev", "msg"};
#            status {"state", "health": [[name, value], ...]} (a non-finite float is null)
#   names, units: the signals' names and units (JSON arrays; `[]` for alarm and status)
#   columns: raw t_ns int64[n], value float64[n], quality uint8[n]; kpi one float64[n] per indicator
# A NUL byte starts no JSON message and no line of line protocol: rows of older outboxes never
# begin with the magic. A new layout takes the next format number; `unpack` reads every format it
# knows and refuses, with RecordFormatError, one written by a newer agent.

#: The format `RecordPacker` writes.
RECORD_FORMAT = 1
_MAGIC = b"\x00ea"
_HEADER = struct.Struct("<3sBB3xqqqIIIII")
#: Entries kept in the packing and unpacking caches (sets of signal rows, sources) before they start over.
_CACHE_SIZE = 4096


class RecordFormatError(ValueError):
    """A packed record this agent cannot read: a format from a newer version, or damaged bytes."""


def is_packed(payload: bytes) -> bool:
    """True for a record packed by `RecordPacker`, False for a row an older version encoded for its sink."""
    return payload[:3] == _MAGIC


@dataclass(slots=True)
class RecordData:
    """What every unpacked record has: its source, the agent run and sequence number, its time."""

    source: Source
    boot_ms: int
    """Start of the agent run that packed it (epoch ms); with `seq` it makes a record's identity."""
    seq: int
    """1, 2, 3 ... per source and kind within one run (0: outside the sequence, e.g. an MQTT last will)."""
    t_ns: int
    """The record's time: the latest value's for raw values."""


@dataclass(slots=True)
class RawData(RecordData):
    """An unpacked batch of raw values (one poll of one device), columnar."""

    names: bytes
    """The signal names as a JSON array, as packed: a JSON encoder copies it as it is."""
    units: bytes
    """The units as a JSON array."""
    t: NDArray[np.int64]
    """Each value's source time (ns)."""
    value: NDArray[np.float64]
    quality: NDArray[np.uint8]


@dataclass(slots=True)
class KpiData(RecordData):
    """An unpacked set of indicator values of one device at one time: `values[name][i]` is signal i's."""

    family: str
    names: bytes
    units: bytes
    values: dict[str, NDArray[np.float64]]


@dataclass(slots=True)
class AlarmData(RecordData):
    """An unpacked alarm start or clear; a non-finite value or limit reads back as NaN."""

    signal: str
    unit: str
    rule: str
    state: str
    value: float
    limit: float
    severity: str
    message: str


@dataclass(slots=True)
class StatusData(RecordData):
    """An unpacked status: online/offline and health figures (ints, floats, bools, strings; NaN for a non-finite)."""

    state: str
    health: dict[str, float | int | str]


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_NOTHING = b"{}"
_EMPTY = b"[]"


#: The columns' types: little-endian, as the header (on the usual machines, numpy's own, so nothing is converted)
_I8, _F8, _U1 = np.dtype("<i8"), np.dtype("<f8"), np.dtype("u1")


def _column(array: NDArray, dtype: np.dtype) -> bytes:
    """An array's values as `dtype`, in C order (tobytes copies any layout)."""
    return (array if array.dtype == dtype else array.astype(dtype)).tobytes()


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _health_value(value: object) -> object:
    # numpy scalars become the Python numbers they are (an int stays an int: a TSDB types its fields)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return _finite_or_none(value)
    return value


class RecordPacker:
    """Packs the pipeline's output into outbox records; numbers each source's records of a kind 1, 2, 3 ...

    One packer per agent run (its sink set): `boot_ms` is that run's start, so (boot, seq) is unique
    across restarts, and a record re-sent after a failure or a crash keeps its number.
    """

    def __init__(self, table: SignalTable, boot_ms: int | None = None) -> None:
        self._signals = SignalNames(table)
        self.boot_ms = boot_ms if boot_ms is not None else time.time_ns() // 1_000_000
        self._seq: dict[tuple[Source, Kind], int] = {}
        self._sources: dict[Source, bytes] = {}
        self._names: dict[bytes, tuple[bytes, bytes]] = {}

    def _pack(
        self,
        kind: Kind,
        source: Source,
        t_ns: int,
        n: int,
        meta: bytes,
        names: bytes = _EMPTY,
        units: bytes = _EMPTY,
        columns: tuple[bytes, ...] = (),
    ) -> bytes:
        key = (source, kind)
        seq = self._seq[key] = self._seq.get(key, 0) + 1
        src = self._sources.get(source)
        if src is None:
            if len(self._sources) >= _CACHE_SIZE:
                self._sources.clear()
            src = self._sources[source] = orjson.dumps(
                [source.machine, source.equipment, source.site, source.area, source.line, source.enterprise]
            )
        head = _HEADER.pack(
            _MAGIC,
            RECORD_FORMAT,
            kind,
            self.boot_ms,
            seq,
            t_ns,
            n,
            len(src),
            len(meta),
            len(names),
            len(units),
        )
        used = _HEADER.size + len(src) + len(meta) + len(names) + len(units)
        return b"".join((head, src, meta, names, units, b"\0" * (-used % 8), *columns))

    def _names_of(self, rows: NDArray[np.integer]) -> tuple[bytes, bytes]:
        """The names and units of signal rows as JSON arrays, built once per set of rows (a device sends the same sets)."""
        key = rows.astype(np.int32, copy=False).tobytes()
        found = self._names.get(key)
        if found is None:
            self._signals.refresh()
            found = (
                orjson.dumps(self._signals.names[rows].tolist()),
                orjson.dumps(self._signals.units[rows].tolist()),
            )
            if len(self._names) >= _CACHE_SIZE:
                self._names.clear()  # subscription bursts can name any subset of rows: keep the cache bounded
            self._names[key] = found
        return found

    def raw(self, source: Source, readings: Readings) -> Record:
        """One poll of one device: its values, qualities and source times, with the signals' names and units."""
        n = len(readings)
        if n == 0:
            t_ns = time.time_ns()
        elif n <= 64:
            t_ns = max(
                readings.t_ns.tolist()
            )  # a numpy reduction costs ~2 us of call overhead: most polls are short
        else:
            t_ns = int(readings.t_ns.max())
        names, units = self._names_of(readings.signal)
        columns = (_column(readings.t_ns, _I8), _column(readings.value, _F8), _column(readings.quality, _U1))
        payload = self._pack(Kind.RAW, source, t_ns, n, _NOTHING, names, units, columns)
        return Record(Kind.RAW, source.machine, payload, n)

    def kpi(self, source: Source, batch: IndicatorBatch) -> Record:
        """A set of indicator values per signal at one time."""
        meta = orjson.dumps({"fam": batch.family, "ind": list(batch.values)})
        names, units = self._names_of(batch.signal)
        columns = tuple(_column(col, _F8) for col in batch.values.values())
        signals = len(batch.signal)
        payload = self._pack(Kind.KPI, source, batch.t_ns, signals, meta, names, units, columns)
        return Record(Kind.KPI, source.machine, payload, signals * len(batch.values))

    def alarm(self, source: Source, event: AlarmEvent) -> Record:
        """An alarm start or clear."""
        self._signals.refresh()
        meta = {
            "sig": self._signals.names[event.signal],
            "unit": self._signals.units[event.signal],
            "rule": event.rule,
            "state": event.state,
            "value": _finite_or_none(event.value),
            "limit": _finite_or_none(event.limit),
            "sev": event.severity,
            "msg": event.message,
        }
        payload = self._pack(Kind.ALARM, source, event.t_ns, 1, orjson.dumps(meta))
        return Record(Kind.ALARM, source.machine, payload)

    def status(self, source: Source, status: AgentStatus) -> Record:
        """The status of a source (the agent's health), in its sequence."""
        health = [[str(name), _health_value(value)] for name, value in status.health.items()]
        meta = orjson.dumps({"state": status.state, "health": health})
        return Record(Kind.STATUS, source.machine, self._pack(Kind.STATUS, source, status.t_ns, 1, meta))

    def output(self, out: Output) -> list[Record]:
        """One batch of pipeline output as records: raw values, indicators, alarms, in that order."""
        records = [self.raw(src, r) for src, r in out.raw]
        records += [self.kpi(src, b) for src, b in out.kpi]
        records += [self.alarm(src, a) for src, a in out.alarms]
        return records


#: Sources by their packed bytes: every record of a device carries the same ones
_SOURCES: dict[bytes, Source] = {}


def _source(src: bytes) -> Source:
    found = _SOURCES.get(src)
    if found is None:
        if len(_SOURCES) >= _CACHE_SIZE:
            _SOURCES.clear()
        found = _SOURCES[src] = Source(*orjson.loads(src))
    return found


def unpack(record: Record) -> RecordData:
    """A packed record read back; RecordFormatError if it is of a newer format or does not parse."""
    payload = record.payload
    try:
        magic, version, kind, boot, seq, t_ns, n, src_len, meta_len, names_len, units_len = (
            _HEADER.unpack_from(payload)
        )
    except struct.error:
        raise RecordFormatError(f"record of {len(payload)} bytes is too short for its header") from None
    if magic != _MAGIC:
        raise RecordFormatError("not a packed record (an older outbox row, sent as it is)")
    if version != RECORD_FORMAT:
        raise RecordFormatError(
            f"record format {version} is newer than this agent reads ({RECORD_FORMAT}); "
            "an outbox written by a newer version must drain before a downgrade"
        )
    meta_at = _HEADER.size + src_len
    names_at = meta_at + meta_len
    units_at = names_at + names_len
    end = units_at + units_len
    at = end + (-end % 8)
    try:
        source = _source(payload[_HEADER.size : meta_at])
        if kind == Kind.RAW:
            return RawData(
                source,
                boot,
                seq,
                t_ns,
                payload[names_at:units_at],
                payload[units_at:end],
                np.frombuffer(payload, _I8, n, at),
                np.frombuffer(payload, _F8, n, at + 8 * n),
                np.frombuffer(payload, _U1, n, at + 16 * n),
            )
        meta = orjson.loads(payload[meta_at:names_at])
        if kind == Kind.KPI:
            values = {}
            for name in meta["ind"]:
                values[name] = np.frombuffer(payload, _F8, n, at)
                at += 8 * n
            return KpiData(
                source,
                boot,
                seq,
                t_ns,
                meta["fam"],
                payload[names_at:units_at],
                payload[units_at:end],
                values,
            )
        if kind == Kind.ALARM:
            value, limit = meta["value"], meta["limit"]
            return AlarmData(
                source,
                boot,
                seq,
                t_ns,
                meta["sig"],
                meta["unit"],
                meta["rule"],
                meta["state"],
                math.nan if value is None else value,
                math.nan if limit is None else limit,
                meta["sev"],
                meta["msg"],
            )
        if kind == Kind.STATUS:
            health = {name: math.nan if value is None else value for name, value in meta["health"]}
            return StatusData(source, boot, seq, t_ns, meta["state"], health)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordFormatError(f"packed record of kind {kind} does not parse ({exc})") from None
    raise RecordFormatError(f"packed record of unknown kind {kind}")
