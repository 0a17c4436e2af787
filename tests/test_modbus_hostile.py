"""The Modbus driver against a hostile server: no crash, no hang, no wrong value with GOOD quality, recovery."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edge_agent.agent import Agent
from edge_agent.config import parse_config
from edge_agent.drivers.modbus.config import ModbusDevice
from edge_agent.drivers.modbus.connection import Backoff
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.metrics import AgentMetrics
from edge_agent.types import Quality, Readings
from tests.hostile_modbus import MODES, HostileModbusServer, bit_value, register_value

TIMEOUT = 0.2
FAST = Backoff(initial=0.05, maximum=0.2)
HOSTILE_POLLS = 3
# a poll sends two requests (holding registers, coils), each waits at most TIMEOUT
POLL_BOUND = 2 * TIMEOUT + 1.0

BAD_FRAME = {Quality.BAD_COMM_FAILURE, Quality.BAD_NOT_CONNECTED}
"""A malformed frame fails its request and closes the connection: the rest of the poll is not connected."""
INCOMPLETE = {Quality.BAD_TIMEOUT, Quality.BAD_NOT_CONNECTED}

#: mode -> (qualities the hostile polls may give, text in the driver's last_error, bad-frame kinds counted)
EXPECTED: dict[str, tuple[set[Quality], str | None, set[str]]] = {
    "exception": ({Quality.BAD_CONFIG}, "Modbus exception 0x02", set()),
    "exception_wrong_fc": (
        {Quality.BAD_COMM_FAILURE},
        "function code 0x84 in answer to a function code 0x03 request",
        {"function_code"},
    ),
    "wrong_tid": ({Quality.BAD_COMM_FAILURE}, "transaction id", {"transaction_id"}),
    "tid_zero": ({Quality.BAD_COMM_FAILURE}, "transaction id 0", {"transaction_id"}),
    "wrong_unit": ({Quality.BAD_COMM_FAILURE}, "unit id 2 answered a request to unit 1", {"unit_id"}),
    "wrong_fc": (
        {Quality.BAD_COMM_FAILURE},
        "function code 0x04 in answer to a function code 0x03 request",
        {"function_code"},
    ),
    "unknown_fc": (
        {Quality.BAD_COMM_FAILURE},
        "function code 0x41 in answer to a function code 0x03 request",
        {"function_code"},
    ),
    "byte_count_long": (
        {Quality.BAD_COMM_FAILURE},
        "byte count 14 in answer to a request for 6 registers (12 bytes)",
        {"byte_count"},
    ),
    "byte_count_short": ({Quality.BAD_COMM_FAILURE}, "byte count 10", {"byte_count"}),
    "oversized": ({Quality.BAD_COMM_FAILURE}, "byte count 251", {"byte_count"}),
    "byte_count_lies": (BAD_FRAME, "MBAP length 7 holds 4 data bytes but the byte count says 2", {"length"}),
    "mbap_too_long": (BAD_FRAME, "malformed frame from the device: MBAP length 301", {"length"}),
    "mbap_short": (BAD_FRAME, "malformed frame from the device: MBAP length 3", {"length"}),
    "protocol_id": (BAD_FRAME, "malformed frame from the device: protocol id 1", {"protocol_id"}),
    "random": (BAD_FRAME, "malformed frame from the device", {"protocol_id", "length"}),
    "mbap_long": (INCOMPLETE, "incomplete frame from the device", {"truncated"}),
    "truncated": (INCOMPLETE, "incomplete frame from the device", {"truncated"}),
    "trickle": (INCOMPLETE, "incomplete frame from the device", {"truncated"}),
    "late": ({Quality.BAD_TIMEOUT}, "no response within", {"stale"}),
    "duplicate": ({Quality.GOOD}, None, {"stale"}),
    # the leftover start of a frame is found when the next request is to be sent
    "trailing_partial": (
        {Quality.GOOD, Quality.BAD_NOT_CONNECTED},
        "5 bytes of an unfinished frame between requests",
        {"truncated"},
    ),
    "silence": ({Quality.BAD_TIMEOUT}, "no response within", set()),
    "close_mid_frame": ({Quality.BAD_NOT_CONNECTED}, "connection", set()),
    "rst": ({Quality.BAD_NOT_CONNECTED}, "connection", set()),
}
assert set(EXPECTED) == set(MODES) - {"sane"}


def _int32(high: int, low: int) -> int:
    raw = (high << 16) | low
    return raw - (1 << 32) if raw >= 1 << 31 else raw


#: tag -> (table, address, type); two requests per poll: holding registers 0-5 and coils 0-9
TAGS = {
    "h0": ("holding_register", 0, "uint16"),
    "h1": ("holding_register", 1, "uint16"),
    "h2": ("holding_register", 2, "uint16"),
    "h3": ("holding_register", 3, "uint16"),
    "h4": ("holding_register", 4, "int32"),
    "c0": ("coil", 0, "bool"),
    "c5": ("coil", 5, "bool"),
    "c9": ("coil", 9, "bool"),
}
SANE_VALUES = {
    **{f"h{a}": float(register_value(3, a)) for a in range(4)},
    "h4": float(_int32(register_value(3, 4), register_value(3, 5))),
    **{f"c{a}": float(bit_value(1, a)) for a in (0, 5, 9)},
}


def hostile_device_toml(port: int) -> str:
    """The [[devices]] block of the device the tests poll: unit 1 at the hostile server, a 0.2 s response timeout."""
    tags = "".join(
        f'[[devices.tags]]\nname = "{name}"\ntable = "{table}"\naddress = {address}\ntype = "{kind}"\n'
        for name, (table, address, kind) in TAGS.items()
    )
    return (
        f'[[devices]]\nname = "hostile"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
        f'endpoint = "modbus-tcp://127.0.0.1:{port}"\n'
        f"[devices.modbus]\nunit_id = 1\ntimeout = {TIMEOUT}\n" + tags
    )


def hostile_device(port: int) -> ModbusDevice:
    """The device the tests poll, parsed."""
    device = parse_config(hostile_device_toml(port)).devices[0]
    assert isinstance(device, ModbusDevice)
    return device


async def poll(driver: ModbusDriver) -> dict[str, tuple[float, Quality]]:
    """One poll of every group, bounded: a hang fails the test instead of stalling it."""
    parts = [await asyncio.wait_for(driver.read(g), POLL_BOUND) for g in driver.groups()]
    readings = Readings.concat(parts)
    names = driver.device.signal_names()
    return {
        names[row]: (value, Quality(q))
        for row, value, q in zip(
            readings.signal.tolist(), readings.value.tolist(), readings.quality.tolist(), strict=True
        )
    }


def assert_no_wrong_good(got: dict[str, tuple[float, Quality]]) -> None:
    """Every GOOD value is the value the server holds; every bad one is NaN."""
    for name, (value, quality) in got.items():
        if quality == Quality.GOOD:
            assert value == SANE_VALUES[name], (name, value, SANE_VALUES[name])
        elif quality.is_bad:
            assert math.isnan(value), (name, value, quality)


async def recover(driver: ModbusDriver, within: float = 5.0) -> dict[str, tuple[float, Quality]]:
    """Poll until every value is GOOD (checking each poll on the way); fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        got = await poll(driver)
        assert_no_wrong_good(got)
        if {q for _, q in got.values()} == {Quality.GOOD}:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"no recovery within {within} s: {got}; last error {driver.last_error}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def server() -> AsyncIterator[HostileModbusServer]:
    hostile = HostileModbusServer(delay=1.5 * TIMEOUT)
    yield hostile
    await hostile.stop()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """No log record carries a traceback, and asyncio reported no failed callback."""
    for record in caplog.records:
        assert record.exc_info is None and "Traceback" not in record.getMessage(), record.getMessage()
        assert not (record.name == "asyncio" and record.levelno >= logging.ERROR), record.getMessage()


