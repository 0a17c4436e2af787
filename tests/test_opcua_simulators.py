"""The OPC UA simulators: furnace over the wire with the shipped config, and the process faults of both machines."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import pytest_asyncio

from edge_agent.config import parse_config
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import OpcUaDriver
from edge_agent.simulators import furnace as furnace_module
from edge_agent.simulators import imm as imm_module
from edge_agent.simulators.furnace import TYPE_K_UPSCALE_C, FurnaceSimulator
from edge_agent.simulators.imm import ImmSimulator
from edge_agent.types import Quality, Readings

pytestmark = pytest.mark.asyncio(loop_scope="module")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def furnace() -> AsyncIterator[FurnaceSimulator]:
    """A furnace at 2400x: the four-hour carburizing program runs in about six seconds."""
    sim = FurnaceSimulator(speed=2400.0, seed=1)
    await sim.start()
    yield sim
    await sim.stop()


def run_model(sim: FurnaceSimulator | ImmSimulator, hours: float, step_s: float = 60.0) -> None:
    """Advance a simulator's process model without a server."""
    for _ in range(int(hours * 3600 / step_s)):
        sim.sim_time_s += step_s
        sim.advance(step_s)


async def test_furnace_over_the_wire_with_the_shipped_config(furnace: FurnaceSimulator) -> None:
    device = parse_config(furnace.device_config(), base_dir=CONFIG_DIR).devices[0]
    assert isinstance(device, OpcUaDevice)
    rows = {name: i for i, name in enumerate(device.signal_names())}
    names = device.signal_names()
    pushed: list[Readings] = []
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR, on_readings=pushed.append)
    sim_start = furnace.sim_time_s
    wall_start = time.monotonic()
    await driver.connect()
    polled: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and furnace.batch_id < 2:
            for group in driver.groups():
                batch = await driver.read(group)
                assert (batch.quality == Quality.GOOD).all(), batch.quality
                polled.append({names[s]: v for s, v in zip(batch.signal, batch.value, strict=True)})
            await asyncio.sleep(0.1)
    finally:
        await driver.close()
    factor = (furnace.sim_time_s - sim_start) / (time.monotonic() - wall_start)
    assert 1500 < factor < 2600  # the simulated-time factor holds (minus the loop's own overhead)
    assert furnace.batch_id >= 2  # a whole four-hour recipe ran in seconds
    zones = np.array([[p[f"zone_{i}_temp"] for i in (1, 2, 3, 4)] for p in polled if "zone_1_temp" in p])
    assert zones.min() > 800.0 and zones.max() < 945.0
    assert (zones.max(axis=1) - zones.min(axis=1)).max() < 12.0  # a healthy furnace is uniform
    carbon = [p["carbon_potential"] for p in polled if "carbon_potential" in p]
    assert 0.35 < min(carbon) < 0.6 and 1.0 < max(carbon) < 1.15  # load at 0.4 %C, boost at 1.1 %C
    steps = [
        (names[s], v) for b in pushed for s, v in zip(b.signal, b.value, strict=True) if b.quality[0] == 0
    ]
    assert {v for n, v in steps if n == "recipe_step"} == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert {v for n, v in steps if n == "door_open"} == {0.0, 1.0}
    assert {v for n, v in steps if n == "quench_active"} == {0.0, 1.0}
    assert furnace.state_changes > 6  # door and quench events fired


async def test_thermocouple_burnout_reads_upscale_then_recovers(furnace: FurnaceSimulator) -> None:
    furnace.set_fault("thermocouple_burnout", zone=2)
    assert furnace.zone_reading(1) == TYPE_K_UPSCALE_C
    furnace.set_fault("thermocouple_burnout", zone=2, mode="ambient")
    assert furnace.zone_reading(1) == 25.0
    furnace.set_fault("thermocouple_burnout", on=False)
    assert 700.0 < furnace.zone_reading(1) < 1000.0
    with pytest.raises(ValueError, match="unknown furnace fault 'tc_burnout'; known: calibration_drift"):
        furnace.set_fault("tc_burnout")


