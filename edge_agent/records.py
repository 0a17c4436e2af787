"""Outbox records and their encoders: a device's batch becomes MQTT JSON or InfluxDB line protocol, once, from the arrays.

The schemas written here are documented and versioned in docs/schema.md; change both together.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np
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


@dataclass
class Output:
    """What one batch produced, per device, ready to be encoded for the sinks."""

    raw: list[tuple[Source, Readings]] = field(default_factory=list)
    kpi: list[tuple[Source, IndicatorBatch]] = field(default_factory=list)
    alarms: list[tuple[Source, AlarmEvent]] = field(default_factory=list)
