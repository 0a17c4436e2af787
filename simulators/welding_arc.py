"""Simulated robotic GMAW/MAG welding power source behind a Modbus TCP server (DOMAIN-ROOT.md §2), with faults.

The process image follows what robot interfaces of welding sources carry (actual current, voltage,
wire feed speed, motor current, gas flow, arc on; DOMAIN-ROOT.md §2 [23]); there is no public
standard map, so the addresses are this simulator's own. A robot welds 250 mm seams at 550 mm/min
(~27 s of arc) with ~10 s between seams. When a seam ends the source latches its per-weld values
(means, arc time, arc energy Σu·i·Δt, arc breaks) and a 50 ms current/voltage trace at 10 kHz taken
mid-seam, then increments weld_counter: a reader that sees the counter move sees that weld's values.

Traces are blocks of input registers (the `points` tags current_trace and voltage_trace
of the shipped config): TRACE_CURRENT_AT.. (500 × uint16, 0.1 A) and TRACE_VOLTAGE_AT..
(500 × uint16, 0.01 V), sampled every trace_sample_us µs, trace_points long.

Short-circuit transfer (GMAW-S, simulator values (u)): arcs of ~8 ms at 17-22 V with a decaying
current, shorts of ~2 ms at 1-5 V with the current ramping to ~2× its mean; the period CV is ~15 %
when stable, ~50 % when not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from edge_agent.simulators.modbus_server import ModbusMachine, RegisterField, simulator_main
from edge_agent.simulators.process import ProcessValue, WrappingCounter, generator_for

IR, HR, DI = "input_register", "holding_register", "discrete_input"

TRACE_POINTS = 500
TRACE_SAMPLE_US = 100
TRACE_CURRENT_AT = 100
TRACE_VOLTAGE_AT = TRACE_CURRENT_AT + TRACE_POINTS

#: The register map (protocol addresses); config/welding-arc.toml is rendered from it.
WELDING_ARC_FIELDS: tuple[RegisterField, ...] = (
    RegisterField("source_state", IR, 0, "uint16"),
    RegisterField("welding_current", IR, 1, "uint16", scale=0.1, unit="A"),
    RegisterField("welding_voltage", IR, 2, "uint16", scale=0.01, unit="V"),
    RegisterField("wire_feed_speed", IR, 3, "uint16", scale=0.01, unit="m/min"),
    RegisterField("motor_current", IR, 4, "uint16", scale=0.01, unit="A"),
    RegisterField("gas_flow", IR, 5, "uint16", scale=0.1, unit="L/min"),
    RegisterField("travel_speed", IR, 6, "uint16", scale=0.1, unit="mm/min"),
    RegisterField("weld_counter", IR, 8, "uint32", "CDAB"),
    # per weld, latched when weld_counter moves
    RegisterField("weld_current_mean", IR, 10, "uint16", scale=0.1, unit="A"),
    RegisterField("weld_voltage_mean", IR, 11, "uint16", scale=0.01, unit="V"),
    RegisterField("weld_wire_feed_mean", IR, 12, "uint16", scale=0.01, unit="m/min"),
    RegisterField("weld_travel_speed", IR, 13, "uint16", scale=0.1, unit="mm/min"),
    RegisterField("weld_gas_flow_mean", IR, 14, "uint16", scale=0.1, unit="L/min"),
    RegisterField("weld_arc_time", IR, 15, "uint16", scale=0.01, unit="s"),
    RegisterField("weld_arc_energy", IR, 16, "uint32", "CDAB", unit="J"),
    RegisterField("weld_arc_breaks", IR, 18, "uint16"),
    RegisterField("seam_number", IR, 19, "uint16"),
    RegisterField("trace_points", IR, 20, "uint16"),
    RegisterField("trace_sample_us", IR, 21, "uint16", unit="us"),
    RegisterField("job_number", HR, 0, "uint16"),
    RegisterField("arc_on", DI, 0, "bool"),
)

#: The trace tags of the device config: the weld's current and voltage blocks, latched by the weld counter.
TRACE_TAGS_TOML = f"""
[[devices.tags]]
name = "current_trace"
table = "input_register"
address = {TRACE_CURRENT_AT}
type = "uint16"
points = {TRACE_POINTS}
scale = 0.1
unit = "A"
latched_by = "weld_counter"

