"""Resistance spot welding (`[spot_weld]` of a profile): electrode life, expulsion rate, energy and resistance for the tip's age.

Per spot (a new value of the spot counter): the electrode life left (dress interval − spots since
the dress; a tip past its interval is a missed dress), the expulsion rate over the last spots, and
the spot's energy and dynamic resistance as a ratio to the reference learned for the same age of
the tips (resistance and energy fall as the tips mushroom, so a fixed limit would either miss a
shunted spot or alarm on every worn tip). When the controller's current and voltage traces are
read (`points` tags), core/traces.py `spot_weld_indicators` gives R_β, its drop and expulsion from
the trace. DOMAIN-ROOT.md §2.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, model_validator

from edge_agent.config_model import Model
from edge_agent.core.traces import TraceReason, spot_weld_indicators
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

#: Fields of the `spot` pseudo-signal (measurement `spot_weld`), one record per spot.
SPOT_FIELDS = (
    "electrode_life",
    "expulsion_rate",
    "energy_ratio",
    "resistance_ratio",
    "r_beta",
    "beta_drop",
    "expulsion_drop",
    "trace_energy",
    "skipped",
    "reason",
)


class SpotWeldSpec(Model):
    """Which signals make a spot-weld controller's per-spot indicators, and the limits of a good spot."""

    counter: Signal
    """Spot counter: a new value is a new spot, whose latched values are read with it."""
    energy: Signal | None = None
    """Energy of the spot, J."""
    resistance: Signal | None = None
    """Mean dynamic resistance of the spot (any unit: it is compared with its own reference)."""
    expulsion: Signal | None = None
    """The controller's expulsion flag of the spot."""
    spots_since_dress: Signal | None = None
    """Spots welded since the tips were last dressed."""
    dress_interval: Signal | None = None
    """Spots between dresses, as the controller holds it (or `dress_every`)."""
    dress_every: int | None = Field(default=None, gt=0)
    """Spots between dresses, when the controller does not tell."""
    expulsion_window: int = Field(default=20, ge=2)
    """Spots the expulsion rate is taken over."""
    max_expulsion_rate: float = Field(default=0.1, gt=0, le=1)
    """Largest share of expelled spots in the window."""
    age_bands: int = Field(default=10, ge=1, le=100)
    """The dress interval is cut into this many bands of tip age, each with its reference energy and resistance."""
    reference_spots: int = Field(default=3, ge=1)
    """Spots per band whose median is its reference (learned over the first dress interval)."""
    min_ratio: float = Field(default=0.85, gt=0, lt=1)
    """Least energy and resistance of a spot as a share of the reference for its tip age (shunting, poor fit-up)."""
    current_trace: Signal | None = None
    """The spot's current trace (a `points` tag)."""
    voltage_trace: Signal | None = None
    """The spot's electrode voltage trace (a `points` tag), V."""
    trace_current_to_a: float = Field(default=1.0, gt=0)
    """Multiplier from the current trace's unit to A (1000 for kA)."""
    trace_sample_us: float = Field(default=1000.0, gt=0)
    """Sampling period of the traces, µs."""
    min_current_a: float = Field(default=1000.0, gt=0)
    """Below this current (A) no weld current flows."""

    @model_validator(mode="after")
    def _pairs(self) -> SpotWeldSpec:
        if (self.current_trace is None) != (self.voltage_trace is None):
            raise ValueError("give current_trace and voltage_trace together")
        if self.spots_since_dress is not None and self.dress_interval is None and self.dress_every is None:
            raise ValueError("spots_since_dress needs the interval: dress_interval (a signal) or dress_every")
        return self


@dataclass
class _Gun:
    """One weld gun: spec, rows, the expulsions of the last spots, the references per tip age, last verdicts."""

    spec: SpotWeldSpec
    name: str
    rows: Mapping[str, int]
    traces: TraceInput | None
    last_count: float = float("nan")
    expelled: deque[bool] = field(default_factory=deque)
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    said: NoDataLog = field(default_factory=lambda: NoDataLog(log, "spot indicators"), repr=False)
    """What the log said about the device: each reason once per pipeline."""


@dataclass
class SpotWeldState:
    """Slot i: gun i."""

    guns: list[_Gun]


