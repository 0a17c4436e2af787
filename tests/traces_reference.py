"""Pure-Python references of edge_agent/core/traces.py: one trace at a time, one point at a time, lists and math only.

Written from DOMAIN-ROOT.md's formulas, not from the numpy code, so a test that compares the two
checks the vectorization. NaN marks a value the core must leave NaN (reason != OK).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NAN = math.nan
OK, NO_DATA, SHORT, LONG, NAN_POINTS, NO_CURRENT, NO_LOAD, NO_REFERENCE, OPEN_CIRCUIT, NOT_STEADY = range(10)


def finite(x: float) -> bool:
    """A number that is neither NaN nor infinite."""
    return not (math.isnan(x) or math.isinf(x))


def check(trace: Sequence[float], reason: int = OK, max_nan_fraction: float = 0.0) -> int:
    """Reason of one trace: an earlier one stays, then NO_DATA, NAN_POINTS, OK."""
    if reason != OK:
        return reason
    good = sum(1 for x in trace if finite(x))
    if good == 0:
        return NO_DATA
    if good < len(trace) * (1.0 - max_nan_fraction) - 1e-9:
        return NAN_POINTS
    return OK


def pack(traces: Sequence[Sequence[float]], n: int) -> tuple[list[list[float]], list[int]]:
    """Traces of any length into rows of n points, NaN-padded, with SHORT/LONG/OK."""
    rows, reasons = [], []
    for t in traces:
        rows.append([t[k] if k < len(t) else NAN for k in range(n)])
        reasons.append(SHORT if len(t) < n else LONG if len(t) > n else OK)
    return rows, reasons


def stroke(
    f: Sequence[float],
    angle: Sequence[float],
    rated: float,
    height: Sequence[float] | None = None,
    cap_h: Sequence[float] | None = None,
    cap: Sequence[float] | None = None,
    reason: int = OK,
    max_nan_fraction: float = 0.0,
) -> dict[str, float]:
    """Peak, angle, capacity %, reverse load, capacity-curve %, energy of one stroke."""
    reason = check(f, reason, max_nan_fraction)
    out = dict.fromkeys(
        (
            "peak",
            "peak_angle",
            "capacity_pct",
            "reverse",
            "reverse_pct",
            "curve_pct",
            "curve_angle",
            "energy",
        ),
        NAN,
    )
    out["reason"] = reason
    if reason != OK:
        return out
    peak, where, low = -math.inf, 0, math.inf
    for k, x in enumerate(f):
        if finite(x) and x > peak:
            peak, where = x, k
        if finite(x) and x < low:
            low = x
    out["peak"], out["peak_angle"] = peak, angle[where]
    out["capacity_pct"] = 100.0 * peak / rated
    out["reverse"] = max(-low, 0.0)
    out["reverse_pct"] = 100.0 * out["reverse"] / rated
    if height is not None:
        e = 0.0
        for k in range(len(f) - 1):
            if finite(f[k]) and finite(f[k + 1]):
                e += 0.5 * (f[k] + f[k + 1]) * (height[k] - height[k + 1])
        out["energy"] = e
        if cap is not None and cap_h is not None:
            best, at = -math.inf, 0
            for k, x in enumerate(f):
                c = interp(height[k], cap_h, cap)
                if finite(x) and 100.0 * x / c > best:
                    best, at = 100.0 * x / c, k
            out["curve_pct"], out["curve_angle"] = best, angle[at]
    return out


def interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Linear interpolation, clamped at the ends (as numpy.interp)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for k in range(len(xs) - 1):
        if xs[k] <= x <= xs[k + 1]:
            return ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k])
    raise AssertionError


def median(values: list[float]) -> float:
    """Median of a list."""
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def reference(traces: Sequence[Sequence[float]], min_strokes: int) -> list[float]:
    """Pointwise median of the strokes, NaN with fewer than min_strokes."""
    if len(traces) < min_strokes:
        return [NAN] * len(traces[0])
    return [median([t[k] for t in traces if finite(t[k])]) for k in range(len(traces[0]))]


def signature(
    f: Sequence[float],
    ref: Sequence[float],
    angle: Sequence[float],
    windows: Sequence[tuple[float, float]],
    reason: int = OK,
    max_nan_fraction: float = 0.0,
    min_peak_fraction: float = 0.2,
) -> tuple[list[tuple[float, float, float]], int]:
    """Per window: (RMS/max r, max |f - r|, peak shift) of one stroke, and its reason."""
    reason = check(f, reason, max_nan_fraction)
    if reason == OK and (not all(finite(x) for x in ref) or max(ref) <= 0):
        reason = NO_REFERENCE
    if reason != OK:
        return [(NAN, NAN, NAN)] * len(windows), reason
    top = max(ref)
    out = []
    for lo, hi in windows:
        cols = [k for k in range(len(angle)) if lo <= angle[k] < hi]
        sq = [(f[k] - ref[k]) ** 2 for k in cols if finite(f[k])]
        rms = math.sqrt(sum(sq) / len(sq)) / top if sq else NAN
        mx = max((abs(f[k] - ref[k]) for k in cols if finite(f[k])), default=NAN)
        rk = max(cols, key=lambda k: (ref[k], -k))
        fvals = [(f[k], -k) for k in cols if finite(f[k])]
        shift = NAN
        if fvals and ref[rk] >= min_peak_fraction * top:
            fv, neg_k = max(fvals)
            if fv >= min_peak_fraction * ref[rk]:
                shift = angle[-neg_k] - angle[rk]
        out.append((rms, mx, shift))
    return out, reason


def balance(peaks: Sequence[float], x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Balance ratios, centre of load and moments from one stroke's channel peaks."""
    keys = ("total", "left_right", "front_back", "x_c", "y_c", "moment_x", "moment_y")
    if not all(finite(p) for p in peaks):
        return {**dict.fromkeys(keys, NAN), "reason": NAN_POINTS}
    total = sum(peaks)
    if not total > 0:
        return {**dict.fromkeys(keys, NAN), "reason": NO_LOAD}
    left = sum(p for p, xi in zip(peaks, x, strict=True) if xi < 0)
    right = sum(p for p, xi in zip(peaks, x, strict=True) if xi > 0)
    front = sum(p for p, yi in zip(peaks, y, strict=True) if yi > 0)
    back = sum(p for p, yi in zip(peaks, y, strict=True) if yi < 0)
    has_lr = any(xi < 0 for xi in x) and any(xi > 0 for xi in x)
    has_fb = any(yi < 0 for yi in y) and any(yi > 0 for yi in y)
    mx = sum(p * xi for p, xi in zip(peaks, x, strict=True))
    my = sum(p * yi for p, yi in zip(peaks, y, strict=True))
    return {
        "total": total,
        "left_right": (left - right) / (left + right) if has_lr else NAN,
        "front_back": (front - back) / (front + back) if has_fb else NAN,
        "x_c": mx / total,
        "y_c": my / total,
        "moment_x": mx,
        "moment_y": my,
        "reason": OK,
    }