[[devices.tags]]
name = "voltage_trace"
table = "input_register"
address = {TRACE_VOLTAGE_AT}
type = "uint16"
points = {TRACE_POINTS}
scale = 0.01
unit = "V"
latched_by = "weld_counter"
"""

#: source_state values: 0 idle (between seams), 2 welding, 3 error (the arc did not strike)
IDLE, WELDING, ERROR = 0, 2, 3

SEAM_MM = 250.0
TRAVEL_MM_MIN = 550.0
GAP_S = 10.0
CURRENT_A = 135.0
VOLTAGE_V = 20.0
WFS_M_MIN = 4.5
MOTOR_A = 1.2
GAS_L_MIN = 12.0
OPEN_CIRCUIT_V = 48.0


def gmaw_trace(
    rng: np.random.Generator, current_a: float, voltage_v: float, period_cv: float, noise_v: float
) -> tuple[np.ndarray, np.ndarray]:
    """(current, voltage) of TRACE_POINTS samples of short-circuit transfer, scaled to the given means."""
    arc = np.zeros(TRACE_POINTS, bool)
    i = np.empty(TRACE_POINTS)
    pos, arcing = int(rng.integers(0, 60)), False  # the window opens inside an arc period
    i[:pos] = np.linspace(1.0, 0.75, pos)
    arc[:pos] = True
    while pos < TRACE_POINTS:
        mean = 80.0 if arcing else 20.0
        length = max(3, int(rng.normal(mean, mean * period_cv)))
        end = min(pos + length, TRACE_POINTS)
        m = end - pos
        full = np.linspace(1.35, 0.75, length) if arcing else np.linspace(0.75, 2.0, length)
        i[pos:end] = full[:m]
        arc[pos:end] = arcing
        pos, arcing = end, not arcing
    i *= current_a / i.mean()
    short_v = 3.0 + rng.normal(0.0, 0.5, TRACE_POINTS)
    share = arc.mean()
    arc_level = (voltage_v - (1.0 - share) * 3.0) / max(share, 1e-9)
    u = np.where(arc, arc_level + rng.normal(0.0, noise_v, TRACE_POINTS), short_v)
    return i, np.clip(u, 0.0, None)


class ArcWeldingSimulator(ModbusMachine):
    """A GMAW power source on a robot: seams of ~27 s, per-weld values and a trace per weld, injectable faults."""

    FIELDS = WELDING_ARC_FIELDS
    PROFILE = "welding_arc"
    KIND = "welding-arc"
    DEFAULT_NAME = "weld-arc-1"
    DEFAULT_PORT = 5022
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {
        "worn_contact_tip": "a worn contact tip or feed drag: wire feed speed and current fall by `drop` "
        "(default 0.12), the drive motor current rises, the voltage gets noisy",
        "gas_loss": "shielding gas flow falls to `flow_lmin` L/min (default 4): an empty bottle, a kinked hose",
        "wrong_travel_speed": "the robot travels at `factor` (default 0.7) of the programmed speed: "
        "heat input steps up",
        "unstable_transfer": "unstable short-circuit transfer: the short-circuit period CV rises to `cv` "
        "(default 0.5), arc breaks appear",
        "no_arc": "the arc does not strike: seams run with 0 A at the open-circuit voltage, the trace has no arc",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        self.noise = {
            name: ProcessValue(0.0, sd, 0.5, spike_probability=0.0, rng=generator_for(seed, name))
            for name, sd in (
                ("current", 2.0),
                ("voltage", 0.15),
                ("wfs", 0.04),
                ("gas", 0.3),
                ("travel", 3.0),
            )
        }
        self.trace_rng = generator_for(seed, "trace")
        self.weld_counter = WrappingCounter(0, 1 << 32)
        self.seam = 0
        self.arc_s = SEAM_MM / TRAVEL_MM_MIN * 60.0
        self.phase_s = 0.0  # time into the current seam + gap
        self.sums: dict[str, float] = {}
        self.current: dict[str, float] = {}
        self.last_trace: tuple[np.ndarray, np.ndarray] = (np.zeros(TRACE_POINTS), np.zeros(TRACE_POINTS))
        super().__init__(speed=speed, seed=seed, faults=faults, unit_ids=unit_ids)
        self.current["job_number"] = self.server.write("job_number", 7)
        self.current["trace_points"] = self.server.write("trace_points", TRACE_POINTS)
        self.current["trace_sample_us"] = self.server.write("trace_sample_us", TRACE_SAMPLE_US)

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        """Faults act through `active_faults` on the next step."""

    def _param(self, fault: str, key: str, default: float) -> float:
        return float(self.active_faults[fault].get(key, default))

    def _live(self) -> dict[str, float]:
        """The actual values of one step of arc."""
        f = self.active_faults
        drop = self._param("worn_contact_tip", "drop", 0.12) if "worn_contact_tip" in f else 0.0
        travel = TRAVEL_MM_MIN * (
            self._param("wrong_travel_speed", "factor", 0.7) if "wrong_travel_speed" in f else 1.0
        )
        gas = self._param("gas_loss", "flow_lmin", 4.0) if "gas_loss" in f else GAS_L_MIN
        noisy = 4.0 if "worn_contact_tip" in f else 1.0
        if "no_arc" in f:
            return {
                "welding_current": 0.0,
                "welding_voltage": OPEN_CIRCUIT_V,
                "wire_feed_speed": 0.0,
                "motor_current": 0.0,
                "gas_flow": max(gas + self.noise["gas"].next(), 0.0),
                "travel_speed": travel + self.noise["travel"].next(),
            }
        return {
            "welding_current": CURRENT_A * (1.0 - 0.85 * drop) + self.noise["current"].next() * noisy,
            "welding_voltage": VOLTAGE_V + self.noise["voltage"].next() * noisy,
            "wire_feed_speed": WFS_M_MIN * (1.0 - drop) + self.noise["wfs"].next(),
            "motor_current": MOTOR_A * (1.0 + 3.0 * drop),
            "gas_flow": max(gas + self.noise["gas"].next(), 0.0),
            "travel_speed": travel + self.noise["travel"].next(),
        }

    def _end_weld(self) -> None:
        srv = self.server
        n = max(self.sums.get("n", 0.0), 1.0)
        means = {
            k: self.sums.get(k, 0.0) / n
            for k in ("welding_current", "welding_voltage", "wire_feed_speed", "gas_flow", "travel_speed")
        }
        f = self.active_faults
        if "no_arc" in f:
            trace = (np.zeros(TRACE_POINTS), np.full(TRACE_POINTS, OPEN_CIRCUIT_V))
        else:
            cv = self._param("unstable_transfer", "cv", 0.5) if "unstable_transfer" in f else 0.15
            noise = 1.2 if "worn_contact_tip" in f else 0.3
            trace = gmaw_trace(self.trace_rng, means["welding_current"], means["welding_voltage"], cv, noise)
        self.last_trace = trace
        arc_time = 0.0 if "no_arc" in f else self.sums.get("arc_s", 0.0)
        # a waveform-controlled source integrates u·i itself: the mean of the product, not Ū·Ī
        power = float(np.mean(trace[0] * trace[1]))
        breaks = 0.0
        if "unstable_transfer" in f:
            breaks = float(self.trace_rng.poisson(2.0))
        latched = {
            "weld_current_mean": means["welding_current"],
            "weld_voltage_mean": means["welding_voltage"],
            "weld_wire_feed_mean": means["wire_feed_speed"],
            "weld_travel_speed": means["travel_speed"],
            "weld_gas_flow_mean": means["gas_flow"],
            "weld_arc_time": arc_time,
            "weld_arc_energy": power * arc_time,
            "weld_arc_breaks": breaks,
            "seam_number": float(self.seam % 12 + 1),
        }
        for name, value in latched.items():
            self.current[name] = srv.write(name, value)
        tables = srv.units[srv.default_unit]
        tables.write(IR, TRACE_CURRENT_AT, np.clip(np.rint(trace[0] / 0.1), 0, 65535).astype(int).tolist())
        tables.write(IR, TRACE_VOLTAGE_AT, np.clip(np.rint(trace[1] / 0.01), 0, 65535).astype(int).tolist())
        self.weld_counter.increment()
        srv.write_raw("weld_counter", self.weld_counter.value)
        self.current["weld_counter"] = self.weld_counter.value
        self.seam += 1
        self.sums = {}

    def _tick(self, dt_s: float) -> None:
        srv = self.server
        if dt_s > 0.0:
            self.phase_s += dt_s
        welding = self.phase_s < self.arc_s
        if welding:
            live = self._live()
            if dt_s > 0.0:
                for k, v in live.items():
                    self.sums[k] = self.sums.get(k, 0.0) + v
                self.sums["n"] = self.sums.get("n", 0.0) + 1.0
                self.sums["arc_s"] = self.sums.get("arc_s", 0.0) + dt_s
            state = ERROR if "no_arc" in self.active_faults else WELDING
        else:
            if self.sums:
                self._end_weld()
            live = dict.fromkeys(
                (
                    "welding_current",
                    "welding_voltage",
                    "wire_feed_speed",
                    "motor_current",
                    "gas_flow",
                    "travel_speed",
                ),
                0.0,
            )
            state = IDLE
            if self.phase_s >= self.arc_s + GAP_S:
                self.phase_s -= self.arc_s + GAP_S
        for name, value in live.items():
            self.current[name] = srv.write(name, max(value, 0.0))
        self.current["source_state"] = srv.write("source_state", state)
        self.current["arc_on"] = srv.write("arc_on", state == WELDING)
        self.current.setdefault("weld_counter", 0)

    def values(self) -> dict[str, float]:
        """Engineering values as last written, at register precision (what a correct driver must read)."""
        return dict(self.current)

    def trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(current A, voltage V) of the last weld's trace at register precision, as a reader decodes the blocks."""
        words = self.server.units[self.server.default_unit].words[IR]
        i = words[TRACE_CURRENT_AT : TRACE_CURRENT_AT + TRACE_POINTS].astype(float) * 0.1
        u = words[TRACE_VOLTAGE_AT : TRACE_VOLTAGE_AT + TRACE_POINTS].astype(float) * 0.01
        return i, u

    @property
    def weld_seconds(self) -> float:
        """Simulated seconds from one seam start to the next."""
        return self.arc_s + GAP_S

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
    """`edge-agent simulate welding-arc`: serve until Ctrl-C."""
    return simulator_main(ArcWeldingSimulator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
