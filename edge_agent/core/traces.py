"""Per-cycle trace indicators (DOMAIN-ROOT.md): forging force signatures, weld current/voltage and resistance
curves, plating rectifier series.

Every function takes S traces of N points at once, a 2-D array [S, N] (NaN where a point is missing),
and returns one value per trace (or per trace and window) with a reason code per trace. The work is
whole-array numpy passes; the only Python loops are over crank-angle windows (a handful).

A trace that cannot give an honest number gets a `TraceReason` other than OK and NaN indicators:
shorter or longer than configured, no finite point, more NaN points than allowed, a weld with no
current, a rectifier at 0 A while its voltage is up. NaN points within the allowed share are
skipped (nan-aware reductions; a trapezoid or a sum leaves out the segments they touch), never
filled in.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]
U8 = NDArray[np.uint8]

FARADAY_C_PER_MOL = 96485.33212


class TraceReason(IntEnum):
    """Why a trace's indicators are NaN (one byte per trace; OK = 0 means they are computed)."""

    OK = 0
    NO_DATA = 1
    SHORT = 2
    LONG = 3
    NAN_POINTS = 4
    NO_CURRENT = 5
    NO_LOAD = 6
    NO_REFERENCE = 7
    OPEN_CIRCUIT = 8
    NOT_STEADY = 9


#: One line per reason, for the log line a feature writes once per device and reason.
REASON_TEXT: dict[TraceReason, str] = {
    TraceReason.OK: "computed",
    TraceReason.NO_DATA: "the trace has no finite point",
    TraceReason.SHORT: "the trace has fewer points than configured",
    TraceReason.LONG: "the trace has more points than configured",
    TraceReason.NAN_POINTS: "the trace has more NaN points than allowed",
    TraceReason.NO_CURRENT: "no current flowed (a weld with no arc, a rectifier switched off)",
    TraceReason.NO_LOAD: "no force (or no load area): balance, centre of load or current density undefined",
    TraceReason.NO_REFERENCE: "no reference curve yet (too few good strokes)",
    TraceReason.OPEN_CIRCUIT: "0 A while the voltage is up: open circuit or a failed current shunt",
    TraceReason.NOT_STEADY: "too few points at constant current for a slope",
}


# --------------------------------------------------------------------------- shapes and quality


def _traces(x: ArrayLike, where: str) -> F64:
    a = np.asarray(x, np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{where}: traces must be a 2-D array [traces, points], got shape {a.shape}")
    return a


def _reason_in(reason: ArrayLike | None, s: int, where: str) -> U8:
    if reason is None:
        return np.zeros(s, np.uint8)
    r = np.asarray(reason, np.uint8).reshape(-1)
    if r.shape[0] != s:
        raise ValueError(f"{where}: reason has {r.shape[0]} entries for {s} traces; pass one per trace")
    return r.copy()


def _axis(values: ArrayLike, n: int, where: str, name: str) -> F64:
    a = np.asarray(values, np.float64)
    if a.shape[-1] != n:
        raise ValueError(f"{where}: {name} has {a.shape[-1]} points, the traces {n}; give one per point")
    return a


def pack_traces(flat: ArrayLike, lengths: ArrayLike, n_points: int) -> tuple[F64, U8]:
    """Concatenated traces of varying length -> ([S, n_points] NaN-padded, reason SHORT/LONG/OK per trace).

    A longer trace is cut to n_points for inspection, but its reason is LONG: indicators of a
    trace that does not match the configured length are not computed.
    """
    if n_points < 1:
        raise ValueError(f"pack_traces: n_points must be >= 1, got {n_points}")
    values = np.asarray(flat, np.float64).reshape(-1)
    lens = np.asarray(lengths, np.int64).reshape(-1)
    if (lens < 0).any() or int(lens.sum()) != values.shape[0]:
        raise ValueError(
            f"pack_traces: the lengths add up to {int(lens.sum())} points but {values.shape[0]} were given"
        )
    starts = np.cumsum(lens) - lens
    col = np.arange(n_points)
    inside = col[None, :] < lens[:, None]
    out = np.full((lens.shape[0], n_points), np.nan)
    out[inside] = values[(starts[:, None] + col[None, :])[inside]]
    reason = np.zeros(lens.shape[0], np.uint8)
    reason[lens < n_points] = TraceReason.SHORT
    reason[lens > n_points] = TraceReason.LONG
    return out, reason


def check_traces(x: ArrayLike, reason: ArrayLike | None = None, max_nan_fraction: float = 0.0) -> U8:
    """Reason per trace: an earlier reason stays; else NO_DATA (no finite point), NAN_POINTS (too many NaN), OK."""
    return _check(_traces(x, "check_traces"), reason, max_nan_fraction)[0]


def _check(a: F64, reason: ArrayLike | None, max_nan_fraction: float) -> tuple[U8, bool]:
    """(reason per trace, whether every point of every trace is finite: the fast paths need no NaN handling)."""
    if not 0.0 <= max_nan_fraction <= 1.0:
        raise ValueError(f"check_traces: max_nan_fraction must be in [0, 1], got {max_nan_fraction}")
    out = _reason_in(reason, a.shape[0], "check_traces")
    # a row sum is finite only if every point is (or it overflows, which the slow path then sorts out):
    # one pass without a temporary, and the per-point count only for the rows that need it
    dirty = np.flatnonzero(~np.isfinite(a.sum(axis=1)))
    if dirty.shape[0] == 0:
        return out, True
    finite = np.isfinite(a[dirty]).sum(axis=1)
    ok = out[dirty] == TraceReason.OK
    sub = out[dirty]
    sub[ok & (finite < a.shape[1] * (1.0 - max_nan_fraction) - 1e-9)] = TraceReason.NAN_POINTS
    sub[ok & (finite == 0)] = TraceReason.NO_DATA
    out[dirty] = sub
    return out, False


def _blank(reason: U8, *arrays: F64) -> None:
    bad = reason != TraceReason.OK
    if bad.any():
        for a in arrays:
            a[bad] = np.nan


def _row_max(a: F64, clean: bool = False) -> tuple[F64, NDArray[np.intp]]:
    """(nan-aware max per row, its column); rows with no finite value give NaN and column 0.

    `clean`: the caller knows `a` holds no NaN, so no filled copy is made.
    """
    filled = a if clean else np.where(np.isnan(a), -np.inf, a)
    col = np.argmax(filled, axis=1)
    top = np.take_along_axis(filled, col[:, None], axis=1)[:, 0]
    return (top if clean else np.where(np.isneginf(top), np.nan, top)), col


def _row_min(a: F64, clean: bool = False) -> tuple[F64, NDArray[np.intp]]:
    """(nan-aware min per row, its column); rows with no finite value give NaN and column 0."""
    filled = a if clean else np.where(np.isnan(a), np.inf, a)
    col = np.argmin(filled, axis=1)
    low = np.take_along_axis(filled, col[:, None], axis=1)[:, 0]
    return (low if clean else np.where(np.isposinf(low), np.nan, low)), col


def _nan_divide(num: ArrayLike, den: ArrayLike) -> F64:
    n = np.asarray(num, np.float64)
    d = np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d != 0, n / np.where(d != 0, d, 1.0), np.nan)


