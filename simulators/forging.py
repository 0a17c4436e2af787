"""Simulated hot-forging press over OPC UA, shaped after OPC 40503-1 Metal Forming, with injectable faults.

A mechanical press with a four-corner tonnage monitor (DOMAIN-ROOT.md §1). The official node sets
are not loaded (asyncua does not ship them), so the address space is built by hand with the
companion-spec namespace URIs and browse names, as the IMM simulator does for EUROMAP 77:

    Press_1/Identification/{Manufacturer, Model, NominalForce}
    Press_1/Monitoring/Ram                       (a FormingProcessWorkingUnit)
        ProcessForce, ProcessForce_LeftFront, _RightFront, _LeftBack, _RightBack, ReverseForce,
        PeakForceAngle, BilletTemperature        (CyclicProcessValues, latched per stroke)
            CyclicProcessValue/{AnalogSignal, Setpoint, CycleCount, IsActive}
        StrokeRate/AnalogSignal, DieTemperature/AnalogSignal  (ProcessValues, continuous)
        ForceSignature   Double[720]: total force at every 0.5° of crank angle of the last stroke
        CrankAngle       Double[720]: the signature's axis, degrees from TDC
        CycleCount       UInt64 stroke counter
    CyclicEventType (Metal Forming namespace): one event per stroke with CurrentProcessValue/AnalogSignal
        (the peak force), CycleCount and PartId.

The spec's CyclicProcessValueDataType is a structure; here its fields are variables of an object of
the same name, because the agent reads scalars. Per-stroke values are written before the stroke
counter, with one source timestamp: a reader that sees a new CycleCount sees that stroke's values.

Force model (DOMAIN-ROOT.md §1, simulator values (u)): no force above the touch height, then
F = F_pk·((h_t − h)/(h_t − h_pk))^n up to the peak near BDC, a fast unloading, a reverse
(snap-through) lobe of a few percent; per-stroke peak noise (AR(1), 0.7 %), point noise; a billet
colder by 10 K needs ~1.5 % more force.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
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
from edge_agent.simulators.process import ProcessValue, generator_for

MF_URI = "http://opcfoundation.org/UA/MetalForming/"
MT_URI = "http://opcfoundation.org/UA/MachineTool/"
PV_URI = "http://opcfoundation.org/UA/Machinery/ProcessValues/"
PADIM_URI = "http://opcfoundation.org/UA/PADIM/"
DI_URI = "http://opcfoundation.org/UA/DI/"
SIM_URI = "urn:edge-agent:sim:forging"
#: NodeId the simulator gives CyclicEventType (in the Metal Forming namespace).
CYCLIC_EVENT_ID = 1009

POINTS = 720
"""Points of a force signature: one per 0.5° of crank angle."""
CRANK_ANGLE = np.arange(POINTS) * 360.0 / POINTS
RATED_KN = 10_000.0
NOMINAL_PEAK_KN = 6_500.0
CRANK_RADIUS_MM = 150.0
ROD_LENGTH_MM = 750.0
#: Corner load cells: (browse-name suffix, x, y) in mm from the bed centre; x < 0 left, y > 0 front.
CHANNELS: tuple[tuple[str, float, float], ...] = (
    ("LeftFront", -800.0, 500.0),
    ("RightFront", 800.0, 500.0),
    ("LeftBack", -800.0, -500.0),
    ("RightBack", 800.0, -500.0),
)
BILLET_C = 1200.0
DIE_PREHEAT_C = 250.0
DIE_WORKING_C = 300.0


def ram_height_mm(angle_deg: np.ndarray) -> np.ndarray:
    """Slider-crank ram height above BDC (angle from TDC)."""
    theta = np.deg2rad(angle_deg - 180.0)
    lam = CRANK_RADIUS_MM / ROD_LENGTH_MM
    return CRANK_RADIUS_MM * (1.0 - np.cos(theta)) + ROD_LENGTH_MM * (
        1.0 - np.sqrt(1.0 - lam * lam * np.sin(theta) ** 2)
    )


def force_signature(
    peak_kn: float, peak_deg: float, touch_span_deg: float, unload_deg: float, reverse: float, exponent: float
) -> np.ndarray:
    """Total force over CRANK_ANGLE: zero above the touch height, a power law to the peak, unloading, a reverse lobe."""
    angle = CRANK_ANGLE
    h = ram_height_mm(angle)
    h_touch = float(ram_height_mm(np.array([peak_deg - touch_span_deg]))[0])
    h_peak = float(ram_height_mm(np.array([peak_deg]))[0])
    loading = (angle >= peak_deg - touch_span_deg) & (angle <= peak_deg)
    x = np.clip((h_touch - h) / max(h_touch - h_peak, 1e-9), 0.0, 1.0)
    f = np.where(loading, x**exponent, 0.0)
    after = angle > peak_deg
    f = f + np.where(after, np.exp(-(((angle - peak_deg) / unload_deg) ** 2)), 0.0)
    f = f - reverse * np.exp(-(((CRANK_ANGLE - peak_deg - 9.0) / 3.0) ** 2))
    return peak_kn * f


def _interpolated_peak_angle(signature: np.ndarray, top: int) -> float:
    """Angle of the peak between the samples (a parabola through the top three), as tonnage monitors report it.

    The sample's own angle moves in 0.5° steps: a chart of it sees a constant with rare jumps, whose
    moving range is almost zero, and alarms at every jump.
    """
    if not 0 < top < POINTS - 1:
        return float(CRANK_ANGLE[top])
    left, mid, right = (float(v) for v in signature[top - 1 : top + 2])
    curvature = left - 2.0 * mid + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float(CRANK_ANGLE[top] + offset * (CRANK_ANGLE[1] - CRANK_ANGLE[0]))


@dataclass
class Stroke:
    """One press stroke as the tonnage monitor latches it."""

    count: int
    peak_kn: float
    channels_kn: tuple[float, ...]
    reverse_kn: float
    peak_angle_deg: float
    billet_c: float
    signature: np.ndarray
    at: datetime


class ForgingSimulator(OpcUaSimulator):
    """A 10,000 kN mechanical hot-forging press at `spm` strokes per minute, four corner load cells.

    Faults (`set_fault(name, on, **params)`): FAULTS, name -> what it does and its parameters.
    """

    kind: ClassVar[str] = "forging"
    default_port: ClassVar[int] = 4842
    FAULTS: ClassVar[dict[str, str]] = {
        "double_blank": "a double blank or a foreign object in the die: the next `strokes` (default 1) "
        "strokes peak at `factor` (default 1.35) times the normal force, then the fault clears",
        "missing_billet": "a missing or short billet: the next `strokes` (default 1) strokes peak at "
        "`factor` (default 0.1; 0.5 for a short billet) of the normal force, then the fault clears",
        "die_wear": "die wear or lube loss: the peak creeps up by `pct_per_1000` % (default 3) per 1000 "
        "strokes and the signature widens; switching it off is a die change",
        "off_centre_load": "the part sits off centre: `shift` (default 0.15) of the load moves to the right "
        "(left/right balance and centre of load step)",
        "cold_billet": "the heater delivers billets `drop_c` (default 80) °C colder: billet temperature low, "
        "peak force up ~1.5 % per 10 °C",
        "shut_height_drift": "the shut height drifts: the peak angle moves by `deg_per_100` (default -0.5) "
        "degrees per 100 strokes (earlier peak); switching it off resets the shut height",
    }

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: tuple[str, ...] | list[str] = (),
        security: SimSecurity | None = None,
        spm: float = 20.0,
        machine: str = "Press_1",
    ) -> None:
        if spm <= 0:
            raise ValueError(f"spm must be > 0 strokes per minute, got {spm}")
        self.machine = machine
        self.spm = spm
        self.strokes = 0
        self.wear = 0.0
        self.angle_shift = 0.0
        self.die_c = DIE_PREHEAT_C
        self._peak_noise = ProcessValue(
            0.0, 0.007, 0.5, spike_probability=0.0, rng=generator_for(seed, "peak")
        )
        self._balance_noise = generator_for(seed, "balance")
        self._billet_noise = generator_for(seed, "billet")
        self._point_noise = generator_for(seed, "points")
        self._until_stroke = 60.0 / spm
        self.last: Stroke | None = None
        self.history: deque[Stroke] = deque(maxlen=2000)
        self.pending: deque[Stroke] = deque(maxlen=100)  # a stopped server loses events, as a real one would
        self._nodes: dict[str, tuple[Node, ua.VariantType]] = {}
        self._event: Any = None
        super().__init__(speed=speed, seed=seed, faults=faults, security=security)

    def namespace_uris(self) -> list[str]:
        """The simulator's own namespace plus the companion specs it mirrors."""
        return [SIM_URI, DI_URI, PADIM_URI, PV_URI, MT_URI, MF_URI]

    def set_fault(self, name: str, on: bool = True, **params: Any) -> None:
        """Switch a fault; switching die_wear or shut_height_drift off repairs what it changed."""
        super().set_fault(name, on, **params)
        if not on and name == "die_wear":
            self.wear = 0.0
        if not on and name == "shut_height_drift":
            self.angle_shift = 0.0

    # ------------------------------------------------------------------ process

    def advance(self, dt_s: float) -> None:
        """Finish every stroke that ends within `dt_s`."""
        self._until_stroke -= dt_s
        while self._until_stroke <= 0:
            self._stroke()
            self._until_stroke += 60.0 / self.spm

    def _one_shot(self, name: str, default_factor: float) -> float:
        fault = self.faults.get(name)
        if fault is None:
            return 1.0
        left = int(fault.get("strokes", 1)) - 1
        if left <= 0:
            self.faults.pop(name)
        else:
            fault["strokes"] = left
        return float(fault.get("factor", default_factor))

    def _stroke(self) -> None:
        self.strokes += 1
        billet = BILLET_C + float(self._billet_noise.normal(0.0, 8.0))
        cold = self.faults.get("cold_billet")
        if cold is not None:
            billet -= float(cold.get("drop_c", 80.0))
        wear = self.faults.get("die_wear")
        if wear is not None:
            self.wear += float(wear.get("pct_per_1000", 3.0)) / 100.0 / 1000.0
        drift = self.faults.get("shut_height_drift")
        if drift is not None:
            self.angle_shift += float(drift.get("deg_per_100", -0.5)) / 100.0
        peak = NOMINAL_PEAK_KN * (1.0 + self._peak_noise.next()) * (1.0 + self.wear)
        peak *= 1.0 + 0.0015 * (BILLET_C - billet)  # flow stress rises as the billet cools
        peak *= self._one_shot("double_blank", 1.35) * self._one_shot("missing_billet", 0.1)
        peak_deg = 177.0 + self.angle_shift + float(self._balance_noise.normal(0.0, 0.15))
        signature = force_signature(
            peak,
            peak_deg,
            touch_span_deg=25.0 * (1.0 + 5.0 * self.wear),
            unload_deg=2.5 * (1.0 + 5.0 * self.wear),
            reverse=0.05,
            exponent=3.0,
        )
        signature += self._point_noise.normal(0.0, 0.002 * NOMINAL_PEAK_KN, POINTS)
        a = 0.02 + float(self._balance_noise.normal(0.0, 0.004))
        b = -0.01 + float(self._balance_noise.normal(0.0, 0.004))
        off = self.faults.get("off_centre_load")
        if off is not None:
            a += float(off.get("shift", 0.15))
        shares = [
            0.25 * (1.0 + a * math.copysign(1.0, x) + b * math.copysign(1.0, y)) for _, x, y in CHANNELS
        ]
        top = int(np.argmax(signature))
        self.die_c += (DIE_WORKING_C - self.die_c) * (1.0 - math.exp(-1.0 / 30.0))
        stroke = Stroke(
            count=self.strokes,
            peak_kn=float(signature[top]),
            channels_kn=tuple(s * float(signature[top]) for s in shares),
            reverse_kn=max(0.0, -float(signature.min())),
            peak_angle_deg=_interpolated_peak_angle(signature, top),
            billet_c=billet,
            signature=signature,
            at=now_utc(),
        )
        self.last = stroke
        self.history.append(stroke)
        self.pending.append(stroke)

    # ------------------------------------------------------------------ address space

    CYCLIC: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ProcessForce", "kN"),
        *((f"ProcessForce_{name}", "kN") for name, _, _ in CHANNELS),
        ("ReverseForce", "kN"),
        ("PeakForceAngle", "deg"),
        ("BilletTemperature", "°C"),
    )

    async def build(self, server: Server) -> None:
        """Create the press object after OPC 40503-1 and the cyclic event type."""
        sim, mf, mt, pv, padim, di = (
            self.ns[u] for u in (SIM_URI, MF_URI, MT_URI, PV_URI, PADIM_URI, DI_URI)
        )
        m = self.machine
        self._nodes = {}

        async def obj(parent: Node, path: str, name: str, ns: int) -> Node:
            return await parent.add_object(nid(path, sim), ua.QualifiedName(name, ns))

        async def var(parent: Node, path: str, name: str, ns: int, value: Any, vtype: ua.VariantType) -> Node:
            node = await parent.add_variable(nid(path, sim), ua.QualifiedName(name, ns), value, vtype)
            self._nodes[path] = (node, vtype)
            return node

        root = await server.nodes.objects.add_object(nid(m, sim), ua.QualifiedName(m, sim))
        ident = await obj(root, f"{m}.Identification", "Identification", di)
        for prop, value, vtype in (
            ("Manufacturer", "edge-agent simulators", ua.VariantType.String),
            ("Model", "MP-sim 1000 t", ua.VariantType.String),
            ("SerialNumber", f"SIM-{m}", ua.VariantType.String),
            ("NominalForce", RATED_KN, ua.VariantType.Double),
        ):
            await ident.add_property(
                nid(f"{m}.Identification.{prop}", sim), ua.QualifiedName(prop, di), value, vtype
            )
        monitoring = await obj(root, f"{m}.Monitoring", "Monitoring", mt)
        ram = await obj(monitoring, f"{m}.Monitoring.Ram", "Ram", mf)
        base = f"{m}.Monitoring.Ram"
        for name, _unit in self.CYCLIC:
            pvo = await obj(ram, f"{base}.{name}", name, mf)
            cpv = await obj(pvo, f"{base}.{name}.CyclicProcessValue", "CyclicProcessValue", mf)
            path = f"{base}.{name}.CyclicProcessValue"
            await var(cpv, f"{path}.AnalogSignal", "AnalogSignal", padim, 0.0, ua.VariantType.Double)
            await var(cpv, f"{path}.Setpoint", "Setpoint", mf, 0.0, ua.VariantType.Double)
            await var(cpv, f"{path}.CycleCount", "CycleCount", mf, 0, ua.VariantType.UInt64)
            await var(cpv, f"{path}.IsActive", "IsActive", mf, True, ua.VariantType.Boolean)
        for name in ("StrokeRate", "DieTemperature"):
            pvo = await obj(ram, f"{base}.{name}", name, pv)
            await var(pvo, f"{base}.{name}.AnalogSignal", "AnalogSignal", padim, 0.0, ua.VariantType.Double)
        signature = await var(
            ram, f"{base}.ForceSignature", "ForceSignature", sim, [0.0] * POINTS, ua.VariantType.Double
        )
        angle = await var(
            ram, f"{base}.CrankAngle", "CrankAngle", sim, CRANK_ANGLE.tolist(), ua.VariantType.Double
        )
        for node in (signature, angle):
            await node.write_value_rank(1)
            # ArrayDimensions is an array of UInt32 (one per dimension); asyncua annotates it as one int
            await node.write_array_dimensions([POINTS])  # type: ignore[arg-type]
        await var(ram, f"{base}.CycleCount", "CycleCount", mf, 0, ua.VariantType.UInt64)
        self._event = await self._event_generator(server, mf, padim, root)

    async def _event_generator(self, server: Server, mf: int, padim: int, machine: Node) -> Any:
        base = server.get_node(ua.ObjectIds.BaseEventType)
        etype = await base.add_object_type(nid(CYCLIC_EVENT_ID, mf), ua.QualifiedName("CyclicEventType", mf))
        await etype.add_property(mf, "CycleCount", 0, varianttype=ua.VariantType.UInt64)
        await etype.add_property(mf, "PartId", "", varianttype=ua.VariantType.String)
        current = await etype.add_object(mf, "CurrentProcessValue")
        await current.add_variable(padim, "AnalogSignal", 0.0, ua.VariantType.Double)
        gen = await server.get_event_generator(etype, server.nodes.server.nodeid)
        gen.event.SourceNode = machine.nodeid
        gen.event.SourceName = self.machine
        # asyncua builds event objects from properties only; the nested process value is added by name
        gen.event.add_property("CurrentProcessValue/AnalogSignal", 0.0, ua.VariantType.Double)
        return gen

    # ------------------------------------------------------------------ publishing

    def stroke_values(self, stroke: Stroke) -> dict[str, Any]:
        """The per-stroke variables of one stroke, by NodeId path (the stroke counter not included)."""
        base = f"{self.machine}.Monitoring.Ram"
        latched = (
            ("ProcessForce", stroke.peak_kn, NOMINAL_PEAK_KN),
            *(
                (f"ProcessForce_{name}", value, NOMINAL_PEAK_KN / 4)
                for (name, _, _), value in zip(CHANNELS, stroke.channels_kn, strict=True)
            ),
            ("ReverseForce", stroke.reverse_kn, 0.0),
            ("PeakForceAngle", stroke.peak_angle_deg, 177.0),
            ("BilletTemperature", stroke.billet_c, BILLET_C),
        )
        out: dict[str, Any] = {}
        for name, value, setpoint in latched:
            path = f"{base}.{name}.CyclicProcessValue"
            out[f"{path}.AnalogSignal"] = round(value, 3)
            out[f"{path}.Setpoint"] = setpoint
            out[f"{path}.CycleCount"] = stroke.count
        out[f"{base}.ForceSignature"] = [round(float(x), 3) for x in stroke.signature]
        return out

    async def publish(self, server: Server) -> None:
        """Write the continuous values, the last stroke's values, then its counter; one event per stroke."""
        when = now_utc()
        base = f"{self.machine}.Monitoring.Ram"
        values: dict[str, Any] = {
            f"{base}.StrokeRate.AnalogSignal": round(self.spm, 2),
            f"{base}.DieTemperature.AnalogSignal": round(self.die_c + float(self.rng.normal(0.0, 0.5)), 2),
        }
        if self.last is not None:
            values.update(self.stroke_values(self.last))
            values[f"{base}.CycleCount"] = self.last.count  # last: a new count means the values are there
        for path, value in values.items():
            node, vtype = self._nodes[path]
            await server.write_attribute_value(node.nodeid, to_datavalue(value, vtype, when))
        while self.pending:
            stroke = self.pending.popleft()
            ev = self._event.event
            ev.CycleCount = stroke.count
            ev.PartId = f"{self.machine}-{stroke.count}"
            # a browse path, not an attribute name
            setattr(ev, "CurrentProcessValue/AnalogSignal", round(stroke.peak_kn, 3))
            await self._event.trigger(time_attr=stroke.at, message=f"stroke {stroke.count}")


def main(argv: list[str] | None = None) -> int:
    """`edge-agent simulate forging ...`."""
    return simulator_main(
        ForgingSimulator,
        argv,
        "Simulated hot-forging press with a tonnage monitor (OPC 40503-1 Metal Forming over OPC UA).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
