"""InfluxDB line protocol (docs/schema.md), vectorized over a device's batch arrays."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import NDArray

from edge_agent.records import AgentStatus, AlarmEvent, IndicatorBatch, Kind, Record, SignalNames, Source
from edge_agent.types import BAD_THRESHOLD, Readings, SignalTable

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