# --------------------------------------------------------------------------- forging


def ram_height(angle_deg: ArrayLike, crank_radius: float, rod_length: float) -> F64:
    """Ram height above BDC (slider-crank, textbook): angle from TDC in degrees, same unit as the lengths.

    h = r(1 − cos θ) + l(1 − sqrt(1 − λ² sin² θ)) with θ the angle from BDC and λ = r/l.
    """
    if not 0 < crank_radius < rod_length:
        raise ValueError(
            f"ram_height: need 0 < crank_radius < rod_length, got {crank_radius} and {rod_length}"
        )
    theta = np.deg2rad(np.asarray(angle_deg, np.float64) - 180.0)
    lam = crank_radius / rod_length
    return crank_radius * (1.0 - np.cos(theta)) + rod_length * (
        1.0 - np.sqrt(1.0 - lam * lam * np.sin(theta) ** 2)
    )


def mechanical_capacity_curve(
    rated: float, rating_height: float, crank_radius: float, rod_length: float, points: int = 15
) -> tuple[F64, F64]:
    """(heights above BDC, capacity) of a mechanical press, textbook L(α) ≈ M/(r·sin α).

    Full rated force up to `rating_height` above BDC; above, the crank torque M = rated·r·sin α_r
    limits the force, down to its least at α = 90°. Monitors store such curves as ~15 points.
    """
    if rated <= 0 or not 0 < rating_height < crank_radius:
        raise ValueError(
            "mechanical_capacity_curve: need rated > 0 and 0 < rating_height < crank_radius, got "
            f"{rated}, {rating_height}, {crank_radius}"
        )
    fine = np.linspace(0.0, 90.0, 9001)
    heights = ram_height(180.0 + fine, crank_radius, rod_length)
    alpha_r = float(np.interp(rating_height, heights, fine))
    alphas = np.concatenate([[0.0], np.linspace(alpha_r, 90.0, max(points - 1, 2))])
    cap = np.where(
        alphas <= alpha_r,
        rated,
        rated * math.sin(math.radians(alpha_r)) / np.sin(np.deg2rad(np.maximum(alphas, 1e-9))),
    )
    return ram_height(180.0 + alphas, crank_radius, rod_length), cap


@dataclass(frozen=True, slots=True)
class StrokeIndicators:
    """Per stroke: peak force and angle, reverse load, capacity use, energy. NaN where reason != OK."""

    peak: F64
    """Largest force of the stroke (trace unit, e.g. kN)."""
    peak_angle: F64
    """Crank angle of the peak (degrees from TDC)."""
    capacity_pct: F64
    """100·peak/rated."""
    reverse: F64
    """Reverse (snap-through) load: magnitude of the most negative force, 0 if the force never goes negative."""
    reverse_pct: F64
    """100·reverse/rated."""
    curve_pct: F64
    """Largest 100·F(θ)/capacity(h(θ)) over the stroke (NaN without a capacity curve)."""
    curve_angle: F64
    """Angle where curve_pct is reached."""
    energy: F64
    """∫F d(travel) as the ram goes down, −∫F dh (kN·mm = J); NaN without ram heights."""
    reason: U8


