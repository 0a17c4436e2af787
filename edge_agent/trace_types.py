"""Traces: array values a driver reads with a batch (a force signature, a weld's current), one curve per cycle.

A tag with `points = N` in a driver's config is read as an array (an OPC UA array variable, a block
of Modbus registers) and arrives, not as a scalar value, but as one row of a `Traces` attached to
the batch: `TracedReadings` is a `Readings` that carries them. The pipeline hands the batch to the
equipment features unchanged (`DeviceBatch.readings`), so a feature finds its traces with
`traces_of`; nothing else needs to know about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.types import BAD_THRESHOLD, Readings


@dataclass(frozen=True, slots=True)
class Traces:
    """S traces read in one batch: row i is the curve of signal `signal[i]`, NaN-padded to the configured points."""

    signal: NDArray[np.int32]
    """Signal-table row of each trace's tag."""
    t_ns: NDArray[np.int64]
    """Time of each trace (the device's timestamp where it gives one)."""
    values: NDArray[np.float64]
    """[S, N] engineering values; NaN where a point is missing, and every point of a bad trace."""
    length: NDArray[np.int64]
    """Points the device delivered (more than configured: the trace was cut; fewer: padded with NaN)."""
    points: NDArray[np.int64]
    """Points configured for each trace's tag (`points`): its first `points` columns are the trace."""
    quality: NDArray[np.uint8]
    """Quality of each trace as a whole (a failed read, an array of the wrong type)."""

    def __post_init__(self) -> None:
        s = self.signal.shape[0]
        columns = (self.t_ns.shape, self.length.shape, self.points.shape, self.quality.shape)
        if any(c != (s,) for c in columns) or self.values.shape[0] != s:
            raise ValueError(
                f"Traces columns differ in length: signal {self.signal.shape}, t_ns {self.t_ns.shape}, "
                f"values {self.values.shape}, length {self.length.shape}, points {self.points.shape}, "
                f"quality {self.quality.shape}"
            )

    def __len__(self) -> int:
        return int(self.signal.shape[0])

    @classmethod
    def of(
        cls,
        signal: Sequence[int],
        t_ns: Sequence[int],
        arrays: Sequence[NDArray[np.float64] | None],
        points: Sequence[int],
        quality: Sequence[int],
    ) -> Traces:
        """Pack one array per trace (None: nothing read) to N = max(points) columns; bad traces are all NaN."""
        n = max(points, default=0)
        values = np.full((len(arrays), n), np.nan)
        length = np.zeros(len(arrays), np.int64)
        q = np.asarray(quality, np.uint8).copy()
        for i, (a, p) in enumerate(zip(arrays, points, strict=True)):
            if a is None or q[i] >= BAD_THRESHOLD:
                continue
            length[i] = a.shape[0]
            k = min(a.shape[0], p)
            values[i, :k] = a[:k]
        return cls(
            np.asarray(signal, np.int32),
            np.asarray(t_ns, np.int64),
            values,
            length,
            np.asarray(points, np.int64),
            q,
        )

    @classmethod
    def concat(cls, parts: Sequence[Traces]) -> Traces:
        """The traces of several batches as one, in order (columns padded with NaN to the widest)."""
        if len(parts) == 1:
            return parts[0]
        n = max((p.values.shape[1] for p in parts), default=0)
        values = np.full((sum(len(p) for p in parts), n), np.nan)
        at = 0
        for p in parts:
            values[at : at + len(p), : p.values.shape[1]] = p.values
            at += len(p)
        return cls(
            np.concatenate([p.signal for p in parts]) if parts else np.empty(0, np.int32),
            np.concatenate([p.t_ns for p in parts]) if parts else np.empty(0, np.int64),
            values,
            np.concatenate([p.length for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.points for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.quality for p in parts]) if parts else np.empty(0, np.uint8),
        )

    def of_signal(self, row: int) -> NDArray[np.intp]:
        """Positions of the traces of one signal row, oldest first."""
        return np.flatnonzero(self.signal == row)

    def restamped(self, t_ns: int) -> Traces:
        """The same traces stamped `t_ns` (a test replaying a batch at simulated time)."""
        return Traces(
            self.signal,
            np.full(len(self), t_ns, np.int64),
            self.values,
            self.length,
            self.points,
            self.quality,
        )


@dataclass(frozen=True, slots=True)
class TracedReadings(Readings):
    """A batch of scalar readings with the traces read in the same request."""

    traces: Traces | None = None


def traces_of(readings: Readings) -> Traces | None:
    """The traces read with a batch, if any."""
    return readings.traces if isinstance(readings, TracedReadings) else None


def with_traces(readings: Readings, traces: Traces | None) -> Readings:
    """`readings` carrying `traces` (unchanged when there are none)."""
    if traces is None or len(traces) == 0:
        return readings
    return TracedReadings(readings.signal, readings.t_ns, readings.value, readings.quality, traces)
