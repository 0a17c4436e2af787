"""Simulated plating and anodizing line behind a Modbus TCP server (DOMAIN-ROOT.md §3): rectifiers and bath sensors, faults.

Three stations, each a tank with its own rectifier, as the line PLC shows them (there is no public
rectifier register map; the addresses are this simulator's own, 20 registers per station):

- `ni1`, `ni2`: Watts bright nickel, 55 °C, pH 4.2, 4 A/dm² on ~40 dm² racks for 20 min, 60 s
  between loads, rectifier ramp 30 s, brightener dosed every 50 Ah;
- `anod`: sulphuric type II anodizing at 21 °C, 1.5 A/dm² on ~100 dm² for 30 min in current
  control with a 60 s ramp: the voltage rises from ~12 to ~18 V as the oxide grows.

Per station: rectifier current, voltage and current setpoint, the bath's ampere-hour counter
(uint32, 0.01 Ah, monotonic), bath temperature, pH (nickel), conductivity, the load's area, dwell
time so far, loads done, brightener doses (nickel) and heater or chiller output; coils 0-2 say
whether each rectifier is on.

The agent sees each tank as a machine of its own (`plating` or `anodizing` profile): the device
config has one device per station on the same endpoint (they share the connection), its tags
named without the station prefix (`ni1_current` is `current` of device `plating-ni1`).

Models (simulator values (u)): U = E0 + I·(R_bath + R_contact + R_anode), anodizing U = U0 + a·δ(t)
with δ by the 720 rule; bath C·dT/dt = P_heat + U·I − P_cool − UA·(T − T_amb), τ = C/UA = 3 h, with a
proportional thermostat;
Watts pH rises ~0.003 per 100 Ah in 1000 L and an acid dosing pump holds it at 4.2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from edge_agent.simulators.modbus_server import (
    ModbusMachine,
    RegisterField,
    render_device_toml,
    simulator_main,
)
from edge_agent.simulators.process import ProcessValue, generator_for

HR, CO = "holding_register", "coil"
AMBIENT_C = 25.0
UM_PER_A_MIN_DM2_720 = 25.4 * 9.290304 / 720.0  # the 720 rule (720 A·min/ft² per mil)


@dataclass
class Station:
    """One tank and its rectifier: the recipe and the state of the current load."""

    prefix: str
    anodize: bool
    j_a_dm2: float
    dwell_s: float
    ramp_s: float
    setpoint_c: float
    area_dm2: float = 40.0
    e0_v: float = 2.5
    r_bath_ohm: float = 0.02
    r_contact_ohm: float = 0.001
    r_anode_ohm: float = 0.0
    v_max: float = 12.0
    volume_l: float = 1000.0
    heat_kw: float = 15.0
    """Heater power (plating) or chiller power (anodizing), kW."""
    temp_c: float = 0.0
    ph: float = 4.2
    ah: float = 0.0
    ah_since_dose: float = 0.0
    doses: int = 0
    loads: int = 0
    in_tank_s: float = 0.0
    gap_s: float = 60.0
    current_a: float = 0.0
    voltage_v: float = 0.0
    setpoint_a: float = 0.0
    heater: float = 0.0
    oxide_um: float = 0.0
    dwell_factor: float = 1.0


def station_fields(prefix: str, base: int, anodize: bool) -> tuple[RegisterField, ...]:
    """The 20-register block of one station (pH and brightener doses only for a plating bath)."""
    fields = [
        RegisterField(f"{prefix}_current", HR, base + 0, "uint16", scale=0.1, unit="A"),
        RegisterField(f"{prefix}_voltage", HR, base + 1, "uint16", scale=0.01, unit="V"),
        RegisterField(f"{prefix}_current_setpoint", HR, base + 2, "uint16", scale=0.1, unit="A"),
        RegisterField(f"{prefix}_ampere_hours", HR, base + 3, "uint32", "CDAB", scale=0.01, unit="Ah"),
        RegisterField(f"{prefix}_bath_temp", HR, base + 5, "int16", scale=0.1, unit="°C"),
        RegisterField(f"{prefix}_conductivity", HR, base + 7, "uint16", scale=0.1, unit="mS/cm"),
        RegisterField(f"{prefix}_load_area", HR, base + 8, "uint16", scale=0.1, unit="dm²"),
        RegisterField(f"{prefix}_dwell_time", HR, base + 9, "uint16", unit="s"),
        RegisterField(f"{prefix}_load_counter", HR, base + 10, "uint16"),
        RegisterField(
            f"{prefix}_{'chiller' if anodize else 'heater'}_output",
            HR,
            base + 12,
            "uint16",
            scale=0.1,
            unit="%",
        ),
    ]
    if not anodize:
        fields.insert(5, RegisterField(f"{prefix}_ph", HR, base + 6, "uint16", scale=0.01, unit="pH"))
        fields.insert(10, RegisterField(f"{prefix}_brightener_doses", HR, base + 11, "uint16"))
    return tuple(fields)


#: The register map (protocol addresses); config/plating.toml is rendered from it.
PLATING_FIELDS: tuple[RegisterField, ...] = (
    *station_fields("ni1", 0, False),
    *station_fields("ni2", 20, False),
    *station_fields("anod", 40, True),
    RegisterField("ni1_rectifier_on", CO, 0, "bool"),
    RegisterField("ni2_rectifier_on", CO, 1, "bool"),
    RegisterField("anod_rectifier_on", CO, 2, "bool"),
)

STATIONS = ("ni1", "ni2", "anod")
#: The profile of each station's tank.
STATION_PROFILE = {"ni1": "plating", "ni2": "plating", "anod": "anodizing"}
DOSE_EVERY_AH = 50.0
#: pH the acid dosing pump of a nickel tank holds.
PH_SETPOINT = 4.2
#: Poll interval of the pH (s): a bath's pH moves over hours; charted every second, its EWMA would
#: judge 3600 readings an hour and alarm falsely every few minutes.
PH_INTERVAL_S = 10.0
#: Noise of the pH probes (a glass electrode in a warm nickel bath reads to about ±0.02).
PH_NOISE = 0.02


def tank_fields(station: str) -> tuple[RegisterField, ...]:
    """The registers of one station, named as the tank's tags (without the station prefix)."""
    prefix = f"{station}_"
    return tuple(
        dataclasses.replace(f, name=f.name.removeprefix(prefix))
        for f in PLATING_FIELDS
        if f.name.startswith(prefix)
    )


