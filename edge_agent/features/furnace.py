"""Furnace temperature uniformity and soak (`[furnace]` of a profile): AMS2750 band, soak timer, overshoot, quench delay."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edge_agent.config_model import Model
from edge_agent.core.furnace import FurnaceMonitor, ams2750_tolerance
from edge_agent.features.base import (
    AlarmCondition,
    Condition,
    DeviceBatch,
    DeviceContext,
    Feature,
    FeatureResult,
    Publication,
    Signal,
)

log = logging.getLogger(__name__)

#: Fields of the `uniformity` pseudo-signal (measurement `furnace_uniformity`).
FURNACE_FIELDS = (
    "spread",
    "all_in_band",
    "soak_s",
    "ramp_c_per_min",
    "overshoot_c",
    "time_to_temp_s",
    "tolerance_c",
    "valid_sensors",
    "quench_delay_s",
)
#: A furnace sensor further than this from its furnace's median reads implausibly (burnout, short).
MAX_SENSOR_DEVIATION_C = 200.0
#: State signals whose rising edge times the quench: the door opens, then the quench starts.
DOOR_SIGNAL, QUENCH_SIGNAL = "door_open", "quench_active"


class FurnaceSpec(Model):
    """Which signals make a furnace's temperature uniformity and soak monitor."""

    sensors: list[Signal] = Field(min_length=1)
    """Zone and load thermocouples."""
    setpoint: Signal
    """Temperature setpoint signal."""
    furnace_class: int = Field(default=2, ge=1, le=6)
    """AMS2750 furnace class (1: ±3 °C ... 6: ±28 °C)."""
    soak_policy: Literal["pause", "reset"] = "pause"
    """What an excursion does to the soak timer."""


@dataclass
class _Furnace:
    """One monitored furnace: its monitor over the sensors it has, and the last door and quench states."""

    monitor: FurnaceMonitor
    sensor_rows: NDArray[np.int64]
    setpoint_row: int
    rows: Mapping[str, int]
    last_state: dict[str, float] = field(default_factory=dict)


@dataclass
class FurnaceState:
    """Slot i: furnace i, or None when it lacks the setpoint or every sensor (not monitored)."""

    furnaces: list[_Furnace | None]


class Furnace(Feature[FurnaceSpec, FurnaceState]):
    """Uniformity, soak, ramp, overshoot and quench delay on the `uniformity` pseudo-signal, and their alarms."""

    table = "furnace"
    spec_model = FurnaceSpec
    about = "Furnace uniformity and soak."
    publishes = (
        Publication("uniformity", "furnace_uniformity", FURNACE_FIELDS, "furnace uniformity, soak, ramp"),
    )
    alarms = (
        AlarmCondition(
            "overshoot", "uniformity", "alarm", "temperature overshoot above the furnace class tolerance"
        ),
        AlarmCondition(
            "uniformity",
            "uniformity",
            "warning",
            "a sensor is outside the class tolerance band while the furnace is at temperature",
        ),
        AlarmCondition(
            "tc_invalid", "uniformity", "alarm", "a thermocouple reads implausibly (burnout or short)"
        ),
    )

    def build(self, members: Sequence[tuple[FurnaceSpec, DeviceContext]]) -> FurnaceState:
        """A monitor per furnace over the sensors it has; one warning names the sensors not configured."""
        return FurnaceState([_monitor(spec, ctx) for spec, ctx in members])

    def update(self, state: FurnaceState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """Advance the furnace's monitor to the batch's last values; time the quench on the door and quench edges."""
        f = state.furnaces[slot]
        if f is None:
            return FeatureResult()
        lv = batch.last_value
        st = f.monitor.update(batch.t_ns, lv[f.sensor_rows], [lv[f.setpoint_row]])
        tol = float(f.monitor.tol[0])
        fields = {
            "spread": float(st.spread[0]),
            "all_in_band": float(st.all_in_band[0]),
            "soak_s": float(st.soak_s[0]),
            "ramp_c_per_min": float(st.ramp_c_per_min[0]),
            "overshoot_c": float(st.overshoot_c[0]),
            "time_to_temp_s": float(st.time_to_temp_s[0]),
            "tolerance_c": tol,
            "valid_sensors": float(st.valid.sum()),
        }
        with np.errstate(all="ignore"):
            # "at temperature": the furnace's median sensor is in band, whatever one zone does
            at_temp = bool(np.abs(np.nanmedian(st.deviation)) <= tol) if st.valid.any() else False
        # with no valid sensor at all (a disconnected furnace) nothing is known about it: its alarms
        # hold; the bad raw values say why
        known = bool(st.valid.any())
        n_invalid = float((~st.valid).sum())
        conditions = {
            "overshoot": Condition(bool(st.overshoot_c[0] > tol), float(st.overshoot_c[0]), tol, known),
            # once the furnace reached temperature, any sensor leaving the band interrupts the soak
            # (a failed zone heater, a burnt-out thermocouple); the spread tells how far apart they are
            "uniformity": Condition(at_temp and not bool(st.all_in_band[0]), float(st.spread[0]), tol, known),
            "tc_invalid": Condition(n_invalid > 0, n_invalid, 0.0, known),
        }
        delay = _quench(f, batch)
        if delay is not None:
            fields["quench_delay_s"] = delay
        return FeatureResult({"uniformity": fields}, conditions)


def _monitor(spec: FurnaceSpec, ctx: DeviceContext) -> _Furnace | None:
    # the furnace is monitored on the sensors it has: a furnace with one thermocouple fewer
    # than its profile still needs its soak timed and its overshoot seen
    sensors = [s for s in spec.sensors if s in ctx.rows]
    missing = [s for s in spec.sensors if s not in ctx.rows]
    if not sensors or spec.setpoint not in ctx.rows:
        need = [s for s in [spec.setpoint] if s not in ctx.rows] + (missing if not sensors else [])
        log.warning(
            "%s: no furnace monitoring: it needs the setpoint and at least one sensor; not configured: %s",
            ctx.name,
            ", ".join(need),
        )
        return None
    if missing:
        log.warning(
            "%s: furnace monitoring on %d of the profile's %d sensors; not configured: %s",
            ctx.name,
            len(sensors),
            len(spec.sensors),
            ", ".join(missing),
        )
    monitor = FurnaceMonitor(
        np.zeros(len(sensors), np.int64),
        ams2750_tolerance(spec.furnace_class),
        soak_policy=spec.soak_policy,
        # a burnt-out thermocouple reads upscale or ambient, hundreds of degrees off; a zone whose
        # heater fails drifts tens of degrees: that is a uniformity problem, not an invalid sensor
        max_dev_c=MAX_SENSOR_DEVIATION_C,
    )
    rows = np.array([ctx.rows[s] for s in sensors], np.int64)
    return _Furnace(monitor, rows, ctx.rows[spec.setpoint], ctx.rows)


def _quench(f: _Furnace, batch: DeviceBatch) -> float | None:
    """The quench delay when the batch starts a quench; the door's opening starts the timer."""
    readings, delay = batch.readings, None
    for name in (DOOR_SIGNAL, QUENCH_SIGNAL):
        row = f.rows.get(name)
        if row is None:
            continue
        hit = (readings.signal == row) & readings.good
        if not hit.any():
            continue
        value = float(readings.value[hit][-1])
        t = int(readings.t_ns[hit][-1])
        prev = f.last_state.get(name, 0.0)
        f.last_state[name] = value
        if value >= 0.5 > prev:
            if name == DOOR_SIGNAL:
                f.monitor.door_open([0], t)
            else:
                delay = float(f.monitor.quench([0], t)[0])
    return delay


FEATURE = Furnace()
