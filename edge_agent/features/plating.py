"""Plating and anodizing tanks (`[tank]` of a profile): current density, resistance, charge per load, thickness, dosing.

At every batch of a tank: the current density j = I/A of the load (core `current_density`: a
rectifier at 0 A while its voltage is up is OPEN_CIRCUIT, never j = 0), the tank resistance U/I
against its baseline (EWMA), and the ampere-hours since the last additive dose. At every load
(the load counter moves): the load's ampere-hours from the bath's Ah counter, the deposit by
Faraday's law with the chemistry's current efficiency (or, for anodizing, by the 720 rule), the
mean current density, the dwell and the voltage's slope at constant current over the load (core
`voltage_rise`). DOMAIN-ROOT.md §3.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, field_validator, model_validator

from edge_agent.config_model import Model
from edge_agent.core.traces import (
    ANODIZE_720_UM_PER_A_MIN_DM2,
    DEPOSITS,
    TraceReason,
    current_density,
    faraday_rate_um,
    voltage_rise,
)
from edge_agent.features.base import (
    AlarmCondition,
    Condition,
    DeviceBatch,
    DeviceContext,
    Feature,
    FeatureResult,
    Publication,
    Signal,
    value_of,
)
from edge_agent.features.no_data import COUNTER_RESET, SKIPPED_CYCLES, NoDataLog

log = logging.getLogger(__name__)

#: Fields of the `tank` pseudo-signal (measurement `plating_tank`), one record per batch.
TANK_FIELDS = ("current_density", "resistance", "resistance_pct", "ah_since_dose", "reason")
#: Fields of the `tank_load` pseudo-signal (measurement `plating_load`), one record per load.
LOAD_FIELDS = (
    "ampere_hours",
    "area",
    "dwell_s",
    "current_density",
    "thickness_um",
    "voltage_slope",
    "final_voltage",
    "skipped",
    "reason",
)
#: `deposit` of an anodizing tank: its film thickness follows the 720 rule, not Faraday's law.
ANODIZE = "anodize_720"
#: Steady samples kept per load for its voltage slope (a 30-minute load polled every 0.1 s).
MAX_LOAD_SAMPLES = 20_000


class TankSpec(Model):
    """Which signals make a plating or anodizing tank's indicators, and its chemistry and recipe."""

    current: Signal
    """Rectifier current, A."""
    voltage: Signal
    """Rectifier voltage, V."""
    load_area: Signal
    """Plated area of the load in the tank (parts × area + rack), dm²."""
    current_setpoint: Signal | None = None
    """Rectifier current setpoint: the current is steady when it is within 5 % of it (else: any current)."""
    ampere_hours: Signal | None = None
    """The bath's ampere-hour counter (monotonic; reset at make-up), Ah."""
    load_counter: Signal | None = None
    """Loads done: a new value ends a load (its charge, thickness and slope are published)."""
    dwell_time: Signal | None = None
    """Time the load has been in the tank, s (its value when the load ends is the dwell)."""
    dose_counter: Signal | None = None
    """Additive doses done (brightener pump strokes): a new value restarts the Ah since the dose."""
    deposit: str
    """What grows on the parts: a metal of core/traces.py DEPOSITS for Faraday's law (`Ni`, `Zn`,
    `Cu2`, `Cr6`, ...) or `anodize_720` for an anodic film by the 720 rule."""
    efficiency: float = Field(default=1.0, gt=0, le=1)
    """Cathode current efficiency of the chemistry (Watts nickel ~0.95; ignored for anodizing)."""
    current_density_window: tuple[float, float]
    """Recipe window of the current density at steady current, A/dm² (low, high)."""
    min_thickness_um: float | None = Field(default=None, gt=0)
    """Least deposit per load, µm (from the part's specification)."""
    dose_every_ah: float | None = Field(default=None, gt=0)
    """Ah between additive doses (replenishment by Ah, from the supplier's data sheet)."""
    dose_margin: float = Field(default=0.2, ge=0)
    """A dose is overdue once the Ah since the last one pass dose_every_ah × (1 + margin)."""
    resistance_limit_pct: float | None = Field(default=None, gt=0)
    """Largest rise of the tank resistance U/I (EWMA) over its baseline, % (anode passivation, a bad
    contact). Leave out for anodizing, where the voltage rises with the film."""
    spike_pct: float | None = Field(default=None, gt=0)
    """A current this many % above the setpoint is a spike (burning on an anodizing rack)."""
    baseline_samples: int = Field(default=30, ge=3)
    """Steady samples whose mean resistance is the tank's baseline."""
    ewma_lambda: float = Field(default=0.1, gt=0, le=1)
    """Weight of a new sample in the resistance EWMA."""
    min_current: float = Field(default=0.5, gt=0)
    """Below this current (A) no current flows."""
    open_circuit_v: float = Field(default=1.0, gt=0)
    """A voltage above this (V) with no current is an open circuit or a failed current shunt."""

    @field_validator("deposit")
    @classmethod
    def _known_deposit(cls, v: str) -> str:
        if v != ANODIZE and v not in DEPOSITS:
            raise ValueError(f"unknown deposit {v!r}; known: {', '.join(DEPOSITS)}, {ANODIZE}")
        return v

    @model_validator(mode="after")
    def _window(self) -> TankSpec:
        low, high = self.current_density_window
        if not 0 < low < high:
            raise ValueError("current_density_window is (low, high) with 0 < low < high, in A/dm²")
        if self.dose_every_ah is not None and (self.dose_counter is None or self.ampere_hours is None):
            raise ValueError("dose_every_ah needs dose_counter and ampere_hours (the Ah since the last dose)")
        return self

    def um_per_a_min_dm2(self) -> float:
        """Thickness per A·min/dm² of this chemistry, efficiency included."""
        if self.deposit == ANODIZE:
            return ANODIZE_720_UM_PER_A_MIN_DM2
        return faraday_rate_um(self.deposit) * self.efficiency