def stroke_indicators(
    force: ArrayLike,
    angle_deg: ArrayLike,
    rated: float,
    *,
    height: ArrayLike | None = None,
    capacity_height: ArrayLike | None = None,
    capacity: ArrayLike | None = None,
    reason: ArrayLike | None = None,
    max_nan_fraction: float = 0.0,
) -> StrokeIndicators:
    """Peak, its angle, % of rated, reverse load %, % of the capacity curve and energy of S force traces.

    `angle_deg` and `height` (ram height above BDC, per point; [N] or [S, N]) are the traces' axes;
    `capacity_height`/`capacity` the press's capacity-vs-height curve (ascending heights).
    """
    where = "stroke_indicators"
    f = _traces(force, where)
    s, n = f.shape
    if rated <= 0:
        raise ValueError(f"{where}: rated force must be > 0, got {rated}")
    angle = _axis(angle_deg, n, where, "angle_deg")
    r, clean = _check(f, _reason_in(reason, s, where), max_nan_fraction)
    peak, col = _row_max(f, clean)
    peak_angle = np.broadcast_to(angle, f.shape)[np.arange(s), col].astype(np.float64)
    low, _ = _row_min(f, clean)
    reverse = np.maximum(-low, 0.0)
    curve_pct = np.full(s, np.nan)
    curve_angle = np.full(s, np.nan)
    energy = np.full(s, np.nan)
    if height is not None:
        h = _axis(height, n, where, "height")
        if clean and h.ndim == 1:
            # the trapezoid over one shared axis is a weighted sum: one matrix-vector product
            half = 0.5 * (h[:-1] - h[1:])
            w = np.zeros(n)
            w[:-1] += half
            w[1:] += half
            energy = np.einsum("ij,j->i", f, w)  # no BLAS threads: they fight over a shared machine
        else:
            travel = np.broadcast_to(h[..., :-1] - h[..., 1:], (s, n - 1))
            seg = 0.5 * (f[:, 1:] + f[:, :-1]) * travel
            energy = np.where(np.isnan(seg), 0.0, seg).sum(axis=1)
        if (capacity_height is None) != (capacity is None):
            raise ValueError(f"{where}: give capacity_height and capacity together (the press's curve)")
        if capacity_height is not None and capacity is not None:
            ch = np.asarray(capacity_height, np.float64)
            cv = np.asarray(capacity, np.float64)
            if ch.shape != cv.shape or ch.ndim != 1 or (np.diff(ch) <= 0).any() or (cv <= 0).any():
                raise ValueError(
                    f"{where}: the capacity curve needs ascending heights and positive capacities, one each"
                )
            scale = 100.0 / np.interp(h, ch, cv)
            pct, pcol = _row_max(f * scale, clean)
            curve_pct = pct
            curve_angle = np.broadcast_to(angle, f.shape)[np.arange(s), pcol].astype(np.float64)
    elif capacity is not None:
        raise ValueError(f"{where}: a capacity curve needs the ram height of every point (height=)")
    out = StrokeIndicators(
        peak=peak,
        peak_angle=peak_angle,
        capacity_pct=100.0 * peak / rated,
        reverse=reverse,
        reverse_pct=100.0 * reverse / rated,
        curve_pct=curve_pct,
        curve_angle=curve_angle,
        energy=energy,
        reason=r,
    )
    _blank(
        r,
        out.peak,
        out.peak_angle,
        out.capacity_pct,
        out.reverse,
        out.reverse_pct,
        out.curve_pct,
        out.curve_angle,
        out.energy,
    )
    return out


