"""Obvious pure-Python reference implementations of the core indicators, one signal (or channel) at a time.

They follow DOMAIN.md §3-§5 literally, with lists and loops, so the vectorized
core can be checked against them; the benchmark also times them.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

# DOMAIN.md §5 table as printed (ASTM E2587 / Montgomery Appendix VI): n: d2, A2, D3, D4, A3, B3, B4
TABLE = {
    2: (1.128, 1.880, 0.0, 3.267, 2.659, 0.0, 3.267),
    3: (1.693, 1.023, 0.0, 2.574, 1.954, 0.0, 2.568),
    4: (2.059, 0.729, 0.0, 2.282, 1.628, 0.0, 2.266),
    5: (2.326, 0.577, 0.0, 2.114, 1.427, 0.0, 2.089),
    6: (2.534, 0.483, 0.0, 2.004, 1.287, 0.030, 1.970),
    7: (2.704, 0.419, 0.076, 1.924, 1.182, 0.118, 1.882),
    8: (2.847, 0.373, 0.136, 1.864, 1.099, 0.185, 1.815),
    9: (2.970, 0.337, 0.184, 1.816, 1.032, 0.239, 1.761),
    10: (3.078, 0.308, 0.223, 1.777, 0.975, 0.284, 1.716),
}
D2 = {n: row[0] for n, row in TABLE.items()}


def c4(n: int) -> float:
    """c4 from the gamma function."""
    return math.sqrt(2 / (n - 1)) * math.gamma(n / 2) / math.gamma((n - 1) / 2)


def mean(xs: list[float]) -> float:
    """Arithmetic mean."""
    return sum(xs) / len(xs)


def stdev(xs: list[float]) -> float:
    """Sample standard deviation (n-1)."""
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# rule bit positions, same meaning as edge_agent.core.spc.Rule
WE1, WE2, WE3, WE4 = 0, 1, 2, 3
N1, N2, N3, N4, N5, N6, N7, N8 = 4, 5, 6, 7, 8, 9, 10, 11
MR_HIGH, XBAR_R, R_OUT, XBAR_S, S_OUT = 12, 13, 14, 15, 16
EWMA_HIGH, EWMA_LOW, CUSUM_POS, CUSUM_NEG, ABOVE_USL, BELOW_LSL = 17, 18, 19, 20, 21, 22


@dataclass
class RefSpc:
    """One signal's SPC, the slow and obvious way."""

    window: int = 50
    phase1_n: int = 100
    lsl: float = math.nan
    usl: float = math.nan
    lam: float = 0.2
    L: float = 2.962
    k: float = 0.5
    h: float = 5.0
    sub_n: int = 1
    centre: float = math.nan
    sigma_given: float = math.nan
    win: deque[float] = field(default_factory=deque)
    all_values: list[float] = field(default_factory=list)  # the capability period
    phase1: list[float] = field(default_factory=list)
    subgroup: list[float] = field(default_factory=list)
    p1_subgroups: list[list[float]] = field(default_factory=list)
    cap_subgroups: list[list[float]] = field(default_factory=list)
    monitored: list[float] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    prev: float | None = None
    phase: int = 0
    cl: float = math.nan
    sigma: float = math.nan
    xcl: float = math.nan
    rbar: float = math.nan
    sbar: float = math.nan
    ewma: float = math.nan
    ewma_i: int = 0
    cpos: float = 0.0
    cneg: float = 0.0
    npos: int = 0
    nneg: int = 0
    missing: int = 0
    n: int = 0

    def __post_init__(self) -> None:
        if math.isfinite(self.centre) and math.isfinite(self.sigma_given):
            self._start_phase2()

    def add(self, x: float, good: bool = True) -> int:
        """Feed one value; return the rule bit mask of this sample."""
        if not good or math.isnan(x):
            self.missing += 1
            return 0
        self.n += 1
        self.win.append(x)
        if len(self.win) > self.window:
            self.win.popleft()
        prev = self.prev
        self.prev = x
        self.all_values.append(x)
        mask = 0
        in_phase1 = self.phase == 0
        if in_phase1:
            self.phase1.append(x)
        if self.sub_n >= 2:
            self.subgroup.append(x)
            if len(self.subgroup) == self.sub_n:
                g = self.subgroup
                self.subgroup = []
                self.cap_subgroups.append(g)
                if in_phase1:
                    self.p1_subgroups.append(g)
                else:
                    mask |= self._subgroup_bits(g)
        if not in_phase1:
            mask |= self._monitor(x, prev)
        if in_phase1 and len(self.phase1) >= self.phase1_n:
            self._start_phase2()
        return mask

    def _start_phase2(self) -> None:
        p = self.phase1
        cl = mean(p) if p else math.nan
        mrs = [abs(b - a) for a, b in itertools.pairwise(p)]
        sig = mean(mrs) / 1.128 if mrs else math.nan
        self.cl = self.centre if math.isfinite(self.centre) else cl
        self.sigma = self.sigma_given if math.isfinite(self.sigma_given) else sig
        n = self.sub_n
        g = self.p1_subgroups
        if math.isfinite(self.centre):
            self.xcl = self.centre
        else:
            self.xcl = mean([mean(s) for s in g]) if g else math.nan
        if math.isfinite(self.sigma_given) and n >= 2:
            self.rbar, self.sbar = D2[n] * self.sigma_given, c4(n) * self.sigma_given
        elif g:
            self.rbar = mean([max(s) - min(s) for s in g])
            self.sbar = mean([stdev(s) for s in g])
        self.phase = 1
        self.subgroup = []
        self.ewma = self.cl
        self.ewma_i = 0
        self.cpos = self.cneg = 0.0
        self.npos = self.nneg = 0
        self.monitored = []
        self.diffs = []

    def _subgroup_bits(self, g: list[float]) -> int:
        xb, r, s = mean(g), max(g) - min(g), stdev(g)
        _, a2, d3, d4, a3, b3, b4 = TABLE[len(g)]
        m = 0
        if abs(xb - self.xcl) > a2 * self.rbar:
            m |= 1 << XBAR_R
        if r > d4 * self.rbar or r < d3 * self.rbar:
            m |= 1 << R_OUT
        if abs(xb - self.xcl) > a3 * self.sbar:
            m |= 1 << XBAR_S
        if s > b4 * self.sbar or s < b3 * self.sbar:
            m |= 1 << S_OUT
        return m

    def _monitor(self, x: float, prev: float | None) -> int:
        self.monitored.append(x)
        z = [(v - self.cl) / self.sigma for v in self.monitored[-15:]]
        m = 0

        def last(k: int) -> list[float]:
            return z[-k:] if len(z) >= k else []

        if abs(z[-1]) > 3:
            m |= (1 << WE1) | (1 << N1)
        l3 = last(3) or z
        if sum(v > 2 for v in l3) >= 2 or sum(v < -2 for v in l3) >= 2:
            m |= (1 << WE2) | (1 << N5)
        l5 = last(5) or z
        if sum(v > 1 for v in l5) >= 4 or sum(v < -1 for v in l5) >= 4:
            m |= (1 << WE3) | (1 << N6)
        l8 = last(8)
        if l8 and (all(v > 0 for v in l8) or all(v < 0 for v in l8)):
            m |= 1 << WE4
        l9 = last(9)
        if l9 and (all(v > 0 for v in l9) or all(v < 0 for v in l9)):
            m |= 1 << N2
        # the first difference is taken against the last value before phase II, as a chart shows it
        self.diffs.append(x - prev if prev is not None else 0.0)
        diffs = self.diffs
        d5 = diffs[-5:]
        if len(d5) == 5 and (all(d > 0 for d in d5) or all(d < 0 for d in d5)):
            m |= 1 << N3
        d13 = diffs[-13:]
        if (
            len(d13) == 13
            and all(d != 0 for d in d13)
            and all((a > 0) != (b > 0) for a, b in itertools.pairwise(d13))
        ):
            m |= 1 << N4
        l15 = last(15)
        if l15 and all(-1 <= v <= 1 for v in l15):
            m |= 1 << N7
        if l8 and all(abs(v) > 1 for v in l8) and any(v > 1 for v in l8) and any(v < -1 for v in l8):
            m |= 1 << N8
        if prev is not None and abs(x - prev) > 3.267 * 1.128 * self.sigma:
            m |= 1 << MR_HIGH
        self.ewma = self.lam * x + (1 - self.lam) * self.ewma
        self.ewma_i += 1
        w = (
            self.L
            * self.sigma
            * math.sqrt(self.lam / (2 - self.lam) * (1 - (1 - self.lam) ** (2 * self.ewma_i)))
        )
        if self.ewma > self.cl + w:
            m |= 1 << EWMA_HIGH
        if self.ewma < self.cl - w:
            m |= 1 << EWMA_LOW
        K, H = self.k * self.sigma, self.h * self.sigma
        self.cpos = max(0.0, x - (self.cl + K) + self.cpos)
        self.cneg = max(0.0, (self.cl - K) - x + self.cneg)
        self.npos = self.npos + 1 if self.cpos > 0 else 0
        self.nneg = self.nneg + 1 if self.cneg > 0 else 0
        if self.cpos > H:
            m |= 1 << CUSUM_POS
        if self.cneg > H:
            m |= 1 << CUSUM_NEG
        if x > self.usl:
            m |= 1 << ABOVE_USL
        if x < self.lsl:
            m |= 1 << BELOW_LSL
        return m

    def stats(self) -> dict[str, float]:
        """The same indicators the engine's snapshot reports (NaN for no data)."""
        w = list(self.win)
        nan = math.nan
        out = {
            "n": self.n,
            "missing": self.missing,
            "mean": mean(w) if w else nan,
            "sd": stdev(w) if len(w) > 1 else nan,
            "min": min(w) if w else nan,
            "max": max(w) if w else nan,
        }
        ph2 = self.phase == 1
        out["cl"] = self.cl if ph2 else nan
        out["ucl"] = self.cl + 3 * self.sigma if ph2 else nan
        out["lcl"] = self.cl - 3 * self.sigma if ph2 else nan
        out["ewma"] = self.ewma if ph2 else nan
        out["cusum_pos"] = self.cpos if ph2 else nan
        out["cusum_neg"] = self.cneg if ph2 else nan
        if self.sub_n >= 2 and ph2:
            out["xbar_cl"] = self.xcl
            out["r_cl"] = self.rbar
            out["s_cl"] = self.sbar
        out.update(self.capability())
        return out

    def capability(self) -> dict[str, float]:
        """Cp, Cpk, Pp, Ppk over the capability period (one-sided when one limit is missing)."""
        v = self.all_values
        nan = math.nan
        res = {"cp": nan, "cpk": nan, "pp": nan, "ppk": nan}
        if len(v) < 2 or (math.isnan(self.lsl) and math.isnan(self.usl)):
            return res
        mu = mean(v)
        if math.isfinite(self.sigma_given):
            within = self.sigma_given
        elif self.sub_n >= 2:
            g = self.cap_subgroups
            within = mean([max(s) - min(s) for s in g]) / D2[self.sub_n] if g else nan
        else:
            within = mean([abs(b - a) for a, b in itertools.pairwise(v)]) / 1.128
        overall = stdev(v)

        def idx(s: float) -> tuple[float, float]:
            if not s > 0:
                return nan, nan
            cp = (self.usl - self.lsl) / (6 * s)
            sides = [c for c in ((self.usl - mu) / (3 * s), (mu - self.lsl) / (3 * s)) if not math.isnan(c)]
            return cp, min(sides)

        res["cp"], res["cpk"] = idx(within)
        res["pp"], res["ppk"] = idx(overall)
        return res


