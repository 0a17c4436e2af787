"""Simulated high-pressure die-casting cell (DOMAIN.md §2, §7) behind a Modbus TCP server.

Per-shot values are written once per shot, when the shot counter moves; die and
melt temperatures change continuously. The register map spreads the values over
int16/uint16/int32/uint32/float32 with different word orders and scale factors,
as real PLC maps do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from edge_agent.simulators.modbus_server import ModbusMachine, RegisterField, simulator_main
from edge_agent.simulators.process import FirstOrderLag, ProcessValue, WrappingCounter, generator_for

HR = "holding_register"

#: The register map (protocol addresses); config/die-casting.toml is rendered from it.
DIE_CASTING_FIELDS: tuple[RegisterField, ...] = (
    RegisterField("machine_state", HR, 0, "uint16"),
    RegisterField("shot_counter", HR, 1, "uint32", "CDAB"),
    RegisterField("good_parts", HR, 3, "uint16"),
    RegisterField("scrap_parts", HR, 4, "uint16"),
    # 5-9 reserved
    RegisterField("phase1_velocity", HR, 10, "int16", scale=0.001, unit="m/s"),
    RegisterField("phase2_velocity_max", HR, 11, "float32", "CDAB", unit="m/s"),
    RegisterField("switchover_position", HR, 13, "uint16", scale=0.1, unit="mm"),
    RegisterField("fill_time", HR, 14, "float32", "ABCD", unit="ms"),
    RegisterField("intensification_pressure", HR, 16, "int32", "BADC", scale=0.1, unit="bar"),
    RegisterField("pressure_rise_time", HR, 18, "uint16", scale=0.1, unit="ms"),
    RegisterField("biscuit_length", HR, 19, "float32", "DCBA", unit="mm"),
    RegisterField("cycle_time", HR, 21, "uint32", "ABCD", scale=0.001, unit="s"),
    # 23-29 reserved
    RegisterField("die_temp_1", HR, 30, "int16", scale=0.1, unit="°C"),
    RegisterField("die_temp_2", HR, 31, "int16", scale=0.1, unit="°C"),
    RegisterField("die_temp_3", HR, 32, "int16", scale=0.1, unit="°C"),
    RegisterField("die_temp_4", HR, 33, "int16", scale=0.1, unit="°C"),
    RegisterField("melt_temp", HR, 34, "float32", "CDAB", unit="°C"),
    RegisterField("melt_setpoint", HR, 36, "uint16", scale=0.1, unit="°C"),
)

#: machine_state values (profile die_casting: 0 off, 1 setup, 2 manual, 3 automatic, 4 alarm)
AUTOMATIC = 3

_PER_SHOT = {
    # name: (mu, sigma, phi, warm-up offset at shot 0, warm-up tau in shots)
    "phase1_velocity": (0.30, 0.012, 0.5, 0.0, 80.0),
    "phase2_velocity_max": (4.5, 0.15, 0.5, -0.3, 80.0),
    "switchover_position": (420.0, 1.2, 0.4, 0.0, 80.0),
    "fill_time": (30.0, 1.8, 0.6, 6.0, 80.0),  # a cold die fills slower
    "intensification_pressure": (750.0, 14.0, 0.5, 0.0, 80.0),
    "pressure_rise_time": (18.0, 1.0, 0.4, 0.0, 80.0),
    "biscuit_length": (27.5, 1.3, 0.6, 0.0, 80.0),
    "cycle_time": (60.0, 0.5, 0.5, 8.0, 50.0),
}
_DIE_SETPOINTS = (200.0, 210.0, 190.0, 220.0)
_MELT_SETPOINT = 670.0
_SCRAP_BASE = 0.05


class DieCastingSimulator(ModbusMachine):
    """A die-casting cell: shots every ~60 simulated seconds, warm-up from a cold die, injectable faults."""

    FIELDS = DIE_CASTING_FIELDS
    PROFILE = "die_casting"
    KIND = "die-casting"
    DEFAULT_NAME = "dcm1"
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {
        "accumulator_loss": "accumulator pre-charge loss: intensification pressure steps down by `drop_bar` "
        "(default 120), rise time up by `rise_ms` (default 8)",
        "dosing_drift": "dosing drifts: biscuit length changes by `mm_per_shot` (default -0.04) every shot",
        "die_hot_spot": "die circuit `circuit` (default 2) runs `delta_c` (default 35) °C hotter",
        "sensor_dropout": "melt thermocouple broken (float NaN) and die_temp_3 at the int16 over-range value 3276.7",
        "stale_value": "the PLC stops refreshing the temperatures: die and melt registers freeze",
        "counter_rollover": "good/scrap uint16 counters jump to 65530 and wrap within a few shots",
        "counter_reset": "shot, good and scrap counters reset to 0 (one-shot)",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        self.shot = {
            name: ProcessValue(mu, sigma, phi, warm, tau, rng=generator_for(seed, name))
            for name, (mu, sigma, phi, warm, tau) in _PER_SHOT.items()
        }
        self.scrap_rng = generator_for(seed, "scrap")
        self.die_noise = [
            ProcessValue(0.0, 0.6, 0.9, spike_probability=1e-4, rng=generator_for(seed, f"die_temp_{i + 1}"))
            for i in range(4)
        ]
        self.die = [FirstOrderLag(60.0, tau_s=900.0) for _ in range(4)]  # cold die at start
        self.melt_noise = ProcessValue(
            0.0, 1.5, 0.95, spike_probability=1e-4, rng=generator_for(seed, "melt")
        )
        self.melt = FirstOrderLag(_MELT_SETPOINT - 5.0, tau_s=600.0)
        self.shot_counter = WrappingCounter(0, 1 << 32)
        self.good = WrappingCounter(0, 1 << 16)
        self.scrap = WrappingCounter(0, 1 << 16)
        self.next_shot_s = 0.0
        self.hot_spot = (0, 0.0)
        self.current: dict[str, float] = {}
        super().__init__(speed=speed, seed=seed, faults=faults, unit_ids=unit_ids)

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        if name == "accumulator_loss":
            self.shot["intensification_pressure"].step = -float(params.get("drop_bar", 120.0)) if on else 0.0
            self.shot["pressure_rise_time"].step = float(params.get("rise_ms", 8.0)) if on else 0.0
        elif name == "dosing_drift":
            biscuit = self.shot["biscuit_length"]
            biscuit.drift_per_step = float(params.get("mm_per_shot", -0.04)) if on else 0.0
            if not on:
                biscuit.reset_drift()
        elif name == "die_hot_spot":
            circuit = int(params.get("circuit", 2))
            if not 1 <= circuit <= 4:
                raise ValueError(f"die_hot_spot: circuit must be 1..4, got {circuit}")
            self.hot_spot = (circuit - 1, float(params.get("delta_c", 35.0))) if on else (0, 0.0)
        elif name == "counter_rollover" and on:
            self.good.value = 65530
            self.scrap.value = 65534
            self._write_counters()
        elif name == "counter_reset" and on:
            self.shot_counter.reset()
            self.good.reset()
            self.scrap.reset()
            self._write_counters()
            self.active_faults.pop("counter_reset", None)  # an event, not a state
        self._write_temperatures()

    def _write_counters(self) -> None:
        srv = self.server
        srv.write_raw("shot_counter", self.shot_counter.value)
        srv.write_raw("good_parts", self.good.value)
        srv.write_raw("scrap_parts", self.scrap.value)
        self.current.update(
            shot_counter=self.shot_counter.value, good_parts=self.good.value, scrap_parts=self.scrap.value
        )

    def _do_shot(self) -> None:
        values = {name: model.next() for name, model in self.shot.items()}
        values["phase1_velocity"] = max(values["phase1_velocity"], 0.0)
        values["cycle_time"] = max(values["cycle_time"], 20.0)
        # out-of-window shots are mostly scrap (thin biscuit: porosity; low pressure: shrinkage)
        bad = values["biscuit_length"] < 20.0 or values["intensification_pressure"] < 600.0
        scrap = self.scrap_rng.random() < (0.6 if bad else _SCRAP_BASE)
        self.shot_counter.increment()
        (self.scrap if scrap else self.good).increment()
        srv = self.server
        for name, value in values.items():
            self.current[name] = srv.write(name, value)
        self._write_counters()
        self.next_shot_s += values["cycle_time"]

    def _write_temperatures(self) -> None:
        if "stale_value" in self.active_faults and self.current.get("melt_setpoint") is not None:
            return
        srv = self.server
        dropout = "sensor_dropout" in self.active_faults
        for i in range(4):
            name = f"die_temp_{i + 1}"
            value = self.die[i].value + self.die_noise[i].last
            if dropout and i == 2:
                srv.write_raw(name, 32767)
                self.current[name] = 3276.7
                continue
            self.current[name] = srv.write(name, value)
        melt = self.melt.value + self.melt_noise.last
        melt_value = math.nan if dropout else melt
        self.current["melt_temp"] = srv.write("melt_temp", melt_value)
        self.current["melt_setpoint"] = srv.write("melt_setpoint", _MELT_SETPOINT)

    def _tick(self, dt_s: float) -> None:
        srv = self.server
        self.current["machine_state"] = srv.write("machine_state", AUTOMATIC)
        if dt_s > 0.0:
            now = self._steps * self.STEP_S
            while now >= self.next_shot_s:
                self._do_shot()
            circuit, delta = self.hot_spot
            for i in range(4):
                target = _DIE_SETPOINTS[i] + (delta if i == circuit else 0.0)
                self.die[i].advance(target, dt_s)
                self.die_noise[i].next()
            self.melt.advance(_MELT_SETPOINT, dt_s)
            self.melt_noise.next()
        self._write_temperatures()

    def values(self) -> dict[str, float]:
        """Engineering values as last written, at register precision (what a correct driver must read)."""
        return dict(self.current)


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent simulate die-casting`: serve until Ctrl-C."""
    return simulator_main(DieCastingSimulator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