class SpotWeld(Feature[SpotWeldSpec, SpotWeldState]):
    """Electrode life, expulsion rate and energy/resistance for the tip's age on the `spot` pseudo-signal."""

    table = "spot_weld"
    spec_model = SpotWeldSpec
    about = "Resistance spot welding: electrode life, expulsion, energy and resistance."
    publishes = (Publication("spot", "spot_weld", SPOT_FIELDS, "spot weld electrode and nugget indicators"),)
    alarms = (
        AlarmCondition(
            "dress_overdue",
            "spot",
            "alarm",
            "the tips are {value:.0f} spots past their dress interval: a missed dress, mushroomed tips",
        ),
        AlarmCondition(
            "expulsion_rate",
            "spot",
            "warning",
            "expulsion in {value:.0%} of the last spots (limit {limit:.0%})",
        ),
        AlarmCondition(
            "weak_spot",
            "spot",
            "warning",
            "spot energy or resistance at {value:.0%} of the reference for the tips' age (least {limit:.0%}): "
            "shunting or poor fit-up?",
        ),
    )

    def build(self, members: Sequence[tuple[SpotWeldSpec, DeviceContext]]) -> SpotWeldState:
        """One gun per device."""
        guns = []
        for spec, ctx in members:
            traces = (
                TraceInput.of(ctx, [spec.voltage_trace, spec.current_trace])
                if spec.current_trace is not None and spec.voltage_trace is not None
                else None
            )
            guns.append(_Gun(spec, ctx.name, ctx.rows, traces))
        return SpotWeldState(guns)

    def update(self, state: SpotWeldState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """A spot record and fresh verdicts when the spot counter moves; the last verdicts in between."""
        gun = state.guns[slot]
        spec, rows = gun.spec, gun.rows
        count = value_of(batch, rows, spec.counter)
        if not np.isfinite(count) or count == gun.last_count:
            return FeatureResult({}, dict(gun.conditions))
        first = not np.isfinite(gun.last_count)
        skipped = count - gun.last_count - 1 if not first and count > gun.last_count else 0.0
        gun.last_count = count
        if first:
            # the latched values are of a spot made before the agent started (or of none yet)
            return FeatureResult()
        if skipped > 0:
            gun.said.once(
                gun.name, "skipped", "the spot counter skipped %d spot(s); they have no record", int(skipped)
            )
        interval = (
            value_of(batch, rows, spec.dress_interval)
            if spec.dress_interval
            else float(spec.dress_every or 0)
        )
        since = value_of(batch, rows, spec.spots_since_dress)
        life = interval - since if interval > 0 else float("nan")
        fields: dict[str, float] = {"electrode_life": life, "skipped": float(skipped)}
        conditions = {
            "dress_overdue": Condition(life < 0, -life, 0.0, bool(np.isfinite(life))),
        }
        flag = value_of(batch, rows, spec.expulsion)
        trace = self._trace(gun, batch)
        fields.update(trace)
        expelled = flag > 0.5 if np.isfinite(flag) else trace.get("expulsion_drop", 0.0) >= 0.08
        if np.isfinite(flag) or "expulsion_drop" in trace:
            gun.expelled.append(bool(expelled))
            while len(gun.expelled) > spec.expulsion_window:
                gun.expelled.popleft()
        rate = float(np.mean(gun.expelled)) if len(gun.expelled) >= spec.expulsion_window else float("nan")
        fields["expulsion_rate"] = rate
        conditions["expulsion_rate"] = Condition(
            rate > spec.max_expulsion_rate, rate, spec.max_expulsion_rate, bool(np.isfinite(rate))
        )
        band = self._band(since, interval, spec.age_bands)
        ratios = {}
        for key, signal in (("energy", spec.energy), ("resistance", spec.resistance)):
            ratios[key] = self._ratio(gun, key, value_of(batch, rows, signal), band)
            fields[f"{key}_ratio"] = ratios[key]
        known = [r for r in ratios.values() if np.isfinite(r)]
        worst = min(known) if known else float("nan")
        conditions["weak_spot"] = Condition(worst < spec.min_ratio, worst, spec.min_ratio, bool(known))
        fields.setdefault("reason", float(TraceReason.OK))
        gun.conditions = conditions
        return FeatureResult({"spot": fields}, dict(conditions))

    @staticmethod
    def _band(since: float, interval: float, bands: int) -> int:
        """Tip-age band of a spot (past the interval: the last band); -1 when the age is unknown."""
        if not (np.isfinite(since) and interval > 0):
            return -1
        return int(min(max(since, 0.0) / interval * bands, bands - 1))

    @staticmethod
    def _ratio(gun: _Gun, key: str, value: float, band: int) -> float:
        """value / the reference of its band, learning the reference from the first spots of each band."""
        spec = gun.spec
        if band < 0 or not np.isfinite(value):
            return float("nan")
        ref = gun.reference.get(key)
        if ref is None:
            ref = gun.reference[key] = np.full(spec.age_bands, np.nan)
            gun.samples[key] = [[] for _ in range(spec.age_bands)]
        if np.isnan(ref[band]):
            seen = gun.samples[key][band]
            seen.append(value)
            if len(seen) >= spec.reference_spots:
                ref[band] = float(np.median(seen))
            return float("nan")
        return value / ref[band]

    def _trace(self, gun: _Gun, batch: DeviceBatch) -> dict[str, float]:
        """R_β, its drop, expulsion drop and energy from the spot's traces; a reason code without them."""
        if gun.traces is None:
            return {}
        spec = gun.spec
        got = latest_traces(batch, gun.traces)
        if got is None:
            gun.said.reason(
                gun.name, TraceReason.NO_DATA, "no current/voltage trace read with the spot counter"
            )
            return {"reason": float(TraceReason.NO_DATA)}
        (u, i), reason_in, _ = got
        ind = spot_weld_indicators(
            u[None, :],
            i[None, :] * spec.trace_current_to_a,
            spec.trace_sample_us * 1e-6,
            min_current=spec.min_current_a,
            reason=[reason_in],
        )
        reason = int(ind.reason[0])
        if reason:
            gun.said.reason(gun.name, reason, "the spot's trace")
        return {
            "r_beta": float(ind.r_beta[0]),
            "beta_drop": float(ind.beta_drop[0]),
            "expulsion_drop": float(ind.expulsion_drop[0]),
            "trace_energy": float(ind.energy[0]),
            "reason": float(reason),
        }


FEATURE = SpotWeld()
