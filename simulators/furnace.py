"""Simulated sealed-quench carburizing furnace over OPC UA: PID-driven FOPDT zones, recipe, carbon, quench, faults.

There is no OPC UA companion specification for heat-treatment furnaces, so the address space is a
vendor-style one in the namespace `urn:edge-agent:sim:furnace`: Furnace_1/Information (with the
AMS2750 furnace class), Zones/Zone_<n>/{Temperature, HeaterOutput}, Load/Temperature,
Atmosphere/{CarbonPotential, CarbonSetpoint}, Quench/{OilTemperature, Active}, Door/Open,
Recipe/{Step, StepName, BatchId, Setpoint}, and a FurnaceStateEventType event on every door,
quench or recipe-step change.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from asyncua import Server, ua
from asyncua.common.node import Node

from edge_agent.simulators.opcua_server import (
    OpcUaSimulator,
    SimSecurity,
    nid,
    now_utc,
    simulator_main,
    to_datavalue,
)

SIM_URI = "urn:edge-agent:sim:furnace"
STATE_EVENT_ID = 3001
AMBIENT_C = 25.0
TYPE_K_UPSCALE_C = 1372.0  # a burnt-out type K thermocouple reads full scale on most instruments


@dataclass(frozen=True)
class RecipeStep:
    """One step of the heat-treatment program."""

    name: str
    setpoint_c: float
    duration_s: float
    carbon_setpoint: float
    ramp_c_per_min: float | None = None
    door_open_s: float = 0.0
    quench: bool = False


#: A carburizing cycle of about four hours: load, ramp, boost, diffuse, drop to hardening, quench.
CARBURIZING = (
    RecipeStep("load", 850.0, 300.0, 0.40, door_open_s=60.0),
    RecipeStep("ramp", 925.0, 1200.0, 0.80, ramp_c_per_min=5.0),
    RecipeStep("boost", 925.0, 5400.0, 1.10),
    RecipeStep("diffuse", 925.0, 3600.0, 0.80),
    RecipeStep("harden", 845.0, 1800.0, 0.80, ramp_c_per_min=4.0),
    RecipeStep("quench", 845.0, 900.0, 0.80, door_open_s=20.0, quench=True),
)


class Zone:
    """A heating zone: first order plus dead time, driven by a PI controller (overshoot comes from the dead time)."""

    def __init__(self, gain_c: float, tau_s: float, dead_s: float, start_c: float) -> None:
        self.gain_c = gain_c
        self.tau_s = tau_s
        self.dead_s = dead_s
        self.temp_c = start_c
        self.integral = (start_c - AMBIENT_C) / gain_c
        self.output = self.integral
        self.history: deque[tuple[float, float]] = deque()
        self.max_output = 1.0
        self.coupling_s = 400.0  # radiation and circulation between zones

    def step(
        self,
        t_s: float,
        dt_s: float,
        setpoint_c: float,
        kp: float,
        ti_s: float,
        loss_c: float,
        neighbours_c: float,
    ) -> None:
        """Advance by dt_s: PI on the measured error, heater power delayed by the dead time, heat from the neighbours."""
        error = setpoint_c - self.temp_c
        raw = kp * error + self.integral
        self.output = min(self.max_output, max(0.0, raw))
        if 0.0 <= raw <= self.max_output:  # anti-windup: integrate only while not saturated
            self.integral += kp * error * dt_s / ti_s
        self.history.append((t_s, self.output))
        delayed = self.history[0][1]
        while len(self.history) > 1 and self.history[1][0] <= t_s - self.dead_s:
            self.history.popleft()
            delayed = self.history[0][1]
        target = AMBIENT_C + self.gain_c * delayed - loss_c
        self.temp_c += (target - self.temp_c) * (1.0 - math.exp(-dt_s / self.tau_s))
        self.temp_c += (neighbours_c - self.temp_c) * (1.0 - math.exp(-dt_s / self.coupling_s))


class FurnaceSimulator(OpcUaSimulator):
    """A sealed-quench furnace running CARBURIZING in a loop; `speed=240` runs the 4 h program in a minute.

    Faults (`set_fault(name, on, **params)`): FAULTS, name -> what it does and its parameters.
    """

    kind: ClassVar[str] = "furnace"
    default_port: ClassVar[int] = 4841
    FAULTS: ClassVar[dict[str, str]] = {
        "thermocouple_burnout": "the thermocouple of `zone` 1..4 (default 1) breaks: it reads upscale "
        "(`mode` upscale, the default) or ambient (`mode` ambient)",
        "zone_heater_failure": "the heaters of `zone` (default 3) give at most `max_output` 0..1 (default 0.6): "
        "the zone cannot hold its set point",
        "overshoot": "a controller with too short an integral time `ti_s` (default 150 s) overshoots ~14 °C "
        "after a ramp",
        "calibration_drift": "the thermocouple of `zone` (default 1) drifts away from the truth by `rate` °C "
        "per hour (default 2)",
    }
    max_substep_s: float = 5.0

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: tuple[str, ...] | list[str] = (),
        security: SimSecurity | None = None,
        furnace_class: int = 2,
        recipe: tuple[RecipeStep, ...] = CARBURIZING,
        machine: str = "Furnace_1",
    ) -> None:
        self.machine = machine
        self.furnace_class = furnace_class
        self.recipe = recipe
        super().__init__(speed=speed, seed=seed, faults=faults, security=security)
        # Slightly different heaters per zone, so the uniformity spread is never exactly zero.
        gains = [1100.0 * (1.0 + d) for d in (0.010, -0.005, 0.0, 0.008)]
        start = recipe[0].setpoint_c
        self.zones = [Zone(g, tau_s=1200.0, dead_s=90.0, start_c=start) for g in gains]
        self.load_c = start - 30.0
        self.carbon = recipe[0].carbon_setpoint
        self.oil_c = 60.0
        self.batch_id = 1
        self.step_index = 0
        self.step_elapsed_s = 0.0
        self.model_time_s = 0.0
        self.setpoint_c = start
        self.door_open = False
        self.quench_active = False
        self.state_changes = 0
        self._nodes: dict[str, tuple[Node, ua.VariantType]] = {}
        self._event: Any = None
        self._state_log: list[tuple[bool, bool, int, int]] = [self._state()]

    def _state(self) -> tuple[bool, bool, int, int]:
        return (self.door_open, self.quench_active, self.step_index, self.batch_id)

    def namespace_uris(self) -> list[str]:
        """The furnace's vendor namespace."""
        return [SIM_URI]

    # ------------------------------------------------------------------ process

    @property
    def step(self) -> RecipeStep:
        """The recipe step running now."""
        return self.recipe[self.step_index]

    def advance(self, dt_s: float) -> None:
        """Advance the recipe and the thermal model in sub-steps short against the dead time."""
        remaining = dt_s
        while remaining > 1e-9:
            h = min(remaining, self.max_substep_s)
            self._substep(h)
            remaining -= h

    def _substep(self, h: float) -> None:
        self.model_time_s += h
        t = self.model_time_s
        self.step_elapsed_s += h
        if self.step_elapsed_s >= self.step.duration_s:
            self.step_elapsed_s = 0.0
            self.step_index = (self.step_index + 1) % len(self.recipe)
            if self.step_index == 0:
                self.batch_id += 1
            self._state_log.append(self._state())
        step = self.step
        if step.ramp_c_per_min is not None:
            rate = step.ramp_c_per_min / 60.0 * h
            delta = step.setpoint_c - self.setpoint_c
            self.setpoint_c += max(-rate, min(rate, delta))
        else:
            self.setpoint_c = step.setpoint_c
        door = step.door_open_s > 0 and self.step_elapsed_s < step.door_open_s
        quench = step.quench and self.step_elapsed_s >= step.door_open_s
        if door != self.door_open or quench != self.quench_active:
            self.door_open, self.quench_active = door, quench
            self._state_log.append(self._state())
        overshoot = self.faults.get("overshoot")
        # Nominal tuning overshoots ~3 °C after a ramp (inside an AMS2750 class 2 band); the fault is a
        # badly tuned controller (short integral time) that overshoots ~14 °C.
        kp, ti_s = 0.003, 900.0
        if overshoot is not None:
            kp, ti_s = 0.004, float(overshoot.get("ti_s", 150.0))
        failed = self.faults.get("zone_heater_failure")
        temps = [z.temp_c for z in self.zones]
        for i, zone in enumerate(self.zones):
            zone.max_output = 1.0
            if failed is not None and int(failed.get("zone", 3)) == i + 1:
                zone.max_output = float(failed.get("max_output", 0.6))
            loss = 40.0 if (door and i == 0) else 0.0  # the door zone loses heat while open
            others = (sum(temps) - temps[i]) / (len(temps) - 1) if len(temps) > 1 else temps[i]
            zone.step(t, h, self.setpoint_c, kp, ti_s, loss, others)
        chamber = sum(z.temp_c for z in self.zones) / len(self.zones)
        self.load_c += (chamber - self.load_c) * (1.0 - math.exp(-h / 900.0))
        self.carbon += (step.carbon_setpoint - self.carbon) * (1.0 - math.exp(-h / 600.0))
        oil_target = 90.0 if quench else 60.0
        self.oil_c += (oil_target - self.oil_c) * (1.0 - math.exp(-h / (120.0 if quench else 1800.0)))

    #: Static reading offsets of the zone thermocouples (placement), so the uniformity spread is realistic.
    TC_OFFSETS_C: ClassVar[tuple[float, ...]] = (1.2, -0.8, 0.3, -0.5)

    def zone_reading(self, index: int) -> float:
        """What zone thermocouple `index` (0-based) reports, faults included."""
        offset = self.TC_OFFSETS_C[index % len(self.TC_OFFSETS_C)]
        value = self.zones[index].temp_c + offset + float(self.rng.normal(0.0, 0.3))
        drift = self.faults.get("calibration_drift")
        if drift is not None and int(drift.get("zone", 1)) == index + 1:
            value += float(drift.get("rate", 2.0)) * (self.sim_time_s - float(drift["since_s"])) / 3600.0
        burnout = self.faults.get("thermocouple_burnout")
        if burnout is not None and int(burnout.get("zone", 1)) == index + 1:
            value = TYPE_K_UPSCALE_C if burnout.get("mode", "upscale") == "upscale" else AMBIENT_C
        return round(value, 2)

    # ------------------------------------------------------------------ address space

    async def build(self, server: Server) -> None:
        """Create the furnace object and its state event type."""
        ns = self.ns[SIM_URI]
        m = self.machine
        self._nodes = {}

        async def obj(parent: Node, path: str, name: str) -> Node:
            return await parent.add_object(nid(path, ns), ua.QualifiedName(name, ns))

        async def var(parent: Node, path: str, name: str, value: Any, vtype: ua.VariantType) -> None:
            node = await parent.add_variable(nid(path, ns), ua.QualifiedName(name, ns), value, vtype)
            self._nodes[path] = (node, vtype)

        root = await obj(server.nodes.objects, m, m)
        info = await obj(root, f"{m}.Information", "Information")
        for name, value, vtype in (
            ("Manufacturer", "edge-agent simulators", ua.VariantType.String),
            ("Model", "SQ-sim 36x48", ua.VariantType.String),
            ("FurnaceClass", self.furnace_class, ua.VariantType.Int32),
            ("InstrumentationType", "D", ua.VariantType.String),
        ):
            await info.add_property(
                nid(f"{m}.Information.{name}", ns), ua.QualifiedName(name, ns), value, vtype
            )
        zones = await obj(root, f"{m}.Zones", "Zones")
        for i in range(len(self.zones)):
            zone = await obj(zones, f"{m}.Zones.Zone_{i + 1}", f"Zone_{i + 1}")
            await var(zone, f"{m}.Zones.Zone_{i + 1}.Temperature", "Temperature", 0.0, ua.VariantType.Double)
            await var(
                zone, f"{m}.Zones.Zone_{i + 1}.HeaterOutput", "HeaterOutput", 0.0, ua.VariantType.Double
            )
        load = await obj(root, f"{m}.Load", "Load")
        await var(load, f"{m}.Load.Temperature", "Temperature", 0.0, ua.VariantType.Double)
        atmosphere = await obj(root, f"{m}.Atmosphere", "Atmosphere")
        await var(
            atmosphere, f"{m}.Atmosphere.CarbonPotential", "CarbonPotential", 0.0, ua.VariantType.Double
        )
        await var(atmosphere, f"{m}.Atmosphere.CarbonSetpoint", "CarbonSetpoint", 0.0, ua.VariantType.Double)
        quench = await obj(root, f"{m}.Quench", "Quench")
        await var(quench, f"{m}.Quench.OilTemperature", "OilTemperature", 0.0, ua.VariantType.Double)
        await var(quench, f"{m}.Quench.Active", "Active", False, ua.VariantType.Boolean)
        door = await obj(root, f"{m}.Door", "Door")
        await var(door, f"{m}.Door.Open", "Open", False, ua.VariantType.Boolean)
        recipe = await obj(root, f"{m}.Recipe", "Recipe")
        await var(recipe, f"{m}.Recipe.Step", "Step", 0, ua.VariantType.Int32)
        await var(recipe, f"{m}.Recipe.StepName", "StepName", "", ua.VariantType.String)
        await var(recipe, f"{m}.Recipe.BatchId", "BatchId", 0, ua.VariantType.UInt32)
        await var(recipe, f"{m}.Recipe.Setpoint", "Setpoint", 0.0, ua.VariantType.Double)
        base = server.get_node(ua.ObjectIds.BaseEventType)
        etype = await base.add_object_type(
            nid(STATE_EVENT_ID, ns), ua.QualifiedName("FurnaceStateEventType", ns)
        )
        for name, value, vtype in (
            ("DoorOpen", False, ua.VariantType.Boolean),
            ("QuenchActive", False, ua.VariantType.Boolean),
            ("RecipeStep", 0, ua.VariantType.Int32),
            ("BatchId", 0, ua.VariantType.UInt32),
        ):
            await etype.add_property(ns, name, value, varianttype=vtype)
        self._event = await server.get_event_generator(etype, server.nodes.server.nodeid)
        self._event.event.SourceNode = root.nodeid
        self._event.event.SourceName = m

    async def publish(self, server: Server) -> None:
        """Write the readings; fire a FurnaceStateEvent when the door, quench or step changed."""
        when = now_utc()
        m = self.machine
        values: dict[str, Any] = {
            f"{m}.Load.Temperature": round(self.load_c + float(self.rng.normal(0.0, 0.3)), 2),
            f"{m}.Atmosphere.CarbonPotential": round(self.carbon + float(self.rng.normal(0.0, 0.004)), 3),
            f"{m}.Atmosphere.CarbonSetpoint": self.step.carbon_setpoint,
            f"{m}.Quench.OilTemperature": round(self.oil_c, 2),
            f"{m}.Quench.Active": self.quench_active,
            f"{m}.Door.Open": self.door_open,
            f"{m}.Recipe.Step": self.step_index,
            f"{m}.Recipe.StepName": self.step.name,
            f"{m}.Recipe.BatchId": self.batch_id,
            f"{m}.Recipe.Setpoint": round(self.setpoint_c, 2),
        }
        for i, zone in enumerate(self.zones):
            values[f"{m}.Zones.Zone_{i + 1}.Temperature"] = self.zone_reading(i)
            values[f"{m}.Zones.Zone_{i + 1}.HeaterOutput"] = round(zone.output * 100.0, 1)
        # Door, quench and step changes shorter than a tick are written (and evented) one by one, in order,
        # so a subscriber sees every transition even when the simulated clock runs fast.
        log, self._state_log = self._state_log[-50:], []
        for door, quench, step, batch in log:
            for path, value in (
                (f"{m}.Door.Open", door),
                (f"{m}.Quench.Active", quench),
                (f"{m}.Recipe.Step", step),
                (f"{m}.Recipe.BatchId", batch),
            ):
                node, vtype = self._nodes[path]
                await server.write_attribute_value(node.nodeid, to_datavalue(value, vtype, when))
            self.state_changes += 1
            ev = self._event.event
            ev.DoorOpen, ev.QuenchActive, ev.RecipeStep, ev.BatchId = door, quench, step, batch
            await self._event.trigger(time_attr=when, message=f"step {self.recipe[step].name}")
        for path, value in values.items():
            node, vtype = self._nodes[path]
            await server.write_attribute_value(node.nodeid, to_datavalue(value, vtype, when))


def main(argv: list[str] | None = None) -> int:
    """`edge-agent simulate furnace ...`."""
    return simulator_main(FurnaceSimulator, argv, "Simulated sealed-quench carburizing furnace over OPC UA.")


if __name__ == "__main__":
    raise SystemExit(main())
