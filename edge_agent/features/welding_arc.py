"""Arc welding (`[arc_weld]` of a profile): heat input, WPS window share, arc stability from the weld's trace.

Per weld (a new value of the weld counter; the source latched the weld's means before it):
EN 1011-1 heat input Q = k·P·60/(1000·v) with the arc power of a waveform-controlled source taken as
arc energy / arc time (ISO/TR 18491) where the source gives them, else Ū·Ī; deposition from the wire
feed; the share of the arc-on polls whose live values sat inside the WPS window; and, when the
source's current and voltage traces are read (`points` tags), arc stability by core/traces.py
`arc_indicators` (short-circuit rate and period CV, current and voltage CV), with an EWMA of the
period CV. A weld with no arc has no heat input (reason NO_CURRENT), never Q = 0. DOMAIN-ROOT.md §2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edge_agent.config_model import Model
from edge_agent.core.traces import (
    ARC_EFFICIENCY,
    TraceReason,
    arc_indicators,
    deposition_kg_per_h,
    heat_input_kj_per_mm,
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
from edge_agent.features.no_data import NoDataLog
from edge_agent.features.trace_input import TraceInput, latest_traces
from edge_agent.types import Quality

log = logging.getLogger(__name__)

#: Fields of the `weld` pseudo-signal (measurement `arc_weld`), one record per weld.
WELD_FIELDS = (
    "heat_input",
    "power",
    "arc_time",
    "in_window_pct",
    "deposition",
    "short_rate",
    "short_period_cv",
    "stability_ewma",
    "current_cv",
    "voltage_cv",
    "skipped",
    "reason",
    "trace_reason",
)


class WpsLimit(Model):
    """One live value of the welding procedure specification and its window."""

    signal: Signal
    """A continuous signal read while the arc burns (current, voltage, wire feed, travel speed, gas flow)."""
    low: float
    """Lowest value inside the window."""
    high: float
    """Highest value inside the window."""


class ArcWeldSpec(Model):
    """Which signals make an arc welding source's per-weld indicators, and the welding procedure's windows."""

    counter: Signal
    """Weld counter: a new value is a new weld, whose latched means are read with it."""
    current: Signal
    """Mean welding current of the weld, A."""
    voltage: Signal
    """Mean arc voltage of the weld, V."""
    travel_speed: Signal
    """Travel speed of the weld, mm/min."""
    arc_time: Signal | None = None
    """Arc time of the weld, s."""
    arc_energy: Signal | None = None
    """Arc energy Σu·i·Δt of the weld from the source, J: with `arc_time` it gives the power of a
    waveform-controlled source (ISO/TR 18491), which Ū·Ī overstates."""
    wire_feed: Signal | None = None
    """Mean wire feed speed of the weld, m/min (deposition)."""
    process: Literal["MAG", "MIG", "MMA", "SAW", "TIG"] = "MAG"
    """Welding process: its thermal efficiency k of EN 1011-1 (MAG 0.8, TIG 0.6, SAW 1.0)."""
    wire_diameter_mm: float | None = Field(default=None, gt=0)
    """Wire diameter for the deposition rate."""
    heat_input_window: tuple[float, float]
    """Heat input window of the WPS, kJ/mm (low, high)."""
    arc_on: Signal | None = None
    """State signal, non-zero while the arc burns: the polls that count for the WPS window."""
    wps: list[WpsLimit] = Field(default_factory=list)
    """Live values and their windows; a poll with the arc on is inside when all of them are."""
    min_in_window_pct: float = Field(default=90.0, ge=0, le=100)
    """Least share of the arc-on polls inside the WPS window per weld, %."""
    current_trace: Signal | None = None
    """The weld's current trace (a `points` tag), A."""
    voltage_trace: Signal | None = None
    """The weld's voltage trace (a `points` tag), V."""
    trace_sample_us: float = Field(default=100.0, gt=0)
    """Sampling period of the traces, µs."""
    short_voltage: float = Field(default=10.0, gt=0)
    """Below this arc voltage (V) the wire is short-circuited."""
    max_short_period_cv: float = Field(default=0.3, gt=0)
    """Largest EWMA of the short-circuit period CV of stable short-circuit transfer (DOMAIN-ROOT.md §2: 10-30 %)."""
    stability_lambda: float = Field(default=0.3, gt=0, le=1)
    """Weight of a weld in the stability EWMA."""

    @model_validator(mode="after")
    def _traces_together(self) -> ArcWeldSpec:
        if (self.current_trace is None) != (self.voltage_trace is None):
            raise ValueError("give current_trace and voltage_trace together (arc stability needs both)")
        low, high = self.heat_input_window
        if not 0 < low < high:
            raise ValueError("heat_input_window is (low, high) with 0 < low < high, in kJ/mm")
        return self