def tanks_toml(
    prefix: str,
    endpoint: str,
    unit_id: int = 1,
    poll_interval: float = 1.0,
    stations: Sequence[str] = STATIONS,
) -> str:
    """One `[[devices]]` block per tank, `PREFIX-STATION`, all on the line's endpoint; the pH every PH_INTERVAL_S."""
    text = "\n".join(
        render_device_toml(
            tank_fields(station),
            name=f"{prefix}-{station}",
            profile=STATION_PROFILE[station],
            endpoint=endpoint,
            unit_id=unit_id,
            poll_interval=poll_interval,
        )
        for station in stations
    )
    return text.replace('unit = "pH"\n', f'unit = "pH"\ninterval = {PH_INTERVAL_S!r}\n')


class PlatingLineSimulator(ModbusMachine):
    """Two Watts nickel tanks and a type II anodizing tank with rectifiers, thermostats and dosing; injectable faults."""

    FIELDS = PLATING_FIELDS
    PROFILE = "plating"
    KIND = "plating"
    DEFAULT_NAME = "plating"
    DEFAULT_PORT = 5024
    PROCESS_FAULTS: ClassVar[dict[str, str]] = {
        "anode_passivation": "the anodes of `station` (ni1, the default, or ni2) passivate or their bags clog: "
        "the resistance grows by `ohm_per_h` (default 0.01) Ω per hour, the voltage rises at constant current",
        "rack_contact": "a bad rack or bus-bar contact on `station` (default ni2) adds `ohm` (default 0.015) Ω: "
        "the voltage steps up, and the current falls once the rectifier reaches its voltage limit",
        "ph_drift": "the pH of `station` (default ni1) rises by `per_h` (default 0.3) per hour and acid dosing stops",
        "heater_failure": "the heater of `station` (default ni1) fails: the bath cools towards ambient",
        "chiller_failure": "the anodizing tank's chiller fails: the rectifier's heat warms the bath out of its band",
        "brightener_depletion": "the brightener pump of `station` (default ni1) stops: no dose while the "
        "ampere-hours since the last one grow past the dosing interval",
        "wrong_recipe": "`station` (default ni1) runs a recipe for another part: the current setpoint is "
        "`factor` (default 1.4) times right for the load's area",
        "short_dwell": "the hoist takes the loads of `station` (default ni1) out at `factor` (default 0.6) "
        "of the dwell: less charge, a thinner deposit",
        "anodize_burning": "burning on the anodizing rack: the current spikes to `factor` (default 2) times "
        "for `seconds` (default 5) and the voltage collapses, then the fault clears",
        "current_sensor_failure": "the current shunt of `station` (default ni1) fails: the rectifier reports "
        "0 A while its voltage is up",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Sequence[str] | dict[str, dict[str, float | str]] = (),
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        self.stations = {
            "ni1": Station("ni1", False, 4.0, 1200.0, 30.0, 55.0),
            "ni2": Station("ni2", False, 4.0, 1200.0, 30.0, 55.0, in_tank_s=600.0),
            "anod": Station(
                "anod",
                True,
                1.5,
                1800.0,
                60.0,
                21.0,
                area_dm2=100.0,
                e0_v=12.0,
                r_bath_ohm=0.0,
                v_max=60.0,
                volume_l=600.0,
                heat_kw=8.0,
            ),
        }
        for st in self.stations.values():
            st.temp_c = st.setpoint_c
        # (sd, AR(1) phi): the probes' reading noise is white, the rectifiers' and the bath's ripple is not
        self.noise = {
            f"{station}_{what}": ProcessValue(
                0.0, sd, phi, spike_probability=0.0, rng=generator_for(seed, f"{station}_{what}")
            )
            for station in STATIONS
            for what, sd, phi in (
                ("current", 0.003, 0.7),
                ("voltage", 0.01, 0.7),
                ("temp", 0.08, 0.7),
                ("ph", PH_NOISE, 0.0),
            )
        }
        self.area_rng = generator_for(seed, "area")
        self.burning_s = 0.0
        self.current: dict[str, float] = {}
        super().__init__(speed=speed, seed=seed, faults=faults, unit_ids=unit_ids)

    def _target(self, fault: str, default: str) -> Station | None:
        params = self.active_faults.get(fault)
        if params is None:
            return None
        name = str(params.get("station", default))
        if name not in self.stations:
            raise ValueError(f"{fault}: station must be one of {', '.join(STATIONS)}, got {name!r}")
        return self.stations[name]

    def _apply_process_fault(self, name: str, on: bool, params: dict[str, float | str]) -> None:
        station = str(params.get("station", "ni2" if name == "rack_contact" else "ni1"))
        if name != "chiller_failure" and name != "anodize_burning" and station not in self.stations:
            self.active_faults.pop(name, None)
            raise ValueError(f"{name}: station must be one of {', '.join(STATIONS)}, got {station!r}")
        if name == "anodize_burning" and on:
            self.burning_s = float(params.get("seconds", 5.0))
        if name == "rack_contact":
            for st in self.stations.values():
                st.r_contact_ohm = 0.001
            if on:
                self.stations[station].r_contact_ohm += float(params.get("ohm", 0.015))
        if name == "anode_passivation" and not on:
            for st in self.stations.values():
                st.r_anode_ohm = 0.0

    # ------------------------------------------------------------------ process

    def _step_station(self, st: Station, dt: float) -> None:
        f = self.active_faults
        dwell = st.dwell_s * (
            float(f["short_dwell"].get("factor", 0.6)) if self._target("short_dwell", "ni1") is st else 1.0
        )
        st.in_tank_s += dt
        if st.in_tank_s >= dwell + st.gap_s:
            st.in_tank_s = 0.0
            st.area_dm2 = (100.0 if st.anodize else 40.0) * float(self.area_rng.uniform(0.95, 1.05))
            st.oxide_um = 0.0
        if st.in_tank_s >= dwell and st.in_tank_s - dt < dwell:
            st.loads += 1
        plating = st.in_tank_s < dwell
        recipe = st.j_a_dm2 * st.area_dm2
        if self._target("wrong_recipe", "ni1") is st:
            recipe *= float(f["wrong_recipe"].get("factor", 1.4))
        st.setpoint_a = recipe if plating else 0.0
        ramp = min(st.in_tank_s / st.ramp_s, 1.0) if plating else 0.0
        if self._target("anode_passivation", "ni1") is st:
            st.r_anode_ohm += float(f["anode_passivation"].get("ohm_per_h", 0.01)) * dt / 3600.0
        current = recipe * ramp
        if st.anodize:
            st.oxide_um += UM_PER_A_MIN_DM2_720 * current / st.area_dm2 * dt / 60.0
            # no current, no polarisation: a rectifier starting its ramp reads 0 V as well as 0 A
            voltage = (st.e0_v + 0.41 * st.oxide_um) * (0.3 + 0.7 * ramp) if current > 0 else 0.0
        else:
            kappa = 1.0 + 0.02 * (st.temp_c - st.setpoint_c)  # a warmer bath conducts better
            resistance = st.r_bath_ohm / kappa + st.r_contact_ohm + st.r_anode_ohm
            voltage = st.e0_v + current * resistance if current > 0 else 0.0
            if voltage > st.v_max:  # the rectifier holds its voltage limit: the current falls
                current = max((st.v_max - st.e0_v) / resistance, 0.0)
                voltage = st.v_max
        if st.anodize and self.burning_s > 0 and plating:
            current *= float(f.get("anodize_burning", {}).get("factor", 2.0))
            voltage *= 0.6
            self.burning_s -= dt
            if self.burning_s <= 0:
                self.active_faults.pop("anodize_burning", None)
        st.current_a = current
        st.voltage_v = voltage
        st.ah += current * dt / 3600.0
        # thermostat and heat balance: C dT/dt = P_heat + U·I - P_cool - UA (T - T_amb)
        c_kj_k = st.volume_l * 4.18
        ua_kw_k = c_kj_k / 10800.0  # tau = C/UA = 3 h
        joule_kw = voltage * current / 1000.0
        loss_kw = ua_kw_k * (st.temp_c - AMBIENT_C)
        # proportional thermostats (output 0..1, 2 per K, half power at the setpoint): the bath sits within
        # a few tenths of a kelvin of its setpoint, so its resistance does not swing with an on/off cycle
        if st.anodize:
            failed = "chiller_failure" in f
            st.heater = 0.0 if failed else min(max(0.5 + 2.0 * (st.temp_c - st.setpoint_c), 0.0), 1.0)
            net = joule_kw - loss_kw - st.heater * st.heat_kw
        else:
            failed = self._target("heater_failure", "ni1") is st
            st.heater = 0.0 if failed else min(max(0.5 + 2.0 * (st.setpoint_c - st.temp_c), 0.0), 1.0)
            net = st.heater * st.heat_kw + joule_kw - loss_kw
        st.temp_c += net * dt / c_kj_k
        if not st.anodize:
            drifting = self._target("ph_drift", "ni1") is st
            st.ph += 0.003 * (current * dt / 3600.0) / 100.0
            if drifting:
                st.ph += float(f["ph_drift"].get("per_h", 0.3)) * dt / 3600.0
            elif st.ph > PH_SETPOINT:
                # the acid dosing pump holds the pH (a 10-minute proportional loop): without it the
                # rise in use would show as a drift on the pH chart within hours
                st.ph += (PH_SETPOINT - st.ph) * min(dt / 600.0, 1.0)
            st.ah_since_dose += current * dt / 3600.0
            if st.ah_since_dose >= DOSE_EVERY_AH and self._target("brightener_depletion", "ni1") is not st:
                st.ah_since_dose -= DOSE_EVERY_AH
                st.doses += 1

    def _tick(self, dt_s: float) -> None:
        if dt_s > 0.0:
            for st in self.stations.values():
                self._step_station(st, dt_s)
        srv = self.server
        cur = self.current
        for name, st in self.stations.items():
            noise = self.noise
            i = st.current_a * (1.0 + noise[f"{name}_current"].next()) if st.current_a > 0 else 0.0
            u = st.voltage_v + noise[f"{name}_voltage"].next() if st.voltage_v > 0 else 0.0
            if self._target("current_sensor_failure", "ni1") is st:
                i = 0.0
            values = {
                f"{name}_current": max(i, 0.0),
                f"{name}_voltage": max(u, 0.0),
                f"{name}_current_setpoint": st.setpoint_a,
                f"{name}_bath_temp": st.temp_c + noise[f"{name}_temp"].next(),
                f"{name}_conductivity": (620.0 if st.anodize else 95.0)
                * (1.0 + 0.02 * (st.temp_c - st.setpoint_c)),
                f"{name}_load_area": st.area_dm2,
                f"{name}_dwell_time": min(st.in_tank_s, st.dwell_s * 2),
                f"{name}_load_counter": st.loads % 65536,
                f"{name}_{'chiller' if st.anodize else 'heater'}_output": 100.0 * st.heater,
                f"{name}_rectifier_on": st.setpoint_a > 0,
            }
            if not st.anodize:
                values[f"{name}_ph"] = st.ph + noise[f"{name}_ph"].next()
                values[f"{name}_brightener_doses"] = st.doses % 65536
            for field, value in values.items():
                cur[field] = srv.write(field, value)
            raw = math.floor(st.ah * 100.0) % (1 << 32)
            srv.write_raw(f"{name}_ampere_hours", raw)
            cur[f"{name}_ampere_hours"] = round(raw * 0.01, 2)

    def values(self) -> dict[str, float]:
        """Engineering values as last written, at register precision (what a correct driver must read)."""
        return dict(self.current)

    def device_config(
        self, name: str | None = None, endpoint: str | None = None, poll_interval: float = 1.0
    ) -> str:
        """One `[[devices]]` block per tank (`NAME-ni1`, `NAME-ni2`, `NAME-anod`; NAME defaults to `plating`)."""
        return tanks_toml(
            name or self.DEFAULT_NAME, endpoint or self.endpoint, self.server.default_unit, poll_interval
        )

    @classmethod
    def config_file_text(cls, endpoint: str) -> str:
        """The shipped config/plating.toml: the three tanks of the line as devices, no sinks."""
        header = (
            "# Device config of the plating simulator (`edge-agent simulate plating --port PORT`).\n"
            "# Generated from simulators/plating.py: `edge-agent simulate plating --print-config`.\n"
            "# One device per tank, all on the line PLC's endpoint (they share its connection): two Watts\n"
            "# nickel tanks (profile plating) and a type II anodizing tank (profile anodizing).\n"
            "# Register addresses are protocol addresses (address_base = 0).\n"
        )
        return header + tanks_toml(cls.DEFAULT_NAME, endpoint)


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent simulate plating`: serve until Ctrl-C."""
    return simulator_main(PlatingLineSimulator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
