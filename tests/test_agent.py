"""The agent against the four simulators: run --once, publishing to real Mosquitto, reload, signals, metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from prometheus_client import generate_latest

from edge_agent.agent import Agent, _reload
from edge_agent.config import parse_config
from edge_agent.records import Output
from edge_agent.simulators.imm import ImmSimulator
from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from edge_agent.simulators.plant import Plant
from edge_agent.types import Quality, Readings
from tests.services import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
MACHINES = {"imm-1", "dcm1", "tcu1", "furnace-1"}


@pytest.fixture
async def plant() -> AsyncIterator[Plant]:
    """The four simulators on free ports, simulated time x20."""
    p = Plant(speed=20.0, seed=3)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _config(plant: Plant, extra: str = "", head: str = "") -> str:
    return f'{head}[site]\nsite = "p1"\narea = "a1"\nline = "l1"\n\n{extra}\n' + plant.devices_toml(0.3)


async def _edge_agent(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


async def test_run_once_prints_the_records_of_every_machine(plant: Plant, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(plant))
    await asyncio.sleep(1.0)  # let every machine produce a value
    proc = await _edge_agent("run", "-c", str(cfg), "--once")
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines()]
    raw = {line["payload"]["machine"]: line["payload"] for line in lines if line["topic"].endswith("/raw")}
    assert set(raw) == MACHINES
    assert {line["topic"].split("/")[0:4] == ["spBv1.0-free", "uns", "p1", "a1"] for line in lines} == {True}
    furnace = raw["furnace-1"]
    temps = dict(zip(furnace["signals"], furnace["values"], strict=True))
    assert 700 < temps["zone_1_temp"] < 1000  # a carburizing furnace, in °C
    assert set(furnace["quality"]) == {0}
    tcu = dict(zip(raw["tcu1"]["signals"], raw["tcu1"]["values"], strict=True))
    assert 25 <= tcu["flow"] <= 35  # nominal 30 L/min
    assert raw["dcm1"]["units"][raw["dcm1"]["signals"].index("intensification_pressure")] == "bar"


async def test_run_once_names_a_device_that_does_not_answer(plant: Plant, tmp_path: Path) -> None:
    port = free_port()
    dead = (
        f'[[devices]]\nname = "dead-plc"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
        f'endpoint = "modbus-tcp://127.0.0.1:{port}"\nmodbus = {{ timeout = 0.3 }}\n'
        'tags = [{ name = "flow", address = 0 }]\n'
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(plant) + "\n" + dead)
    proc = await _edge_agent("run", "-c", str(cfg), "--once")
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 1
    assert f"device dead-plc (modbus-tcp://127.0.0.1:{port})" in err.decode()
    machines = {orjson.loads(line)["payload"]["machine"] for line in out.splitlines()}
    assert machines == MACHINES | {"dead-plc"}  # the others were read all the same


class Collector:
    """Subscribes to everything under a prefix and keeps the payloads per topic, in arrival order."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.messages: dict[str, list[dict]] = defaultdict(list)
        self.retained: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/#", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with self.lock:
            if msg.retain:
                self.retained[msg.topic] = body
            else:
                self.messages[msg.topic].append(body)

    def close(self) -> None:
        """Stop listening."""
        self.client.loop_stop()
        self.client.disconnect()