async def test_furnace_faults_change_the_process() -> None:
    def boost_peak(sim: FurnaceSimulator) -> float:
        peak = 0.0
        for _ in range(int(3 * 3600 / 30)):
            sim.sim_time_s += 30
            sim.advance(30)
            if sim.step.name == "boost":
                peak = max(peak, max(z.temp_c for z in sim.zones))
        return peak - 925.0

    assert 0.5 < boost_peak(FurnaceSimulator()) < 6.0  # inside the AMS2750 class 2 band
    assert boost_peak(FurnaceSimulator(faults=["overshoot"])) > 10.0
    heater = FurnaceSimulator(faults=["zone_heater_failure:zone=3"])
    run_model(heater, 2.5)
    temps = [z.temp_c for z in heater.zones]
    assert temps[2] < min(temps[0], temps[1], temps[3]) - 30.0  # zone low, spread up
    drift = FurnaceSimulator(seed=2)
    run_model(drift, 2.0)
    drift.set_fault("calibration_drift", zone=1, rate=3.0)
    before = drift.zone_reading(0) - drift.zones[0].temp_c
    run_model(drift, 2.0)
    after = drift.zone_reading(0) - drift.zones[0].temp_c
    assert 4.5 < after - before < 7.5  # 3 °C/h for 2 h (plus reading noise)


async def test_imm_faults_change_the_cycle_values() -> None:
    def cycles(sim: ImmSimulator, n: int) -> list:
        start = len(sim.history)
        while len(sim.history) < start + n:
            sim.sim_time_s += sim.cycle_s
            sim.advance(sim.cycle_s)
        return sim.history[start:]

    base = ImmSimulator(seed=5)
    cycles(base, 300)  # past the warm-up
    nominal = cycles(base, 50)
    wear = ImmSimulator(seed=5)
    cycles(wear, 300)
    wear.set_fault("check_ring_wear", rate=0.05)
    worn = cycles(wear, 50)
    assert worn[-1].cushion < nominal[-1].cushion - 1.5  # cushion drifts towards 0
    assert (
        np.mean([c.injection_time_ms for c in worn[-10:]])
        > np.mean([c.injection_time_ms for c in nominal]) + 10
    )
    material = ImmSimulator(seed=5)
    cycles(material, 300)
    material.set_fault("material_change", factor=1.08)
    changed = cycles(material, 50)
    ratio = np.mean([c.peak_pressure_bar for c in changed]) / np.mean([c.peak_pressure_bar for c in nominal])
    assert 1.06 < ratio < 1.10
    short = ImmSimulator(seed=5)
    cycles(short, 300)
    bad_before = short.bad_parts
    short.set_fault("short_shot")
    shots = cycles(short, 5)
    assert short.bad_parts == bad_before + 5 and all(not c.good for c in shots)
    assert max(c.peak_pressure_bar for c in shots) < 0.9 * min(c.peak_pressure_bar for c in nominal)
    heater = ImmSimulator(seed=5, faults=["heater_band_failure:zone=2,drop=25"])
    run_model(heater, 0.2, step_s=5.0)
    assert heater.barrel[1] < heater.barrel_setpoints[1] - 20.0
    assert abs(heater.barrel[0] - heater.barrel_setpoints[0]) < 2.0


async def test_simulate_command_logs_its_own_start_not_every_asyncua_node() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent.cli", "simulate", "imm", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or "Ctrl-C to stop" not in lines[-1]:
                line = await proc.stdout.readline()
                assert line, f"the simulator ended before serving: {lines}"
                lines.append(line.decode())
    finally:
        proc.terminate()
        await proc.wait()
    assert [line for line in lines if " asyncua." in line] == []
    assert len(lines) == 2, lines
    assert " INFO edge_agent.simulators.opcua_server: imm simulator serving opc.tcp://" in lines[0]


@pytest.mark.parametrize("machine", ["imm", "furnace"])
async def test_a_busy_port_is_one_line_and_exit_2(machine: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "simulate", machine, "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert out == b""
    (line,) = err.decode().splitlines()  # no asyncua traceback
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.parametrize("module", [imm_module, furnace_module])
async def test_help_describes_every_fault(module: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    machine = {imm_module: ImmSimulator, furnace_module: FurnaceSimulator}[module]
    for name in machine.FAULTS:
        (described,) = re.findall(rf"(?m)^  {name}: (\S.*)$", text)
        assert len(described.split()) >= 3, name
