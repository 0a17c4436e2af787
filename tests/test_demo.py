"""`edge-agent demo`, the README's main command: four machines, the agent and an embedded broker."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from edge_agent.cli import build_parser
from edge_agent.config import BUILTIN_PROFILES_DIR
from edge_agent.demo import DemoView, demo_command
from edge_agent.profiles import find_profile
from edge_agent.records import Output, Source
from edge_agent.types import Readings
from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def _env_with_tmpdir(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


def test_demo_runs_the_plant_through_its_embedded_broker(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "14", "--broker-port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_with_tmpdir(tmp_path),
    )  # fmt: skip
    kinds: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with lock:
            kinds[(body["machine"], body["kind"])] += 1

    try:
        wait_for_port(port, timeout=30)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.subscribe("demo/uns/#", qos=1)
        client.loop_start()
        out, err = demo.communicate(timeout=90)
        time.sleep(0.5)
        client.loop_stop()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("edge-agent demo · MQTT mqtt://127.0.0.1:")
    config = Path(lines[0].split(" · config ")[1].split(" · ")[0])
    assert config.parent.parent == tmp_path and config.name == "agent.toml"
    # the demo's config and outbox are removed on exit (--keep keeps them)
    assert list(tmp_path.iterdir()) == []
    assert lines[-1].startswith("demo stopped:")
    last = {line.split(":")[0]: line for line in lines if " polls=" in line}
    assert set(last) == {"imm-1", "dcm1", "tcu1", "furnace-1"}
    assert all(int(line.split("polls=")[1].split()[0]) >= 5 for line in last.values())
    assert "spread °C=" in last["furnace-1"] and "heat kW=" in last["tcu1"] and "OEE=" in last["dcm1"]
    for machine in ("imm-1", "dcm1", "tcu1", "furnace-1"):
        assert kinds[(machine, "raw")] >= 3, kinds
        assert kinds[(machine, "kpi")] >= 3, kinds
    assert kinds[("demo-agent", "status")] >= 1


def test_demo_names_a_taken_broker_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "5", "--broker-port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=_env_with_tmpdir(tmp_path),
        )  # fmt: skip
    assert demo.returncode == 2, demo.stderr
    assert demo.stdout == ""
    assert demo.stderr.splitlines() == [
        f"edge-agent demo: --broker-port {port}: the embedded MQTT broker cannot listen on "
        f"127.0.0.1:{port}, the port is already in use; pass another --broker-port, "
        "or leave it out to use a free port"
    ]
    assert list(tmp_path.iterdir()) == []


def test_demo_keep_leaves_its_config_and_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = build_parser().parse_args(["demo", "--plain", "--duration", "1", "--keep"])
    assert demo_command(args) == 0
    (workdir,) = tmp_path.iterdir()
    assert workdir.name.startswith("edge-agent-demo-")
    assert (workdir / "agent.toml").read_text(encoding="utf-8").startswith('[agent]\nname = "demo-agent"')
    assert (workdir / "outbox").is_dir()
    assert f"demo files kept in {workdir}\n" in capsys.readouterr().out


def _rendered(view: DemoView) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(view.render("demo"))
    return console.export_text()


def test_live_view_counts_the_baseline_cycles_the_prewhitener_holds_back() -> None:
    profile = find_profile("injection_molding", [BUILTIN_PROFILES_DIR])
    names = ["job_cycle_counter", "cushion", "barrel_zone_1"]
    view = DemoView({"imm-1": profile}, names)
    source = Source("imm-1")
    # the agent starts at counter 600 (the plant ran before) and sees 17 cycles; no spc record yet
    for counter in range(600, 618):
        raw = Readings.of(np.array([0, 1], np.int32), np.full(2, counter, np.int64), np.array([counter, 5.0]))
        view.update("imm-1", Output(raw=[(source, raw)]))
    cushion = next(line for line in _rendered(view).splitlines() if " cushion " in line)
    assert "baseline 17/50" in cushion
    # past the baseline the count stops at 50 until the limits arrive
    for counter in range(618, 700):
        raw = Readings.of(np.array([0], np.int32), np.array([counter], np.int64), np.array([counter]))
        view.update("imm-1", Output(raw=[(source, raw)]))
    assert view.machines["imm-1"].cycles == 99
    cushion = next(line for line in _rendered(view).splitlines() if " cushion " in line)
    assert "baseline 50/50" in cushion
    # a signal without control limits never shows a baseline
    zone = next(line for line in _rendered(view).splitlines() if " barrel_zone_1 " in line)
    assert "baseline" not in zone
