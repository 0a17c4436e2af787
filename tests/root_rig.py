"""A simulated machine, its real protocol driver and the indicator pipeline, stepped by hand in simulated time.

The simulator's clock is stopped; each step advances its process model, lets its server publish,
reads every tag group over the wire with the device's real driver, and feeds the batch to the
pipeline stamped with the simulated time (as a machine running at real speed would be read). So
alarm delays, ampere-hour integrals and cycle holds see the process's own time, and a test counts
exactly how many cycles a detector needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import parse_config, profile_dirs
from edge_agent.drivers.base import Driver
from edge_agent.drivers.registry import make_driver
from edge_agent.pipeline import IndicatorPipeline
from edge_agent.records import AlarmEvent, IndicatorBatch
from edge_agent.trace_types import Traces, traces_of, with_traces
from edge_agent.types import Readings

T0_NS = 1_800_000_000 * 10**9


@dataclass(frozen=True)
class Alarm:
    """One alarm event as a test looks at it."""

    device: str
    signal: str
    rule: str
    state: str
    step: int
    value: float
    limit: float
    message: str


@dataclass
class Rig:
    """Drives one simulator (Modbus: `advance`; OPC UA: `advance` + `publish`) and the agent's pipeline."""

    sim: Any
    pipeline: IndicatorPipeline
    drivers: dict[str, Driver]
    step_s: float
    steps: int = 0
    elapsed_s: float = 0.0
    """Simulated seconds the steps covered (a test may change `step_s` on the way)."""
    alarms: list[Alarm] = field(default_factory=list)
    records: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)
    """(device, pseudo-signal, fields) of every feature record, in order."""
    raw: list[tuple[str, Readings]] = field(default_factory=list)
    _due: dict[tuple[str, float], int] = field(default_factory=dict)

    @classmethod
    async def open(cls, sim: Any, config_text: str, tmp: Path, step_s: float) -> Rig:
        """Build the pipeline and one connected driver per device of the config."""
        # an OPC UA simulator's own clock task publishes every tick: stopped, only the rig moves and
        # publishes it, and what a test writes into its nodes stays there until the next step
        task = getattr(sim, "_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sim._task = None
        (tmp / "agent.toml").write_text(config_text, encoding="utf-8")
        config = parse_config(config_text, "agent.toml", tmp)
        pipeline = IndicatorPipeline(config, profile_dirs(config, tmp))
        drivers: dict[str, Driver] = {}
        for device in config.devices:
            driver = make_driver(device, pipeline.rows_of(device.name), tmp)
            await driver.connect()
            drivers[device.name] = driver
        return cls(sim, pipeline, drivers, step_s)

    async def close(self) -> None:
        """Close the drivers (the simulator belongs to the caller)."""
        for driver in self.drivers.values():
            await driver.close()

    @property
    def sim_ns(self) -> int:
        """The simulated time of the last step, as the pipeline saw it."""
        return T0_NS + round(self.elapsed_s * 1e9)

    async def step_read(self) -> list[Alarm]:
        """One step that reads without moving the simulator (the test moved it and changed what it serves)."""
        return await self.step(1, advance=False)

    async def step(self, n: int = 1, advance: bool = True) -> list[Alarm]:
        """Run n steps; the alarm events they raised or cleared."""
        new: list[Alarm] = []
        for _ in range(n):
            self.steps += 1
            self.elapsed_s += self.step_s
            if advance:
                await self._advance(self.step_s)
            t = self.sim_ns
            for name, driver in self.drivers.items():
                # each scan class when its interval is due in simulated time, as the scheduler reads them
                parts = []
                for g in driver.groups():
                    due = self._due.get((name, g.interval_s), 0)
                    if t >= due:
                        parts.append(await driver.read(g))
                        self._due[(name, g.interval_s)] = t + round(g.interval_s * 1e9) - 1
                r = Readings.concat(parts)
                stamped = Readings(r.signal, np.full(len(r), t, np.int64), r.value, r.quality)
                traces = [tr for p in parts if (tr := traces_of(p)) is not None]
                if traces:
                    stamped = with_traces(stamped, Traces.concat(traces).restamped(t))
                self.raw.append((name, stamped))
                out = self.pipeline.process(name, stamped, t)
                tags = self.pipeline.table.tags
                for _, b in out.kpi:
                    if isinstance(b, IndicatorBatch) and b.family != "spc":
                        fields = {k: float(v[0]) for k, v in b.values.items()}
                        self.records.append((name, tags[int(b.signal[0])], fields))
                for _, a in out.alarms:
                    assert isinstance(a, AlarmEvent)
                    new.append(
                        Alarm(name, tags[a.signal], a.rule, a.state, self.steps, a.value, a.limit, a.message)
                    )
        self.alarms += new
        return new

    async def _advance(self, dt: float) -> None:
        sim = self.sim
        sim.advance(dt)
        server = getattr(sim, "server", None)
        if hasattr(sim, "publish") and server is not None:  # OPC UA: write the values now
            sim.sim_time_s += dt
            await sim.publish(server)

    def starts(
        self, signal: str | None = None, rules: set[str] | frozenset[str] | None = None
    ) -> list[Alarm]:
        """Alarm starts so far, optionally of one signal and some rules."""
        return [
            a
            for a in self.alarms
            if a.state == "start"
            and (signal is None or a.signal == signal)
            and (rules is None or a.rule in rules)
        ]

    def active(self, signal: str, rules: set[str] | frozenset[str]) -> bool:
        """Whether an alarm of `rules` on `signal` has started and not cleared."""
        balance = 0
        for a in self.alarms:
            if a.signal == signal and a.rule in rules:
                balance += 1 if a.state == "start" else -1
        return balance > 0

    async def in_control(self, signal: str, rules: set[str] | frozenset[str], within: int = 200) -> None:
        """Step until no alarm of `rules` is active on `signal`: a fault injected during a false alarm
        would have no start event of its own."""
        for _ in range(within):
            if not self.active(signal, rules):
                return
            await self.step()
        raise AssertionError(f"{sorted(rules)} on {signal} still active after {within} steps without a fault")

    async def until(
        self,
        signal: str,
        rules: set[str] | frozenset[str],
        within: int,
        device: str | None = None,
        direction: int = 0,
    ) -> int:
        """Steps until an alarm of `rules` starts on `signal` (at most `within`); the count, or AssertionError.

        `direction` +1 (-1) takes only an alarm whose value is above (below) its limit: a drift's
        alarm is on the side it drifts to, a false alarm on the other side does not count.
        """
        began = self.steps
        for _ in range(within):
            for a in await self.step():
                side = (a.value > a.limit) - (a.value < a.limit)
                if (
                    a.state == "start"
                    and a.signal == signal
                    and a.rule in rules
                    and device in (None, a.device)
                    and direction in (0, side)
                ):
                    return self.steps - began
        seen = sorted({(a.signal, a.rule) for a in self.alarms if a.step > began and a.state == "start"})
        raise AssertionError(
            f"no {sorted(rules)} alarm on {signal} within {within} steps after the fault; alarms seen: {seen}"
        )
