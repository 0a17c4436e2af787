"""Simulated MFDC resistance spot-weld controller behind a Modbus TCP server (DOMAIN-ROOT.md §2), with faults.

A weld timer on a robot gun welding 1.0-1.2 mm uncoated steel (ISO 14373 high force / short time:
~9 kA, 200 ms, 2.8 kN; DOMAIN-ROOT.md §2 [34]), a spot every 3 s. Per spot the controller latches
current (RMS), weld time, electrode force, energy, mean dynamic resistance, final electrode
displacement, its own expulsion flag, the electrode's spots since dressing, the tip-dress counter and
the stepper stage, then increments spot_counter. The tips mushroom from 5 to ~7 mm over a dress
interval of 200 spots; the stepper raises the current every 50 spots; the dresser resets the tips.

Traces per spot are blocks of holding registers (the `points` tags current_trace and voltage_trace of
the shipped config): TRACE_CURRENT_AT.. (200 × uint16, 0.001 kA) and
TRACE_VOLTAGE_AT.. (200 × uint16, 0.0001 V), one point per ms; R(t) = u/i. Dynamic resistance
(simulator values (u)): ~250 µΩ at first contact, down to α ~150 µΩ, up to β ~190 µΩ as the nugget
forms, then down; it falls with the tip area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from edge_agent.simulators.modbus_server import ModbusMachine, RegisterField, simulator_main
from edge_agent.simulators.process import ProcessValue, WrappingCounter, generator_for

HR, DI = "holding_register", "discrete_input"

TRACE_POINTS = 200
TRACE_SAMPLE_US = 1000
TRACE_CURRENT_AT = 100
TRACE_VOLTAGE_AT = TRACE_CURRENT_AT + TRACE_POINTS

#: The register map (protocol addresses); config/welding-spot.toml is rendered from it.
WELDING_SPOT_FIELDS: tuple[RegisterField, ...] = (
    RegisterField("spot_counter", HR, 0, "uint32", "CDAB"),
    RegisterField("weld_current", HR, 2, "uint16", scale=0.001, unit="kA"),
    RegisterField("weld_time", HR, 3, "uint16", unit="ms"),
    RegisterField("electrode_force", HR, 4, "uint16", scale=0.01, unit="kN"),
    RegisterField("spot_energy", HR, 5, "float32", unit="J"),
    RegisterField("dynamic_resistance", HR, 7, "uint16", scale=0.1, unit="µΩ"),
    RegisterField("electrode_displacement", HR, 8, "uint16", scale=0.001, unit="mm"),
    RegisterField("spots_since_dress", HR, 9, "uint16"),
    RegisterField("tip_dress_counter", HR, 10, "uint16"),
    RegisterField("stepper_stage", HR, 11, "uint16"),
    RegisterField("program_number", HR, 12, "uint16"),
    RegisterField("dress_interval", HR, 13, "uint16"),
    RegisterField("trace_points", HR, 20, "uint16"),
    RegisterField("trace_sample_us", HR, 21, "uint16", unit="us"),
    RegisterField("expulsion", DI, 0, "bool"),
)

#: The trace tags of the device config: the spot's current and voltage blocks, latched by the spot counter.
TRACE_TAGS_TOML = f"""
[[devices.tags]]
name = "current_trace"
table = "holding_register"
address = {TRACE_CURRENT_AT}
type = "uint16"
points = {TRACE_POINTS}
scale = 0.001
unit = "kA"
latched_by = "spot_counter"

