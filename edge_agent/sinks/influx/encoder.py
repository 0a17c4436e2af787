"""InfluxDB line protocol (docs/schema.md), encoded from outbox records when they are sent, columnar over a batch."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence

import numpy as np
import orjson
from numpy.typing import NDArray

from edge_agent.records import (
    AlarmData,
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
from edge_agent.types import BAD_THRESHOLD

log = logging.getLogger("edge_agent.sinks.influx")

#: Line-prefix lists kept (per source, measurement and set of signals) before the cache starts over.
_PREFIX_CACHE_SIZE = 4096

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


class LineProtocolEncoder:
    """Encodes outbox records as line protocol; the raw values of consecutive records are formatted as one columnar batch.

    Records an older version stored already encoded (lines) pass through unchanged, so an outbox
    written before the upgrade drains as it was written.
    """

    def __init__(self) -> None:
        # the line prefixes ("measurement,tags,signal=..,unit=.. ") of each source, measurement and set
        # of signals: a device sends the same few sets, so they are built once
        self._prefixes: dict[tuple[Source, str, bytes, bytes], list[str]] = {}
        self.unreadable = 0
        """Records skipped because they could not be unpacked (a newer format, damaged bytes)."""

    def encode(self, records: Sequence[Record]) -> bytes:
        """The lines of a batch of outbox records, in order; a record that cannot be read is logged and left out."""
        parts: list[bytes] = []
        raw: list[RawData] = []
        failed: list[str] = []
        for record in records:
            if not is_packed(record.payload):
                if raw:
                    parts.append(self.raw(raw).encode())
                    raw = []
                parts.append(record.payload)  # written by an older version: already the lines
                continue
            try:
                data = unpack(record)
            except RecordFormatError as exc:
                failed.append(str(exc))
                continue
            if isinstance(data, RawData):
                raw.append(data)
                continue
            if raw:
                parts.append(self.raw(raw).encode())
                raw = []
            parts.append(self.lines(data).encode())
        if raw:
            parts.append(self.raw(raw).encode())
        if failed:
            # delivering the rest beats blocking the sink on a record no retry can read
            self.unreadable += len(failed)
            log.error("influx: %d records could not be read and are skipped: %s", len(failed), failed[0])
        return b"".join(parts)

    def lines(self, data: RecordData) -> str:
        """The lines of one unpacked record."""
        if isinstance(data, RawData):
            return self.raw([data])
        if isinstance(data, KpiData):
            return self.kpi(data)
        if isinstance(data, AlarmData):
            return self.alarm(data)
        if isinstance(data, StatusData):
            return self.status(data)
        raise TypeError(f"no encoding for {type(data).__name__}")

    def _tags(self, source: Source) -> str:
        return (
            f"area={lp_tag(source.area)},line={lp_tag(source.line)},"
            f"machine={lp_tag(source.machine)},site={lp_tag(source.site)}"
        )

    def _row_prefixes(self, source: Source, measurement: str, names: bytes, units: bytes) -> list[str]:
        """The line prefix of each signal of a record, built once per source, measurement and set of signals."""
        key = (source, measurement, names, units)
        found = self._prefixes.get(key)
        if found is None:
            head = f"{lp_measurement(measurement)},{self._tags(source)},signal="
            found = [
                f"{head}{lp_tag(name)}{',unit=' + lp_tag(unit) if unit else ''} "
                for name, unit in zip(orjson.loads(names), orjson.loads(units), strict=True)
            ]
            if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                self._prefixes.clear()  # subscription bursts can name any subset of signals: keep it bounded
            self._prefixes[key] = found
        return found

    def raw(self, batch: Sequence[RawData]) -> str:
        """Lines `{equipment},tags,signal=.. value=..,quality=..i t_ns`; a bad value carries only its quality."""
        prefixes: list[str] = []
        for data in batch:
            source = data.source
            prefixes += self._row_prefixes(source, source.equipment, data.names, data.units)
        if len(batch) == 1:
            value, quality_array, t_ns = batch[0].value, batch[0].quality, batch[0].t
        else:
            value = np.concatenate([d.value for d in batch])
            quality_array = np.concatenate([d.quality for d in batch])
            t_ns = np.concatenate([d.t for d in batch])
        quality = quality_array.tolist()
        stamps = t_ns.tolist()
        bad = quality_array >= BAD_THRESHOLD
        if not bad.any():
            values = _float_texts(value)
            return "".join(
                [
                    f"{p}value={v},quality={q}i {t}\n"
                    for p, v, q, t in zip(prefixes, values, quality, stamps, strict=True)
                ]
            )
        # line protocol has no NaN: a bad value is a line with the quality field only
        values = _float_texts(np.where(bad, 0.0, value))
        bad_list = bad.tolist()
        return "".join(
            [
                f"{p}quality={q}i {t}\n" if b else f"{p}value={v},quality={q}i {t}\n"
                for p, v, q, t, b in zip(prefixes, values, quality, stamps, bad_list, strict=True)
            ]
        )

    def kpi(self, data: KpiData) -> str:
        """One line per signal: `{family},tags,signal=.. name=value,... t_ns`; NaN indicators are left out."""
        prefixes = self._row_prefixes(data.source, data.family, data.names, data.units)
        names = [lp_tag(k) for k in data.values]
        columns = [_float_texts(np.nan_to_num(col, nan=0.0)) for col in data.values.values()]
        finite = [np.isfinite(col).tolist() for col in data.values.values()]
        lines = []
        stamp = data.t_ns
        for i, prefix in enumerate(prefixes):
            fields = ",".join(
                [f"{name}={col[i]}" for name, col, ok in zip(names, columns, finite, strict=True) if ok[i]]
            )
            if fields:
                lines.append(f"{prefix}{fields} {stamp}\n")
        return "".join(lines)

    def alarm(self, data: AlarmData) -> str:
        """One line `alarm,tags,signal=..,rule=.. active=1i|0i,value=..,limit=..,severity="..",message=".." t_ns`."""
        names, units = orjson.dumps([data.signal]), orjson.dumps([data.unit])
        prefix = self._row_prefixes(data.source, "alarm", names, units)[0]
        fields = [f"active={1 if data.state == 'start' else 0}i"]
        for name, number in (("value", data.value), ("limit", data.limit)):
            if np.isfinite(number):
                fields.append(f"{name}={float(number)!r}")
        fields.append(f"severity={lp_string(data.severity)}")
        if data.message:
            fields.append(f"message={lp_string(data.message)}")
        return f"{prefix[:-1]},rule={lp_tag(data.rule)} {','.join(fields)} {data.t_ns}\n"

    def status(self, data: StatusData) -> str:
        """One line `agent_status,tags online=1i|0i,<numeric health fields> t_ns`."""
        fields = [f"online={1 if data.state == 'online' else 0}i"]
        for name, value in data.health.items():
            # a field written once as an integer and once as a string is a type conflict InfluxDB
            # refuses for the rest of the shard
            if isinstance(value, bool | np.bool_ | numbers.Integral):
                fields.append(f"{lp_tag(name)}={int(value)}i")
            elif isinstance(value, numbers.Real):
                if np.isfinite(value):
                    fields.append(f"{lp_tag(name)}={float(value)!r}")
            else:
                fields.append(f"{lp_tag(name)}={lp_string(str(value))}")
        return f"agent_status,{self._tags(data.source)} {','.join(fields)} {data.t_ns}\n"