def spot(
    u: Sequence[float],
    i: Sequence[float],
    dt: float,
    min_current: float,
    alpha_until: float = 0.4,
    lag: int = 3,
    threshold: float = 0.08,
) -> dict[str, float]:
    """Energy, dynamic resistance features and expulsion of one spot."""
    keys = (
        "energy",
        "current_rms",
        "weld_time",
        "r_alpha",
        "r_beta",
        "t_beta",
        "r_end",
        "beta_drop",
        "expulsion_drop",
    )
    reason = check(i, check(u))
    on = [k for k in range(len(u)) if finite(u[k]) and finite(i[k]) and i[k] >= min_current]
    if reason == OK and not on:
        reason = NO_CURRENT
    if reason != OK:
        return {**dict.fromkeys(keys, NAN), "expulsion": False, "reason": reason}
    res = {k: u[k] / i[k] for k in on}
    first, last = on[0], on[-1]
    a_end = first + alpha_until * (last - first)
    a_col = min((k for k in on if k <= a_end), key=lambda k: (res[k], k))
    b_col = max((k for k in on if k >= a_col), key=lambda k: (res[k], -k))
    drop = 0.0
    for k in range(b_col, len(u) - lag):
        if k in res and k + lag in res:
            drop = max(drop, res[k] - res[k + lag])
    out = {
        "energy": sum(u[k] * i[k] for k in on) * dt,
        "current_rms": math.sqrt(sum(i[k] ** 2 for k in on) / len(on)),
        "weld_time": len(on) * dt,
        "r_alpha": res[a_col],
        "r_beta": res[b_col],
        "t_beta": (b_col - first) * dt,
        "r_end": res[last],
        "beta_drop": res[b_col] - res[last],
        "expulsion_drop": drop / res[b_col],
        "reason": OK,
    }
    out["expulsion"] = out["expulsion_drop"] >= threshold
    return out


