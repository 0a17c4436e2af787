"""The Modbus simulators: determinism, process faults, shipped configs, command line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest

from edge_agent.config import load_config
from edge_agent.simulators import die_casting, mold_tcu
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.modbus_server import parse_fault
from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from edge_agent.simulators.process import FirstOrderLag, ProcessValue, generator_for


def shots(sim: DieCastingSimulator, n: int, name: str) -> np.ndarray:
    """Advance shot by shot and collect one per-shot value."""
    out = []
    for _ in range(n):
        before = sim.values().get("shot_counter", 0)
        while sim.values().get("shot_counter", 0) == before:
            sim.advance(1.0)
        out.append(sim.values()[name])
    return np.array(out)


def test_same_seed_same_values_whatever_the_step_size() -> None:
    a, b, c = (DieCastingSimulator(speed=0, seed=s) for s in (5, 5, 6))
    a.advance(3600)
    for _ in range(360):
        b.advance(10)
    c.advance(3600)
    assert a.values() == b.values()
    assert a.values() != c.values()


def test_ar1_noise_is_autocorrelated_with_the_given_sigma() -> None:
    model = ProcessValue(10.0, 2.0, phi=0.6, spike_probability=0.0, rng=generator_for(1, "x"))
    x = np.array([model.next() for _ in range(20000)])
    assert x.mean() == pytest.approx(10.0, abs=0.1)
    assert x.std() == pytest.approx(2.0, rel=0.05)
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert lag1 == pytest.approx(0.6, abs=0.03)


def test_warmup_drift_step_and_lag() -> None:
    model = ProcessValue(0.0, 1e-9, phi=0.0, warmup=10.0, warmup_tau=5.0, spike_probability=0.0)
    model.drift_per_step = 0.5
    first = model.next()
    assert first == pytest.approx(10.0 + 0.5)
    model.step = -3.0
    values = [model.next() for _ in range(50)]
    assert values[-1] == pytest.approx(51 * 0.5 - 3.0 + 10.0 * np.exp(-50 / 5.0), abs=1e-6)
    lag = FirstOrderLag(0.0, tau_s=10.0)
    assert lag.advance(100.0, 10.0) == pytest.approx(100.0 * (1 - np.exp(-1)))
    with pytest.raises(ValueError, match="phi must be in"):
        ProcessValue(0.0, 1.0, phi=1.0)


def test_per_shot_values_are_in_the_domain_ranges() -> None:
    sim = DieCastingSimulator(speed=0, seed=2)
    sim.advance(4 * 3600)
    v = sim.values()
    assert 0.1 <= v["phase1_velocity"] <= 0.5
    assert 2.0 <= v["phase2_velocity_max"] <= 6.0
    assert 10.0 <= v["fill_time"] <= 50.0
    assert 400.0 <= v["intensification_pressure"] <= 1000.0
    assert 15.0 <= v["biscuit_length"] <= 40.0
    assert 640.0 <= v["melt_temp"] <= 700.0
    assert v["machine_state"] == 3
    assert v["good_parts"] + v["scrap_parts"] == v["shot_counter"]
    assert 0.0 < v["scrap_parts"] / v["shot_counter"] < 0.2


def test_accumulator_loss_steps_intensification_pressure_down() -> None:
    sim = DieCastingSimulator(speed=0, seed=4)
    sim.advance(3 * 3600)  # past warm-up
    before = shots(sim, 40, "intensification_pressure")
    sim.set_fault("accumulator_loss", drop_bar=120)
    after = shots(sim, 40, "intensification_pressure")
    assert before.mean() - after.mean() == pytest.approx(120.0, abs=15.0)


def test_dosing_drift_trends_the_biscuit() -> None:
    sim = DieCastingSimulator(speed=0, seed=4, faults=["dosing_drift:mm_per_shot=-0.1"])
    biscuit = shots(sim, 100, "biscuit_length")
    slope = np.polyfit(np.arange(100), biscuit, 1)[0]
    assert slope == pytest.approx(-0.1, abs=0.03)


def test_counter_rollover_and_reset() -> None:
    sim = DieCastingSimulator(speed=0, seed=1)
    sim.advance(600)
    sim.set_fault("counter_rollover")
    seen = [sim.values()["good_parts"]]
    for _ in range(12):
        shots(sim, 1, "shot_counter")
        seen.append(sim.values()["good_parts"])
    assert max(seen) >= 65530
    assert min(seen) < 10  # wrapped through 65535 -> 0
    sim.set_fault("counter_reset")
    assert sim.values()["shot_counter"] == 0
    assert "counter_reset" not in sim.active_faults  # an event, not a state


def test_die_hot_spot_and_stale_value() -> None:
    sim = DieCastingSimulator(speed=0, seed=1)
    sim.advance(3 * 3600)
    base = sim.values()["die_temp_2"]
    sim.set_fault("die_hot_spot", circuit=2, delta_c=35)
    sim.advance(3 * 3600)
    assert sim.values()["die_temp_2"] - base == pytest.approx(35.0, abs=5.0)
    sim.set_fault("stale_value")
    frozen = sim.values()["die_temp_1"]
    sim.advance(600)
    assert sim.values()["die_temp_1"] == frozen
    with pytest.raises(ValueError, match=r"circuit must be 1\.\.4"):
        sim.set_fault("die_hot_spot", circuit=7)


def test_tcu_warms_up_and_flow_loss_raises_delta_t() -> None:
    sim = MoldTcuSimulator(speed=0, seed=1)
    sim.advance(1)
    assert sim.values()["supply_temp"] < 40.0  # cold start
    sim.advance(3600)
    v = sim.values()
    assert v["supply_temp"] == pytest.approx(80.0, abs=1.5)
    dt_before = v["return_temp"] - v["supply_temp"]
    assert dt_before == pytest.approx(8.0 / (0.0697 * 30.0), abs=1.0)
    assert v["mold_shot_counter"] == 60  # one shot per 60 s
    sim.set_fault("flow_loss", factor=0.4)
    sim.advance(900)
    v = sim.values()
    assert v["flow"] == pytest.approx(12.0, abs=1.5)
    assert v["return_temp"] - v["supply_temp"] > 2 * dt_before
    assert v["alarm_word"] == 1  # flow-low bit
    tables = sim.server.units[1]
    assert tables.bits["discrete_input"][0]


def test_unknown_fault_names_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown fault 'flood' for the die-casting simulator; known: .*accumulator_loss"
    ):
        DieCastingSimulator(faults=["flood"])
    assert parse_fault("slow-response:delay_s=2,table=coil") == (
        "slow_response",
        {"delay_s": 2.0, "table": "coil"},
    )
    with pytest.raises(ValueError, match="key=value"):
        parse_fault("slow_response:2")


@pytest.mark.parametrize(
    ("cls", "path", "port"),
    [
        (DieCastingSimulator, "config/die-casting.toml", 5020),
        (MoldTcuSimulator, "config/mold-tcu.toml", 5021),
    ],
)
def test_shipped_config_is_the_simulator_map(cls: type, path: str, port: int) -> None:
    with open(path, encoding="utf-8") as f:
        assert f.read() == cls.config_file_text(f"modbus-tcp://127.0.0.1:{port}")
    config = load_config(path)
    assert config.sinks.mqtt is None and config.sinks.influx is None
    assert [t.name for t in config.devices[0].tags] == [f.name for f in cls.FIELDS]


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert die_casting.main(["--print-config", "--port", "6000"]) == 0
    assert 'endpoint = "modbus-tcp://127.0.0.1:6000"' in capsys.readouterr().out
    assert mold_tcu.main(["--fault", "nonsense"]) == 2
    assert "unknown fault 'nonsense'" in capsys.readouterr().err


async def test_wall_clock_speed_runs_simulated_time() -> None:
    import asyncio

    sim = DieCastingSimulator(speed=600.0, seed=0)
    await sim.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        await sim.stop()
    assert sim.sim_time_s == pytest.approx(300.0, rel=0.25)
    assert sim.values()["shot_counter"] >= 3


@pytest.mark.parametrize(
    ("module", "path"), [(die_casting, "config/die-casting.toml"), (mold_tcu, "config/mold-tcu.toml")]
)
def test_default_port_is_the_shipped_configs(
    module: ModuleType, path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert module.main(["--print-config"]) == 0
    with open(path, encoding="utf-8") as f:
        assert capsys.readouterr().out == f.read()


@pytest.mark.parametrize("machine", ["die-casting", "mold-tcu"])
def test_a_busy_port_is_one_line_and_exit_2(machine: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "simulate", machine, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.parametrize("module", [die_casting, mold_tcu])
def test_help_describes_every_fault(module: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    machine = {die_casting: DieCastingSimulator, mold_tcu: MoldTcuSimulator}[module]
    for name in machine.known_faults():
        (described,) = re.findall(rf"(?m)^  {name}: (\S.*)$", text)
        assert len(described.split()) >= 3, name