@dataclass
class _Source:
    """One welding source: spec, rows, the weld being made and the last weld's verdicts."""

    spec: ArcWeldSpec
    name: str
    rows: Mapping[str, int]
    wps_rows: np.ndarray
    wps_low: np.ndarray
    wps_high: np.ndarray
    traces: TraceInput | None
    last_count: float = float("nan")
    arc_polls: int = 0
    in_window: int = 0
    stability: float = float("nan")
    conditions: dict[str, Condition] = field(default_factory=dict)
    said: NoDataLog = field(default_factory=lambda: NoDataLog(log, "weld indicators"), repr=False)
    """What the log said about the device: each reason once per pipeline."""


@dataclass
class ArcWeldState:
    """Slot i: source i."""

    sources: list[_Source]


class ArcWeld(Feature[ArcWeldSpec, ArcWeldState]):
    """Per-weld heat input, WPS share and arc stability on the `weld` pseudo-signal, and their alarms."""

    table = "arc_weld"
    spec_model = ArcWeldSpec
    about = "Arc welding: heat input, WPS window, arc stability."
    publishes = (Publication("weld", "arc_weld", WELD_FIELDS, "arc weld heat input and stability"),)
    alarms = (
        AlarmCondition(
            "heat_input",
            "weld",
            "warning",
            "heat input {value:.3f} kJ/mm outside the WPS (nearest limit {limit:.3f})",
        ),
        AlarmCondition(
            "wps_window",
            "weld",
            "warning",
            "{value:.0f} % of the arc time inside the WPS window (least {limit:.0f} %)",
        ),
        AlarmCondition(
            "arc_stability",
            "weld",
            "warning",
            "short-circuit period CV {value:.2f} (EWMA) above {limit:.2f}: unstable transfer",
        ),
        AlarmCondition("no_arc", "weld", "alarm", "a weld without an arc (0 A)"),
    )

    def build(self, members: Sequence[tuple[ArcWeldSpec, DeviceContext]]) -> ArcWeldState:
        """One source per device."""
        out = []
        for spec, ctx in members:
            wps = [w for w in spec.wps if w.signal in ctx.rows]
            traces = (
                TraceInput.of(ctx, [spec.voltage_trace, spec.current_trace])
                if spec.current_trace is not None and spec.voltage_trace is not None
                else None
            )
            out.append(
                _Source(
                    spec,
                    ctx.name,
                    ctx.rows,
                    np.array([ctx.rows[w.signal] for w in wps], np.int64),
                    np.array([w.low for w in wps]),
                    np.array([w.high for w in wps]),
                    traces,
                )
            )
        return ArcWeldState(out)

    def update(self, state: ArcWeldState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """Count the arc-on polls in the WPS window; a weld record and fresh verdicts when the counter moves."""
        src = state.sources[slot]
        spec = src.spec
        arc = value_of(batch, src.rows, spec.arc_on) if spec.arc_on is not None else float("nan")
        if arc > 0 and src.wps_rows.size:
            live = batch.last_value[src.wps_rows]
            src.arc_polls += 1
            src.in_window += int(((live >= src.wps_low) & (live <= src.wps_high)).all())
        count = value_of(batch, src.rows, spec.counter)
        if not np.isfinite(count) or count == src.last_count:
            return FeatureResult({}, dict(src.conditions))
        first = not np.isfinite(src.last_count)
        skipped = count - src.last_count - 1 if not first and count > src.last_count else 0.0
        src.last_count = count
        if first:
            # the latched values are of a weld made before the agent started (or of none yet)
            src.arc_polls = src.in_window = 0
            return FeatureResult()
        if skipped > 0:
            src.said.once(
                src.name, "skipped", "the weld counter skipped %d weld(s); they have no record", int(skipped)
            )
        fields, conditions = self._weld(src, batch)
        fields["skipped"] = float(skipped)
        src.conditions = conditions
        return FeatureResult({"weld": fields}, dict(conditions))

    def _weld(self, src: _Source, batch: DeviceBatch) -> tuple[dict[str, float], dict[str, Condition]]:
        spec, rows = src.spec, src.rows
        i = value_of(batch, rows, spec.current)
        u = value_of(batch, rows, spec.voltage)
        v = value_of(batch, rows, spec.travel_speed)
        t_arc = value_of(batch, rows, spec.arc_time)
        energy = value_of(batch, rows, spec.arc_energy)
        power = energy / t_arc if t_arc > 0 and np.isfinite(energy) else u * i
        reason = TraceReason.OK
        if not (np.isfinite(i) and np.isfinite(u) and np.isfinite(v)):
            reason = TraceReason.NO_DATA
        elif i <= 0 or t_arc == 0:
            reason = TraceReason.NO_CURRENT
        q = float(heat_input_kj_per_mm(power, v, ARC_EFFICIENCY[spec.process]))
        wfs = value_of(batch, rows, spec.wire_feed)
        deposition = (
            float(deposition_kg_per_h(wfs, spec.wire_diameter_mm)) if spec.wire_diameter_mm else float("nan")
        )
        if reason:
            src.said.reason(src.name, reason, f"mean current {i:g} A, arc time {t_arc:g} s")
            q = power = deposition = float("nan")
        share = 100.0 * src.in_window / src.arc_polls if src.arc_polls else float("nan")
        src.arc_polls = src.in_window = 0
        fields = {
            "heat_input": q,
            "power": power,
            "arc_time": t_arc,
            "in_window_pct": share,
            "deposition": deposition,
            "reason": float(reason),
        }
        fields.update(self._stability(src, batch))
        low, high = spec.heat_input_window
        ok = reason == TraceReason.OK
        conditions = {
            "heat_input": Condition(not low <= q <= high, q, low if q < low else high, ok),
            "no_arc": Condition(reason == TraceReason.NO_CURRENT, i, 0.0, reason != TraceReason.NO_DATA),
        }
        if src.wps_rows.size and spec.arc_on is not None:
            conditions["wps_window"] = Condition(
                share < spec.min_in_window_pct, share, spec.min_in_window_pct, bool(np.isfinite(share))
            )
        if src.traces is not None:
            conditions["arc_stability"] = Condition(
                src.stability > spec.max_short_period_cv,
                src.stability,
                spec.max_short_period_cv,
                bool(np.isfinite(src.stability)),
            )
        return fields, conditions

    def _stability(self, src: _Source, batch: DeviceBatch) -> dict[str, float]:
        """Arc stability of the weld's trace (NaN and a reason without one); the period CV's EWMA."""
        nan = float("nan")
        out = dict.fromkeys(
            ("short_rate", "short_period_cv", "current_cv", "voltage_cv", "trace_reason"), nan
        )
        out["stability_ewma"] = src.stability
        if src.traces is None:
            return out
        spec = src.spec
        got = latest_traces(batch, src.traces)
        if got is None:
            out["trace_reason"] = float(TraceReason.NO_DATA)
            src.said.reason(
                src.name, TraceReason.NO_DATA, "no current/voltage trace read with the weld counter"
            )
            return out
        (u, i), reason_in, quality = got
        ind = arc_indicators(
            u[None, :],
            i[None, :],
            spec.trace_sample_us * 1e-6,
            short_voltage=spec.short_voltage,
            reason=[reason_in],
        )
        reason = int(ind.reason[0])
        out["trace_reason"] = float(reason)
        if reason or quality >= Quality.BAD:
            src.said.reason(src.name, reason or TraceReason.NO_DATA, "the weld's trace")
            return out
        cv = float(ind.short_period_cv[0])
        out.update(
            short_rate=float(ind.short_rate[0]),
            short_period_cv=cv,
            current_cv=float(ind.current_cv[0]),
            voltage_cv=float(ind.voltage_cv[0]),
        )
        if np.isfinite(cv):
            lam = spec.stability_lambda
            src.stability = (
                cv if not np.isfinite(src.stability) else src.stability + lam * (cv - src.stability)
            )
        out["stability_ewma"] = src.stability
        return out


FEATURE = ArcWeld()
