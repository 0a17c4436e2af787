"""Simulated mould temperature control unit (water, DOMAIN.md §3) behind a Modbus TCP server.

Supply temperature follows the setpoint with a first-order lag (a cold start is
a warm-up); return = supply + P / (0.0697 * flow), P the heat the mould gives
off (kW), flow in L/min. A client may write a new setpoint (holding register).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from edge_agent.simulators.modbus_server import ModbusMachine, RegisterField, simulator_main
from edge_agent.simulators.process import FirstOrderLag, ProcessValue, WrappingCounter, generator_for

HR, IR, CO, DI = "holding_register", "input_register", "coil", "discrete_input"

#: The register map (protocol addresses); config/mold-tcu.toml is rendered from it.
MOLD_TCU_FIELDS: tuple[RegisterField, ...] = (
    RegisterField("supply_temp", IR, 0, "float32", "ABCD", unit="°C"),
    RegisterField("return_temp", IR, 2, "int16", scale=0.1, unit="°C"),
    RegisterField("flow", IR, 3, "uint16", scale=0.01, unit="L/min"),
    RegisterField("setpoint", HR, 0, "uint16", scale=0.1, unit="°C"),
    RegisterField("alarm_word", HR, 1, "uint16"),
    RegisterField("mold_shot_counter", HR, 2, "uint32", "CDAB"),
    RegisterField("pump_running", CO, 0, "bool"),
)

#: Bits of alarm_word, mirrored on discrete inputs 0..2.
ALARM_FLOW_LOW = 0
ALARM_TEMP_DEVIATION = 1
ALARM_PUMP_OFF = 2

_WATER_KW_PER_LMIN_K = 0.0697  # rho * c_p of water, kW per (L/min * K)
_FLOW_LOW_LMIN = 15.0
_DEVIATION_K = 3.0


class MoldTcuSimulator(ModbusMachine):
    """A water TCU on a mould: warm-up to the setpoint, heat removal, shot counter, flow-loss fault."""

    FIELDS = MOLD_TCU_FIELDS
    PROFILE = "mold_tcu"
    KIND = "mold-tcu"
    DEFAULT_NAME = "tcu1"
    DEFAULT_PORT = 5021
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {
        "flow_loss": "flow falls to `factor` (default 0.4) of nominal (a kinked hose, scale): return temperature "
        "and supply-return difference rise",
        "sensor_dropout": "return thermocouple open: return_temp at the int16 over-range value 3276.7",
        "stale_value": "the controller stops refreshing its measured values: registers freeze",
        "counter_rollover": "mold_shot_counter jumps to 2**32 - 3 and wraps within a few shots",
        "counter_reset": "mold_shot_counter resets to 0 (one-shot)",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
        setpoint_c: float = 80.0,
        flow_lmin: float = 30.0,
        heat_kw: float = 8.0,
        cycle_s: float = 60.0,
    ) -> None:
        self.nominal_flow = flow_lmin
        self.heat_kw = heat_kw
        self.cycle_s = cycle_s
        self.supply = FirstOrderLag(25.0, tau_s=300.0)  # starts at ambient
        self.supply_noise = ProcessValue(
            0.0, 0.15, 0.8, spike_probability=1e-4, rng=generator_for(seed, "supply")
        )
        self.return_noise = ProcessValue(
            0.0, 0.15, 0.8, spike_probability=1e-4, rng=generator_for(seed, "return")
        )
        self.flow_lag = FirstOrderLag(flow_lmin, tau_s=60.0)
        self.flow_noise = ProcessValue(0.0, 0.4, 0.7, spike_probability=1e-4, rng=generator_for(seed, "flow"))
        self.counter = WrappingCounter(0, 1 << 32)
        self.flow_factor = 1.0
        self.next_shot_s = cycle_s
        self.current: dict[str, float] = {}
        self._initial_setpoint = setpoint_c
        super().__init__(speed=speed, seed=seed, faults=faults, unit_ids=unit_ids)
        self.server.write("setpoint", setpoint_c)

    @property
    def setpoint(self) -> float:
        """The setpoint as held in its register (a client may have written it)."""
        f = self.server.fields["setpoint"]
        raw = int(self.server.units[self.server.default_unit].words[HR][f.address])
        return raw * f.scale

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        if name == "flow_loss":
            self.flow_factor = float(params.get("factor", 0.4)) if on else 1.0
        elif name == "counter_rollover" and on:
            self.counter.value = (1 << 32) - 3
            self.server.write_raw("mold_shot_counter", self.counter.value)
            self.current["mold_shot_counter"] = self.counter.value
        elif name == "counter_reset" and on:
            self.counter.reset()
            self.server.write_raw("mold_shot_counter", 0)
            self.current["mold_shot_counter"] = 0
            self.active_faults.pop("counter_reset", None)  # an event, not a state

    def _tick(self, dt_s: float) -> None:
        srv = self.server
        if dt_s > 0.0:
            now = self._steps * self.STEP_S
            while now >= self.next_shot_s:
                self.counter.increment()
                self.next_shot_s += self.cycle_s
            self.supply.advance(self.setpoint, dt_s)
            self.flow_lag.advance(self.nominal_flow * self.flow_factor, dt_s)
            for noise in (self.supply_noise, self.return_noise, self.flow_noise):
                noise.next()
        if "stale_value" in self.active_faults and self.current:
            return
        flow = max(self.flow_lag.value + self.flow_noise.last, 0.0)
        supply = self.supply.value + self.supply_noise.last
        delta_t = self.heat_kw / (_WATER_KW_PER_LMIN_K * max(flow, 1.0))
        cur = self.current
        cur["supply_temp"] = srv.write("supply_temp", supply)
        if "sensor_dropout" in self.active_faults:
            srv.write_raw("return_temp", 32767)
            cur["return_temp"] = 3276.7
        else:
            cur["return_temp"] = srv.write("return_temp", supply + delta_t + self.return_noise.last)
        cur["flow"] = srv.write("flow", flow)
        cur["setpoint"] = self.setpoint
        cur["pump_running"] = srv.write("pump_running", True)
        alarms = {
            ALARM_FLOW_LOW: flow < _FLOW_LOW_LMIN,
            ALARM_TEMP_DEVIATION: abs(supply - self.setpoint) > _DEVIATION_K,
            ALARM_PUMP_OFF: False,
        }
        word = sum(1 << bit for bit, on in alarms.items() if on)
        cur["alarm_word"] = srv.write("alarm_word", word)
        tables = srv.units[srv.default_unit]
        tables.write(DI, 0, [alarms[ALARM_FLOW_LOW], alarms[ALARM_TEMP_DEVIATION], alarms[ALARM_PUMP_OFF]])
        srv.write_raw("mold_shot_counter", self.counter.value)
        cur["mold_shot_counter"] = self.counter.value

    def values(self) -> dict[str, float]:
        """Engineering values as last written, at register precision (what a correct driver must read)."""
        return dict(self.current)


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent simulate mold-tcu`: serve until Ctrl-C."""
    return simulator_main(MoldTcuSimulator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