async def test_agent_publishes_every_record_in_order_to_mosquitto(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prefix = f"t{free_port()}"
    sinks = f'[sinks.mqtt]\nurl = "{mosquitto.url}"\ntopic_prefix = "{prefix}"\n[outbox]\ndir = "outbox"\n'
    head = '[agent]\nname = "gw1"\nstatus_interval = 1.0\n'
    config = parse_config(_config(plant, sinks, head), "test", tmp_path)
    collector = Collector(mosquitto, prefix)
    agent = Agent(config, tmp_path)
    await agent.start()
    await asyncio.sleep(6.0)
    await agent.stop(flush_timeout=10)
    await asyncio.sleep(0.5)
    collector.close()
    topics = collector.messages
    raw_machines = {t.split("/")[-2] for t in topics if t.endswith("/raw")}
    assert raw_machines == MACHINES
    for topic, bodies in topics.items():
        seqs = [b["seq"] for b in bodies]
        # one agent run: sequence numbers per topic start at 1 with no gap and no duplicate
        assert seqs == list(range(1, len(seqs) + 1)), topic
    assert sum(len(b) for t, b in topics.items() if t.endswith("/raw")) >= 4 * 10
    # the agent's status: online while running, offline (retained) after a clean stop
    status = topics[f"{prefix}/p1/a1/l1/gw1/status"]
    assert [b["state"] for b in status] == ["online"] * (len(status) - 1) + ["offline"]
    assert len(status) >= 5  # online at start, health every second, offline at the stop
    health = status[-2]["health"]
    assert health["devices"] == 4 and health["devices_connected"] == 4
    assert health["values_read"] > 100 and health["overruns"] == 0
    kpi = [b for t, bs in topics.items() if t.endswith("tcu1/kpi") for b in bs]
    heat = [b for b in kpi if b["family"] == "mold" and b["signals"] == ["heat_removal"]]
    assert heat and 3.0 < heat[-1]["indicators"]["heat_kw"][0] < 15.0


async def test_a_second_agent_on_the_same_outbox_stops_with_one_line(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`edge-agent run` on an outbox another agent holds exits 2 at once, naming the holder and the fix."""
    from edge_agent.outbox import Outbox

    sinks = f'[sinks.mqtt]\nurl = "{mosquitto.url}"\ntopic_prefix = "second"\n[outbox]\ndir = "outbox"\n'
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(plant, sinks))
    held = Outbox(tmp_path / "outbox" / "mqtt.sqlite")
    proc = await _edge_agent("run", "-c", str(cfg))
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        held.close()
        if proc.returncode is None:  # it did not stop: leave no agent behind
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2
    errors = [line for line in err.decode().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"in use by another process (pid {os.getpid()})" in errors[0]
    assert "Traceback" not in err.decode()


async def test_sigterm_flushes_and_exits_and_sighup_keeps_unchanged_devices(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    metrics_port = free_port()
    head = f'[agent]\nname = "gw2"\nmetrics_port = {metrics_port}\n'
    sinks = f'[sinks.mqtt]\nurl = "{mosquitto.url}"\ntopic_prefix = "reload"\n[outbox]\ndir = "outbox"\n'
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(plant, sinks, head))
    proc = await _edge_agent("run", "-c", str(cfg))
    assert proc.stderr is not None
    lines: list[str] = []

    async def wait_for(text: str, timeout: float = 30) -> None:
        async def scan() -> None:
            while not any(text in line for line in lines):
                line = await proc.stderr.readline()  # type: ignore[union-attr]
                if not line:
                    raise AssertionError(f"agent exited before logging {text!r}:\n{''.join(lines)}")
                lines.append(line.decode())

        await asyncio.wait_for(scan(), timeout)

    await wait_for("agent gw2 running")
    await asyncio.sleep(2.0)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    )
    reads = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("edge_agent_values_read_total{")
    }
    assert {k.split('"')[1] for k in reads} == MACHINES
    assert all(v > 0 for v in reads.values())
    assert 'edge_agent_sink_connected{sink="mqtt"} 1.0' in body.splitlines()
    assert 'edge_agent_sink_restarts_total{sink="mqtt"} 0.0' in body.splitlines()
    assert "edge_agent_dropped_batches_total 0.0" in body.splitlines()
    # change one device (the furnace moves to another area); the other three keep their connections
    text = cfg.read_text()
    assert text.count('name = "furnace-1"\n') == 1
    cfg.write_text(text.replace('name = "furnace-1"\n', 'name = "furnace-1"\narea = "heat-treatment"\n'))
    proc.send_signal(signal.SIGHUP)
    await wait_for("config reloaded")
    reloaded = next(line for line in lines if "config reloaded" in line)
    assert "3 devices kept, 1 (re)started, 0 removed" in reloaded
    proc.send_signal(signal.SIGTERM)
    await wait_for("stopping: flushing outboxes")
    assert await asyncio.wait_for(proc.wait(), 30) == 0


def _imm_device(sim: ImmSimulator, name: str, endpoint: str) -> str:
    text = sim.device_config(name=name, endpoint=endpoint, poll_interval=0.3)
    text = text[text.index("[[devices]]") :]
    return text.replace("[devices.opcua]\n", "[devices.opcua]\ntimeout = 1.5\n", 1)


def _poll_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("poll:"))


@pytest.mark.parametrize("change", ["endpoint fixed", "device replaced"])
async def test_reload_during_a_pending_connect_leaves_no_orphan_poller(change: str, tmp_path: Path) -> None:
    sim = ImmSimulator(speed=20, seed=1)
    await sim.start("127.0.0.1", 0)

    async def hung_server(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection and never answers: the first connect hangs

    hole = await asyncio.start_server(hung_server, "127.0.0.1", 0)
    hung = f"opc.tcp://127.0.0.1:{hole.sockets[0].getsockname()[1]}/imm"
    outputs: list[tuple[str, Output]] = []
    agent = Agent(
        parse_config(_imm_device(sim, "imm-1", hung), "old.toml", tmp_path),
        tmp_path,
        sinks=False,
        on_output=lambda d, o: outputs.append((d, o)),
    )
    new_name = "imm-1" if change == "endpoint fixed" else "imm-2"
    try:
        await agent.start()
        await asyncio.sleep(0.3)  # imm-1's first connect is waiting on the hung server
        await agent.reload(parse_config(_imm_device(sim, new_name, str(sim.endpoint)), "new.toml", tmp_path))
        outputs.clear()
        await asyncio.sleep(3.0)  # the old connect would have timed out (1.5 s) and started its poller
        alive = _poll_tasks()
        qualities = {int(r.quality.max()) for _d, o in outputs for _s, r in o.raw}
        devices = {d for d, _o in outputs}
        pending = len(agent._connect_tasks)
    finally:
        await agent.stop(flush_timeout=0)
        hole.close()
        await sim.stop()
    assert alive == [f"poll:{new_name}"]
    assert devices == {new_name}
    assert qualities == {Quality.GOOD}
    assert pending == 0  # a finished connect task does not stay behind
    assert _poll_tasks() == []


async def test_batches_of_a_device_gone_from_the_config_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = (
        '[[devices]]\nname = "tcu1"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
        f'endpoint = "modbus-tcp://127.0.0.1:{free_port()}"\ntags = [{{ name = "flow", address = 0 }}]\n'
    )
    outputs: list[tuple[str, Output]] = []
    agent = Agent(
        parse_config(device, "a.toml", tmp_path),
        tmp_path,
        sinks=False,
        on_output=lambda d, o: outputs.append((d, o)),
    )
    row = agent.pipeline.rows_of("tcu1")["flow"]

    def batch(value: float) -> Readings:
        return Readings.of(np.array([row], np.int32), 1, np.array([value]), Quality.GOOD)

    # a read that was in flight when its device was removed lands after the reload
    agent._queued = [("gone", batch(1.0)), ("tcu1", batch(30.0)), ("gone", batch(2.0))]
    agent.process_queued()
    assert [(d, o.raw[0][1].value.tolist()) for d, o in outputs] == [("tcu1", [30.0])]
    assert agent.dropped_batches == 2
    exposed = generate_latest(agent.metrics.registry).decode().splitlines()
    assert "edge_agent_dropped_batches_total 2.0" in exposed
    dropped = [r.getMessage() for r in caplog.records if "no longer configured" in r.getMessage()]
    assert dropped == [
        "device gone is no longer configured: dropping its late readings"
    ]  # once, not per batch


async def _good_batches(outputs: list[tuple[str, Output]], seconds: float) -> dict[str, set[int]]:
    outputs.clear()
    await asyncio.sleep(seconds)
    worst: dict[str, set[int]] = defaultdict(set)
    for device, out in outputs:
        for _source, raw in out.raw:
            worst[device].add(int(raw.quality.max()))
    return dict(worst)


async def test_reload_to_every_device_disabled_and_back(tmp_path: Path) -> None:
    sim = MoldTcuSimulator(speed=20, seed=1)
    await sim.start("127.0.0.1", 0)
    enabled = sim.device_config(name="tcu1", poll_interval=0.3)
    disabled = enabled.replace('name = "tcu1"\n', 'name = "tcu1"\nenabled = false\n', 1)
    assert disabled != enabled
    outputs: list[tuple[str, Output]] = []
    agent = Agent(
        parse_config(enabled, "a.toml", tmp_path),
        tmp_path,
        sinks=False,
        on_output=lambda d, o: outputs.append((d, o)),
    )
    try:
        await agent.start()
        await agent.reload(parse_config(disabled, "a.toml", tmp_path))  # a pipeline with no signal
        idle = (list(agent.pollers), await _good_batches(outputs, 1.0))
        await agent.reload(parse_config(enabled, "a.toml", tmp_path))
        back = (list(agent.pollers), await _good_batches(outputs, 1.5))
    finally:
        await agent.stop(flush_timeout=0)
        await sim.stop()
    assert idle == ([], {})
    assert back == (["tcu1"], {"tcu1": {Quality.GOOD}})


async def test_a_reload_that_cannot_be_applied_keeps_the_running_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = MoldTcuSimulator(speed=20, seed=1)
    await sim.start("127.0.0.1", 0)
    running = sim.device_config(name="tcu1", poll_interval=0.3)
    # valid for the config models, but its driver cannot be built: a uint32 at 65535 ends past the map
    unusable = (
        '[[devices]]\nname = "tcu2"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
        f'endpoint = "{sim.endpoint}"\n'
        'tags = [{ name = "flow", address = 65535, type = "uint32" }]\n'
    )
    path = tmp_path / "agent.toml"
    path.write_text(running + "\n" + unusable)
    config = parse_config(running, str(path), tmp_path)
    outputs: list[tuple[str, Output]] = []
    agent = Agent(config, tmp_path, sinks=False, on_output=lambda d, o: outputs.append((d, o)))
    try:
        await agent.start()
        await asyncio.sleep(0.5)
        await _reload(agent, path)  # what SIGHUP runs; it must return, or serve() skips the flush
        after = (agent.config is config, list(agent.pollers), await _good_batches(outputs, 1.0))
    finally:
        await agent.stop(flush_timeout=0)
        await sim.stop()
    assert after == (True, ["tcu1"], {"tcu1": {Quality.GOOD}})
    failed = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(failed) == 1
    assert "keeping the running config" in failed[0] and "ends past address 65535" in failed[0]


async def test_a_reload_whose_sinks_cannot_start_keeps_the_old_sinks_and_devices(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """New sinks that fail to start (an unreadable CA file) leave the running sinks, devices and data flow as they were."""
    sim = MoldTcuSimulator(speed=20, seed=2)
    await sim.start("127.0.0.1", 0)
    prefix = f"swap{free_port()}"
    devices = sim.device_config(name="tcu1", poll_interval=0.3)
    good = f'[sinks.mqtt]\nurl = "{mosquitto.url}"\ntopic_prefix = "{prefix}"\n[outbox]\ndir = "outbox"\n'
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    bad = (
        f'[sinks.mqtt]\nurl = "mqtts://127.0.0.1:{mosquitto.port}"\ntopic_prefix = "{prefix}"\n'
        f'[sinks.mqtt.tls]\nca_file = "{tmp_path / "ca.pem"}"\n[outbox]\ndir = "outbox"\n'
    )
    path = tmp_path / "agent.toml"
    config = parse_config(good + devices, str(path), tmp_path)
    path.write_text(bad + devices)
    collector = Collector(mosquitto, prefix)
    agent = Agent(config, tmp_path)
    try:
        await agent.start()
        await asyncio.sleep(1.0)
        await _reload(agent, path)
        before = sum(len(b) for t, b in collector.messages.items() if t.endswith("/raw"))
        await asyncio.sleep(1.5)
        after = sum(len(b) for t, b in collector.messages.items() if t.endswith("/raw"))
        state = (agent.config is config, list(agent.pollers))
    finally:
        await agent.stop(flush_timeout=5)
        await sim.stop()
        collector.close()
    assert state == (True, ["tcu1"])
    assert after > before > 0  # the old sinks deliver on after the failed reload
    # the restored sinks said online again and, at the stop, offline
    status = [b["state"] for b in collector.messages[f"{prefix}/plant1/area1/line1/edge-agent/status"]]
    assert status[-2:] == ["online", "offline"]
    failed = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "reload" in r.getMessage()]
    assert len(failed) == 1 and "keeping the running config" in failed[0]


async def _log_until(
    proc: asyncio.subprocess.Process, lines: list[str], text: str, timeout: float = 30
) -> str:
    """Read the agent's stderr into `lines` until a line contains `text`; that line."""
    assert proc.stderr is not None

    async def scan() -> str:
        while True:
            found = [line for line in lines if text in line]
            if found:
                return found[0]
            line = await proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"agent exited before logging {text!r}:\n{''.join(lines)}")
            lines.append(line.decode())

    return await asyncio.wait_for(scan(), timeout)


def _scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("metrics_host", "answers", "refuses"),
    [(None, ["127.0.0.1"], ["127.0.0.2"]), ("127.0.0.2", ["127.0.0.2"], ["127.0.0.1"]), ("0.0.0.0", ["127.0.0.1", "127.0.0.2"], [])],
)  # fmt: skip
async def test_the_metrics_endpoint_listens_where_the_config_says(
    metrics_host: str | None, answers: list[str], refuses: list[str], tmp_path: Path
) -> None:
    port = free_port()
    host_line = f'metrics_host = "{metrics_host}"\n' if metrics_host else ""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nname = "m1"\nmetrics_port = {port}\n{host_line}', encoding="utf-8")
    proc = await _edge_agent("run", "-c", str(cfg))
    lines: list[str] = []
    try:
        told = await _log_until(proc, lines, "metrics on ")
        assert told.rstrip().endswith(f"metrics on http://{metrics_host or '127.0.0.1'}:{port}/metrics")
        await _log_until(proc, lines, "agent m1 running")
        for address in answers:
            body = await asyncio.to_thread(_scrape, address, port)
            assert "edge_agent_dropped_batches_total 0.0" in body.splitlines()
        for address in refuses:
            with pytest.raises(OSError):  # connection refused: nothing listens on that address
                await asyncio.to_thread(_scrape, address, port)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_second_sigint_stops_at_once_and_the_outbox_keeps_the_records(tmp_path: Path) -> None:
    """A broker never reached: the first Ctrl-C waits to flush (10 s), the second exits now with 130."""
    from edge_agent.outbox import Outbox

    tcu = MoldTcuSimulator(speed=20.0, seed=2)
    sim_port = await tcu.start()
    nobody = free_port()  # no broker will ever listen here
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nname = "gw3"\nshutdown_timeout = 10.0\n\n'
        f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{nobody}"\n\n[outbox]\ndir = "outbox"\n\n'
        + MoldTcuSimulator.config_file_text(f"modbus-tcp://127.0.0.1:{sim_port}"),
        encoding="utf-8",
    )
    proc = await _edge_agent("run", "-c", str(cfg))
    lines: list[str] = []
    try:
        await _log_until(proc, lines, "agent gw3 running")
        await asyncio.sleep(2.0)  # a few polls go to the outbox
        proc.send_signal(signal.SIGINT)
        first = await _log_until(proc, lines, "stopping: flushing outboxes for up to 10 s")
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # still waiting for the broker
        proc.send_signal(signal.SIGINT)
        sent = asyncio.get_running_loop().time()
        code = await asyncio.wait_for(proc.wait(), 15)
        waited = asyncio.get_running_loop().time() - sent
        rest = await proc.stderr.read()  # type: ignore[union-attr]
        lines += rest.decode().splitlines(keepends=True)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await tcu.stop()
    assert waited < 1.5, f"exited {waited:.1f} s after the second SIGINT"
    assert code == 130, "".join(lines)  # 128 + SIGINT, as a shell reports a process Ctrl-C ended
    assert "(Ctrl-C or SIGTERM again stops at once; what is not sent stays in the outbox)" in first
    forced = [line for line in lines if "SIGINT again" in line]
    assert len(forced) == 1, "".join(lines)
    assert "Traceback" not in "".join(lines)
    unsent = int(forced[0].split("keeps the ")[1].split()[0])
    assert (
        forced[0]
        .rstrip()
        .endswith(
            f"stopping now without waiting for delivery; the outbox keeps the {unsent} records not sent "
            "yet and sends them at the next start"
        )
    )
    outbox = Outbox(tmp_path / "outbox" / "mqtt.sqlite")
    try:
        assert len(outbox) == unsent > 0
        machines = {stored.record.key for stored in outbox.take(10_000)}
    finally:
        outbox.close()
    assert machines == {"tcu1", "gw3"}  # the device's records and the agent's status