@pytest.mark.parametrize("mode", sorted(EXPECTED))
async def test_hostile_answer_is_never_good_data_and_the_driver_recovers(
    mode: str, server: HostileModbusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    allowed, reason, kinds = EXPECTED[mode]
    port = await server.start()
    driver = ModbusDriver(hostile_device(port), {n: i for i, n in enumerate(TAGS)}, backoff=FAST)
    try:
        assert {q for _, q in (await poll(driver)).values()} == {Quality.GOOD}  # sane to begin with
        server.mode = mode
        seen: set[Quality] = set()
        errors = []
        for _ in range(HOSTILE_POLLS):
            got = await poll(driver)
            assert_no_wrong_good(got)
            seen |= {q for _, q in got.values()}
            errors.append(driver.last_error or "")
        assert seen <= allowed, (seen, errors)
        if reason is not None:
            assert any(reason in e for e in errors), errors
        server.mode = "sane"
        got = await recover(driver)
        await asyncio.sleep(2 * server.delay)  # late answers still on their way arrive and are dropped
        got = await recover(driver)
    finally:
        await driver.close()
    assert {name: v for name, (v, _) in got.items()} == SANE_VALUES
    counted = set(driver.bad_frames.counts)
    assert counted & kinds if kinds else not counted, (counted, kinds)
    assert counted <= kinds | {"stale"}, counted  # a late answer to a failed request may follow
    no_tracebacks(caplog)
    # each kind of bad frame is logged once for the device, not at every poll
    for kind in counted:
        lines = [r for r in caplog.records if r.name == "edge_agent.modbus" and f"[{kind}]" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "hostile at modbus-tcp://127.0.0.1:" in lines[0].getMessage()


async def test_agent_exports_the_bad_frames_of_its_devices(
    server: HostileModbusServer, tmp_path: Path
) -> None:
    port = await server.start()
    server.mode = "wrong_unit"
    text = hostile_device_toml(port).replace("[devices.modbus]", "poll_interval = 0.05\n[devices.modbus]", 1)
    agent = Agent(parse_config(text, "hostile.toml", tmp_path), tmp_path, sinks=False)
    try:
        await agent.start()
        for _ in range(100):  # the first poll is within a second; allow five
            if exposed := _bad_frame_lines(agent.metrics):
                break
            await asyncio.sleep(0.05)
    finally:
        await agent.stop(flush_timeout=0)
    assert exposed and all('device="hostile",kind="unit_id"' in line for line in exposed), exposed


def _bad_frame_lines(metrics: AgentMetrics) -> list[str]:
    return [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("edge_agent_modbus_bad_frames_total{")
    ]


async def test_short_mbap_length_is_one_clear_line_and_a_reopened_connection(
    server: HostileModbusServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame whose MBAP length claims fewer bytes than follow once made pymodbus raise inside data_received."""
    caplog.set_level(logging.INFO)
    port = await server.start()
    driver = ModbusDriver(hostile_device(port), {n: i for i, n in enumerate(TAGS)}, backoff=FAST)
    try:
        await poll(driver)
        server.mode = "mbap_short"
        got = await poll(driver)
        first_error = driver.last_error or ""
        for _ in range(5):
            assert_no_wrong_good(await poll(driver))
        server.mode = "sane"
        await recover(driver)
    finally:
        await driver.close()
    # the first request of the poll (coils) fails on the bad frame, the second finds the connection closed
    assert got["c0"][1] == Quality.BAD_COMM_FAILURE
    assert got["h0"][1] == Quality.BAD_NOT_CONNECTED
    assert (
        "coil 0+10: malformed frame from the device: MBAP length 3 holds 0 data bytes but the byte count says 2"
        in first_error
    )
    assert "connection closed by the device" not in first_error
    assert server.sessions >= 2  # reopened
    no_tracebacks(caplog)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, loud
    assert "hostile at modbus-tcp://127.0.0.1:" in loud[0] and "malformed frame from the device" in loud[0]
    assert "connection reopened" in loud[0]


async def test_bad_frames_are_counted_in_the_agent_metrics(server: HostileModbusServer) -> None:
    port = await server.start()
    driver = ModbusDriver(hostile_device(port), {n: i for i, n in enumerate(TAGS)}, backoff=FAST)
    metrics = AgentMetrics()
    metrics.watch_drivers({"hostile": driver})
    try:
        server.mode = "wrong_fc"
        for _ in range(2):
            await poll(driver)
    finally:
        await driver.close()
    text = generate_latest(metrics.registry).decode()
    # two requests (registers, coils) per poll, each answered with the other table's function code
    assert 'edge_agent_modbus_bad_frames_total{device="hostile",kind="function_code"} 4.0' in text
