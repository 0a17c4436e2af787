"""Simulated injection-moulding machine over OPC UA, shaped after EUROMAP 77 (OPC 40077), with process faults.

asyncua cannot load the official IMM2MES node set here (it is not shipped with asyncua), so the
address space is built by hand with the companion-spec namespace URIs and browse names:
IMM_1/MachineInformation, MachineStatus/MachineMode, MachineMESStatus/ProductionStatus,
Jobs/ActiveJobValues/*, InjectionUnits/InjectionUnit_1/TemperatureZones/TemperatureZone_<n>/*,
Moulds/Mould_1/TemperatureZones/TemperatureZone_1/*, and a CycleParametersEventType event after
every cycle carrying InjectionUnitCycleParameters_1/* (cushion, injection time, dosing time,
peak specific pressure, V/P change-over position) and the cycle time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
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

IMM2MES_URI = "http://opcfoundation.org/UA/IMM2MES/"
PLASTICS_URI = "http://opcfoundation.org/UA/PlasticsRubber/GeneralTypes/"
DI_URI = "http://opcfoundation.org/UA/DI/"
SIM_URI = "urn:edge-agent:sim:imm"
#: NodeId the simulator gives CycleParametersEventType (in the IMM2MES namespace).
CYCLE_EVENT_ID = 1006

MACHINE_MODE_AUTOMATIC = 1
PRODUCTION_STATUS_PRODUCTION = 4
CYCLE_QUALITY_GOOD, CYCLE_QUALITY_BAD = 0, 1


class Ar1:
    """Autocorrelated noise a_k = phi * a_(k-1) + e_k, scaled so its stationary sd is `sd`."""

    def __init__(self, rng: Any, sd: float, phi: float = 0.5) -> None:
        self.rng = rng
        self.phi = phi
        self.innovation_sd = sd * math.sqrt(1 - phi * phi)
        self.a = 0.0

    def next(self) -> float:
        """The next noise value."""
        self.a = self.phi * self.a + float(self.rng.normal(0.0, self.innovation_sd))
        return self.a


@dataclass
class CycleRecord:
    """The parameters of one finished cycle (what CycleParametersEventType carries)."""

    counter: int
    cycle_time_ms: float
    cushion: float
    injection_time_ms: float
    dosing_time_ms: float
    peak_pressure_bar: float
    vp_position_mm: float
    good: bool
    at: datetime


class ImmSimulator(OpcUaSimulator):
    """An injection-moulding machine producing one cycle every `cycle_s` simulated seconds.

    Faults (`set_fault(name, on, **params)`): FAULTS, name -> what it does and its parameters.
    """

    kind: ClassVar[str] = "imm"
    FAULTS: ClassVar[dict[str, str]] = {
        "check_ring_wear": "worn check ring: cushion drifts towards 0 by `rate` cm³ per cycle (default 0.02), "
        "injection time rises",
        "heater_band_failure": "barrel heater band of `zone` 1..3 (default 2) fails: the zone falls `drop` °C "
        "(default 25) below its set point",
        "material_change": "a new material lot: peak pressure steps by `factor` (default 1.07)",
        "short_shot": "the mould is not filled: low peak pressure and cushion, a bad part, with `probability` "
        "(default 1) per cycle",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: tuple[str, ...] | list[str] = (),
        security: SimSecurity | None = None,
        cycle_s: float = 30.0,
        machine: str = "IMM_1",
    ) -> None:
        self.machine = machine
        self.cycle_s = cycle_s
        super().__init__(speed=speed, seed=seed, faults=faults, security=security)
        rng = self.rng
        self.noise = {
            "cushion": Ar1(rng, 0.08),
            "injection": Ar1(rng, 6.0),
            "dosing": Ar1(rng, 30.0),
            "pressure": Ar1(rng, 8.0, 0.6),
            "vp": Ar1(rng, 0.08),
            "cycle": Ar1(rng, 40.0, 0.3),
        }
        self.barrel_setpoints = [220.0, 230.0, 240.0]
        self.barrel = list(self.barrel_setpoints)
        self.mould_setpoint = 60.0
        self.mould = self.mould_setpoint
        self.cycles = 0
        self.good_parts = 0
        self.bad_parts = 0
        self.last_cycle_time_ms = 0.0
        self.cushion_offset = 0.0
        self.pending: list[CycleRecord] = []
        self.history: list[CycleRecord] = []
        self._until_cycle = cycle_s
        self._nodes: dict[str, tuple[Node, ua.VariantType]] = {}
        self._event: Any = None

    def namespace_uris(self) -> list[str]:
        """The simulator's own namespace plus the companion specs it mirrors."""
        return [SIM_URI, DI_URI, PLASTICS_URI, IMM2MES_URI]

    # ------------------------------------------------------------------ process

    def advance(self, dt_s: float) -> None:
        """Run the zone thermal lags and finish every cycle that ends within `dt_s`."""
        alpha = 1.0 - math.exp(-dt_s / 60.0)  # zone heaters settle with a ~60 s time constant
        failed = self.faults.get("heater_band_failure")
        for i, sp in enumerate(self.barrel_setpoints):
            target = sp
            if failed is not None and int(failed.get("zone", 2)) == i + 1:
                target = sp - float(failed.get("drop", 25.0))
            self.barrel[i] += alpha * (target - self.barrel[i]) + float(self.rng.normal(0, 0.05))
        self.mould += alpha * (self.mould_setpoint - self.mould) + float(self.rng.normal(0, 0.05))
        self._until_cycle -= dt_s
        while self._until_cycle <= 0:
            self._finish_cycle()
            self._until_cycle += self.cycle_s

    def _finish_cycle(self) -> None:
        k = self.cycles
        self.cycles += 1
        warm = math.exp(-k / 80.0)  # warm-up transient over the first ~200 cycles
        wear = self.faults.get("check_ring_wear")
        if wear is not None:
            self.cushion_offset -= float(wear.get("rate", 0.02))
        cushion = max(0.0, 5.0 + self.cushion_offset + 0.6 * warm + self.noise["cushion"].next())
        injection = 1200.0 + self.noise["injection"].next() + 40.0 * warm
        if wear is not None:
            injection += 8.0 * -self.cushion_offset  # a leaking check ring needs a longer fill
        pressure = 1100.0 * (1.0 - 0.04 * warm) + self.noise["pressure"].next()
        material = self.faults.get("material_change")
        if material is not None:
            pressure *= float(material.get("factor", 1.07))
        good = True
        short = self.faults.get("short_shot")
        if short is not None and self.rng.random() < float(short.get("probability", 1.0)):
            pressure *= 0.8
            cushion *= 0.3
            injection *= 0.9
            good = False
        if self.rng.random() < 1e-3:
            pressure += 5.0 * 8.0 * (1 if self.rng.random() < 0.5 else -1)  # rare spike
        cycle_ms = self.cycle_s * 1000.0 + self.noise["cycle"].next()
        if good:
            self.good_parts += 1
        else:
            self.bad_parts += 1
        self.last_cycle_time_ms = cycle_ms
        record = CycleRecord(
            counter=self.cycles,
            cycle_time_ms=cycle_ms,
            cushion=cushion,
            injection_time_ms=injection,
            dosing_time_ms=4500.0 + self.noise["dosing"].next(),
            peak_pressure_bar=pressure,
            vp_position_mm=12.0 + self.noise["vp"].next(),
            good=good,
            at=now_utc(),
        )
        self.history.append(record)
        del self.history[:-1000]
        self.pending.append(record)
        del self.pending[:-100]  # a stopped server loses events, as a real one would

    # ------------------------------------------------------------------ address space

    async def build(self, server: Server) -> None:
        """Create the EUROMAP 77-shaped machine object and the cycle event type."""
        sim, imm = self.ns[SIM_URI], self.ns[IMM2MES_URI]
        self._nodes = {}
        m = self.machine

        async def folder(parent: Node, path: str, name: str) -> Node:
            return await parent.add_object(nid(f"{path}", sim), ua.QualifiedName(name, imm))

        async def var(parent: Node, path: str, name: str, value: Any, vtype: ua.VariantType) -> Node:
            node = await parent.add_variable(nid(path, sim), ua.QualifiedName(name, imm), value, vtype)
            self._nodes[path] = (node, vtype)
            return node

        objects = server.nodes.objects
        root = await objects.add_object(nid(m, sim), ua.QualifiedName(m, sim))
        info = await folder(root, f"{m}.MachineInformation", "MachineInformation")
        for prop, value in (
            ("Manufacturer", "edge-agent simulators"),
            ("Model", "IMM-sim 1500"),
            ("SerialNumber", f"SIM-{m}"),
            ("ControllerName", "asyncua"),
        ):
            await info.add_property(
                nid(f"{m}.MachineInformation.{prop}", sim), ua.QualifiedName(prop, imm), value
            )
        status = await folder(root, f"{m}.MachineStatus", "MachineStatus")
        await var(
            status,
            f"{m}.MachineStatus.MachineMode",
            "MachineMode",
            MACHINE_MODE_AUTOMATIC,
            ua.VariantType.Int32,
        )
        mes = await folder(root, f"{m}.MachineMESStatus", "MachineMESStatus")
        await var(
            mes,
            f"{m}.MachineMESStatus.ProductionStatus",
            "ProductionStatus",
            PRODUCTION_STATUS_PRODUCTION,
            ua.VariantType.Int32,
        )
        jobs = await folder(root, f"{m}.Jobs", "Jobs")
        active = await folder(jobs, f"{m}.Jobs.ActiveJobValues", "ActiveJobValues")
        for name in (
            "JobCycleCounter",
            "JobPartsCounter",
            "JobGoodPartsCounter",
            "JobBadPartsCounter",
            "JobTestSamplesCounter",
        ):
            await var(active, f"{m}.Jobs.ActiveJobValues.{name}", name, 0, ua.VariantType.UInt64)
        await var(
            active, f"{m}.Jobs.ActiveJobValues.LastCycleTime", "LastCycleTime", 0.0, ua.VariantType.Double
        )
        units = await folder(root, f"{m}.InjectionUnits", "InjectionUnits")
        unit = await folder(units, f"{m}.InjectionUnits.InjectionUnit_1", "InjectionUnit_1")
        zones = await folder(unit, f"{m}.InjectionUnits.InjectionUnit_1.TemperatureZones", "TemperatureZones")
        for i in range(len(self.barrel)):
            await self._zone(
                zones,
                f"{m}.InjectionUnits.InjectionUnit_1.TemperatureZones.TemperatureZone_{i + 1}",
                i + 1,
                var,
                folder,
            )
        moulds = await folder(root, f"{m}.Moulds", "Moulds")
        mould = await folder(moulds, f"{m}.Moulds.Mould_1", "Mould_1")
        mzones = await folder(mould, f"{m}.Moulds.Mould_1.TemperatureZones", "TemperatureZones")
        await self._zone(mzones, f"{m}.Moulds.Mould_1.TemperatureZones.TemperatureZone_1", 1, var, folder)
        self._event = await self._event_generator(server, imm, root)

    async def _zone(self, parent: Node, path: str, index: int, var: Any, folder: Any) -> None:
        zone = await folder(parent, path, f"TemperatureZone_{index}")
        await var(zone, f"{path}.NominalTemperature", "NominalTemperature", 0.0, ua.VariantType.Double)
        await var(zone, f"{path}.ActualTemperature", "ActualTemperature", 0.0, ua.VariantType.Double)
        await var(zone, f"{path}.ControlMode", "ControlMode", 2, ua.VariantType.Int32)  # AUTOMATIC
        for name, value in (
            ("LowDeviationTemperature1", 5.0),
            ("HighDeviationTemperature1", 5.0),
            ("LowDeviationTemperature2", 10.0),
            ("HighDeviationTemperature2", 10.0),
        ):
            await var(zone, f"{path}.{name}", name, value, ua.VariantType.Double)

    async def _event_generator(self, server: Server, imm: int, machine: Node) -> Any:
        base = server.get_node(ua.ObjectIds.BaseEventType)
        etype = await base.add_object_type(
            nid(CYCLE_EVENT_ID, imm), ua.QualifiedName("CycleParametersEventType", imm)
        )
        for name, value, vtype in (
            ("JobName", "", ua.VariantType.String),
            ("CycleTime", 0.0, ua.VariantType.Double),
            ("CycleQuality", 0, ua.VariantType.Int32),
            ("JobCycleCounter", 0, ua.VariantType.UInt64),
        ):
            await etype.add_property(imm, name, value, varianttype=vtype)
        params = await etype.add_object(imm, "InjectionUnitCycleParameters_1")
        for name in self._UNIT_FIELDS:
            await params.add_variable(imm, name, 0.0, ua.VariantType.Double)
        gen = await server.get_event_generator(etype, server.nodes.server.nodeid)
        gen.event.SourceNode = machine.nodeid
        gen.event.SourceName = self.machine
        # asyncua builds event objects from properties only; the nested cycle parameters are added by name.
        for name in self._UNIT_FIELDS:
            gen.event.add_property(f"InjectionUnitCycleParameters_1/{name}", 0.0, ua.VariantType.Double)
        gen.event.add_property("InjectionUnitCycleParameters_1/Index", 1, ua.VariantType.UInt32)
        return gen

    _UNIT_FIELDS: ClassVar[tuple[str, ...]] = (
        "CushionVolume",
        "DosingTime",
        "InjectionTime",
        "PlastificationVolume",
        "SpecificPressureMaximum",
        "VPChangeOverPosition",
    )

    # ------------------------------------------------------------------ publishing

    async def publish(self, server: Server) -> None:
        """Write the machine state and fire one CycleParametersEvent per finished cycle."""
        when = now_utc()
        m = self.machine
        values: dict[str, Any] = {
            f"{m}.MachineStatus.MachineMode": MACHINE_MODE_AUTOMATIC,
            f"{m}.MachineMESStatus.ProductionStatus": PRODUCTION_STATUS_PRODUCTION,
            f"{m}.Jobs.ActiveJobValues.JobCycleCounter": self.cycles,
            f"{m}.Jobs.ActiveJobValues.JobPartsCounter": self.good_parts + self.bad_parts,
            f"{m}.Jobs.ActiveJobValues.JobGoodPartsCounter": self.good_parts,
            f"{m}.Jobs.ActiveJobValues.JobBadPartsCounter": self.bad_parts,
            f"{m}.Jobs.ActiveJobValues.LastCycleTime": self.last_cycle_time_ms,
        }
        zone_path = f"{m}.InjectionUnits.InjectionUnit_1.TemperatureZones.TemperatureZone_"
        for i, (sp, actual) in enumerate(zip(self.barrel_setpoints, self.barrel, strict=True)):
            values[f"{zone_path}{i + 1}.NominalTemperature"] = sp
            values[f"{zone_path}{i + 1}.ActualTemperature"] = round(actual, 2)
        mould_path = f"{m}.Moulds.Mould_1.TemperatureZones.TemperatureZone_1"
        values[f"{mould_path}.NominalTemperature"] = self.mould_setpoint
        values[f"{mould_path}.ActualTemperature"] = round(self.mould, 2)
        for path, value in values.items():
            node, vtype = self._nodes[path]
            await server.write_attribute_value(node.nodeid, to_datavalue(value, vtype, when))
        pending, self.pending = self.pending, []
        for rec in pending:
            ev = self._event.event
            ev.CycleTime = rec.cycle_time_ms
            ev.CycleQuality = CYCLE_QUALITY_GOOD if rec.good else CYCLE_QUALITY_BAD
            ev.JobCycleCounter = rec.counter
            ev.JobName = "JOB-1"
            for name, value in (
                ("CushionVolume", rec.cushion),
                ("DosingTime", rec.dosing_time_ms),
                ("InjectionTime", rec.injection_time_ms),
                ("PlastificationVolume", 42.0),
                ("SpecificPressureMaximum", rec.peak_pressure_bar),
                ("VPChangeOverPosition", rec.vp_position_mm),
            ):
                setattr(ev, f"InjectionUnitCycleParameters_1/{name}", value)
            await self._event.trigger(time_attr=rec.at, message=f"cycle {rec.counter}")


def main(argv: list[str] | None = None) -> int:
    """`edge-agent simulate imm ...`."""
    return simulator_main(
        ImmSimulator, argv, "Simulated injection-moulding machine (EUROMAP 77 over OPC UA)."
    )


if __name__ == "__main__":
    raise SystemExit(main())
