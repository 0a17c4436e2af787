"""A demo plant: any of the simulated machines in one event loop on free loopback ports, and their agent config."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MachineKind:
    """One kind of simulated machine the plant can run."""

    module: str
    """Module of its simulator (imported when the plant starts)."""
    cls: str
    """The simulator class."""
    device: str
    """Its device name in the config (a plating line's tanks are `DEVICE-STATION`)."""
    cycle_s: float | None
    """Nominal cycle in simulated seconds, or None for a machine without cycles."""
    speed_factor: float = 1.0
    """Its simulated speed relative to the plant's: the slow processes run faster, the fast ones slower, so
    a demo of a few minutes sees a furnace recipe and plating loads, and a 0.5 s poll sees every stroke."""
    about: str = ""
    """What it is, for `demo --help`."""


#: Machine key -> kind, in the order the demo lists them.
KINDS: dict[str, MachineKind] = {
    "imm": MachineKind("imm", "ImmSimulator", "imm-1", 30.0, about="injection moulding machine (OPC UA)"),
    "die-casting": MachineKind(
        "die_casting", "DieCastingSimulator", "dcm1", 60.0, about="die-casting machine (Modbus)"
    ),
    "mold-tcu": MachineKind(
        "mold_tcu", "MoldTcuSimulator", "tcu1", None, about="mould temperature unit (Modbus)"
    ),
    # a carburizing recipe takes hours: 12x, so a demo of a few minutes sees a ramp, a soak and a quench
    "furnace": MachineKind(
        "furnace", "FurnaceSimulator", "furnace-1", None, 12.0, "heat-treatment furnace (OPC UA)"
    ),
    # a stroke every 3 s, a spot every 3 s: 0.1x, so the 0.5 s poll sees each one (20x plant speed: 1.5 s)
    "forging": MachineKind("forging", "ForgingSimulator", "press-1", 3.0, 0.1, "forging press (OPC UA)"),
    "welding-arc": MachineKind(
        "welding_arc", "ArcWeldingSimulator", "weld-arc-1", 37.3, 0.5, "GMAW welding source (Modbus)"
    ),
    "welding-spot": MachineKind(
        "welding_spot", "SpotWeldingSimulator", "spot-1", 3.0, 0.1, "spot-weld controller (Modbus)"
    ),
    # a 20-minute load: 3x (a load every ~20 s at 20x)
    "plating": MachineKind(
        "plating",
        "PlatingLineSimulator",
        "plating",
        None,
        3.0,
        "plating line: 2 nickel tanks, 1 anodizing (Modbus)",
    ),
}

#: Machine key -> (device name in the config, nominal cycle in simulated s, or None for no cycles).
MACHINES: dict[str, tuple[str, float | None]] = {k: (m.device, m.cycle_s) for k, m in KINDS.items()}

#: The moulding, casting and heat-treatment line a Plant runs unless told otherwise; deploy/docker-compose.yml
#: runs the same four.
FIRST_LINE: tuple[str, ...] = ("imm", "die-casting", "mold-tcu", "furnace")

#: What `edge-agent demo` runs without --machines: one machine of every kind. The eight simulators and the
#: agent take about 0.3 of a core at the demo's 20x (45 s of `demo --plain`: 13.7 s of CPU), well within two.
DEFAULT_MACHINES: tuple[str, ...] = tuple(KINDS)


def parse_machines(text: str | None) -> tuple[str, ...]:
    """`--machines imm,forging` -> the keys; `all` is every kind; None the default line. ValueError names the known."""
    if text is None:
        return DEFAULT_MACHINES
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if keys == ["all"]:
        return tuple(KINDS)
    unknown = [k for k in keys if k not in KINDS]
    if unknown or not keys:
        raise ValueError(
            f"--machines {text!r}: unknown machine {', '.join(unknown) or '(none given)'}; "
            f"give one or more of {', '.join(KINDS)} separated by commas, or all"
        )
    return tuple(dict.fromkeys(keys))


@dataclass
class Plant:
    """Starts, holds and stops the simulators; `speed` is simulated seconds per wall second."""

    speed: float = 20.0
    seed: int = 0
    faults: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Faults per machine key at start, e.g. {"imm": ["check_ring_wear"]}."""
    machines: dict[str, Any] = field(default_factory=dict)
    warmup_cycles: int = 600
    """Cycles of simulated production run before the servers start, so the process is past its warm-up."""
    kinds: Sequence[str] = FIRST_LINE
    """The machines to run (keys of KINDS)."""

    def __post_init__(self) -> None:
        unknown = sorted((set(self.faults) | set(self.kinds)) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown machine(s) {unknown}; known: {', '.join(KINDS)}")
        absent = sorted(set(self.faults) - set(self.kinds))
        if absent:
            raise ValueError(
                f"fault for machine(s) {absent} that the plant does not run ({', '.join(self.kinds)})"
            )

    async def start(self, host: str = "127.0.0.1") -> None:
        """Start every machine on a free port."""
        f = {k: list(v) for k, v in self.faults.items()}
        self.machines = {}
        for key in self.kinds:
            kind = KINDS[key]
            cls = getattr(importlib.import_module(f"edge_agent.simulators.{kind.module}"), kind.cls)
            self.machines[key] = cls(
                speed=self.speed * kind.speed_factor, seed=self.seed, faults=f.get(key, [])
            )
        for key, sim in self.machines.items():
            cycle_s = KINDS[key].cycle_s
            if self.warmup_cycles and cycle_s is not None:
                sim.advance(self.warmup_cycles * cycle_s)
                # what happened before the server ran was never observable: no backlog of cycle events
                if hasattr(sim, "pending"):
                    sim.pending.clear()
            elif key == "plating":
                sim.advance(300.0)  # into the first loads
            await sim.start(host, 0)

    async def stop(self) -> None:
        """Stop every machine."""
        for sim in self.machines.values():
            await sim.stop()

    def set_fault(self, machine: str, name: str, on: bool = True, **params: Any) -> None:
        """Switch a fault of one machine at run time."""
        self.machines[machine].set_fault(name, on, **params)

    def speed_of(self, machine: str) -> float:
        """Simulated seconds per wall second of one machine."""
        return self.speed * KINDS[machine].speed_factor

    def devices(self) -> dict[str, str]:
        """Device name in the config -> machine key (a plating line's tanks are devices of one machine)."""
        out = {}
        for key in self.machines:
            name = KINDS[key].device
            if key == "plating":
                out.update({f"{name}-{station}": key for station in ("ni1", "ni2", "anod")})
            else:
                out[name] = key
        return out

    def devices_toml(self, poll_interval: float = 0.5) -> str:
        """The `[[devices]]` blocks of the machines, with cycle times scaled to their simulated speed."""
        blocks = []
        for key, sim in self.machines.items():
            kind = KINDS[key]
            text = sim.device_config(name=kind.device, poll_interval=poll_interval)
            if "[[devices]]" in text:
                # keep only the device tables: the shipped OPC UA files are whole agent configs
                text = text[text.index("[[devices]]") :]
            # per-tag intervals are set for real time; simulated time runs faster, so sample faster too
            text = re.sub(
                r"(?m)^interval = ([0-9.]+)$",
                lambda m: f"interval = {min(float(m.group(1)), poll_interval)!r}",
                text,
            )
            if kind.cycle_s is not None:
                scaled = kind.cycle_s / self.speed_of(key)
                # ideal = 95 % of nominal: a machine at its nominal rate shows ~95 % performance
                extra = f"nominal_cycle_s = {scaled:.6g}\nideal_cycle_s = {0.95 * scaled:.6g}\n"
                at = re.search(r"(?m)^endpoint = .*\n", text)
                assert at is not None, f"{key}: the simulator's device config has no endpoint line"
                text = text[: at.end()] + extra + text[at.end() :]
            blocks.append(text.rstrip() + "\n")
        return "\n".join(blocks)

    def endpoints(self) -> dict[str, str]:
        """Machine key -> endpoint URL."""
        return {k: str(sim.endpoint) for k, sim in self.machines.items()}
