"""Shared signal models of the simulators (DOMAIN.md §7): AR(1) noise, warm-up, drift, steps, spikes, first-order lags.

Every model draws from its own `numpy.random.Generator`, so a simulator built
with the same seed produces the same sequence whatever the wall-clock timing,
as long as it is stepped the same number of times.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProcessValue:
    """One process quantity: x_k = mu + drift_k + step + warmup_k + a_k (+ spike), with a_k AR(1).

    Step it once per cycle for per-shot values, or once per fixed simulated
    interval for continuous values. The stationary standard deviation of the
    AR(1) part is `sigma` whatever `phi` is.
    """

    mu: float
    """Centre of the process."""
    sigma: float
    """Standard deviation of the autocorrelated noise (stationary)."""
    phi: float = 0.5
    """AR(1) coefficient; real processes are autocorrelated (0.3-0.7)."""
    warmup: float = 0.0
    """Offset at step 0 that decays as exp(-k / warmup_tau) (a cold die, a heating barrel)."""
    warmup_tau: float = 100.0
    """Steps for the warm-up offset to fall to 1/e."""
    spike_probability: float = 1e-3
    """Chance per step of a spike of 4-6 sigma, random sign."""
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    """Source of randomness (seeded by the simulator)."""
    drift_per_step: float = 0.0
    """Added to the drift on every step (a wearing part, a dosing drift)."""
    step: float = 0.0
    """A sustained offset (a failed heater, a lost accumulator pre-charge)."""
    k: int = 0
    """Steps taken so far."""
    last: float = math.nan
    """The value of the latest step."""
    _a: float = 0.0
    _drift: float = 0.0

    def __post_init__(self) -> None:
        if not -1.0 < self.phi < 1.0:
            raise ValueError(f"phi must be in (-1, 1) for a stationary AR(1), got {self.phi}")
        # start the noise in its stationary distribution rather than at zero
        self._a = float(self.rng.normal(0.0, self.sigma))
        self.last = self.mu + self.warmup + self._a

    def next(self) -> float:
        """Advance one step and return the new value."""
        innovation_sd = self.sigma * math.sqrt(1.0 - self.phi * self.phi)
        self._a = self.phi * self._a + float(self.rng.normal(0.0, innovation_sd))
        self._drift += self.drift_per_step
        warm = self.warmup * math.exp(-self.k / self.warmup_tau) if self.warmup else 0.0
        spike = 0.0
        if self.spike_probability > 0.0 and self.rng.random() < self.spike_probability:
            spike = float(self.rng.choice((-1.0, 1.0)) * self.rng.uniform(4.0, 6.0) * self.sigma)
        self.k += 1
        self.last = self.mu + self._drift + self.step + warm + self._a + spike
        return self.last

    @property
    def drift(self) -> float:
        """Drift accumulated so far."""
        return self._drift

    def reset_drift(self) -> None:
        """Remove the accumulated drift (the fault was repaired)."""
        self._drift = 0.0


@dataclass
class FirstOrderLag:
    """tau * dy/dt = -y + target: a temperature that follows its setpoint or load with a time constant."""

    value: float
    """Current output."""
    tau_s: float
    """Time constant, seconds of simulated time."""

    def advance(self, target: float, dt_s: float) -> float:
        """Move `dt_s` simulated seconds towards `target` (exact solution for a constant target)."""
        if self.tau_s <= 0.0:
            self.value = target
        else:
            self.value = target + (self.value - target) * math.exp(-dt_s / self.tau_s)
        return self.value


@dataclass
class WrappingCounter:
    """An unsigned counter register that wraps at its modulus, as PLC counters do."""

    value: int = 0
    modulus: int = 1 << 16
    """65536 for a uint16 register, 2**32 for uint32."""

    def increment(self, by: int = 1) -> int:
        """Add `by` and wrap."""
        self.value = (self.value + by) % self.modulus
        return self.value

    def reset(self) -> None:
        """Back to zero (an operator reset, a PLC restart)."""
        self.value = 0


def generator_for(seed: int, name: str) -> np.random.Generator:
    """An independent generator per (seed, signal name), so adding a signal never shifts the others' sequences."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))]))
