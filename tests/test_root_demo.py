"""`edge-agent demo --machines`: any subset of the simulated machine kinds, their devices and faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.simulators.plant import DEFAULT_MACHINES, KINDS, Plant, parse_machines
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


def test_machines_are_parsed_and_an_unknown_one_is_named() -> None:
    assert parse_machines(None) == DEFAULT_MACHINES == tuple(KINDS)
    assert parse_machines("forging, plating,forging") == ("forging", "plating")
    assert parse_machines("all") == tuple(KINDS)
    with pytest.raises(
        ValueError, match=r"unknown machine press; give one or more of imm, die-casting, .*, or all"
    ):
        parse_machines("forging,press")
    with pytest.raises(ValueError, match="fault for machine"):
        Plant(kinds=("forging",), faults={"imm": ["check_ring_wear"]})


async def test_every_kind_runs_in_one_plant_and_its_devices_load(tmp_path: Path) -> None:
    plant = Plant(speed=20.0, kinds=tuple(KINDS), warmup_cycles=10)
    await plant.start()
    try:
        text = plant.devices_toml(poll_interval=0.5)
        devices = plant.devices()
    finally:
        await plant.stop()
    config = parse_config(text, "agent.toml", tmp_path)
    names = [d.name for d in config.devices]
    assert names == list(devices)
    assert set(devices.values()) == set(KINDS)
    assert [n for n in names if devices[n] == "plating"] == ["plating-ni1", "plating-ni2", "plating-anod"]
    by_name = {d.name: d for d in config.devices}
    # cycles scaled to each machine's own speed: a stroke every 3 s at 0.1 x 20 is 1.5 s of wall time
    assert by_name["press-1"].nominal_cycle_s == pytest.approx(1.5)
    assert by_name["spot-1"].nominal_cycle_s == pytest.approx(1.5)
    assert by_name["weld-arc-1"].nominal_cycle_s == pytest.approx(37.3 / 10)
    # no tag is polled slower than the demo's poll (the pH's 10 s is simulated time)
    assert all(t.interval is None or t.interval <= 0.5 for d in config.devices for t in d.tags)


def _demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--broker-port", str(free_port()),
         "--web", "127.0.0.1:0", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_demo_runs_only_the_machines_asked_for() -> None:
    done = _demo("--machines", "forging,plating", "--duration", "12")
    assert done.returncode == 0, done.stderr
    last = {line.split(":")[0]: line for line in done.stdout.splitlines() if " polls=" in line}
    assert set(last) == {"press-1", "plating-ni1", "plating-ni2", "plating-anod"}
    assert all(int(line.split("polls=")[1].split()[0]) >= 5 for line in last.values())
    assert "load %=" in last["press-1"] and "A/dm²=" in last["plating-ni1"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--machines", "forging,lathe"],
            "--machines 'forging,lathe': unknown machine lathe; give one or more of",
        ),
        (["--machines", "forging", "--fault", "imm:check_ring_wear"], "fault for machine(s) ['imm']"),
    ],
)
def test_a_wrong_machine_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = _demo(*args, "--duration", "5", timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("edge-agent demo: ") and says in line
