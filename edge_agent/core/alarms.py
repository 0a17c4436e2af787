"""Alarm start/clear events from condition arrays, with a persistence delay and hysteresis, vectorized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core._batch import check_rows, occurrence_rounds


@dataclass(frozen=True, slots=True)
class AlarmEvents:
    """Alarm transitions as parallel arrays: one entry when a condition starts, one when it clears.

    `row` is the channel (or signal row), `kind` says which alarm of that row (the
    producer documents its codes), `start` is True for a start and False for a clear,
    `value` and `limit` are the values that decided it, `mask` carries rule bits when
    the producer has them (0 otherwise).
    """

    row: NDArray[np.int64]
    kind: NDArray[np.int16]
    t_ns: NDArray[np.int64]
    start: NDArray[np.bool_]
    value: NDArray[np.float64]
    limit: NDArray[np.float64]
    mask: NDArray[np.uint32]

    @classmethod
    def empty(cls) -> AlarmEvents:
        """No events."""
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.int16),
            np.empty(0, np.int64),
            np.empty(0, bool),
            np.empty(0, np.float64),
            np.empty(0, np.float64),
            np.empty(0, np.uint32),
        )

    @classmethod
    def concat(cls, parts: list[AlarmEvents]) -> AlarmEvents:
        """Join event batches in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)  # type: ignore[arg-type]
        )

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def to_records(self, kind_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """Plain dicts (row, kind, t_ns, state "start"/"clear", value, limit, mask) for publishing."""
        names = kind_names or {}
        return [
            {
                "row": int(r),
                "kind": names.get(int(k), str(int(k))),
                "t_ns": int(t),
                "state": "start" if s else "clear",
                "value": float(v),
                "limit": float(lim),
                "mask": int(m),
            }
            for r, k, t, s, v, lim, m in zip(
                self.row, self.kind, self.t_ns, self.start, self.value, self.limit, self.mask, strict=True
            )
        ]


def band_conditions(
    value: NDArray[np.float64], low: ArrayLike, high: ArrayLike, deadband: ArrayLike = 0.0
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(raised, cleared) for a value against a [low, high] band; NaN limits are absent, NaN values decide nothing.

    Raised when the value is outside the band; cleared only once it is back inside
    the band narrowed by `deadband` on each side (the hysteresis).
    """
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    db = np.asarray(deadband, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        above = value > hi
        below = value < lo
        raised = above | below
        inside_hi = np.isnan(hi) | (value <= hi - db)
        inside_lo = np.isnan(lo) | (value >= lo + db)
        cleared = inside_hi & inside_lo & ~np.isnan(value)
    return raised, cleared


class AlarmTracker:
    """Per-channel alarm state: start after the condition persisted `on_delay_ns`, clear after the clear condition persisted `off_delay_ns`.

    A channel sits in one of three states: idle, pending (raised, waiting for the
    persistence delay) and active. Samples between the raise and the clear
    condition (the hysteresis band) keep an active alarm active and cancel a
    pending one. Channels without a sample in a batch keep their state.
    """

    def __init__(self, n_channels: int, on_delay_ns: ArrayLike = 0, off_delay_ns: ArrayLike = 0) -> None:
        if n_channels < 0:
            raise ValueError(f"AlarmTracker: n_channels must be >= 0, got {n_channels}")
        self.n = n_channels
        self.on_delay = np.broadcast_to(np.asarray(on_delay_ns, dtype=np.int64), (n_channels,)).copy()
        self.off_delay = np.broadcast_to(np.asarray(off_delay_ns, dtype=np.int64), (n_channels,)).copy()
        if (self.on_delay < 0).any() or (self.off_delay < 0).any():
            raise ValueError("AlarmTracker: on_delay_ns and off_delay_ns must be >= 0")
        self.active = np.zeros(n_channels, dtype=bool)
        self.pending_since = np.full(n_channels, -1, dtype=np.int64)
        self.clearing_since = np.full(n_channels, -1, dtype=np.int64)

    def busy(self, channels: NDArray[np.integer]) -> NDArray[np.bool_]:
        """True for channels that are active or waiting out a delay (idle channels need no update when not raised)."""
        return self.active[channels] | (self.pending_since[channels] >= 0)

    def reset(self, channels: NDArray[np.integer]) -> None:
        """Forget the state of `channels` without emitting events (e.g. after a re-baseline)."""
        self.active[channels] = False
        self.pending_since[channels] = -1
        self.clearing_since[channels] = -1

    def update(
        self,
        channel: ArrayLike,
        t_ns: ArrayLike,
        raised: ArrayLike,
        cleared: ArrayLike | None = None,
        value: ArrayLike | None = None,
        limit: ArrayLike | None = None,
        unique: bool = False,
    ) -> AlarmEvents:
        """Feed one observation per entry (channels may repeat, in time order); return the transitions.

        `cleared` defaults to `~raised` (no hysteresis band). `unique=True` promises that no
        channel repeats, which skips splitting the batch into rounds.
        """
        ch = np.asarray(channel, dtype=np.int64).reshape(-1)
        n = ch.shape[0]
        check_rows("AlarmTracker.update channel", ch, self.n)
        t = np.broadcast_to(np.asarray(t_ns, dtype=np.int64), (n,))
        up = np.broadcast_to(np.asarray(raised, dtype=bool), (n,))
        down = ~up if cleared is None else np.broadcast_to(np.asarray(cleared, dtype=bool), (n,))
        if (up & down).any():
            raise ValueError(
                "AlarmTracker.update: an entry is both raised and cleared; check the band limits"
            )
        val = np.broadcast_to(np.asarray(np.nan if value is None else value, dtype=np.float64), (n,))
        lim = np.broadcast_to(np.asarray(np.nan if limit is None else limit, dtype=np.float64), (n,))
        if unique:
            return self._round(ch, t, up, down, val, lim)
        parts = []
        for idx in occurrence_rounds(ch):
            parts.append(self._round(ch[idx], t[idx], up[idx], down[idx], val[idx], lim[idx]))
        return AlarmEvents.concat(parts)

    def _round(
        self,
        ch: NDArray[np.int64],
        t: NDArray[np.int64],
        up: NDArray[np.bool_],
        down: NDArray[np.bool_],
        val: NDArray[np.float64],
        lim: NDArray[np.float64],
    ) -> AlarmEvents:
        act = self.active[ch]
        pend = self.pending_since[ch]
        clr = self.clearing_since[ch]
        # inactive channels: a raise starts (or continues) the persistence timer, anything else cancels it
        pend = np.where(~act & up, np.where(pend < 0, t, pend), np.where(act, pend, -1))
        fire = ~act & up & (t - pend >= self.on_delay[ch])
        # active channels: a clear starts (or continues) the clear timer, a raise or the band cancels it
        clr = np.where(act & down, np.where(clr < 0, t, clr), -1)
        settle = act & down & (t - clr >= self.off_delay[ch])
        new_act = (act | fire) & ~settle
        self.active[ch] = new_act
        self.pending_since[ch] = np.where(new_act, -1, pend)
        self.clearing_since[ch] = np.where(settle | ~new_act, -1, clr)
        ev = fire | settle
        if not ev.any():
            return AlarmEvents.empty()
        k = int(ev.sum())
        return AlarmEvents(
            ch[ev],
            np.zeros(k, np.int16),
            t[ev].copy(),
            fire[ev],
            val[ev].copy(),
            lim[ev].copy(),
            np.zeros(k, np.uint32),
        )