async def test_run_once_includes_the_subscribed_opc_ua_tags(tmp_path: Path) -> None:
    """`run --once` shows what the agent would publish, the tags it gets by subscription included (as `read` does)."""
    sim = ImmSimulator(speed=20.0, cycle_s=2.0, seed=4)
    await sim.start()
    try:
        cfg = tmp_path / "agent.toml"
        text = sim.device_config(name="imm-1")
        cfg.write_text(text[text.index("[[devices]]") :], encoding="utf-8")
        subscribed = [line.split('"')[1] for line in _subscribed_tags(text)]
        assert len(subscribed) >= 4  # the shipped config subscribes the zone temperatures
        proc = await _edge_agent("run", "-c", str(cfg), "--once")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 0, err.decode()
    raw = [
        orjson.loads(line)["payload"]
        for line in out.splitlines()
        if orjson.loads(line)["topic"].endswith("/raw")
    ]
    values = {s: (v, q) for r in raw for s, v, q in zip(r["signals"], r["values"], r["quality"], strict=True)}
    for name in subscribed:
        assert name in values, f"{name} missing from run --once: {sorted(values)}"
        value, quality = values[name]
        assert quality == 0 and (20.0 < value < 300.0), (name, value)  # barrel and mould zones, °C


def _subscribed_tags(config_text: str) -> list[str]:
    """The `name = "..."` lines of the [[devices.tags]] blocks with mode = "subscribe"."""
    names = []
    for block in config_text.split("[[devices.tags]]")[1:]:
        if 'mode = "subscribe"' in block.split("[[")[0]:
            names.append(next(line for line in block.splitlines() if line.startswith("name = ")))
    return names