@dataclass
class _Tank:
    """One tank: its spec and rows, the resistance baseline and EWMA, the load in progress and last verdicts."""

    spec: TankSpec
    name: str
    rows: Mapping[str, int]
    r_baseline: list[float] = field(default_factory=list)
    r_ref: float = float("nan")
    r_ewma: float = float("nan")
    load_count: float = float("nan")
    load_ah: float = float("nan")
    whole_load: bool = False
    """A load end was seen since the agent started: the next load is observed from its start."""
    dose_count: float = float("nan")
    dose_ah: float = float("nan")
    load_t: list[float] = field(default_factory=list)
    load_u: list[float] = field(default_factory=list)
    load_i: list[float] = field(default_factory=list)
    thickness: Condition = field(default_factory=lambda: Condition(False, float("nan"), float("nan"), False))
    """The verdict on the last whole load's deposit (unknown before one is seen)."""
    said: NoDataLog = field(default_factory=lambda: NoDataLog(log, "tank current density"), repr=False)
    """What the log said about the device: each reason once per pipeline."""


@dataclass
class TankState:
    """Slot i: tank i."""

    tanks: list[_Tank]


class Tank(Feature[TankSpec, TankState]):
    """Current density, resistance, Ah since the dose (`tank`) and per-load charge and thickness (`tank_load`)."""

    table = "tank"
    spec_model = TankSpec
    about = "Plating or anodizing tank: chemistry, recipe window, dosing."
    publishes = (
        Publication("tank", "plating_tank", TANK_FIELDS, "tank current density and resistance"),
        Publication("tank_load", "plating_load", LOAD_FIELDS, "charge and thickness per load"),
    )
    alarms = (
        AlarmCondition(
            "current_density",
            "tank",
            "warning",
            "current density {value:.2f} A/dm² outside the recipe window (nearest limit {limit:.2f}): "
            "wrong area or recipe?",
        ),
        AlarmCondition(
            "resistance",
            "tank",
            "warning",
            "tank resistance U/I {value:.0f} % above its baseline (limit {limit:.0f} %): anode passivation "
            "or a bad rack contact",
        ),
        AlarmCondition(
            "open_circuit",
            "tank",
            "alarm",
            "the rectifier reads 0 A at {value:.1f} V: a failed current shunt or an open circuit",
        ),
        AlarmCondition(
            "dose_overdue",
            "tank",
            "warning",
            "{value:.0f} Ah since the last additive dose (due every {limit:.0f})",
        ),
        AlarmCondition(
            "current_spike",
            "tank",
            "alarm",
            "current {value:.0f} % of the setpoint (limit {limit:.0f} %): burning?",
        ),
        AlarmCondition(
            "thickness",
            "tank_load",
            "warning",
            "load deposit {value:.1f} µm below {limit:.1f} µm: short dwell?",
        ),
    )

    def build(self, members: Sequence[tuple[TankSpec, DeviceContext]]) -> TankState:
        """One tank per device."""
        return TankState([_Tank(spec, ctx.name, ctx.rows) for spec, ctx in members])

    def update(self, state: TankState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """The tank's indicators at this batch; a load record when the load counter moved."""
        tank = state.tanks[slot]
        spec, rows = tank.spec, tank.rows
        i = value_of(batch, rows, spec.current)
        u = value_of(batch, rows, spec.voltage)
        area = value_of(batch, rows, spec.load_area)
        setpoint = value_of(batch, rows, spec.current_setpoint)
        j_arr, reason_arr = current_density(
            i, area, u, min_current=spec.min_current, open_circuit_v=spec.open_circuit_v
        )
        j, reason = float(j_arr), int(reason_arr)
        live = reason == TraceReason.OK and i >= spec.min_current
        if spec.current_setpoint is not None:
            steady = live and setpoint > 0 and abs(i - setpoint) <= 0.05 * setpoint
        else:
            steady = live
        # a rectifier between loads (no current, no voltage) has no current density and nothing is wrong
        idle = reason == TraceReason.NO_CURRENT or (reason == TraceReason.OK and not live)
        if reason in (TraceReason.OPEN_CIRCUIT, TraceReason.NO_DATA, TraceReason.NO_LOAD):
            tank.said.reason(tank.name, reason, f"I = {i:g} A, U = {u:g} V, area = {area:g} dm²")
        t_s = batch.t_ns / 1e9
        resistance = u / i if live else float("nan")
        if live and (spec.current_setpoint is None or i >= 0.9 * setpoint):
            self._resistance(tank, resistance)
        if steady:
            tank.load_t.append(t_s)
            tank.load_u.append(u)
            tank.load_i.append(i)
            if len(tank.load_t) > MAX_LOAD_SAMPLES:
                del tank.load_t[0], tank.load_u[0], tank.load_i[0]
        r_pct = 100.0 * (tank.r_ewma / tank.r_ref - 1.0) if np.isfinite(tank.r_ref) else float("nan")
        since_dose = self._since_dose(tank, batch)
        fields = {
            "current_density": j if live else float("nan"),
            "resistance": resistance,
            "resistance_pct": r_pct,
            "ah_since_dose": since_dose,
            "reason": float(TraceReason.NO_CURRENT if idle and reason == 0 else reason),
        }
        low, high = spec.current_density_window
        conditions = {
            "current_density": Condition(
                not low <= j <= high, j, low if j < low else high, steady and np.isfinite(j)
            ),
            "open_circuit": Condition(
                reason == TraceReason.OPEN_CIRCUIT,
                u,
                spec.open_circuit_v,
                bool(np.isfinite(u) and np.isfinite(i)),
            ),
        }
        if spec.resistance_limit_pct is not None:
            conditions["resistance"] = Condition(
                r_pct > spec.resistance_limit_pct, r_pct, spec.resistance_limit_pct, bool(np.isfinite(r_pct))
            )
        if spec.dose_every_ah is not None:
            due = spec.dose_every_ah * (1.0 + spec.dose_margin)
            conditions["dose_overdue"] = Condition(
                since_dose > due, since_dose, spec.dose_every_ah, bool(np.isfinite(since_dose))
            )
        if spec.spike_pct is not None and spec.current_setpoint is not None:
            ratio = 100.0 * i / setpoint if setpoint > 0 else float("nan")
            limit = 100.0 + spec.spike_pct
            conditions["current_spike"] = Condition(ratio > limit, ratio, limit, bool(np.isfinite(ratio)))
        out = FeatureResult({"tank": fields}, conditions)
        load = self._load_end(tank, batch)
        if load is not None:
            out.fields["tank_load"] = load
        if spec.min_thickness_um is not None:
            out.conditions["thickness"] = tank.thickness
        return out

    @staticmethod
    def _resistance(tank: _Tank, r: float) -> None:
        """Feed one steady U/I to the baseline, then to the EWMA."""
        spec = tank.spec
        if not np.isfinite(tank.r_ref):
            tank.r_baseline.append(r)
            if len(tank.r_baseline) >= spec.baseline_samples:
                tank.r_ref = tank.r_ewma = float(np.mean(tank.r_baseline))
                tank.r_baseline.clear()
            return
        tank.r_ewma += spec.ewma_lambda * (r - tank.r_ewma)

    @staticmethod
    def _since_dose(tank: _Tank, batch: DeviceBatch) -> float:
        """Ah since the last dose; before the first dose seen, since the agent first read the counter."""
        spec = tank.spec
        if spec.dose_counter is None or spec.ampere_hours is None:
            return float("nan")
        ah = value_of(batch, tank.rows, spec.ampere_hours)
        doses = value_of(batch, tank.rows, spec.dose_counter)
        if not (np.isfinite(ah) and np.isfinite(doses)):
            return float("nan")
        if doses != tank.dose_count or not np.isfinite(tank.dose_ah) or ah < tank.dose_ah:
            tank.dose_count, tank.dose_ah = doses, ah
        return ah - tank.dose_ah

    def _load_end(self, tank: _Tank, batch: DeviceBatch) -> dict[str, float] | None:
        """The record of the load that just ended (the load counter moved), else None."""
        spec, rows = tank.spec, tank.rows
        if spec.load_counter is None:
            return None
        count = value_of(batch, rows, spec.load_counter)
        ah = value_of(batch, rows, spec.ampere_hours)
        if not np.isfinite(count) or count == tank.load_count:
            return None
        whole = tank.whole_load
        tank.whole_load = np.isfinite(tank.load_count)
        previous_count, previous_ah = tank.load_count, tank.load_ah
        tank.load_count, tank.load_ah = count, ah
        t = np.asarray(tank.load_t)
        u = np.asarray(tank.load_u)
        i = np.asarray(tank.load_i)
        tank.load_t, tank.load_u, tank.load_i = [], [], []
        if not whole:
            # the agent started during this load: what it saw of it is not the load
            return None
        skipped = count - previous_count - 1
        load_ah = ah - previous_ah
        reason = 0
        if skipped < 0 or load_ah < 0:
            reason = COUNTER_RESET
        elif skipped > 0:
            reason = SKIPPED_CYCLES
        elif not np.isfinite(load_ah):
            reason = TraceReason.NO_DATA
        area = value_of(batch, rows, spec.load_area)
        dwell = value_of(batch, rows, spec.dwell_time)
        thickness = spec.um_per_a_min_dm2() * 60.0 * load_ah / area if area > 0 else float("nan")
        mean_j = 3600.0 * load_ah / (area * dwell) if area > 0 and dwell > 0 else float("nan")
        slope = final = float("nan")
        if t.size:
            trend = voltage_rise(t / 60.0, u, i, rel_tolerance=0.02, min_current=spec.min_current)
            slope = float(trend.slope[0])
            final = float(u[-1])
        if reason:
            tank.said.reason(tank.name, reason, f"load counter {previous_count:g} -> {count:g}")
            thickness = mean_j = float("nan")
            load_ah = float("nan")
        if spec.min_thickness_um is not None:
            tank.thickness = Condition(
                thickness < spec.min_thickness_um,
                thickness,
                spec.min_thickness_um,
                bool(np.isfinite(thickness)),
            )
        return {
            "ampere_hours": load_ah,
            "area": area,
            "dwell_s": dwell,
            "current_density": mean_j,
            "thickness_um": thickness,
            "voltage_slope": slope,
            "final_voltage": final,
            "skipped": float(max(skipped, 0)),
            "reason": float(reason),
        }


FEATURE = Tank()
