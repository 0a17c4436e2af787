"""Forging press per-stroke tonnage (`[forging]` of a profile): capacity, reverse load, balance and centre of load.

Once per stroke (a new value of the stroke counter) the channels' peak forces give the total, the
share of the press rating, the left/right and front/back balance and the centre of load
(core/traces.py `load_balance`, DOMAIN-ROOT.md §1). A stroke whose channels are not all known gets
NaN and a reason code, never a balance made from the channels that are. A counter that jumps by
more than one says strokes were missed: the stroke read is still published (its values were
written before the counter), the missed ones are counted in `skipped` and logged once. The stroke
whose values are there when the agent starts is not published: it may be hours old.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edge_agent.config_model import Model
from edge_agent.core.traces import TraceReason, load_balance
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
)


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

    @model_validator(mode="after")
    def _one_position_per_channel(self) -> ForgingSpec:
        for name, positions in (("channel_x", self.channel_x), ("channel_y", self.channel_y)):
            if positions is not None and len(positions) != len(self.channels):
                raise ValueError(
                    f"{name} has {len(positions)} positions for {len(self.channels)} channels; give one per channel"
                )
        return self


@dataclass
class _Press:
    """One press: its spec and rows, the last stroke seen and the verdicts of the last stroke."""

    spec: ForgingSpec
    name: str
    rows: Mapping[str, int]
    channel_rows: NDArray[np.int64]
    last_count: float = float("nan")
    conditions: dict[str, Condition] | None = None


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
    )

    def __init__(self) -> None:
        self.no_data = NoDataLog(log, "stroke balance")

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
            presses.append(_Press(spec, ctx.name, ctx.rows, rows))
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
            self.no_data.once(
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
        self.no_data.reason(p.name, reason)
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
        return FeatureResult({"stroke": fields}, dict(p.conditions))


FEATURE = Forging()
