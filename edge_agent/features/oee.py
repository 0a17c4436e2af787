"""OEE per ISO 22400-2 (`[oee]` of a profile): availability, performance, quality from a state signal and part counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from edge_agent.config_model import Model
from edge_agent.core.oee import OeeAccumulator
from edge_agent.features.base import (
    DeviceBatch,
    DeviceContext,
    Feature,
    FeatureResult,
    Publication,
    Signal,
    value_of,
)

#: Fields of the `oee` pseudo-signal (measurement `oee`).
OEE_FIELDS = ("availability", "performance", "quality", "oee", "apt_s", "pq", "gq")


class OeeSpec(Model):
    """Inputs of OEE per ISO 22400-2."""

    state: Signal
    """Machine state signal."""
    producing_states: list[int] = Field(min_length=1)
    """State values that count as actual production time."""
    production_status: Signal | None = None
    """Optional second state signal (an IMM's ProductionStatus): with it, time counts as production
    only while `state` is in `producing_states` and this signal is in `producing_statuses`. A device
    without this tag has its production time unknown (no availability) unless `state` says not producing."""
    producing_statuses: list[int] = Field(default_factory=list)
    """Values of `production_status` that count as production (PRODUCTION = 4 for OPC 40077)."""
    parts_counter: Signal
    """Produced quantity counter."""
    good_counter: Signal
    """Good quantity counter."""
    ideal_cycle_s: float = Field(gt=0)
    """Ideal cycle time per part (planned run time per item)."""
    period_s: float = Field(default=8 * 3600, gt=0)
    """Length of the OEE period (a shift)."""

    @model_validator(mode="after")
    def _status_pair(self) -> OeeSpec:
        if (self.production_status is None) != (not self.producing_statuses):
            raise ValueError("give `production_status` and `producing_statuses` together")
        return self


@dataclass
class OeeState:
    """One accumulator for every OEE machine; slot i is machine i."""

    accumulator: OeeAccumulator
    specs: list[OeeSpec]
    rows: list[Mapping[str, int]]


class Oee(Feature[OeeSpec, OeeState]):
    """OEE, its factors and quantities per period, published on the `oee` pseudo-signal."""

    table = "oee"
    spec_model = OeeSpec
    about = "OEE inputs."
    publishes = (Publication("oee", "oee", OEE_FIELDS, "OEE per machine"),)

    def build(self, members: Sequence[tuple[OeeSpec, DeviceContext]]) -> OeeState:
        """One accumulator; a device's `ideal_cycle_s` overrides the profile's, the stop gap is 2 nominal cycles."""
        return OeeState(
            OeeAccumulator(
                len(members),
                [ctx.device.ideal_cycle_s or spec.ideal_cycle_s for spec, ctx in members],
                stop_gap_s=[2 * ctx.nominal_cycle_s if ctx.nominal_cycle_s else np.inf for _, ctx in members],
            ),
            [spec for spec, _ in members],
            [ctx.rows for _, ctx in members],
        )

    def update(self, state: OeeState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """Account the time since the machine's last batch, roll the period when it is over, publish its OEE."""
        spec, rows, acc, t = state.specs[slot], state.rows[slot], state.accumulator, batch.t_ns
        producing, known = _in(value_of(batch, rows, spec.state), spec.producing_states)
        if spec.production_status is not None:
            # DOMAIN.md §5: an IMM produces in AUTOMATIC *and* PRODUCTION; either one known to be
            # off is enough to know it is not producing
            status, status_known = _in(value_of(batch, rows, spec.production_status), spec.producing_statuses)
            known = (known and status_known) or (known and not producing) or (status_known and not status)
            producing = producing and status
        parts = value_of(batch, rows, spec.parts_counter)
        good = value_of(batch, rows, spec.good_counter)
        # an unknown state (not configured, not read yet, disconnected) is no data, not "stopped":
        # the accumulator leaves such time out of the availability denominator
        acc.update([slot], [t], [float(producing) if known else np.nan], [parts], [good])
        res = acc.result(t, [slot])
        if not np.isfinite(res["pot_s"][0]) or res["pot_s"][0] >= spec.period_s:
            acc.roll_period([slot], t)  # at the machine's next cycle boundary
        v = {k: float(res[k][0]) for k in OEE_FIELDS}
        # NaN (no data, not 0) for what the machine's inputs cannot tell
        if not res["pbt_s"][0] > 0:
            v["apt_s"] = np.nan  # the state was never known in this period
        if np.isnan(acc.last_parts[slot]):
            v.update(performance=np.nan, quality=np.nan, oee=np.nan, pq=np.nan)
        if np.isnan(acc.last_good[slot]):
            v.update(quality=np.nan, oee=np.nan, gq=np.nan)
        return FeatureResult({"oee": v})


def _in(value: float, values: list[int]) -> tuple[bool, bool]:
    """Whether a state value is one of `values`, and whether it is known at all."""
    return bool(np.isin(value, values)), bool(np.isfinite(value))


FEATURE = Oee()
