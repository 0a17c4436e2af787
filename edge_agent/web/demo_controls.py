"""The demo's fault switches for the web page, and `--fault-after`: faults that start once the baseline is learnt."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class PlantLike(Protocol):
    """What the switches need of edge_agent.simulators.plant.Plant."""

    machines: dict[str, Any]

    def set_fault(self, machine: str, name: str, on: bool = True, **params: Any) -> None:
        """Switch a fault of one machine (by machine key)."""


class PlantControls:
    """The demo plant's faults by device name, as the web page lists and switches them."""

    def __init__(self, plant: PlantLike, devices: Mapping[str, str]) -> None:
        self.plant = plant
        self.devices = dict(devices)
        """Device name in the agent's config -> machine key of the plant (`dcm1` -> `die-casting`)."""

    def faults(self) -> dict[str, list[dict[str, Any]]]:
        """Device -> its simulator's faults (name, description, active), process faults before link faults."""
        out: dict[str, list[dict[str, Any]]] = {}
        for device, key in self.devices.items():
            sim = self.plant.machines.get(key)
            if sim is None:
                continue
            known = sim.known_faults() if hasattr(sim, "known_faults") else dict(sim.FAULTS)
            active = getattr(sim, "active_faults", None)
            if active is None:
                active = getattr(sim, "faults", {})
            out[device] = [
                {"name": name, "description": about, "active": name in active}
                for name, about in known.items()
            ]
        return out

    def set_fault(self, machine: str, fault: str, on: bool) -> None:
        """Switch one fault of one device; ValueError names an unknown device or fault."""
        key = self.devices.get(machine)
        if key is None:
            raise ValueError(f"no demo machine {machine!r}; known: {', '.join(self.devices)}")
        self.plant.set_fault(key, fault, on)


async def faults_after(plant: PlantLike, faults: Mapping[str, Sequence[str]], seconds: float) -> None:
    """Switch `faults` (machine key -> fault names, `name` or `name:key=value,...`) on after `seconds`."""
    await asyncio.sleep(seconds)
    for machine, names in faults.items():
        for spec in names:
            name, _, rest = spec.partition(":")
            params: dict[str, Any] = {}
            for item in filter(None, rest.split(",")):
                key, _, value = item.partition("=")
                try:
                    params[key.strip()] = float(value)
                except ValueError:
                    params[key.strip()] = value.strip()
            plant.set_fault(machine, name.strip(), True, **params)
            log.warning("demo: fault %s of %s switched on after %g s", name, machine, seconds)


#: Where the demo's page listens unless `--web` says otherwise (a free port if it is taken).
DEMO_LISTEN = "127.0.0.1:8080"


async def start_demo_page(agent: Any, plant: PlantLike, listen: str | None) -> Any:
    """Start the demo's web page with its fault switches and return the running WebServer.

    `listen` is `--web HOST:PORT`; without it the page takes 127.0.0.1:8080, or a free port when
    something else holds 8080 (a second demo, another service). Call after the terminal view took
    `agent.on_output`: the page listens after it.
    """
    from edge_agent.simulators.plant import MACHINES
    from edge_agent.web.config import WebConfig, with_listen
    from edge_agent.web.server import WebServer

    # the plant names its devices (a plating line is three tank devices of one machine)
    devices = getattr(plant, "devices", None)
    mapping = devices() if callable(devices) else {device: key for key, (device, _cycle) in MACHINES.items()}
    controls = PlantControls(plant, mapping)
    config = with_listen(WebConfig(), listen or DEMO_LISTEN)
    page = WebServer(agent, config, demo=controls)
    try:
        await page.start()
    except OSError as exc:
        if listen is not None or exc.errno != errno.EADDRINUSE:
            raise ValueError(str(exc.strerror or exc)) from None
        page = WebServer(agent, config.model_copy(update={"port": 0}), demo=controls)
        await page.start()
    return page