def reference_curve(traces: ArrayLike, good: ArrayLike | None = None, min_strokes: int = 10) -> F64:
    """The reference signature r(θ): pointwise median of the good strokes; all NaN with fewer than `min_strokes`."""
    f = _traces(traces, "reference_curve")
    mask = np.ones(f.shape[0], bool) if good is None else np.asarray(good, bool).reshape(-1)
    if mask.shape[0] != f.shape[0]:
        raise ValueError(f"reference_curve: good has {mask.shape[0]} flags for {f.shape[0]} traces")
    chosen = f[mask]
    if chosen.shape[0] < max(min_strokes, 1):
        return np.full(f.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        return np.asarray(np.nanmedian(chosen, axis=0), np.float64)


@dataclass(frozen=True, slots=True)
class SignatureDeviation:
    """Per stroke and crank-angle window k: deviation of the signature f from the reference r."""

    rms: F64
    """[S, K] sqrt(mean (f − r)²) over the window, divided by max r (a fraction of the reference peak)."""
    max_abs: F64
    """[S, K] max |f − r| over the window (trace unit)."""
    peak_shift: F64
    """[S, K] angle of max f minus angle of max r in the window (degrees); NaN where max f is below
    `min_peak_fraction` of max r there, or the window's max r below that share of the reference peak:
    no peak to place."""
    reason: U8


def signature_deviation(
    force: ArrayLike,
    reference: ArrayLike,
    angle_deg: ArrayLike,
    windows: Sequence[tuple[float, float]],
    *,
    reason: ArrayLike | None = None,
    max_nan_fraction: float = 0.0,
    min_peak_fraction: float = 0.2,
) -> SignatureDeviation:
    """RMS and max |f − r| and the peak-angle shift of S strokes against r, in windows [start, end) of crank angle."""
    where = "signature_deviation"
    f = _traces(force, where)
    s, n = f.shape
    ref = _axis(reference, n, where, "reference").reshape(-1)
    angle = _axis(angle_deg, n, where, "angle_deg").reshape(-1)
    if not windows:
        raise ValueError(f"{where}: give at least one crank-angle window, e.g. [(150.0, 200.0)]")
    r, clean = _check(f, _reason_in(reason, s, where), max_nan_fraction)
    k = len(windows)
    rms = np.full((s, k), np.nan)
    max_abs = np.full((s, k), np.nan)
    shift = np.full((s, k), np.nan)
    ref_top = np.nanmax(ref) if np.isfinite(ref).any() else np.nan
    if not np.isfinite(ref).all() or not ref_top > 0:
        r[r == TraceReason.OK] = TraceReason.NO_REFERENCE
        return SignatureDeviation(rms, max_abs, shift, r)
    ascending = bool((np.diff(angle) > 0).all())
    for j, (lo, hi) in enumerate(windows):
        if ascending:  # a window is a slice: views, no gather
            a, b = np.searchsorted(angle, [lo, hi], side="left")
            cols: slice | NDArray[np.intp] = slice(int(a), int(b))
            width = int(b - a)
        else:
            cols = np.flatnonzero((angle >= lo) & (angle < hi))
            width = int(cols.shape[0])
        if width == 0:
            raise ValueError(
                f"{where}: window {j} [{lo}, {hi}) holds no point of the angle axis "
                f"({angle.min():g}..{angle.max():g}); widen or move it"
            )
        fw = f[:, cols]
        rw = ref[cols]
        dw = fw - rw
        if clean:
            rms[:, j] = np.sqrt(np.einsum("ij,ij->i", dw, dw) / width) / ref_top
            max_abs[:, j] = np.maximum(dw.max(axis=1), -dw.min(axis=1))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a window of NaN only stays NaN
                rms[:, j] = np.sqrt(np.nanmean(dw * dw, axis=1)) / ref_top
            max_abs[:, j], _ = _row_max(np.abs(dw))
        top, fcol = _row_max(fw, clean)
        rcol = int(np.argmax(rw))
        ref_win_top = rw[rcol]
        if ref_win_top >= min_peak_fraction * ref_top:  # else the window holds no reference peak to place
            axis = angle[cols]
            shift[:, j] = axis[fcol] - axis[rcol]
            shift[~(top >= min_peak_fraction * ref_win_top), j] = np.nan
    bad = r != TraceReason.OK
    rms[bad] = max_abs[bad] = shift[bad] = np.nan
    return SignatureDeviation(rms, max_abs, shift, r)


@dataclass(frozen=True, slots=True)
class LoadBalance:
    """Per stroke, from the channels' peak forces: total, balance ratios, centre of load, moments."""

    total: F64
    """ΣF_i."""
    left_right: F64
    """(F_L − F_R)/(F_L + F_R); left are channels at x < 0 (NaN without channels on both sides)."""
    front_back: F64
    """(F_F − F_B)/(F_F + F_B); front are channels at y > 0 (NaN without channels on both sides)."""
    x_c: F64
    """Centre of load ΣF_i·x_i/ΣF_i (unit of x)."""
    y_c: F64
    """ΣF_i·y_i/ΣF_i."""
    moment_x: F64
    """ΣF_i·x_i (force × length: the tilting moment about the y axis)."""
    moment_y: F64
    """ΣF_i·y_i."""
    reason: U8


def load_balance(
    peaks: ArrayLike,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    min_total: float = 0.0,
    reason: ArrayLike | None = None,
) -> LoadBalance:
    """Left/right and front/back balance, centre of load and moments of S strokes from their [S, C] channel peaks.

    A stroke whose total is not above `min_total` has no centre of load: reason NO_LOAD.
    """
    where = "load_balance"
    p = _traces(peaks, where)
    s, c = p.shape
    xs = _axis(x, c, where, "x").reshape(-1)
    ys = np.zeros(c) if y is None else _axis(y, c, where, "y").reshape(-1)
    r = check_traces(p, _reason_in(reason, s, where))
    total = p.sum(axis=1)
    r[(r == TraceReason.OK) & ~(total > min_total)] = TraceReason.NO_LOAD

    def ratio(pos: NDArray[np.bool_], neg: NDArray[np.bool_]) -> F64:
        if not pos.any() or not neg.any():
            return np.full(s, np.nan)
        a, b = p[:, pos].sum(axis=1), p[:, neg].sum(axis=1)
        return _nan_divide(a - b, a + b)

    mx = p @ xs
    my = p @ ys
    out = LoadBalance(
        total=total,
        left_right=ratio(xs < 0, xs > 0),
        front_back=ratio(ys > 0, ys < 0),
        x_c=_nan_divide(mx, total),
        y_c=_nan_divide(my, total),
        moment_x=mx,
        moment_y=my,
        reason=r,
    )
    _blank(r, out.total, out.left_right, out.front_back, out.x_c, out.y_c, out.moment_x, out.moment_y)
    return out


# --------------------------------------------------------------------------- resistance spot welding


@dataclass(frozen=True, slots=True)
class SpotWeld:
    """Per spot, from electrode voltage and weld current traces (MFDC: R(t) = u/i)."""

    energy: F64
    """Σ u·i·Δt over the points with current (V·A·s = J)."""
    current_rms: F64
    """sqrt(mean i²) over the points with current."""
    weld_time: F64
    """Points with current × Δt."""
    r_alpha: F64
    """Least R in the first `alpha_until` of the current time (contacts broken down)."""
    r_beta: F64
    """Largest R after the α point: the β peak (nugget formed)."""
    t_beta: F64
    """Time from the first point with current to the β peak."""
    r_end: F64
    """R at the last point with current."""
    beta_drop: F64
    """R_β − R_end."""
    expulsion_drop: F64
    """Largest fall of R within `expulsion_lag` points after the β peak, as a fraction of R_β."""
    expulsion: NDArray[np.bool_]
    """expulsion_drop >= the expulsion threshold: a sudden resistance drop (expulsion)."""
    reason: U8


def spot_weld_indicators(
    voltage: ArrayLike,
    current: ArrayLike,
    dt: float,
    *,
    min_current: float,
    alpha_until: float = 0.4,
    expulsion_lag: int = 3,
    expulsion_threshold: float = 0.08,
    reason: ArrayLike | None = None,
    max_nan_fraction: float = 0.0,
) -> SpotWeld:
    """Energy, dynamic resistance features (α, β peak and drop) and expulsion of S spot welds.

    A spot without a point at or above `min_current` had no weld current: reason NO_CURRENT.
    """
    where = "spot_weld_indicators"
    u = _traces(voltage, where)
    i = _traces(current, where)
    if u.shape != i.shape:
        raise ValueError(f"{where}: voltage {u.shape} and current {i.shape} traces differ in shape")
    if dt <= 0 or min_current <= 0 or not 0 < alpha_until <= 1 or expulsion_lag < 1:
        raise ValueError(f"{where}: need dt > 0, min_current > 0, 0 < alpha_until <= 1, expulsion_lag >= 1")
    s, n = u.shape
    r = check_traces(u, _reason_in(reason, s, where), max_nan_fraction)
    r = check_traces(i, r, max_nan_fraction)
    on = (i >= min_current) & np.isfinite(u)
    count = on.sum(axis=1)
    r[(r == TraceReason.OK) & (count == 0)] = TraceReason.NO_CURRENT
    power = np.where(on, u * i, 0.0)
    energy = power.sum(axis=1) * dt
    current_rms = np.sqrt(_nan_divide(np.where(on, i * i, 0.0).sum(axis=1), count))
    col = np.arange(n)
    first = np.where(count > 0, np.argmax(on, axis=1), 0)
    last = np.where(count > 0, n - 1 - np.argmax(on[:, ::-1], axis=1), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = np.where(on, u / np.where(on, i, 1.0), np.nan)
    alpha_end = first + alpha_until * (last - first)
    r_alpha, a_col = _row_min(np.where(col[None, :] <= alpha_end[:, None], res, np.nan))
    r_beta, b_col = _row_max(np.where(col[None, :] >= a_col[:, None], res, np.nan))
    r_end = res[np.arange(s), last]
    lag = min(expulsion_lag, n - 1) if n > 1 else 1
    if n > lag:
        fall = res[:, :-lag] - res[:, lag:]
        fall = np.where(col[None, : n - lag] >= b_col[:, None], fall, np.nan)
        drop, _ = _row_max(fall)
        drop = np.maximum(np.nan_to_num(drop, nan=0.0), 0.0)
    else:
        drop = np.zeros(s)
    expulsion_drop = _nan_divide(drop, r_beta)
    out = SpotWeld(
        energy=energy,
        current_rms=current_rms,
        weld_time=count * dt,
        r_alpha=r_alpha,
        r_beta=r_beta,
        t_beta=((b_col - first) * dt).astype(np.float64),
        r_end=r_end,
        beta_drop=r_beta - r_end,
        expulsion_drop=expulsion_drop,
        expulsion=np.asarray(expulsion_drop >= expulsion_threshold),
        reason=r,
    )
    _blank(
        r,
        out.energy,
        out.current_rms,
        out.weld_time,
        out.r_alpha,
        out.r_beta,
        out.t_beta,
        out.r_end,
        out.beta_drop,
        out.expulsion_drop,
    )
    out.expulsion[r != TraceReason.OK] = False
    return out


# --------------------------------------------------------------------------- arc welding (GMAW)

#: Thermal efficiency k of EN 1011-1 / ISO/TR 17671-1 by process (DOMAIN-ROOT.md §2 [31]).
ARC_EFFICIENCY: dict[str, float] = {"SAW": 1.0, "MMA": 0.8, "MAG": 0.8, "MIG": 0.8, "TIG": 0.6}


@dataclass(frozen=True, slots=True)
class ArcWeld:
    """Per weld (or per trace window) of a GMAW source: arc energy and power, stability, short circuits."""

    arc_time: F64
    """Points with arc current × Δt (s)."""
    energy: F64
    """Arc energy Σ u·i·Δt over the arc points (J): right for waveform-controlled sources."""
    power: F64
    """Mean instantaneous power (1/n)Σ u·i over the arc points (W), not Ū·Ī."""
    current_mean: F64
    voltage_mean: F64
    current_cv: F64
    """sd/mean of the current over the arc points (population sd)."""
    voltage_cv: F64
    short_count: F64
    """Short circuits (runs of u below the short threshold while the arc burns) wholly inside the trace."""
    short_rate: F64
    """short_count / arc_time (1/s)."""
    short_time_mean: F64
    """Mean duration of a short (s)."""
    short_time_sd: F64
    """Population sd of the short durations (s)."""
    short_period_cv: F64
    """sd/mean of the time between short starts (needs three shorts)."""
    reason: U8


def arc_indicators(
    voltage: ArrayLike,
    current: ArrayLike,
    dt: float,
    *,
    arc_current: float = 10.0,
    short_voltage: float = 10.0,
    reason: ArrayLike | None = None,
    max_nan_fraction: float = 0.0,
) -> ArcWeld:
    """Arc energy, power, current/voltage CV and short-circuit statistics of S weld traces sampled every dt s.

    The arc burns where i >= `arc_current`; a short circuit is a run of u < `short_voltage` while it
    burns. A weld without an arc point has reason NO_CURRENT.
    """
    where = "arc_indicators"
    u = _traces(voltage, where)
    i = _traces(current, where)
    if u.shape != i.shape:
        raise ValueError(f"{where}: voltage {u.shape} and current {i.shape} traces differ in shape")
    if dt <= 0 or arc_current <= 0:
        raise ValueError(f"{where}: need dt > 0 and arc_current > 0, got {dt} and {arc_current}")
    s, n = u.shape
    r = check_traces(u, _reason_in(reason, s, where), max_nan_fraction)
    r = check_traces(i, r, max_nan_fraction)
    on = (i >= arc_current) & np.isfinite(u)
    count = on.sum(axis=1).astype(np.float64)
    r[(r == TraceReason.OK) & (count == 0)] = TraceReason.NO_CURRENT
    ui = np.where(on, u * i, 0.0).sum(axis=1)
    i_on = np.where(on, i, 0.0)
    u_on = np.where(on, u, 0.0)
    i_mean = _nan_divide(i_on.sum(axis=1), count)
    u_mean = _nan_divide(u_on.sum(axis=1), count)
    i_var = np.maximum(_nan_divide((i_on * i_on).sum(axis=1), count) - i_mean * i_mean, 0.0)
    u_var = np.maximum(_nan_divide((u_on * u_on).sum(axis=1), count) - u_mean * u_mean, 0.0)
    arc_time = count * dt
    # runs of "short" padded with False on both sides pair every start with its end, row by row
    short = on & (u < short_voltage)
    padded = np.zeros((s, n + 2), np.int8)
    padded[:, 1:-1] = short
    step = np.diff(padded, axis=1)
    rs, cs = np.nonzero(step == 1)
    _, ce = np.nonzero(step == -1)
    inside = (cs > 0) & (ce < n)
    rs, cs, ce = rs[inside], cs[inside], ce[inside]
    dur = (ce - cs).astype(np.float64) * dt
    nsc = np.bincount(rs, minlength=s).astype(np.float64)
    d_mean = _nan_divide(np.bincount(rs, dur, minlength=s), nsc)
    d_var = np.maximum(_nan_divide(np.bincount(rs, dur * dur, minlength=s), nsc) - d_mean * d_mean, 0.0)
    same = rs[1:] == rs[:-1]
    pr = rs[1:][same]
    period = (cs[1:] - cs[:-1])[same].astype(np.float64) * dt
    npr = np.bincount(pr, minlength=s).astype(np.float64)
    p_mean = _nan_divide(np.bincount(pr, period, minlength=s), npr)
    p_var = np.maximum(_nan_divide(np.bincount(pr, period * period, minlength=s), npr) - p_mean**2, 0.0)
    p_cv = np.where(npr >= 2, _nan_divide(np.sqrt(p_var), p_mean), np.nan)
    out = ArcWeld(
        arc_time=arc_time,
        energy=ui * dt,
        power=_nan_divide(ui, count),
        current_mean=i_mean,
        voltage_mean=u_mean,
        current_cv=_nan_divide(np.sqrt(i_var), i_mean),
        voltage_cv=_nan_divide(np.sqrt(u_var), u_mean),
        short_count=nsc,
        short_rate=_nan_divide(nsc, arc_time),
        short_time_mean=d_mean,
        short_time_sd=np.where(nsc > 0, np.sqrt(d_var), np.nan),
        short_period_cv=p_cv,
        reason=r,
    )
    _blank(
        r,
        out.arc_time,
        out.energy,
        out.power,
        out.current_mean,
        out.voltage_mean,
        out.current_cv,
        out.voltage_cv,
        out.short_count,
        out.short_rate,
        out.short_time_mean,
        out.short_time_sd,
        out.short_period_cv,
    )
    return out


def heat_input_kj_per_mm(power_w: ArrayLike, travel_mm_per_min: ArrayLike, k: ArrayLike) -> F64:
    """EN 1011-1 heat input Q = k·P·60/(1000·v) in kJ/mm (P = U·I, or the mean instantaneous power); NaN for v <= 0."""
    v = np.asarray(travel_mm_per_min, np.float64)
    p = np.asarray(power_w, np.float64)
    kk = np.asarray(k, np.float64)
    return np.asarray(_nan_divide(kk * p * 60.0, 1000.0 * np.where(v > 0, v, 0.0)), np.float64)


def heat_input_from_energy(energy_j: ArrayLike, weld_length_mm: ArrayLike, k: ArrayLike) -> F64:
    """Heat input from the arc energy of a weld (ISO/TR 18491): Q = k·E/(1000·L) kJ/mm; NaN for L <= 0."""
    length = np.asarray(weld_length_mm, np.float64)
    e = np.asarray(energy_j, np.float64)
    kk = np.asarray(k, np.float64)
    return np.asarray(_nan_divide(kk * e, 1000.0 * np.where(length > 0, length, 0.0)), np.float64)


def deposition_kg_per_h(
    wire_feed_m_per_min: ArrayLike, wire_diameter_mm: ArrayLike, density_kg_m3: float = 7850.0
) -> F64:
    """Wire melted per hour ṁ = WFS·πd²/4·ρ (kg/h), before spatter losses; steel by default."""
    wfs = np.asarray(wire_feed_m_per_min, np.float64)
    d = np.asarray(wire_diameter_mm, np.float64) * 1e-3
    return np.asarray(wfs * 60.0 * math.pi * d * d / 4.0 * density_kg_m3, np.float64)


# --------------------------------------------------------------------------- plating and anodizing

#: Metal -> (molar mass g/mol, electrons per ion, density g/cm³): Faraday's law for the deposits of DOMAIN-ROOT.md §3.
DEPOSITS: dict[str, tuple[float, int, float]] = {
    "Zn": (65.38, 2, 7.14),
    "Ni": (58.693, 2, 8.908),
    "Cu2": (63.546, 2, 8.96),
    "Cu1": (63.546, 1, 8.96),
    "Cr6": (51.996, 6, 7.19),
    "Sn2": (118.71, 2, 7.265),
    "Sn4": (118.71, 4, 7.265),
    "Cd": (112.41, 2, 8.65),
    "Ag": (107.8682, 1, 10.49),
}

#: The anodizing "720 rule": 720 A·min/ft² per mil, as µm per A·min/dm² (25.4 µm/mil, 9.290304 dm²/ft²).
ANODIZE_720_UM_PER_A_MIN_DM2 = 25.4 * 9.290304 / 720.0


def faraday_rate_um(metal: str) -> float:
    """Thickness at 100 % current efficiency, µm per A·min/dm²: 6000·M/(n·F·ρ)."""
    try:
        molar, electrons, density = DEPOSITS[metal]
    except KeyError:
        raise ValueError(
            f"faraday_rate_um: unknown deposit {metal!r}; known: {', '.join(DEPOSITS)}"
        ) from None
    return 6000.0 * molar / (electrons * FARADAY_C_PER_MOL * density)


def faraday_thickness_um(
    ampere_hours: ArrayLike, area_dm2: ArrayLike, efficiency: ArrayLike, metal: str | float
) -> F64:
    """Deposited thickness δ = rate·η·(60·Ah)/A in µm (metal name or a rate in µm per A·min/dm²); NaN for A <= 0."""
    rate = faraday_rate_um(metal) if isinstance(metal, str) else float(metal)
    eff = np.asarray(efficiency, np.float64)
    if ((eff < 0) | (eff > 1)).any():
        raise ValueError("faraday_thickness_um: current efficiency is a fraction in [0, 1], e.g. 0.95")
    area = np.asarray(area_dm2, np.float64)
    return np.asarray(
        _nan_divide(rate * eff * 60.0 * np.asarray(ampere_hours, np.float64), np.where(area > 0, area, 0.0)),
        np.float64,
    )


def anodize_720_um(current_density_a_dm2: ArrayLike, minutes: ArrayLike) -> F64:
    """Anodic film by the 720 rule, δ ≈ 0.328·j·t (µm; j in A/dm², t in min): empirical, ~20 °C, nominal acid."""
    return np.asarray(
        ANODIZE_720_UM_PER_A_MIN_DM2
        * np.asarray(current_density_a_dm2, np.float64)
        * np.asarray(minutes, np.float64),
        np.float64,
    )


def current_density(
    current_a: ArrayLike,
    area_dm2: ArrayLike,
    voltage_v: ArrayLike | None = None,
    *,
    min_current: float = 0.5,
    open_circuit_v: float = 1.0,
) -> tuple[F64, U8]:
    """(j = I/A in A/dm², reason): NO_LOAD where the area is not > 0, OPEN_CIRCUIT where |I| < min_current
    while the voltage is above `open_circuit_v`, NO_DATA where I is NaN."""
    i = np.asarray(current_a, np.float64)
    area = np.asarray(area_dm2, np.float64)
    shape = np.broadcast_shapes(i.shape, area.shape)
    reason = np.zeros(shape, np.uint8)
    reason[np.broadcast_to(np.isnan(i), shape)] = TraceReason.NO_DATA
    reason[(reason == 0) & ~np.broadcast_to(area > 0, shape)] = TraceReason.NO_LOAD
    if voltage_v is not None:
        v = np.broadcast_to(np.asarray(voltage_v, np.float64), shape)
        dead = (np.abs(np.broadcast_to(i, shape)) < min_current) & (v > open_circuit_v)
        reason[(reason == 0) & dead] = TraceReason.OPEN_CIRCUIT
    j = np.broadcast_to(_nan_divide(i, np.where(area > 0, area, 0.0)), shape).copy()
    j[reason != 0] = np.nan
    return j, reason


def ampere_hours(
    current_a: ArrayLike, t_s: ArrayLike, *, reason: ArrayLike | None = None, max_nan_fraction: float = 0.0
) -> tuple[F64, U8]:
    """(∫I dt / 3600 per series by the trapezoid, reason) of S current series against their times in s.

    Segments touching a NaN point are left out (an undercount, never an invented charge); a series
    with more NaN than allowed gets NAN_POINTS.
    """
    where = "ampere_hours"
    i = _traces(current_a, where)
    s, n = i.shape
    t = _axis(t_s, n, where, "t_s")
    r = check_traces(i, _reason_in(reason, s, where), max_nan_fraction)
    dt = np.broadcast_to(np.diff(t, axis=-1), (s, n - 1))
    if (dt < 0).any():
        raise ValueError(f"{where}: the times must not go backwards within a series")
    seg = 0.5 * (i[:, 1:] + i[:, :-1]) * dt
    ah = np.where(np.isnan(seg), 0.0, seg).sum(axis=1) / 3600.0
    ah[r != TraceReason.OK] = np.nan
    return ah, r


@dataclass(frozen=True, slots=True)
class VoltageTrend:
    """Per series: slope of the voltage (and of R = U/I) over the points at constant current."""

    slope: F64
    """dU/dt (V per unit of t) by least squares over the steady points."""
    resistance_slope: F64
    """d(U/I)/dt (Ω per unit of t) over the same points."""
    current: F64
    """The steady current (median of the points with current)."""
    points: F64
    """Steady points used."""
    reason: U8


def voltage_rise(
    t: ArrayLike,
    voltage_v: ArrayLike,
    current_a: ArrayLike,
    *,
    rel_tolerance: float = 0.02,
    min_current: float = 0.5,
    open_circuit_v: float = 1.0,
    min_points: int = 5,
    min_share: float = 0.5,
    reason: ArrayLike | None = None,
) -> VoltageTrend:
    """ "Voltage rising at constant current": slope of U over the points where |I − Ĩ| <= rel_tolerance·Ĩ.

    Ĩ is the median of the points with current (>= min_current), so a ramp or a drop-out is left
    out. A series with no current while the voltage is up is OPEN_CIRCUIT, without current or voltage
    NO_CURRENT, with fewer than `min_points` steady points or fewer than `min_share` of the points
    with current NOT_STEADY (a slow ramp has a few points near its median: that is no constant current).
    """
    where = "voltage_rise"
    u = _traces(voltage_v, where)
    i = _traces(current_a, where)
    if u.shape != i.shape:
        raise ValueError(f"{where}: voltage {u.shape} and current {i.shape} series differ in shape")
    s, n = u.shape
    tt = np.broadcast_to(_axis(t, n, where, "t"), (s, n))
    r = _reason_in(reason, s, where)
    r = check_traces(u, r, max_nan_fraction=1.0)
    flowing = (i >= min_current) & np.isfinite(u) & np.isfinite(tt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a series without current has no median
        i_med = np.nanmedian(np.where(flowing, i, np.nan), axis=1)
    steady = flowing & (np.abs(i - i_med[:, None]) <= rel_tolerance * i_med[:, None])
    w = steady.astype(np.float64)
    npts = w.sum(axis=1)
    ok = r == TraceReason.OK
    none = ok & (flowing.sum(axis=1) == 0)
    up = (np.where(np.isfinite(u), u, -np.inf) > open_circuit_v).any(axis=1)
    r[none & up] = TraceReason.OPEN_CIRCUIT
    r[none & ~up] = TraceReason.NO_CURRENT
    few = (npts < max(min_points, 2)) | (npts < min_share * flowing.sum(axis=1))
    r[(r == TraceReason.OK) & few] = TraceReason.NOT_STEADY
    tm = _nan_divide(np.where(steady, tt, 0.0).sum(axis=1), npts)
    dtc = np.where(steady, tt - tm[:, None], 0.0)
    sxx = (dtc * dtc).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = np.where(steady, u / np.where(steady, i, 1.0), 0.0)
    slope = _nan_divide((dtc * np.where(steady, u, 0.0)).sum(axis=1), sxx)
    r_slope = _nan_divide((dtc * res).sum(axis=1), sxx)
    r[(r == TraceReason.OK) & ~(sxx > 0)] = TraceReason.NOT_STEADY
    out = VoltageTrend(slope=slope, resistance_slope=r_slope, current=i_med, points=npts, reason=r)
    _blank(r, out.slope, out.resistance_slope, out.current, out.points)
    return out


def reason_counts(reason: ArrayLike) -> Mapping[TraceReason, int]:
    """How many traces have each reason other than OK (for the one log line per reason)."""
    counts = np.bincount(np.asarray(reason, np.uint8).reshape(-1), minlength=len(TraceReason))
    return {TraceReason(k): int(c) for k, c in enumerate(counts) if k != 0 and c}
