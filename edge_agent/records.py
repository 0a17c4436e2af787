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
# Layout (little-endian): a 20-byte header, three JSON segments, zero padding to a multiple of 8,
# then the array columns (so that numpy reads them in place, aligned).
#   header: magic b"\x00ea", format u8, kind u8, 3 zero bytes, then the lengths (u32) of
#           meta (JSON object), names (JSON array of signal names) and units (JSON array of units)
#   meta:   "src": [machine, equipment, site, area, line, enterprise], "boot": ms, "seq": n, "t": ns,
#           and per kind: raw "n" (values); kpi "n" (signals), "fam", "ind" (indicator names, the columns' order);
#           alarm "sig", "unit", "rule", "state", "value", "limit", "sev", "msg";
#           status "state", "health" ([name, value] pairs; a non-finite float is null)
#   columns: raw t_ns int64[n], value float64[n], quality uint8[n]; kpi one float64[n] per indicator
# A NUL byte starts no JSON message and no line of line protocol: rows of older outboxes never
# begin with the magic. A new layout takes the next format number; `unpack` reads every format it
# knows and refuses, with RecordFormatError, one written by a newer agent.

#: The format `RecordPacker` writes.
RECORD_FORMAT = 1
_MAGIC = b"\x00ea"
_HEADER = struct.Struct("<3sBB3xIII")
#: Names segments kept per set of signal rows before the cache starts over (a device sends a few sets).
_NAMES_CACHE_SIZE = 4096


class RecordFormatError(ValueError):
    """A packed record this agent cannot read: a format from a newer version, or damaged bytes."""


def is_packed(payload: bytes) -> bool:
    """True for a record packed by `RecordPacker`, False for a row an older version encoded for its sink."""
    return payload[:3] == _MAGIC


@dataclass(frozen=True, slots=True)
class Header:
    """What every unpacked record has: its source, the agent run and sequence number, its time."""

    source: Source
    boot_ms: int
    """Start of the agent run that packed it (epoch ms); with `seq` it makes a record's identity."""
    seq: int
    """1, 2, 3 ... per source and kind within one run (0: outside the sequence, e.g. an MQTT last will)."""
    t_ns: int
    """The record's time: the latest value's for raw values."""


@dataclass(frozen=True, slots=True)
class RawData:
    """An unpacked batch of raw values (one poll of one device), columnar."""

    head: Header
    names: bytes
    """The signal names as a JSON array, as packed: a JSON encoder copies it as it is."""
    units: bytes
    """The units as a JSON array."""
    t_ns: NDArray[np.int64]
    value: NDArray[np.float64]
    quality: NDArray[np.uint8]
    kind: Literal[Kind.RAW] = Kind.RAW


@dataclass(frozen=True, slots=True)
class KpiData:
    """An unpacked set of indicator values of one device at one time: `values[name][i]` is signal i's."""

    head: Header
    family: str
    names: bytes
    units: bytes
    values: dict[str, NDArray[np.float64]]
    kind: Literal[Kind.KPI] = Kind.KPI


@dataclass(frozen=True, slots=True)
class AlarmData:
    """An unpacked alarm start or clear; a non-finite value or limit reads back as NaN."""

    head: Header
    signal: str
    unit: str
    rule: str
    state: str
    value: float
    limit: float
    severity: str
    message: str
    kind: Literal[Kind.ALARM] = Kind.ALARM


@dataclass(frozen=True, slots=True)
class StatusData:
    """An unpacked status: online/offline and health figures (ints, floats, bools, strings; NaN for a non-finite)."""

    head: Header
    state: str
    health: dict[str, float | int | str]
    kind: Literal[Kind.STATUS] = Kind.STATUS


