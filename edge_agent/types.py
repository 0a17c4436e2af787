"""Core data types shared by drivers, the indicator core and the sinks: Readings, quality codes, the signal table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray


class Quality(IntEnum):
    """Quality of one value, one byte; the top two bits follow OPC UA (00 good, 01 uncertain, 10 bad).

    Anything >= BAD never enters a statistic. The sub-codes keep the reason so a
    dashboard can tell a timeout from an unknown register.
    """

    GOOD = 0x00
    UNCERTAIN = 0x40
    UNCERTAIN_LAST_USABLE = 0x41  # stale: the device repeated an old value
    UNCERTAIN_SENSOR_NOT_ACCURATE = 0x42
    UNCERTAIN_EU_EXCEEDED = 0x43  # outside the engineering-unit range
    UNCERTAIN_SUBNORMAL = 0x44
    BAD = 0x80
    BAD_CONFIG = 0x81  # unknown node, illegal address: fix the config, not the wire
    BAD_NOT_CONNECTED = 0x82
    BAD_DEVICE_FAILURE = 0x83
    BAD_SENSOR_FAILURE = 0x84
    BAD_COMM_FAILURE = 0x85
    BAD_OUT_OF_SERVICE = 0x86
    BAD_TIMEOUT = 0x87
    BAD_DEVICE_BUSY = 0x88
    BAD_GATEWAY_PATH = 0x89  # Modbus exception 0x0A
    BAD_GATEWAY_TARGET = 0x8A  # Modbus exception 0x0B
    BAD_VALUE = 0x8B  # NaN/Inf or undecodable bytes
    BAD_WAITING_FOR_INITIAL = 0x8C

    @property
    def is_good(self) -> bool:
        """True for the good range."""
        return self < Quality.UNCERTAIN

    @property
    def is_bad(self) -> bool:
        """True for the bad range (the value must not be used)."""
        return self >= Quality.BAD


#: Smallest code that counts as bad; `quality >= BAD_THRESHOLD` is the vectorized test.
BAD_THRESHOLD = np.uint8(Quality.BAD)


def _as(arr: object, dtype: type) -> NDArray:
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass(frozen=True, slots=True)
class Readings:
    """A columnar batch of values: one poll or one subscription burst of one device.

    `value` is NaN wherever `quality` is bad, so a consumer that forgets the
    quality still cannot average a bad value into a statistic.
    """

    signal: NDArray[np.int32]
    t_ns: NDArray[np.int64]
    value: NDArray[np.float64]
    quality: NDArray[np.uint8]

    def __post_init__(self) -> None:
        n = self.signal.shape[0]
        if not (self.t_ns.shape == self.value.shape == self.quality.shape == (n,)):
            raise ValueError(
                "Readings columns differ in length: "
                f"signal {self.signal.shape}, t_ns {self.t_ns.shape}, "
                f"value {self.value.shape}, quality {self.quality.shape}"
            )

    @classmethod
    def of(
        cls,
        signal: Iterable[int] | NDArray,
        t_ns: Iterable[int] | NDArray | int,
        value: Iterable[float] | NDArray,
        quality: Iterable[int] | NDArray | int = Quality.GOOD,
    ) -> Readings:
        """Build a batch from array-likes; scalars for t_ns or quality are broadcast. Bad values become NaN."""
        sig = _as(signal, np.int32)
        n = sig.shape[0]
        ts = _as(np.broadcast_to(np.asarray(t_ns, dtype=np.int64), (n,)), np.int64)
        val = np.array(value, dtype=np.float64, copy=True).reshape(n)
        q = _as(np.broadcast_to(np.asarray(quality, dtype=np.uint8), (n,)), np.uint8)
        non_finite = ~np.isfinite(val)
        if non_finite.any():
            q = q.copy()
            q[non_finite & (q < BAD_THRESHOLD)] = Quality.BAD_VALUE
        val[q >= BAD_THRESHOLD] = np.nan
        return cls(sig, ts, val, q)

    @classmethod
    def empty(cls) -> Readings:
        """A batch with no values."""
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.uint8)
        )

    @classmethod
    def concat(cls, parts: Sequence[Readings]) -> Readings:
        """Join several batches into one, in order."""
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.signal for p in parts]),
            np.concatenate([p.t_ns for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.quality for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.signal.shape[0])

    @property
    def good(self) -> NDArray[np.bool_]:
        """Mask of the values that may enter a statistic (not bad, finite)."""
        return (self.quality < BAD_THRESHOLD) & np.isfinite(self.value)

    def take(self, index: NDArray) -> Readings:
        """The subset at `index` (a mask or integer positions)."""
        return Readings(self.signal[index], self.t_ns[index], self.value[index], self.quality[index])


@dataclass(frozen=True, slots=True)
class ValidityRules:
    """Per-value plausibility of a batch of tags: a range of engineering values and raw values that mean a broken sensor.

    A value outside its range, or whose raw value is one of its sentinels (e.g. 32767 on an int16
    thermocouple input), is BAD_SENSOR_FAILURE with the value NaN: a number the sensor cannot mean
    must never be published as GOOD. Checked with a few array operations per batch, never per value.

    Sentinels are compared exactly, so they are first converted to the type the device sends: a
    float32 register holding -9999.9 holds -9999.900390625, which the double -9999.9 never equals.
    """

    low: NDArray[np.float64]
    """Lowest valid engineering value per tag (-inf: no bound)."""
    high: NDArray[np.float64]
    """Highest valid engineering value per tag (+inf: no bound)."""
    sentinels: NDArray
    """Raw sentinel values, shape (tags, most sentinels of a tag): doubles padded with NaN (which equals
    nothing), or for 64-bit integers, which doubles cannot all hold, integers padded with the row's own first."""
    unset: NDArray[np.bool_] | None = None
    """Integer sentinels only: tags with none at all (their padding must match nothing); None if every tag has one."""

    @classmethod
    def of(
        cls,
        rules: Sequence[tuple[float | None, float | None, Sequence[float]]],
        raw_type: type[np.number] | np.dtype = np.float64,
    ) -> ValidityRules | None:
        """From (valid_min, valid_max, sentinels) per tag, the sentinels converted to `raw_type`; None when no tag has a rule.

        The sentinels must fit `raw_type` (the config refuses those that do not); a float32 one is
        rounded to the nearest float32, as a device writing it would. They are kept as doubles when a
        double holds every value of `raw_type` exactly, so a batch's doubles can be compared directly.
        """
        if not any(lo is not None or hi is not None or sent for lo, hi, sent in rules):
            return None
        dtype = np.dtype(raw_type)
        width = max(len(sent) for _, _, sent in rules)
        unset = None
        if dtype.kind == "f" or dtype.itemsize <= 4:
            sentinels = np.full((len(rules), width), np.nan)
            for i, (_, _, sent) in enumerate(rules):
                sentinels[i, : len(sent)] = np.array(sent, dtype)  # numpy refuses one out of range
        else:
            sentinels = np.zeros((len(rules), width), dtype)
            for i, (_, _, sent) in enumerate(rules):
                if sent:
                    # through Python ints: a double would round 2**64 - 1 before the cast
                    sentinels[i] = [int(s) for s in sent] + [int(sent[0])] * (width - len(sent))
            empty = np.array([not sent for _, _, sent in rules])
            unset = empty if empty.any() else None
        return cls(
            np.array([-np.inf if lo is None else lo for lo, _, _ in rules], dtype=np.float64),
            np.array([np.inf if hi is None else hi for _, hi, _ in rules], dtype=np.float64),
            sentinels,
            unset,
        )

    @property
    def integer(self) -> bool:
        """True when the sentinels are integers (64-bit registers): compare them with raw values, not doubles."""
        return self.sentinels.dtype.kind != "f"

    def take(self, index: NDArray) -> ValidityRules:
        """The rules of the tags at `index` (integer positions), in that order."""
        unset = None if self.unset is None else self.unset[index]
        return ValidityRules(self.low[index], self.high[index], self.sentinels[index], unset)

    def invalid(
        self,
        value: NDArray[np.float64],
        raw: NDArray | None = None,
        single: NDArray[np.bool_] | None = None,
    ) -> NDArray[np.bool_]:
        """Mask of the values outside their range or whose raw value (default: the value) is a sentinel.

        `single` marks tags whose values arrived as float32 (an OPC UA Float): their sentinels are
        compared rounded to float32, the only values such a tag can hold.
        """
        bad = (value < self.low) | (value > self.high)
        if self.sentinels.shape[1]:
            sentinels = self.sentinels
            if single is not None and single.any():
                with np.errstate(over="ignore"):  # beyond float32 becomes inf, which a finite value never is
                    sentinels = np.where(single[:, None], sentinels.astype(np.float32), sentinels)
            hit = (np.asarray(raw if raw is not None else value)[:, None] == sentinels).any(axis=1)
            if self.unset is not None:
                hit &= ~self.unset
            bad |= hit
        return bad

    def apply(
        self,
        value: NDArray[np.float64],
        quality: NDArray[np.uint8],
        raw: NDArray | None = None,
        at: NDArray[np.intp] | None = None,
        single: NDArray[np.bool_] | None = None,
    ) -> None:
        """Set BAD_SENSOR_FAILURE and NaN, in place, where a value breaks its rule.

        The rules' tags are `value[at]`, `quality[at]` (all of them, in order, without `at`); `raw`
        holds their raw values in rule order when they differ from the values (scaled registers);
        `single` marks the tags whose values are float32 (see `invalid`).
        """
        bad = self.invalid(value if at is None else value[at], raw, single)
        if bad.any():
            where = np.flatnonzero(bad) if at is None else at[bad]
            value[where] = np.nan
            quality[where] = Quality.BAD_SENSOR_FAILURE


class SignalTable:
    """Gives every (device, tag) a row number; the engine's state arrays are indexed by it.

    Rows are only ever appended, so a row number stays valid for the life of the
    agent (a config reload adds rows, it does not renumber).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], int] = {}
        self.devices: list[str] = []
        self.tags: list[str] = []
        self.units: list[str] = []

    def add(self, device: str, tag: str, unit: str = "") -> int:
        """Return the row of (device, tag), adding it if new."""
        key = (device, tag)
        row = self._rows.get(key)
        if row is None:
            row = len(self.devices)
            self._rows[key] = row
            self.devices.append(device)
            self.tags.append(tag)
            self.units.append(unit)
        return row

    def row(self, device: str, tag: str) -> int:
        """The row of (device, tag); KeyError names both when it is unknown."""
        try:
            return self._rows[(device, tag)]
        except KeyError:
            raise KeyError(f"no signal {device}/{tag} in the signal table") from None

    def rows_of(self, device: str) -> NDArray[np.int32]:
        """All rows of one device, in insertion order."""
        return np.array([r for (d, _), r in self._rows.items() if d == device], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.devices)

    def __contains__(self, key: object) -> bool:
        return key in self._rows
