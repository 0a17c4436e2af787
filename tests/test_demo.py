"""`edge-agent demo`, the README's main command: four machines, the agent and an embedded broker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_the_plant_through_its_embedded_broker() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "14", "--broker-port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    assert lines[-1].startswith("demo stopped:")
    last = {line.split(":")[0]: line for line in lines if " polls=" in line}
    assert set(last) == {"imm-1", "dcm1", "tcu1", "furnace-1"}
    assert all(int(line.split("polls=")[1].split()[0]) >= 5 for line in last.values())
    assert "spread °C=" in last["furnace-1"] and "heat kW=" in last["tcu1"] and "OEE=" in last["dcm1"]
    for machine in ("imm-1", "dcm1", "tcu1", "furnace-1"):
        assert kinds[(machine, "raw")] >= 3, kinds
        assert kinds[(machine, "kpi")] >= 3, kinds
    assert kinds[("demo-agent", "status")] >= 1