RecordData = RawData | KpiData | AlarmData | StatusData

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _pack(kind: Kind, meta: dict[str, object], names: bytes, units: bytes, columns: list[bytes]) -> bytes:
    meta_json = orjson.dumps(meta, option=_NUMPY)
    head = _HEADER.pack(_MAGIC, RECORD_FORMAT, kind, len(meta_json), len(names), len(units))
    used = _HEADER.size + len(meta_json) + len(names) + len(units)
    return b"".join([head, meta_json, names, units, b"\0" * (-used % 8), *columns])


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _health_value(value: object) -> object:
    # numpy scalars become the Python numbers they are (an int stays an int: InfluxDB types fields)
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
        self._names: dict[bytes, tuple[bytes, bytes]] = {}

    def _meta(self, source: Source, kind: Kind, t_ns: int, sequenced: bool = True) -> dict[str, object]:
        seq = 0
        if sequenced:
            key = (source, kind)
            seq = self._seq.get(key, 0) + 1
            self._seq[key] = seq
        return {
            "src": [
                source.machine,
                source.equipment,
                source.site,
                source.area,
                source.line,
                source.enterprise,
            ],
            "boot": self.boot_ms,
            "seq": seq,
            "t": t_ns,
        }

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
            if len(self._names) >= _NAMES_CACHE_SIZE:
                self._names.clear()  # subscription bursts can name any subset of rows: keep the cache bounded
            self._names[key] = found
        return found

    def raw(self, source: Source, readings: Readings) -> Record:
        """One poll of one device: its values, qualities and source times, with the signals' names and units."""
        t_ns = int(readings.t_ns.max()) if len(readings) else time.time_ns()
        meta = self._meta(source, Kind.RAW, t_ns)
        meta["n"] = len(readings)
        names, units = self._names_of(readings.signal)
        columns = [
            np.ascontiguousarray(readings.t_ns, dtype=np.int64).tobytes(),
            np.ascontiguousarray(readings.value, dtype=np.float64).tobytes(),
            np.ascontiguousarray(readings.quality, dtype=np.uint8).tobytes(),
        ]
        return Record(Kind.RAW, source.machine, _pack(Kind.RAW, meta, names, units, columns), len(readings))

    def kpi(self, source: Source, batch: IndicatorBatch) -> Record:
        """A set of indicator values per signal at one time."""
        meta = self._meta(source, Kind.KPI, batch.t_ns)
        meta["n"] = len(batch.signal)
        meta["fam"] = batch.family
        meta["ind"] = list(batch.values)
        names, units = self._names_of(batch.signal)
        columns = [np.ascontiguousarray(col, dtype=np.float64).tobytes() for col in batch.values.values()]
        n = len(batch.signal) * len(batch.values)
        return Record(Kind.KPI, source.machine, _pack(Kind.KPI, meta, names, units, columns), n)

    def alarm(self, source: Source, event: AlarmEvent) -> Record:
        """An alarm start or clear."""
        self._signals.refresh()
        meta = self._meta(source, Kind.ALARM, event.t_ns)
        meta.update(
            sig=self._signals.names[event.signal],
            unit=self._signals.units[event.signal],
            rule=event.rule,
            state=event.state,
            value=_finite_or_none(event.value),
            limit=_finite_or_none(event.limit),
            sev=event.severity,
            msg=event.message,
        )
        return Record(Kind.ALARM, source.machine, _pack(Kind.ALARM, meta, b"[]", b"[]", []))

    def status(self, source: Source, status: AgentStatus) -> Record:
        """The status of a source (the agent's health), in its sequence."""
        meta = self._meta(source, Kind.STATUS, status.t_ns)
        meta["state"] = status.state
        meta["health"] = [[str(name), _health_value(value)] for name, value in status.health.items()]
        return Record(Kind.STATUS, source.machine, _pack(Kind.STATUS, meta, b"[]", b"[]", []))

    def output(self, out: Output) -> list[Record]:
        """One batch of pipeline output as records: raw values, indicators, alarms, in that order."""
        records = [self.raw(src, r) for src, r in out.raw]
        records += [self.kpi(src, b) for src, b in out.kpi]
        records += [self.alarm(src, a) for src, a in out.alarms]
        return records


def unpack(record: Record) -> RecordData:
    """A packed record read back; RecordFormatError if it is of a newer format or does not parse."""
    payload = record.payload
    try:
        magic, version, kind, meta_len, names_len, units_len = _HEADER.unpack_from(payload)
    except struct.error:
        raise RecordFormatError(f"record of {len(payload)} bytes is too short for its header") from None
    if magic != _MAGIC:
        raise RecordFormatError("not a packed record (an older outbox row, sent as it is)")
    if version != RECORD_FORMAT:
        raise RecordFormatError(
            f"record format {version} is newer than this agent reads ({RECORD_FORMAT}); "
            "an outbox written by a newer version must drain before a downgrade"
        )
    at = _HEADER.size
    names_at = at + meta_len
    units_at = names_at + names_len
    end = units_at + units_len
    try:
        meta = orjson.loads(payload[at:names_at])
        src = meta["src"]
        head = Header(Source(*src), meta["boot"], meta["seq"], meta["t"])
        names = payload[names_at:units_at]
        units = payload[units_at:end]
        at = end + (-end % 8)
        if kind == Kind.RAW:
            n = meta["n"]
            t_ns = np.frombuffer(payload, np.int64, n, at)
            value = np.frombuffer(payload, np.float64, n, at + 8 * n)
            quality = np.frombuffer(payload, np.uint8, n, at + 16 * n)
            return RawData(head, names, units, t_ns, value, quality)
        if kind == Kind.KPI:
            n = meta["n"]
            values = {}
            for name in meta["ind"]:
                values[name] = np.frombuffer(payload, np.float64, n, at)
                at += 8 * n
            return KpiData(head, meta["fam"], names, units, values)
        if kind == Kind.ALARM:
            return AlarmData(
                head,
                meta["sig"],
                meta["unit"],
                meta["rule"],
                meta["state"],
                math.nan if meta["value"] is None else meta["value"],
                math.nan if meta["limit"] is None else meta["limit"],
                meta["sev"],
                meta["msg"],
            )
        if kind == Kind.STATUS:
            health = {name: math.nan if value is None else value for name, value in meta["health"]}
            return StatusData(head, meta["state"], health)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordFormatError(f"packed record of kind {kind} does not parse ({exc})") from None
    raise RecordFormatError(f"packed record of unknown kind {kind}")
