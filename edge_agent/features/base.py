"""The equipment-feature contract: what one module (OEE, furnace, mould, ...) gives the profiles and the pipeline.

A feature is the glue between a `[table]` of an equipment profile and an engine of the pure
indicator core: its spec model validates the table, `build` makes one state for every device
whose profile has the table (so an engine holds all of them), and `update` turns one device's
batch into the fields of its pseudo-signals and its alarm conditions. The pipeline judges the
conditions (persistence delays, start/clear events) and publishes; a feature does no I/O.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from edge_agent.config_model import DeviceBase, Name
from edge_agent.types import Readings


class _SignalMarker:
    """Marks a spec field whose value names one of the profile's signals."""

    def __repr__(self) -> str:
        return "Signal"


_SIGNAL = _SignalMarker()

#: A spec field naming one of the profile's signals; the profile checks that it exists.
Signal = Annotated[Name, _SIGNAL]


@dataclass(frozen=True, slots=True)
class Publication:
    """One pseudo-signal a feature publishes: the `signal` tag of its records, their measurement and fields."""

    signal: str
    """Pseudo-signal name, one row per device in the signal table."""
    family: str
    """InfluxDB measurement (indicator family) of its records."""
    fields: tuple[str, ...]
    """The fields of its records, in order (docs/schema.md)."""
    about: str
    """What the records hold, for the schema, e.g. "OEE per machine"."""


@dataclass(frozen=True, slots=True)
class AlarmCondition:
    """One device-level alarm a feature can raise."""

    rule: str
    """The alarm records' `rule`; unique among all features."""
    signal: str
    """The pseudo-signal the alarm is filed under (one of the feature's publications)."""
    severity: Literal["alarm", "warning"]
    """`alarm`: the product or the equipment is at risk now; `warning`: look at it."""
    message: str
    """Text of the start event; `{value}` and `{limit}` are replaced by the condition's numbers."""


class Condition(NamedTuple):
    """The state of one alarm condition at one batch."""

    raised: bool
    """The condition holds (an alarm starts once it held for the profile's alarm delay)."""
    value: float
    """The number judged, published with the alarm."""
    limit: float
    """The limit it was judged against."""
    known: bool = True
    """False when the inputs are unknown: the condition neither raises nor clears, its alarm holds."""


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What a feature learns about one device when it is built."""

    name: str
    """Device name, for log lines."""
    device: DeviceBase
    """The device's configuration (per-device overrides such as `ideal_cycle_s`)."""
    rows: Mapping[str, int]
    """Signal-table row of each of the device's signals (and pseudo-signals), by name."""
    nominal_cycle_s: float
    """Nominal cycle time (device override, else the profile's cycle); 0 for machines without cycles."""


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """What a feature sees of one batch of one device."""

    t_ns: int
    """Time of the batch: its newest reading, or the processing time of an empty batch."""
    last_value: NDArray[np.float64]
    """Last value of every row of the signal table; NaN where unknown (never read, or read bad)."""
    readings: Readings
    """The batch itself, for edges that the last values alone would miss (a door opening)."""


@dataclass(slots=True)
class FeatureResult:
    """What one update of one device publishes: fields per pseudo-signal, and the alarm conditions."""

    fields: dict[str, dict[str, float]] = field(default_factory=dict)
    """Pseudo-signal -> field -> value; NaN is "no data", never 0."""
    conditions: dict[str, Condition] = field(default_factory=dict)
    """Rule (one of the feature's `alarms`) -> its state now."""


SpecT = TypeVar("SpecT", bound=BaseModel)
StateT = TypeVar("StateT")


class Feature(ABC, Generic[SpecT, StateT]):
    """One equipment feature: a profile table, its pseudo-signals and fields, its alarms, its engine glue.

    Subclasses set the class attributes and implement `build` and `update`; features/registry.py
    lists the modules. `update` works on numpy arrays (the device's last values) and is called
    once per device batch; the engines behind it keep one state for all the feature's devices.
    """

    table: ClassVar[str]
    """Key of the feature's table in a profile, e.g. `oee` for `[oee]`; also its name."""
    spec_model: ClassVar[type[BaseModel]]
    """The pydantic model of the table (its field docstrings are the reference)."""
    about: ClassVar[str]
    """One line: what the table configures (the profile field's description)."""
    publishes: ClassVar[tuple[Publication, ...]]
    """The pseudo-signals the feature may publish and their fields."""
    alarms: ClassVar[tuple[AlarmCondition, ...]] = ()
    """The alarm conditions `update` reports."""

    def pseudo_signals(self) -> tuple[str, ...]:
        """The names of the feature's pseudo-signals."""
        return tuple(p.signal for p in self.publishes)

    def references(self, spec: SpecT) -> list[tuple[str, str]]:
        """(place, signal name) of every `Signal` field the spec sets, e.g. ("oee.state", "machine_mode")."""
        out: list[tuple[str, str]] = []
        for name, info in type(spec).model_fields.items():
            if not _names_signal(info.annotation, info.metadata):
                continue
            value = getattr(spec, name)
            where = f"{self.table}.{info.alias or name}"
            if isinstance(value, str):
                out.append((where, value))
            elif isinstance(value, list | tuple):
                out += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        return out

    @abstractmethod
    def build(self, members: Sequence[tuple[SpecT, DeviceContext]]) -> StateT:
        """The state of the feature for its devices; device i of `members` is slot i in `update`."""

    @abstractmethod
    def update(self, state: StateT, slot: int, batch: DeviceBatch) -> FeatureResult:
        """Advance the device in `slot` to the batch; its fields and alarm conditions now."""


def _names_signal(annotation: Any, metadata: Sequence[Any] = ()) -> bool:
    """Whether a field's type is `Signal`, a list of them or an optional one."""
    if any(m is _SIGNAL for m in metadata):
        return True
    if typing.get_origin(annotation) is Annotated:
        return any(m is _SIGNAL for m in typing.get_args(annotation)[1:])
    return any(_names_signal(arg) for arg in typing.get_args(annotation))


def value_of(batch: DeviceBatch, rows: Mapping[str, int], signal: str | None) -> float:
    """The last value of one of the device's signals; NaN when the device has no such tag (or none is named)."""
    row = rows.get(signal) if signal is not None else None
    return float(batch.last_value[row]) if row is not None else float("nan")
