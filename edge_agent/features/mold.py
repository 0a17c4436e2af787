"""Mould temperature control and maintenance (`[mold]` of a profile): heat removed, supply-return ΔT, shots to maintenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from edge_agent.config_model import Model
from edge_agent.core.mold import MoldMaintenance, heat_removed_kw
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

#: Fields of the `heat_removal` pseudo-signal (measurement `mold`).
HEAT_REMOVAL_FIELDS = ("heat_kw", "delta_t", "flow")
#: Fields of the `maintenance` pseudo-signal (measurement `mold`).
MAINTENANCE_FIELDS = ("shots_used", "shots_to_next", "pct_used", "status")


class MoldSpec(Model):
    """Mould temperature control and maintenance signals."""

    supply: Signal
    """Supply (main line) temperature."""
    return_: Signal = Field(alias="return")
    """Return line temperature."""
    flow: Signal
    """Flow rate in L/min."""
    shot_counter: Signal | None = None
    """Mould shot counter for maintenance tracking."""
    maintenance_interval: int = Field(default=100_000, gt=0)
    """Shots between preventive maintenance."""
    max_delta_t: float = Field(default=5.0, gt=0)
    """Largest normal return-minus-supply temperature difference in K; above it, heat removal is poor."""


@dataclass
class MoldState:
    """One maintenance counter for every mould; slot i is mould i."""

    maintenance: MoldMaintenance
    specs: list[MoldSpec]
    rows: list[Mapping[str, int]]


class Mold(Feature[MoldSpec, MoldState]):
    """Heat removal (`heat_removal`) and maintenance (`maintenance`) of a mould or its temperature control unit."""

    table = "mold"
    spec_model = MoldSpec
    about = "Mould / TCU indicators."
    publishes = (
        Publication("heat_removal", "mold", HEAT_REMOVAL_FIELDS, "mould heat removal"),
        Publication("maintenance", "mold", MAINTENANCE_FIELDS, "maintenance"),
    )
    alarms = (
        AlarmCondition(
            "heat_removal",
            "heat_removal",
            "warning",
            "return-supply temperature difference too high (flow loss?)",
        ),
    )

    def build(self, members: Sequence[tuple[MoldSpec, DeviceContext]]) -> MoldState:
        """One maintenance counter with each mould's interval."""
        return MoldState(
            MoldMaintenance(len(members), [spec.maintenance_interval for spec, _ in members]),
            [spec for spec, _ in members],
            [ctx.rows for _, ctx in members],
        )

    def update(self, state: MoldState, slot: int, batch: DeviceBatch) -> FeatureResult:
        """Heat removed and ΔT from the last flow, supply and return; the shots used from the shot counter."""
        spec, rows = state.specs[slot], state.rows[slot]
        flow = value_of(batch, rows, spec.flow)
        kw, dt = heat_removed_kw(
            flow, value_of(batch, rows, spec.supply), value_of(batch, rows, spec.return_)
        )
        out = FeatureResult(
            {"heat_removal": {"heat_kw": float(kw), "delta_t": float(dt), "flow": flow}},
            {
                "heat_removal": Condition(
                    bool(dt > spec.max_delta_t), float(dt), spec.max_delta_t, bool(np.isfinite(dt))
                )
            },
        )
        if spec.shot_counter is not None and spec.shot_counter in rows:
            ms = state.maintenance.update([slot], [value_of(batch, rows, spec.shot_counter)])
            out.fields["maintenance"] = {k: float(ms[k][0]) for k in MAINTENANCE_FIELDS}
        return out


FEATURE = Mold()
