"""`edge-agent read` against running simulators: one JSON line per tag, exit codes, reasons on stderr."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from edge_agent.commissioning import read_devices
from edge_agent.config import parse_config
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.modbus_server import RegisterField, RegisterMapServer
from edge_agent.simulators.mold_tcu import MoldTcuSimulator

EDGE_AGENT = [sys.executable, "-m", "edge_agent.cli"]


async def run_read(*args: str) -> tuple[int, list[dict], str]:
    proc = await asyncio.create_subprocess_exec(
        *EDGE_AGENT, "read", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, [orjson.loads(line) for line in out.splitlines()], err.decode()


async def free_dead_port() -> int:
    server = RegisterMapServer([RegisterField("x", "holding_register", 0)])
    port = await server.start()
    await server.stop()
    return port


async def test_read_prints_every_tag_and_exits_by_answer(tmp_path: Path) -> None:
    die, tcu = DieCastingSimulator(speed=0, seed=1), MoldTcuSimulator(speed=0, seed=1)
    await die.start()
    await tcu.start()
    die.advance(1800)
    tcu.advance(1800)
    good = tmp_path / "good.toml"
    good.write_text(die.device_config() + "\n" + tcu.device_config(), encoding="utf-8")
    dead_port = await free_dead_port()
    with_dead = tmp_path / "with_dead.toml"
    with_dead.write_text(
        good.read_text()
        + "\n"
        + tcu.device_config(name="tcu_gone", endpoint=f"modbus-tcp://127.0.0.1:{dead_port}"),
        encoding="utf-8",
    )
    try:
        code, records, err = await run_read("-c", str(good))
        assert code == 0, err
        assert len(records) == len(die.FIELDS) + len(tcu.FIELDS)
        assert set(records[0]) == {"device", "tag", "value", "unit", "quality", "timestamp"}
        dcm = {r["tag"]: r for r in records if r["device"] == "dcm1"}
        assert dcm["shot_counter"]["value"] == die.values()["shot_counter"]
        assert dcm["melt_temp"]["unit"] == "°C"
        assert dcm["fill_time"]["quality"] == "GOOD"
        assert dcm["fill_time"]["timestamp"].endswith("+00:00")

        code, records, err = await run_read("-c", str(with_dead), "--wait", "0.5")
        assert code == 1
        gone = [r for r in records if r["device"] == "tcu_gone"]
        assert {r["quality"] for r in gone} == {"BAD_NOT_CONNECTED"}
        assert all(r["value"] is None for r in gone)
        assert f"device tcu_gone (modbus-tcp://127.0.0.1:{dead_port}): no answer" in err
        assert "dcm1" not in err

        code, records, err = await run_read("-c", str(with_dead), "--device", "tcu1")
        assert code == 0, err
        assert {r["device"] for r in records} == {"tcu1"}

        code, records, err = await run_read("-c", str(with_dead), "--device", "nope")
        assert code == 2
        assert "no device named 'nope'; devices in the file: dcm1, tcu1, tcu_gone" in err

        die.set_fault("modbus_exception", code=2)
        code, records, err = await run_read("-c", str(good), "--device", "dcm1")
        assert code == 0  # an exception is an answer: the register map is wrong, the device is there
        assert {r["quality"] for r in records} == {"BAD_CONFIG"}
    finally:
        await die.stop()
        await tcu.stop()


async def test_read_waits_for_a_device_that_starts_listening_late(tmp_path: Path) -> None:
    # the tutorial backgrounds a simulator and reads at once: the port is not open yet
    port = await free_dead_port()
    die = DieCastingSimulator(speed=0, seed=1)
    path = tmp_path / "late.toml"
    path.write_text(die.device_config(endpoint=f"modbus-tcp://127.0.0.1:{port}"), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *EDGE_AGENT, "read", "-c", str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        note = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert f"device dcm1 (modbus-tcp://127.0.0.1:{port}): nothing listens at 127.0.0.1:{port} yet" in note
        await die.start("127.0.0.1", port)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await die.stop()
    assert proc.returncode == 0, err.decode()
    records = [orjson.loads(line) for line in out.splitlines()]
    assert len(records) == len(die.FIELDS)
    assert {r["quality"] for r in records} == {"GOOD"}
    assert {r["tag"]: r["value"] for r in records}["melt_temp"] == die.values()["melt_temp"]


async def test_missing_driver_module_is_reported_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # as if the protocol library were missing: the driver module is imported only to build the driver
    monkeypatch.setitem(sys.modules, "edge_agent.drivers.opcua.driver", None)
    config = parse_config(
        """
[[devices]]
name = "imm1"
protocol = "opcua"
profile = "injection_molding"
endpoint = "opc.tcp://127.0.0.1:4840"
[devices.opcua]
security_policy = "None"
security_mode = "None"
allow_insecure = true
[[devices.tags]]
name = "cycle_time"
node = "ns=2;s=CycleTime"
"""
    )
    (result,) = await read_devices(config, Path("."))
    assert result.error is not None
    assert "device imm1 (opc.tcp://127.0.0.1:4840): no driver for protocol 'opcua'" in result.error
