"""The Modbus driver against real pymodbus servers (the simulators) over loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.drivers.modbus.config import ModbusDevice
from edge_agent.drivers.modbus.connection import DEAD_AFTER_TIMEOUTS, Backoff
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.drivers.modbus.quality import quality_from_modbus_exception
from edge_agent.drivers.registry import make_driver
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.modbus_server import RegisterField, RegisterMapServer, render_device_toml
from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from edge_agent.types import Quality, Readings

FAST = Backoff(initial=0.05, maximum=0.2)


def device_of(toml: str, **modbus_options: object) -> ModbusDevice:
    """Parse one [[devices]] block, with extra [devices.modbus] options appended."""
    extra = "".join(f"\n{k} = {v!r}" for k, v in modbus_options.items()).replace("'", '"')
    text = toml.replace("[devices.modbus]", "[devices.modbus]" + extra, 1)
    device = parse_config(text).devices[0]
    assert isinstance(device, ModbusDevice)
    return device


def driver_for(device: ModbusDevice) -> ModbusDriver:
    return ModbusDriver(device, {name: i for i, name in enumerate(device.signal_names())}, backoff=FAST)


def by_tag(device: ModbusDevice, readings: Readings) -> dict[str, tuple[float, Quality]]:
    names = device.signal_names()
    return {
        names[row]: (v, Quality(q))
        for row, v, q in zip(
            readings.signal.tolist(), readings.value.tolist(), readings.quality.tolist(), strict=True
        )
    }


async def poll(driver: ModbusDriver) -> Readings:
    return Readings.concat([await driver.read(g) for g in driver.groups()])


@pytest.fixture
async def die() -> AsyncIterator[DieCastingSimulator]:
    sim = DieCastingSimulator(speed=0, seed=7)
    await sim.start()
    sim.advance(2 * 3600)
    yield sim
    await sim.stop()


@pytest.fixture
async def tcu() -> AsyncIterator[MoldTcuSimulator]:
    sim = MoldTcuSimulator(speed=0, seed=3)
    await sim.start()
    sim.advance(1800)
    yield sim
    await sim.stop()


async def test_die_casting_map_reads_what_the_simulator_wrote(die: DieCastingSimulator) -> None:
    device = device_of(die.device_config())
    driver = make_driver(device, {n: i for i, n in enumerate(device.signal_names())}, config_dir=".")  # type: ignore[arg-type]
    assert isinstance(driver, ModbusDriver)
    await driver.connect()
    got = by_tag(device, await poll(driver))
    await driver.close()
    expected = die.values()
    assert set(got) == set(expected)
    for name, (value, quality) in got.items():
        assert quality == Quality.GOOD, name
        assert value == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name
    assert expected["shot_counter"] > 100  # two simulated hours of ~60 s shots
    assert 195 < got["die_temp_1"][0] < 205  # warmed up to its 200 °C setpoint


async def test_tcu_map_with_coil_and_one_request_per_table(tcu: MoldTcuSimulator) -> None:
    device = device_of(tcu.device_config())
    driver = driver_for(device)
    plan = [r for g in driver.groups() for r in driver.plan(g)]
    assert sorted(r.table for r in plan) == ["coil", "holding_register", "input_register"]
    got = by_tag(device, await poll(driver))
    await driver.close()
    expected = tcu.values()
    for name, (value, quality) in got.items():
        assert quality == Quality.GOOD, name
        assert value == pytest.approx(expected[name]), name
    assert got["pump_running"][0] == 1.0
    assert got["setpoint"][0] == pytest.approx(80.0)


ALL_TYPES = [
    RegisterField("c0", "coil", 3, "bool"),
    RegisterField("c1", "coil", 9, "bool"),
    RegisterField("d0", "discrete_input", 0, "bool"),
    RegisterField("i16", "holding_register", 0, "int16", "BADC", scale=0.5),
    RegisterField("u16", "holding_register", 1, "uint16", offset=-100.0),
    RegisterField("i32", "holding_register", 2, "int32", "CDAB"),
    RegisterField("u32", "holding_register", 4, "uint32", "DCBA"),
    RegisterField("f32", "holding_register", 6, "float32", "BADC"),
    RegisterField("i64", "holding_register", 8, "int64", "CDAB"),
    RegisterField("u64", "holding_register", 12, "uint64", "DCBA"),
    RegisterField("f64", "holding_register", 16, "float64", "ABCD"),
    RegisterField("name", "holding_register", 20, "string", "BADC", length=4),
    RegisterField("flag7", "holding_register", 24, "bool", bit=7),
    RegisterField("ir", "input_register", 50, "float32", "DCBA"),
    RegisterField("other_unit", "holding_register", 0, "int16", unit_id=2),
]
ALL_VALUES: dict[str, float | str] = {
    "c0": True,
    "c1": False,
    "d0": True,
    "i16": -12.5,
    "u16": 65000 - 100,
    "i32": -70000,
    "u32": 4_000_000_000,
    "f32": 3.25,
    "i64": -(2**40) - 3,
    "u64": 2**52 + 1,
    "f64": -1.0e-3,
    "name": "AL-7",
    "flag7": True,
    "ir": 1.5e6,
    "other_unit": -7,
}


async def test_every_table_type_and_byte_order_over_tcp() -> None:
    server = RegisterMapServer(ALL_TYPES, unit_ids=(1, 2))
    for name, value in ALL_VALUES.items():
        server.write(name, value)
    server.write("flag7", True)
    port = await server.start()
    toml = render_device_toml(
        ALL_TYPES, name="all", profile="die_casting", endpoint=f"modbus-tcp://127.0.0.1:{port}"
    )
    # base 1 in the config: every address is one higher than on the wire
    toml = toml.replace("address_base = 0", "address_base = 1")
    toml = "\n".join(
        f"address = {int(line.split('=')[1]) + 1}" if line.startswith("address = ") else line
        for line in toml.splitlines()
    )
    device = device_of(toml)
    driver = driver_for(device)
    try:
        got = by_tag(device, await poll(driver))
    finally:
        await driver.close()
        await server.stop()
    assert driver.last_strings["name"] == ("AL-7", Quality.GOOD)
    assert "name" not in got  # text is not a number: not in Readings
    for name, expected in ALL_VALUES.items():
        if name == "name":
            continue
        value, quality = got[name]
        assert quality == Quality.GOOD, name
        assert value == pytest.approx(float(expected)), name


async def test_exception_marks_only_that_requests_tags(tcu: MoldTcuSimulator) -> None:
    device = device_of(tcu.device_config())
    driver = driver_for(device)
    cases = {
        2: Quality.BAD_CONFIG,
        6: Quality.BAD_DEVICE_BUSY,
        10: Quality.BAD_GATEWAY_PATH,
        11: Quality.BAD_GATEWAY_TARGET,
    }
    try:
        for code, quality in cases.items():
            tcu.set_fault("modbus_exception", code=code, table="input_register")
            got = by_tag(device, await poll(driver))
            for name in ("supply_temp", "return_temp", "flow"):
                assert got[name][1] == quality, (code, name)
                assert math.isnan(got[name][0])
            for name in ("setpoint", "alarm_word", "mold_shot_counter", "pump_running"):
                assert got[name][1] == Quality.GOOD, (code, name)
        tcu.set_fault("modbus_exception", on=False)
        got = by_tag(device, await poll(driver))
        assert all(q == Quality.GOOD for _, q in got.values())
    finally:
        await driver.close()


async def test_units_behind_one_gateway_share_one_connection(tcu: MoldTcuSimulator) -> None:
    # unit 1 exists; unit 9 is absent, and the gateway answers 0x0B for it
    first = device_of(tcu.device_config(name="tcu_a"))
    second = device_of(tcu.device_config(name="tcu_b").replace("unit_id = 1", "unit_id = 9"))
    a, b = driver_for(first), driver_for(second)
    try:
        ra, rb = await asyncio.gather(poll(a), poll(b))
        assert set(Quality(q) for q in ra.quality.tolist()) == {Quality.GOOD}
        assert set(Quality(q) for q in rb.quality.tolist()) == {Quality.BAD_GATEWAY_TARGET}
        assert a._conn is b._conn
        assert len(tcu.server._server.active_connections) == 1  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


async def test_timeout_is_bad_timeout_then_recovers(tcu: MoldTcuSimulator) -> None:
    device = device_of(tcu.device_config(), timeout=0.2)
    driver = driver_for(device)
    try:
        tcu.set_fault("slow_response", delay_s=0.5)
        started = time.monotonic()
        got = by_tag(device, await poll(driver))
        elapsed = time.monotonic() - started
        assert {q for _, q in got.values()} == {Quality.BAD_TIMEOUT}
        assert elapsed < 0.2 * 2 + 0.3  # one timeout per unit id and poll, not one per request
        tcu.set_fault("slow_response", on=False)
        await asyncio.sleep(0.6)  # late answers arrive and must be ignored
        got = by_tag(device, await poll(driver))
        assert {q for _, q in got.values()} == {Quality.GOOD}
        assert got["setpoint"][0] == pytest.approx(80.0)
    finally:
        await driver.close()


async def test_nan_float_is_bad_value(die: DieCastingSimulator) -> None:
    die.set_fault("sensor_dropout")
    device = device_of(die.device_config())
    driver = driver_for(device)
    try:
        got = by_tag(device, await poll(driver))
    finally:
        await driver.close()
    assert got["melt_temp"][1] == Quality.BAD_VALUE
    # the int16 over-range value 32767 (3276.7 °C) is no temperature: the profile's valid range refuses it
    assert math.isnan(got["die_temp_3"][0]) and got["die_temp_3"][1] == Quality.BAD_SENSOR_FAILURE
    assert got["die_temp_1"][1] == Quality.GOOD


async def test_dropped_connection_reconnects_and_logs_once(
    tcu: MoldTcuSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.modbus")
    device = device_of(tcu.device_config())
    driver = driver_for(device)
    try:
        await driver.connect()
        assert driver.connected
        tcu.server.drop_connections()
        await asyncio.sleep(0.05)
        qualities = []
        for _ in range(10):
            readings = await poll(driver)
            qualities.append(set(Quality(q) for q in readings.quality.tolist()))
            await asyncio.sleep(0.03)
        assert qualities[-1] == {Quality.GOOD}
        # server gone for a while: polls fail fast, then the driver comes back on the same port
        port = tcu.port
        await tcu.server.stop()
        for _ in range(5):
            readings = await poll(driver)
            assert set(Quality(q) for q in readings.quality.tolist()) == {Quality.BAD_NOT_CONNECTED}
            await asyncio.sleep(0.02)
        await tcu.server.start("127.0.0.1", port)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            readings = await poll(driver)
            if set(Quality(q) for q in readings.quality.tolist()) == {Quality.GOOD}:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no reconnect within 3 s")
    finally:
        await driver.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_agent.modbus"]
    assert sum("connected" in m and "reconnected" not in m for m in messages) == 1
    assert sum("connection lost" in m for m in messages) == 2
    assert sum("reconnected" in m for m in messages) == 2
    assert all(device.name in m and f"127.0.0.1:{port}" in m for m in messages)


async def test_unreachable_device_is_not_connected_without_raising() -> None:
    server = RegisterMapServer([RegisterField("x", "holding_register", 0)])
    port = await server.start()
    await server.stop()  # a port where nothing listens
    device = device_of(
        render_device_toml(
            server.fields.values(), name="gone", profile="mold_tcu", endpoint=f"modbus-tcp://127.0.0.1:{port}"
        )  # type: ignore[arg-type]
    )
    driver = driver_for(device)
    await driver.connect()
    readings = await poll(driver)
    await driver.close()
    assert readings.quality.tolist() == [Quality.BAD_NOT_CONNECTED]
    assert driver.last_error is not None and "no connection" in driver.last_error


async def test_unresolvable_host_name_is_named_as_such() -> None:
    fields = [RegisterField("x", "holding_register", 0)]
    device = device_of(
        render_device_toml(
            fields, name="typo", profile="mold_tcu", endpoint="modbus-tcp://nosuchhost.invalid:502"
        )
    )
    driver = driver_for(device)
    await driver.connect()
    readings = await poll(driver)
    await driver.close()
    assert readings.quality.tolist() == [Quality.BAD_NOT_CONNECTED]
    assert driver.last_error is not None
    assert driver.last_error.startswith("cannot resolve the host name 'nosuchhost.invalid' (")
    assert driver.last_error.endswith("); check the endpoint's spelling and the DNS or /etc/hosts")


async def test_silent_device_does_not_slow_the_others() -> None:
    interval, window = 0.05, 1.0
    sims = [MoldTcuSimulator(speed=0, seed=i) for i in range(3)]
    for sim in sims:
        await sim.start()
    drivers = [
        driver_for(device_of(s.device_config(name=f"tcu{i}"), timeout=0.3)) for i, s in enumerate(sims)
    ]
    counts = [0, 0, 0]
    bad_timeouts = [0, 0, 0]
    stop = asyncio.Event()

    async def loop(i: int) -> None:
        driver = drivers[i]
        group = driver.groups()[0]
        next_t = time.monotonic()
        while not stop.is_set():
            readings = await driver.read(group)
            counts[i] += 1
            bad_timeouts[i] += int((readings.quality == Quality.BAD_TIMEOUT).all())
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    tasks = [asyncio.create_task(loop(i)) for i in range(3)]
    try:
        await asyncio.sleep(0.2)  # settle: connections open
        before = counts.copy()
        await asyncio.sleep(window)
        healthy_rate = [counts[i] - before[i] for i in range(3)]
        sims[0].set_fault("silent")
        before = counts.copy()
        await asyncio.sleep(window)
        silent_rate = [counts[i] - before[i] for i in range(3)]
    finally:
        stop.set()
        sims[0].set_fault("silent", on=False)
        await asyncio.gather(*tasks)
        for driver in drivers:
            await driver.close()
        for sim in sims:
            await sim.stop()
    for i in (1, 2):
        assert abs(silent_rate[i] - healthy_rate[i]) <= 0.1 * healthy_rate[i], (healthy_rate, silent_rate)
    assert silent_rate[0] <= window / 0.3 + 1  # the silent one polls once per timeout
    assert bad_timeouts[0] >= 2
    assert np.mean(healthy_rate) > 0.8 * window / interval


async def test_closed_driver_stays_closed_even_if_close_ran_during_connect() -> None:
    server = RegisterMapServer([RegisterField("x", "holding_register", 0)])
    port = await server.start()
    await server.stop()  # refused: connect() is still pending for a turn of the loop
    device = device_of(
        render_device_toml(
            server.fields.values(), name="gone", profile="mold_tcu", endpoint=f"modbus-tcp://127.0.0.1:{port}"
        )  # type: ignore[arg-type]
    )
    driver = driver_for(device)
    connecting = asyncio.create_task(driver.connect())
    await asyncio.sleep(0)
    await driver.close()  # what a config reload does to a device whose first connect is pending
    await connecting
    readings = await poll(driver)
    await driver.connect()
    assert driver._conn is None  # neither read() nor connect() reopened it
    assert readings.quality.tolist() == [Quality.BAD_NOT_CONNECTED]
    assert driver.last_error == "driver closed"


class BlackHoleProxy:
    """A loopback TCP proxy whose existing sessions can be made to drop every byte without FIN or RST."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sessions = 0
        """TCP connections accepted so far."""
        self._holed: set[int] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        """Listen on a free loopback port and return it."""
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def black_hole(self) -> None:
        """From now on the sessions open so far carry nothing, in either direction; new ones work."""
        self._holed.update(range(self.sessions))

    async def stop(self) -> None:
        """Close the listener and every session."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _session(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        me = self.sessions
        self.sessions += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(4096):
                    if me not in self._holed:
                        w.write(data)
                        await w.drain()

        for task in (
            asyncio.create_task(pipe(client_r, server_w)),
            asyncio.create_task(pipe(server_r, client_w)),
        ):
            self._tasks.add(task)


def _via(proxy_port: int, sim: MoldTcuSimulator, timeout: float) -> ModbusDevice:
    return device_of(sim.device_config(endpoint=f"modbus-tcp://127.0.0.1:{proxy_port}"), timeout=timeout)


async def test_silently_dead_session_is_reopened_after_three_timeouts(
    tcu: MoldTcuSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = BlackHoleProxy(tcu.port)
    device = _via(await proxy.start(), tcu, timeout=0.2)
    driver = driver_for(device)
    seen: list[set[Quality]] = []
    try:
        assert set((await poll(driver)).quality.tolist()) == {Quality.GOOD}
        proxy.black_hole()  # the session dies without a FIN or RST reaching the driver
        for _ in range(12):
            seen.append({Quality(q) for q in (await poll(driver)).quality.tolist()})
            if seen[-1] == {Quality.GOOD}:
                break
    finally:
        await driver.close()
        await proxy.stop()
    assert seen == [{Quality.BAD_TIMEOUT}] * DEAD_AFTER_TIMEOUTS + [{Quality.GOOD}]
    assert proxy.sessions == 2
    dropped = [r.getMessage() for r in caplog.records if "requests in a row" in r.getMessage()]
    assert len(dropped) == 1 and f"no answer to {DEAD_AFTER_TIMEOUTS} requests in a row" in dropped[0]


async def test_any_answer_resets_the_timeout_count(tcu: MoldTcuSimulator) -> None:
    proxy = BlackHoleProxy(tcu.port)
    device = _via(await proxy.start(), tcu, timeout=0.2)
    driver = driver_for(device)
    seen: list[Quality] = []

    async def polls(k: int) -> None:
        for _ in range(k):
            seen.append(max(Quality(q) for q in (await poll(driver)).quality.tolist()))

    try:
        for _ in range(2):
            tcu.set_fault("silent")
            await polls(DEAD_AFTER_TIMEOUTS - 1)
            tcu.set_fault("silent", on=False)
            tcu.set_fault("modbus_exception", code=6)  # an exception is an answer too
            await polls(1)
            tcu.set_fault("modbus_exception", on=False)
        tcu.set_fault("silent")
        await polls(DEAD_AFTER_TIMEOUTS - 1)
        tcu.set_fault("silent", on=False)
        await asyncio.sleep(0.3)  # let the late answers of the silent polls arrive and be dropped
        await polls(1)
        sessions = proxy.sessions
    finally:
        await driver.close()
        await proxy.stop()
    timeouts = [Quality.BAD_TIMEOUT] * (DEAD_AFTER_TIMEOUTS - 1)
    busy = quality_from_modbus_exception(6)
    assert seen == [*timeouts, busy, *timeouts, busy, *timeouts, Quality.GOOD]
    assert sessions == 1  # 3 x 2 timeouts, never 3 in a row: the connection was kept


class _GatewayWithADeadUnit:
    """A Modbus TCP gateway on loopback that answers every unit id with zeros except unit 1, which it never answers."""

    def __init__(self) -> None:
        self.sessions = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                if unit == 1:
                    continue
                function, _, count = struct.unpack(">BHH", pdu[:5])
                body = bytes([function, 2 * count]) + bytes(2 * count)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        writer.close()


async def test_a_dead_unit_behind_a_gateway_does_not_reopen_the_shared_connection() -> None:
    """Timeouts of a unit that never answered on the session are that unit's BAD_TIMEOUT, not a dead connection."""
    gateway = _GatewayWithADeadUnit()
    port = await gateway.start()

    def unit(name: str, unit_id: int) -> ModbusDriver:
        return driver_for(
            device_of(
                f'[[devices]]\nname = "{name}"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
                f'endpoint = "modbus-tcp://127.0.0.1:{port}"\n'
                f"[devices.modbus]\nunit_id = {unit_id}\naddress_base = 0\ntimeout = 0.1\n"
                '[[devices.tags]]\nname = "x"\ntable = "holding_register"\naddress = 0\ntype = "uint16"\n'
            )
        )

    dead, healthy = unit("dead", 1), unit("healthy", 2)
    try:
        await dead.connect()
        await healthy.connect()
        first = set((await poll(healthy)).quality.tolist())
        dead_polls = [set((await poll(dead)).quality.tolist()) for _ in range(2 * DEAD_AFTER_TIMEOUTS)]
        after = set((await poll(healthy)).quality.tolist())
    finally:
        await dead.close()
        await healthy.close()
        await gateway.stop()
    assert first == after == {Quality.GOOD}
    assert dead_polls == [{Quality.BAD_TIMEOUT}] * (2 * DEAD_AFTER_TIMEOUTS)
    assert gateway.sessions == 1