[[devices.tags]]
name = "voltage_trace"
table = "holding_register"
address = {TRACE_VOLTAGE_AT}
type = "uint16"
points = {TRACE_POINTS}
scale = 0.0001
unit = "V"
latched_by = "spot_counter"
"""

SPOT_EVERY_S = 3.0
CURRENT_KA = 9.0
WELD_MS = 200
FORCE_KN = 2.8
DRESS_INTERVAL = 200
STEPPER_EVERY = 50
STEPPER_KA = 0.3
TIP_NEW_MM = 5.0
TIP_DRESSED_GROWTH_MM = 2.0  # over one dress interval
DISPLACEMENT_MM = 0.25


def resistance_uohm(
    rng: np.random.Generator, tip_mm: float, scale: float, expel_at: int | None
) -> np.ndarray:
    """R(t) in µΩ over the weld: contact breakdown to α, rise to β, fall; a step down at `expel_at` (expulsion)."""
    t = np.arange(TRACE_POINTS) / TRACE_POINTS
    area = (TIP_NEW_MM / tip_mm) ** 1.2  # a larger contact carries the current over more area
    r = 100.0 * np.exp(-t / 0.05) + (150.0 + 45.0 * np.exp(-(((t - 0.45) / 0.2) ** 2)) - 15.0 * t) * area
    r *= scale * (1.0 + float(rng.normal(0.0, 0.02)))
    if expel_at is not None:
        r[expel_at:] *= 1.0 - float(rng.uniform(0.12, 0.3))
    return r * (1.0 + rng.normal(0.0, 0.003, TRACE_POINTS))


class SpotWeldingSimulator(ModbusMachine):
    """A resistance spot-weld controller: a spot every 3 s, tip wear, stepper, dressing, a trace per spot."""

    FIELDS = WELDING_SPOT_FIELDS
    PROFILE = "welding_spot"
    KIND = "welding-spot"
    DEFAULT_NAME = "spot-1"
    DEFAULT_PORT = 5023
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {
        "tip_mushrooming": "a missed dress: the dresser skips, the tips keep growing past the dress interval "
        "(spots_since_dress passes dress_interval): current density, R_β and energy fall",
        "expulsion": "expulsion in a share `probability` (default 1) of the spots: R drops 12-30 % in the "
        "second half of the weld and the electrodes sink; the controller sets its expulsion flag",
        "shunting": "shunting or poor fit-up: the current finds another path, dynamic resistance and "
        "energy fall to `factor` (default 0.7)",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        self.rng = generator_for(seed, "spot")
        self.force_noise = ProcessValue(
            0.0, 0.03, 0.5, spike_probability=0.0, rng=generator_for(seed, "force")
        )
        self.spot_counter = WrappingCounter(0, 1 << 32)
        self.since_dress = 0
        self.dresses = WrappingCounter(0, 1 << 16)
        self.next_spot_s = SPOT_EVERY_S
        self.current: dict[str, float] = {}
        self.last_trace: tuple[np.ndarray, np.ndarray] = (np.zeros(TRACE_POINTS), np.zeros(TRACE_POINTS))
        super().__init__(speed=speed, seed=seed, faults=faults, unit_ids=unit_ids)
        srv = self.server
        for name, value in (
            ("program_number", 3),
            ("dress_interval", DRESS_INTERVAL),
            ("trace_points", TRACE_POINTS),
            ("trace_sample_us", TRACE_SAMPLE_US),
        ):
            self.current[name] = srv.write(name, value)
        self._write_counters()
        srv.write_raw("spot_counter", self.spot_counter.value)
        self.current["spot_counter"] = self.spot_counter.value

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        """Faults act through `active_faults` on the next spot."""

    @property
    def tip_mm(self) -> float:
        """Electrode tip diameter now."""
        return TIP_NEW_MM + TIP_DRESSED_GROWTH_MM * self.since_dress / DRESS_INTERVAL

    @property
    def stage(self) -> int:
        """Stepper stage (0 after a dress): the current rises a step every STEPPER_EVERY spots."""
        return self.since_dress // STEPPER_EVERY

    def _write_counters(self) -> None:
        srv = self.server
        self.current["spots_since_dress"] = srv.write("spots_since_dress", min(self.since_dress, 65535))
        self.current["tip_dress_counter"] = srv.write("tip_dress_counter", self.dresses.value)
        self.current["stepper_stage"] = srv.write("stepper_stage", self.stage)

    def _spot(self) -> None:
        srv = self.server
        f = self.active_faults
        if self.since_dress >= DRESS_INTERVAL and "tip_mushrooming" not in f:
            self.since_dress = 0
            self.dresses.increment()
        current_ka = CURRENT_KA + STEPPER_KA * self.stage
        expel = "expulsion" in f and self.rng.random() < float(f["expulsion"].get("probability", 1.0))
        expel_at = int(self.rng.integers(TRACE_POINTS // 2, TRACE_POINTS - 20)) if expel else None
        scale = float(f["shunting"].get("factor", 0.7)) if "shunting" in f else 1.0
        r = resistance_uohm(self.rng, self.tip_mm, scale, expel_at)
        i = np.full(TRACE_POINTS, current_ka) * (
            1.0 + 0.02 * np.sin(np.arange(TRACE_POINTS) * 2 * math.pi / 5)
        )
        i[:10] *= np.linspace(0.1, 1.0, 10)  # up-slope
        u = r * 1e-6 * i * 1e3  # µΩ · kA -> V
        # the registers hold what a reader decodes: round first, so energy and R are computed from them
        i_words = np.clip(np.rint(i / 0.001), 0, 65535).astype(int)
        u_words = np.clip(np.rint(u / 0.0001), 0, 65535).astype(int)
        i_reg, u_reg = i_words * 0.001, u_words * 0.0001
        self.last_trace = (i_reg, u_reg)
        energy_j = float((u_reg * i_reg * 1e3).sum() * TRACE_SAMPLE_US * 1e-6)
        sink = DISPLACEMENT_MM * (1.0 + 0.5 * (self.tip_mm - TIP_NEW_MM) / TIP_DRESSED_GROWTH_MM)
        if expel:
            sink += float(self.rng.uniform(0.08, 0.2))  # expelled metal lets the electrodes sink
        latched = {
            "weld_current": float(np.sqrt(np.mean(i_reg * i_reg))),
            "weld_time": float(WELD_MS),
            "electrode_force": FORCE_KN + self.force_noise.next(),
            "spot_energy": energy_j,
            "dynamic_resistance": float(np.mean(u_reg / np.maximum(i_reg, 1e-9))) * 1e3,
            "electrode_displacement": sink,
        }
        for name, value in latched.items():
            self.current[name] = srv.write(name, value)
        self.current["expulsion"] = srv.write("expulsion", expel)
        tables = srv.units[srv.default_unit]
        tables.write(HR, TRACE_CURRENT_AT, i_words.tolist())
        tables.write(HR, TRACE_VOLTAGE_AT, u_words.tolist())
        self.since_dress += 1
        self._write_counters()
        self.spot_counter.increment()
        srv.write_raw("spot_counter", self.spot_counter.value)
        self.current["spot_counter"] = self.spot_counter.value

    def _tick(self, dt_s: float) -> None:
        if dt_s > 0.0:
            now = self._steps * self.STEP_S
            while now >= self.next_spot_s:
                self._spot()
                self.next_spot_s += SPOT_EVERY_S

    def values(self) -> dict[str, float]:
        """Engineering values as last written, at register precision (what a correct driver must read)."""
        return dict(self.current)

    def trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(current kA, voltage V) of the last spot as a reader decodes the register blocks."""
        words = self.server.units[self.server.default_unit].words[HR]
        i = words[TRACE_CURRENT_AT : TRACE_CURRENT_AT + TRACE_POINTS].astype(float) * 0.001
        u = words[TRACE_VOLTAGE_AT : TRACE_VOLTAGE_AT + TRACE_POINTS].astype(float) * 0.0001
        return i, u

    def device_config(
        self, name: str | None = None, endpoint: str | None = None, poll_interval: float = 1.0
    ) -> str:
        """The `[[devices]]` block of the register map, with the trace blocks as `points` tags."""
        return super().device_config(name, endpoint, poll_interval) + TRACE_TAGS_TOML

    @classmethod
    def config_file_text(cls, endpoint: str) -> str:
        """The shipped config file: the register map and the trace blocks as `points` tags."""
        return super().config_file_text(endpoint) + TRACE_TAGS_TOML


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent simulate welding-spot`: serve until Ctrl-C."""
    return simulator_main(SpotWeldingSimulator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