def test_the_container_config_serves_metrics_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/Dockerfile EXPOSEs the metrics port: deploy/agent.toml must listen there beyond the container's loopback."""
    from edge_agent.config import load_config

    monkeypatch.setenv("INFLUX_TOKEN", "x")
    exposed = [
        line.split()[1]
        for line in (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("EXPOSE ")
    ]
    agent = load_config(REPO / "deploy" / "agent.toml").agent
    assert exposed == [str(agent.metrics_port)]
    assert agent.metrics_host == "0.0.0.0"


@pytest.mark.parametrize("cli", [[], ["--log-level", "INFO"]])
async def test_a_reload_applies_a_changed_log_level_unless_the_command_line_set_it(
    cli: list[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nname = "lv"\nlog_level = "INFO"\n', encoding="utf-8")
    proc = await _edge_agent("run", "-c", str(cfg), *cli)
    lines: list[str] = []
    try:
        await _log_until(proc, lines, "agent lv running")
        cfg.write_text('[agent]\nname = "lv"\nlog_level = "WARNING"\n', encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        await _log_until(proc, lines, "config reloaded")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        lines += (await proc.stderr.read()).decode().splitlines(keepends=True)  # type: ignore[union-attr]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stopping = [line for line in lines if "INFO edge_agent.agent: stopping: flushing" in line]
    # the config's new WARNING silences the INFO line at the stop; --log-level INFO keeps it
    assert len(stopping) == (1 if cli else 0), "".join(lines)
