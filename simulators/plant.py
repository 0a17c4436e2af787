"""A demo plant: the four simulated machines in one event loop on free loopback ports, and their agent config."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.furnace import FurnaceSimulator
from edge_agent.simulators.imm import ImmSimulator
from edge_agent.simulators.mold_tcu import MoldTcuSimulator

#: Machine key -> (device name in the config, nominal cycle in simulated s, or None for no cycles).
MACHINES: dict[str, tuple[str, float | None]] = {
    "imm": ("imm-1", 30.0),
    "die-casting": ("dcm1", 60.0),
    "mold-tcu": ("tcu1", None),
    "furnace": ("furnace-1", None),
}

# A carburizing recipe takes hours: the furnace runs faster than the cycle machines, so a demo of a
# few minutes sees a ramp, a soak and a quench.
FURNACE_SPEED_FACTOR = 12.0


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

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(MACHINES)
        if unknown:
            raise ValueError(f"unknown machine(s) {sorted(unknown)}; known: {', '.join(MACHINES)}")

    async def start(self, host: str = "127.0.0.1") -> None:
        """Start every machine on a free port."""
        f = {k: list(v) for k, v in self.faults.items()}
        self.machines = {
            "imm": ImmSimulator(speed=self.speed, seed=self.seed, faults=f.get("imm", [])),
            "die-casting": DieCastingSimulator(
                speed=self.speed, seed=self.seed, faults=f.get("die-casting", [])
            ),
            "mold-tcu": MoldTcuSimulator(speed=self.speed, seed=self.seed, faults=f.get("mold-tcu", [])),
            "furnace": FurnaceSimulator(
                speed=self.speed * FURNACE_SPEED_FACTOR, seed=self.seed, faults=f.get("furnace", [])
            ),
        }
        for key, sim in self.machines.items():
            cycle_s = MACHINES[key][1]
            if self.warmup_cycles and cycle_s is not None:
                sim.advance(self.warmup_cycles * cycle_s)
                # what happened before the server ran was never observable: no backlog of cycle events
                if hasattr(sim, "pending"):
                    sim.pending.clear()
            await sim.start(host, 0)

    async def stop(self) -> None:
        """Stop every machine."""
        for sim in self.machines.values():
            await sim.stop()

    def set_fault(self, machine: str, name: str, on: bool = True, **params: Any) -> None:
        """Switch a fault of one machine at run time."""
        self.machines[machine].set_fault(name, on, **params)

    def devices_toml(self, poll_interval: float = 0.5) -> str:
        """The `[[devices]]` blocks of the four machines, with cycle times scaled to the simulated speed."""
        blocks = []
        for key, sim in self.machines.items():
            name, cycle_s = MACHINES[key]
            if key in ("imm", "furnace"):
                text = sim.device_config(name=name, poll_interval=poll_interval)
                # keep only the device tables: the shipped files are whole agent configs
                text = text[text.index("[[devices]]") :]
                # per-tag intervals are set for real time; simulated time runs faster, so sample faster too
                text = re.sub(
                    r"(?m)^interval = ([0-9.]+)$",
                    lambda m: f"interval = {min(float(m.group(1)), poll_interval)!r}",
                    text,
                )
            else:
                text = sim.device_config(name=name, poll_interval=poll_interval)
            if cycle_s is not None:
                scaled = cycle_s / self.speed
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
