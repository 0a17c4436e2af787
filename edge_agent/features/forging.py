"""Forging press per-stroke tonnage (`[forging]` of a profile): capacity, reverse load, balance and centre of load.

Once per stroke (a new value of the stroke counter) the channels' peak forces give the total, the
share of the press rating, the left/right and front/back balance and the centre of load
(core/traces.py `load_balance`, DOMAIN-ROOT.md §1). With the force signature read as a trace (a
`points` tag over the crank angle), the stroke's peak angle, energy ∫F dh, % of the capacity curve
of a mechanical press, and its deviation from the reference signature (the median of the first good
strokes) in up to four crank-angle windows: RMS and max |f − r| and the peak-angle shift. A stroke whose channels are not all known gets
NaN and a reason code, never a balance made from the channels that are. A counter that jumps by
more than one says strokes were missed: the stroke read is still published (its values were
written before the counter), the missed ones are counted in `skipped` and logged once. The stroke
whose values are there when the agent starts is not published: it may be hours old.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edge_agent.config_model import Model
from edge_agent.core.traces import (
    TraceReason,
    load_balance,
    mechanical_capacity_curve,
    ram_height,
    reference_curve,
    signature_deviation,
    stroke_indicators,
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

log = logging.getLogger(__name__)

#: Fields of the `stroke` pseudo-signal (measurement `forging_stroke`), one record per stroke.
STROKE_FIELDS = (
    "total",
    "capacity_pct",
    "reverse_pct",
    "left_right",
    "front_back",
    "x_c",
    "y_c",
    "skipped",
    "reason",
    "peak_angle",
    "energy",
    "curve_pct",
    "rms_1",
    "rms_2",
    "rms_3",
    "rms_4",
    "rms_max",
    "max_dev",
    "peak_shift",
    "trace_reason",
)
#: Crank-angle windows of a signature (tonnage monitors have four "data windows").
MAX_WINDOWS = 4


class ForgingSpec(Model):
    """Which signals make a press's per-stroke tonnage indicators, and the press's rating."""

    counter: Signal
    """Stroke counter (OPC 40503-1 CycleCount): a new value is a new stroke, whose values are read with it."""
    channels: list[Signal] = Field(min_length=1)
    """Peak force of each load-cell channel per stroke (two for left/right, four for the corners)."""
    channel_x: list[float] = Field(min_length=1)
    """Position of each channel across the bed from its centre, in mm; left is negative."""
    channel_y: list[float] | None = None
    """Position of each channel front to back from the bed centre, in mm; front is positive. Without it
    there is no front/back balance."""
    reverse: Signal | None = None
    """Reverse (snap-through) load per stroke, as a positive force."""
    rated_force: float = Field(gt=0)
    """Rated force of the press in the channels' unit (e.g. kN)."""
    max_imbalance: float = Field(default=0.10, gt=0, lt=1)
    """Largest left/right or front/back balance (F_a − F_b)/(F_a + F_b) of a centred part."""
    max_reverse_pct: float = Field(default=10.0, gt=0)
    """Largest reverse load in % of the rating (DOMAIN-ROOT.md §1: ~10 %, above 15 % is dangerous)."""
    max_capacity_pct: float = Field(default=100.0, gt=0)
    """Largest total peak force in % of the rating (an overload above)."""
    signature: Signal | None = None
    """The stroke's total force over the crank angle (a `points` tag)."""
    angle_start: float = 0.0
    """Crank angle of the signature's first point, degrees from TDC."""
    angle_step: float = Field(default=0.5, gt=0)
    """Crank angle between two points of the signature, degrees."""
    windows: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_WINDOWS)
    """Crank-angle windows [start, end) in degrees where the signature is compared with the reference."""
    reference_strokes: int = Field(default=20, ge=3)
    """Good strokes whose pointwise median is the reference signature."""
    max_rms_pct: float = Field(default=3.0, gt=0)
    """Largest RMS deviation from the reference in any window, % of the reference peak."""
    crank_radius_mm: float | None = Field(default=None, gt=0)
    """Crank radius of a mechanical press (ram travel and energy)."""
    rod_length_mm: float | None = Field(default=None, gt=0)
    """Connecting-rod length of a mechanical press."""
    rating_height_mm: float | None = Field(default=None, gt=0)
    """Height above BDC where the rating holds (12.7 mm for many mechanical presses): gives the capacity curve."""

    @model_validator(mode="after")
    def _one_position_per_channel(self) -> ForgingSpec:
        for name, positions in (("channel_x", self.channel_x), ("channel_y", self.channel_y)):
            if positions is not None and len(positions) != len(self.channels):
                raise ValueError(
                    f"{name} has {len(positions)} positions for {len(self.channels)} channels; give one per channel"
                )
        if self.signature is not None and not self.windows:
            raise ValueError("a signature needs `windows`: the crank-angle windows it is compared in")
        if (self.crank_radius_mm is None) != (self.rod_length_mm is None):
            raise ValueError("give crank_radius_mm and rod_length_mm together (the ram's travel)")
        if self.rating_height_mm is not None and self.crank_radius_mm is None:
            raise ValueError("rating_height_mm needs crank_radius_mm and rod_length_mm (the capacity curve)")
        return self