def arc(
    u: Sequence[float], i: Sequence[float], dt: float, arc_current: float = 10.0, short_voltage: float = 10.0
) -> dict[str, float]:
    """Arc energy, power, CV and short-circuit statistics of one weld trace."""
    keys = (
        "arc_time",
        "energy",
        "power",
        "current_mean",
        "voltage_mean",
        "current_cv",
        "voltage_cv",
        "short_count",
        "short_rate",
        "short_time_mean",
        "short_time_sd",
        "short_period_cv",
    )
    reason = check(i, check(u))
    on = [finite(u[k]) and finite(i[k]) and i[k] >= arc_current for k in range(len(u))]
    if reason == OK and not any(on):
        reason = NO_CURRENT
    if reason != OK:
        return {**dict.fromkeys(keys, NAN), "reason": reason}
    us = [u[k] for k in range(len(u)) if on[k]]
    is_ = [i[k] for k in range(len(u)) if on[k]]
    n = len(us)

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    def sd(v: list[float]) -> float:
        m = mean(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))

    shorts: list[tuple[int, int]] = []  # (start, end exclusive), only runs wholly inside the trace
    k = 0
    while k < len(u):
        if on[k] and u[k] < short_voltage:
            start = k
            while k < len(u) and on[k] and u[k] < short_voltage:
                k += 1
            if start > 0 and k < len(u):
                shorts.append((start, k))
        else:
            k += 1
    durations = [(e - s) * dt for s, e in shorts]
    periods = [(shorts[j + 1][0] - shorts[j][0]) * dt for j in range(len(shorts) - 1)]
    power = sum(a * b for a, b in zip(us, is_, strict=True)) / n
    return {
        "arc_time": n * dt,
        "energy": power * n * dt,
        "power": power,
        "current_mean": mean(is_),
        "voltage_mean": mean(us),
        "current_cv": sd(is_) / mean(is_),
        "voltage_cv": sd(us) / mean(us),
        "short_count": float(len(shorts)),
        "short_rate": len(shorts) / (n * dt),
        "short_time_mean": mean(durations) if durations else NAN,
        "short_time_sd": sd(durations) if durations else NAN,
        "short_period_cv": sd(periods) / mean(periods) if len(periods) >= 2 else NAN,
        "reason": OK,
    }


def ampere_hours(i: Sequence[float], t: Sequence[float]) -> tuple[float, int]:
    """Trapezoid ∫I dt / 3600 of one series."""
    reason = check(i)
    if reason != OK:
        return NAN, reason
    total = 0.0
    for k in range(len(i) - 1):
        total += 0.5 * (i[k] + i[k + 1]) * (t[k + 1] - t[k])
    return total / 3600.0, OK


def voltage_rise(
    t: Sequence[float],
    u: Sequence[float],
    i: Sequence[float],
    rel_tolerance: float = 0.02,
    min_current: float = 0.5,
    open_circuit_v: float = 1.0,
    min_points: int = 5,
    min_share: float = 0.5,
) -> dict[str, float]:
    """Least-squares slope of U (and U/I) over the steady-current points of one series."""
    blank = {"slope": NAN, "resistance_slope": NAN, "current": NAN, "points": NAN}
    if not any(finite(x) for x in u):
        return {**blank, "reason": NO_DATA}
    flowing = [k for k in range(len(u)) if finite(u[k]) and finite(i[k]) and i[k] >= min_current]
    if not flowing:
        up = any(finite(x) and x > open_circuit_v for x in u)
        return {**blank, "reason": OPEN_CIRCUIT if up else NO_CURRENT}
    med = median([i[k] for k in flowing])
    steady = [k for k in flowing if abs(i[k] - med) <= rel_tolerance * med]
    if len(steady) < max(min_points, 2) or len(steady) < min_share * len(flowing):
        return {**blank, "reason": NOT_STEADY}
    tm = sum(t[k] for k in steady) / len(steady)
    sxx = sum((t[k] - tm) ** 2 for k in steady)
    if sxx <= 0:
        return {**blank, "reason": NOT_STEADY}
    return {
        "slope": sum((t[k] - tm) * u[k] for k in steady) / sxx,
        "resistance_slope": sum((t[k] - tm) * u[k] / i[k] for k in steady) / sxx,
        "current": med,
        "points": float(len(steady)),
        "reason": OK,
    }
