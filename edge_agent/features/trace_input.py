"""The traces a feature reads with a cycle: which tags, and the latest curve of each from a batch, with its reason code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.core.traces import TraceReason
from edge_agent.features.base import DeviceBatch, DeviceContext
from edge_agent.trace_types import traces_of


@dataclass(frozen=True, slots=True)
class TraceInput:
    """Signal rows of the trace tags a feature needs together (e.g. a weld's voltage and current)."""

    rows: tuple[int, ...]
    """Row of each trace tag; -1 where the device has no such tag."""

    @classmethod
    def of(cls, ctx: DeviceContext, names: Sequence[str | None]) -> TraceInput:
        """The rows of `names` on the device."""
        return cls(tuple(ctx.rows.get(n, -1) if n is not None else -1 for n in names))


def latest_traces(batch: DeviceBatch, want: TraceInput) -> tuple[list[NDArray[np.float64]], int, int] | None:
    """(one curve per wanted tag, reason, worst quality) of the newest traces in the batch; None when one is missing.

    The reason is SHORT or LONG when a curve has fewer or more points than its tag configures
    (the curve is its first `points` values either way), else OK; the core's checks add NaN points.
    """
    traces = traces_of(batch.readings)
    if traces is None or any(r < 0 for r in want.rows):
        return None
    curves, reason, quality = [], int(TraceReason.OK), 0
    for row in want.rows:
        at = traces.of_signal(row)
        if at.size == 0:
            return None
        k = int(at[-1])
        p = int(traces.points[k])
        curves.append(traces.values[k, :p])
        quality = max(quality, int(traces.quality[k]))
        n = int(traces.length[k])
        if reason == TraceReason.OK and n != p:
            reason = int(TraceReason.SHORT if n < p else TraceReason.LONG)
    return curves, reason, quality