@dataclass
class _Signature:
    """A press's signature input: its trace row, axes, capacity curve and the strokes for the reference."""

    trace: TraceInput
    angle: NDArray[np.float64] | None = None
    height: NDArray[np.float64] | None = None
    capacity: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
    good: list[NDArray[np.float64]] = field(default_factory=list)
    reference: NDArray[np.float64] | None = None


@dataclass
class _Press:
    """One press: its spec and rows, the last stroke seen and the verdicts of the last stroke."""

    spec: ForgingSpec
    name: str
    rows: Mapping[str, int]
    channel_rows: NDArray[np.int64]
    signature: _Signature | None = None
    last_count: float = float("nan")
    conditions: dict[str, Condition] | None = None
    said: NoDataLog = field(default_factory=lambda: NoDataLog(log, "stroke balance"), repr=False)
    """What the log said about the device: each reason once per pipeline."""


@dataclass
class ForgingState:
    """Slot i: press i."""

    presses: list[_Press]


class Forging(Feature[ForgingSpec, ForgingState]):
    """Per-stroke capacity use, reverse load and load balance on the `stroke` pseudo-signal, and their alarms."""

    table = "forging"
    spec_model = ForgingSpec
    about = "Forging press tonnage per stroke."
    publishes = (Publication("stroke", "forging_stroke", STROKE_FIELDS, "press tonnage per stroke"),)
    alarms = (
        AlarmCondition(
            "eccentric_load",
            "stroke",
            "alarm",
            "eccentric load: balance {value:.2f} beyond ±{limit:.2f} (part off centre?)",
        ),
        AlarmCondition(
            "reverse_load",
            "stroke",
            "alarm",
            "reverse (snap-through) load {value:.1f} % of rating above {limit:.0f} %",
        ),
        AlarmCondition(
            "overload", "stroke", "alarm", "stroke force {value:.0f} % of rating above {limit:.0f} %"
        ),
        AlarmCondition(
            "signature",
            "stroke",
            "warning",
            "force signature {value:.1f} % (RMS) off the reference in a window (limit {limit:.1f} %): "
            "die wear, lube, stock?",
        ),
    )

    def build(self, members: Sequence[tuple[ForgingSpec, DeviceContext]]) -> ForgingState:
        """One press per device; channels the device has no tag for make its balance unknown (warned once)."""
        presses = []
        for spec, ctx in members:
            missing = [c for c in [spec.counter, *spec.channels] if c not in ctx.rows]
            if missing:
                log.warning(
                    "%s: no stroke balance: the profile's [forging] needs %s, not configured",
                    ctx.name,
                    ", ".join(missing),
                )
            rows = np.array([ctx.rows.get(c, -1) for c in spec.channels], np.int64)
            signature = _Signature(TraceInput.of(ctx, [spec.signature])) if spec.signature else None
            presses.append(_Press(spec, ctx.name, ctx.rows, rows, signature))
        return ForgingState(presses)

    def update(self, state: ForgingState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """A record and fresh verdicts at each new stroke count; the last stroke's verdicts in between."""
        p = state.presses[slot]
        spec = p.spec
        count = value_of(batch, p.rows, spec.counter)
        if not np.isfinite(count) or count == p.last_count:
            return FeatureResult({}, dict(p.conditions or {}))
        first = not np.isfinite(p.last_count)
        skipped = count - p.last_count - 1 if not first and count > p.last_count else 0.0
        p.last_count = count
        if first:
            # the values read are of a stroke made before the agent started (or of none yet)
            return FeatureResult()
        if skipped > 0:
            p.said.once(
                p.name,
                "skipped",
                "the stroke counter skipped %d stroke(s) (polled slower than the press strokes?); "
                "the missed strokes have no record, `skipped` counts them",
                int(skipped),
            )
        known = p.channel_rows >= 0
        peaks = np.where(known, batch.last_value[np.maximum(p.channel_rows, 0)], np.nan)
        bal = load_balance(
            peaks[None, :],
            spec.channel_x,
            spec.channel_y,
            min_total=0.0,
        )
        reason = int(bal.reason[0])
        p.said.reason(p.name, reason)
        total = float(bal.total[0])
        reverse = value_of(batch, p.rows, spec.reverse)
        fields = {
            "total": total,
            "capacity_pct": 100.0 * total / spec.rated_force,
            "reverse_pct": 100.0 * reverse / spec.rated_force,
            "left_right": float(bal.left_right[0]),
            "front_back": float(bal.front_back[0]),
            "x_c": float(bal.x_c[0]),
            "y_c": float(bal.y_c[0]),
            "skipped": float(skipped),
            "reason": float(reason),
        }
        ok = reason == TraceReason.OK
        ratios = [abs(fields[k]) for k in ("left_right", "front_back") if np.isfinite(fields[k])]
        worst = max(ratios) if ratios else float("nan")
        p.conditions = {
            "eccentric_load": Condition(
                bool(worst > spec.max_imbalance), worst, spec.max_imbalance, ok and bool(ratios)
            ),
            "reverse_load": Condition(
                bool(fields["reverse_pct"] > spec.max_reverse_pct),
                fields["reverse_pct"],
                spec.max_reverse_pct,
                bool(np.isfinite(reverse)),
            ),
            "overload": Condition(
                bool(fields["capacity_pct"] > spec.max_capacity_pct),
                fields["capacity_pct"],
                spec.max_capacity_pct,
                ok,
            ),
        }
        if p.signature is not None:
            fields.update(self._signature(p, p.signature, batch))
            rms = fields["rms_max"]
            p.conditions["signature"] = Condition(
                bool(rms > spec.max_rms_pct), rms, spec.max_rms_pct, bool(np.isfinite(rms))
            )
        return FeatureResult({"stroke": fields}, dict(p.conditions))

    def _signature(self, p: _Press, sig: _Signature, batch: DeviceBatch) -> dict[str, float]:
        """Peak angle, energy, capacity-curve use and deviation from the reference of the stroke's signature."""
        spec = p.spec
        nan = float("nan")
        out = dict.fromkeys(STROKE_FIELDS[STROKE_FIELDS.index("peak_angle") :], nan)
        got = latest_traces(batch, sig.trace)
        if got is None:
            out["trace_reason"] = float(TraceReason.NO_DATA)
            p.said.reason(p.name, TraceReason.NO_DATA, "no force signature read with the stroke counter")
            return out
        (force,), reason_in, _ = got
        if sig.angle is None or sig.angle.shape[0] != force.shape[0]:
            self._axes(spec, sig, force.shape[0])
        assert sig.angle is not None
        cap_h, cap = sig.capacity if sig.capacity is not None else (None, None)
        ind = stroke_indicators(
            force[None, :],
            sig.angle,
            spec.rated_force,
            height=sig.height,
            capacity_height=cap_h,
            capacity=cap,
            reason=[reason_in],
        )
        reason = int(ind.reason[0])
        out.update(
            peak_angle=float(ind.peak_angle[0]),
            energy=float(ind.energy[0]) / 1000.0,  # kN·mm = J -> kJ
            curve_pct=float(ind.curve_pct[0]),
        )
        if reason == TraceReason.OK and sig.reference is None:
            sig.good.append(force.copy())
            if len(sig.good) >= spec.reference_strokes:
                sig.reference = reference_curve(np.array(sig.good), min_strokes=spec.reference_strokes)
                sig.good.clear()
        dev = signature_deviation(
            force[None, :],
            sig.reference if sig.reference is not None else np.full(force.shape[0], np.nan),
            sig.angle,
            spec.windows,
            reason=[reason],
        )
        reason = int(dev.reason[0])
        out["trace_reason"] = float(reason)
        # a stroke before the reference exists is not "no data": only its deviation is not known yet
        if reason not in (TraceReason.OK, TraceReason.NO_REFERENCE):
            p.said.reason(p.name, reason, "the stroke's force signature")
        if reason == TraceReason.OK:
            rms = 100.0 * dev.rms[0]
            for k, value in enumerate(rms):
                out[f"rms_{k + 1}"] = float(value)
            out["rms_max"] = float(np.nanmax(rms))
            out["max_dev"] = float(np.nanmax(dev.max_abs[0]))
            shifts = dev.peak_shift[0][np.isfinite(dev.peak_shift[0])]
            out["peak_shift"] = float(shifts[np.argmax(np.abs(shifts))]) if shifts.size else nan
        return out

    @staticmethod
    def _axes(spec: ForgingSpec, sig: _Signature, n: int) -> None:
        """The crank angle of each of the signature's n points, the ram height and the capacity curve."""
        angle = spec.angle_start + spec.angle_step * np.arange(n, dtype=np.float64)
        sig.angle = angle
        if spec.crank_radius_mm is not None and spec.rod_length_mm is not None:
            sig.height = ram_height(angle, spec.crank_radius_mm, spec.rod_length_mm)
            if spec.rating_height_mm is not None:
                sig.capacity = mechanical_capacity_curve(
                    spec.rated_force, spec.rating_height_mm, spec.crank_radius_mm, spec.rod_length_mm
                )


FEATURE = Forging()