@dataclass
class RefSegmenter:
    """One channel's hysteresis segmentation into cycles, sample by sample."""

    on: float
    off: float
    cycle: list[tuple[int, float]] | None = None
    out: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    def add(self, t: int, v: float) -> None:
        """Feed one sample (NaN skipped); completed cycles go to `out` as (start, end, peak, ttp_s, integral)."""
        if math.isnan(v):
            return
        if self.cycle is None:
            if v >= self.on:
                self.cycle = [(t, v)]
            return
        self.cycle.append((t, v))
        if v <= self.off:
            c = self.cycle
            self.cycle = None
            peak = max(x for _, x in c)
            t_peak = next(tt for tt, x in c if x == peak)
            integral = sum((a[1] + b[1]) / 2 * (b[0] - a[0]) / 1e9 for a, b in itertools.pairwise(c))
            self.out.append((c[0][0], t, peak, (t_peak - c[0][0]) / 1e9, integral))


@dataclass
class RefAlarm:
    """One alarm channel: start after the raise persisted on_delay, clear after the clear persisted off_delay."""

    on_delay: int = 0
    off_delay: int = 0
    active: bool = False
    since: int | None = None
    events: list[tuple[int, bool]] = field(default_factory=list)

    def add(self, t: int, raised: bool, cleared: bool) -> None:
        """Feed one observation."""
        if not self.active:
            if raised:
                self.since = t if self.since is None else self.since
                if t - self.since >= self.on_delay:
                    self.active, self.since = True, None
                    self.events.append((t, True))
            else:
                self.since = None
        elif cleared:
            self.since = t if self.since is None else self.since
            if t - self.since >= self.off_delay:
                self.active, self.since = False, None
                self.events.append((t, False))
        else:
            self.since = None
