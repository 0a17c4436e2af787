"""OPC UA driver against a real simulated injection-moulding machine: polls, subscriptions, events, bad nodes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from asyncua import ua

from edge_agent.config import parse_config
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import (
    OpcUaDriver,
    datavalues_to_readings,
    datetime_to_ns,
    parse_browse_path,
    parse_node_id,
)
from edge_agent.simulators.imm import IMM2MES_URI, SIM_URI, ImmSimulator
from edge_agent.types import Quality, Readings

pytestmark = pytest.mark.asyncio(loop_scope="module")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def device_from(text: str) -> OpcUaDevice:
    """The first device of a config text."""
    device = parse_config(text, base_dir=CONFIG_DIR).devices[0]
    assert isinstance(device, OpcUaDevice)
    return device


def rows_of(device: OpcUaDevice) -> dict[str, int]:
    """Signal rows 0..n-1 in file order."""
    return {name: i for i, name in enumerate(device.signal_names())}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def imm() -> AsyncIterator[ImmSimulator]:
    """One simulated machine for the module: 20x time, a 2 s cycle (so ~10 cycles per wall second)."""
    sim = ImmSimulator(speed=20.0, cycle_s=2.0, seed=7)
    await sim.start()
    yield sim
    await sim.stop()


class Collector:
    """Collects the Readings batches a driver delivers on its own."""

    def __init__(self) -> None:
        self.batches: list[Readings] = []

    def __call__(self, batch: Readings) -> None:
        self.batches.append(batch)

    async def wait_for(self, predicate: object, within_s: float = 5.0) -> None:
        deadline = time.monotonic() + within_s
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.batches)} batches")
            await asyncio.sleep(0.02)


async def test_shipped_config_polls_real_values(imm: ImmSimulator) -> None:
    device = device_from(imm.device_config())
    names = device.signal_names()
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR)
    await driver.connect()
    try:
        values: dict[str, float] = {}
        before = time.time_ns()
        for group in driver.groups():
            batch = await driver.read(group)
            assert (batch.quality == Quality.GOOD).all(), batch.quality
            # source timestamps from the simulator: recent, not the epoch
            assert (batch.t_ns > before - 5_000_000_000).all() and (batch.t_ns < time.time_ns() + 10**9).all()
            values.update({names[s]: v for s, v in zip(batch.signal, batch.value, strict=True)})
        assert values["machine_mode"] == 1  # AUTOMATIC, found by browse path with namespace URIs
        assert values["production_status"] == 4  # PRODUCTION
        assert [values[f"barrel_zone_{i}_setpoint"] for i in (1, 2, 3)] == [220.0, 230.0, 240.0]
        assert values["mould_zone_1_setpoint"] == 60.0
        assert (
            values["job_parts_counter"] == values["job_good_parts_counter"] + values["job_bad_parts_counter"]
        )
        assert [g.interval_s for g in driver.groups()] == [1.0, 10.0]
    finally:
        await driver.close()


async def test_reads_are_chunked_by_max_nodes_per_read(imm: ImmSimulator) -> None:
    text = imm.device_config().replace(
        "publishing_interval = 0.5", "publishing_interval = 0.5\nmax_nodes_per_read = 3"
    )
    device = device_from(text)
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR)
    await driver.connect()
    try:
        fast = driver.groups()[0]
        batch = await driver.read(fast)
        assert [len(c) for c in driver._plans[fast].chunks] == [3, 3, 1]  # 7 tags, 3 per Read request
        assert len(batch) == 7 and (batch.quality == Quality.GOOD).all()
        assert batch.value[batch.signal == rows_of(device)["machine_mode"]][0] == 1.0
    finally:
        await driver.close()


async def test_counter_moves_between_polls(imm: ImmSimulator) -> None:
    device = device_from(imm.device_config())
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR)
    await driver.connect()
    try:
        fast = driver.groups()[0]
        row = rows_of(device)["job_cycle_counter"]
        first = await driver.read(fast)
        await asyncio.sleep(0.6)
        second = await driver.read(fast)
        c1 = first.value[first.signal == row][0]
        c2 = second.value[second.signal == row][0]
        assert c2 > c1  # ~10 cycles per wall second at this speed
    finally:
        await driver.close()


async def test_subscription_and_events_arrive_as_batches(imm: ImmSimulator) -> None:
    device = device_from(imm.device_config())
    rows = rows_of(device)
    got = Collector()
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR, on_readings=got)
    await driver.connect()
    try:
        zone_rows = {rows[f"barrel_zone_{i}"] for i in (1, 2, 3)} | {rows["mould_zone_1"]}
        event_rows = [
            rows[s]
            for s in (
                "cushion",
                "injection_time",
                "dosing_time",
                "peak_pressure",
                "vp_position",
                "cycle_time",
            )
        ]

        def events() -> list[Readings]:
            return [b for b in got.batches if set(b.signal.tolist()) == set(event_rows)]

        await got.wait_for(lambda: len(events()) >= 5)
        counter_before = imm.cycles
        n_before = len(events())
        await asyncio.sleep(1.0)
        n_after = len(events())
        counter_after = imm.cycles
        # one event per machine cycle (the publish of the last tick may still be in flight)
        assert abs((n_after - n_before) - (counter_after - counter_before)) <= 2
        ev = events()[-1]
        assert len(ev) == 6 and (ev.quality == Quality.GOOD).all()
        by_row = dict(zip(ev.signal.tolist(), ev.value.tolist(), strict=True))
        assert 2.0 < by_row[rows["cushion"]] < 8.0
        assert 900.0 < by_row[rows["peak_pressure"]] < 1300.0
        assert 1500.0 < by_row[rows["cycle_time"]] < 2500.0  # 2 s cycle in ms
        assert len(set(ev.t_ns.tolist())) == 1  # the event's Time stamps the whole batch
        stamps = [b.t_ns[0] for b in events()]
        assert stamps == sorted(stamps)
        # the event values match what the machine recorded for that cycle
        recorded = {round(r.cushion, 9) for r in imm.history}
        assert round(by_row[rows["cushion"]], 9) in recorded
        zone_batches = [b for b in got.batches if set(b.signal.tolist()) & zone_rows]
        assert (
            zone_batches and set(zone_batches[0].signal.tolist()) == zone_rows
        )  # first batch holds all four
        assert driver.stats.events >= 5 and driver.stats.overflows == 0
    finally:
        await driver.close()


async def test_unknown_nodes_mark_only_their_tag(imm: ImmSimulator, caplog: pytest.LogCaptureFixture) -> None:
    text = imm.device_config() + (
        '\n[[devices.tags]]\nname = "ghost"\nnode = "nsu=urn:edge-agent:sim:imm;s=IMM_1.NoSuchNode"\n'
        '\n[[devices.tags]]\nname = "wrong_uri"\nnode = "nsu=urn:not-on-this-server;i=5"\n'
        '\n[[devices.tags]]\nname = "wrong_path"\npath = "/{urn:edge-agent:sim:imm}IMM_1/{urn:edge-agent:sim:imm}Nope"\n'
    )
    device = device_from(text)
    rows = rows_of(device)
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR)
    with caplog.at_level(logging.WARNING, logger="edge_agent.drivers.opcua"):
        await driver.connect()
        try:
            batch = await driver.read(driver.groups()[0])
            batch2 = await driver.read(driver.groups()[0])
        finally:
            await driver.close()
    q = dict(zip(batch.signal.tolist(), batch.quality.tolist(), strict=True))
    for bad in ("ghost", "wrong_uri", "wrong_path"):
        assert q[rows[bad]] == Quality.BAD_CONFIG
        assert np.isnan(batch.value[batch.signal == rows[bad]]).all()
        lines = [r for r in caplog.records if f"'{bad}'" in r.getMessage()]
        assert len(lines) == 1, lines  # one log line, not one per poll
    assert q[rows["job_cycle_counter"]] == Quality.GOOD
    assert q[rows["machine_mode"]] == Quality.GOOD
    assert (batch2.quality == batch.quality).all()


async def test_a_monitored_item_the_server_refuses_is_bad_config_after_every_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = ImmSimulator(speed=20.0, cycle_s=2.0, seed=5)
    await sim.start()
    # the machine's object: the node exists (NodeClass reads fine) but has no Value attribute
    text = sim.device_config() + (
        f'\n[[devices.tags]]\nname = "machine_object"\nnode = "nsu={SIM_URI};s=IMM_1"\nmode = "subscribe"\n'
    )
    device = device_from(text)
    rows = rows_of(device)
    refused, zone = rows["machine_object"], rows["barrel_zone_1"]
    got = Collector()
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR, on_readings=got, retry_delay=(0.1, 0.5))

    def qualities_of(row: int) -> list[int]:
        return [int(q) for b in got.batches for q in b.quality[b.signal == row]]

    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.drivers.opcua"):
            await driver.connect()
            await got.wait_for(lambda: Quality.GOOD in qualities_of(zone))
            first = qualities_of(refused)
            await sim.restart(downtime_s=0.5)
            await got.wait_for(lambda: driver.stats.connects == 2 and driver.connected, 10.0)
            await got.wait_for(lambda: len(qualities_of(refused)) >= 3)
            after = qualities_of(refused)
            values = [v for b in got.batches for v in b.value[b.signal == refused]]
            items = sim.monitored_item_count()
    finally:
        await driver.close()
        await sim.stop()
    assert first == [Quality.BAD_CONFIG]
    # lost (not connected), then refused again by the restarted server
    assert after == [Quality.BAD_CONFIG, Quality.BAD_NOT_CONNECTED, Quality.BAD_CONFIG]
    assert all(np.isnan(v) for v in values)
    assert items == 5  # the four zones and the event item; the refused one is not on the server
    lines = [r.getMessage() for r in caplog.records if "'machine_object'" in r.getMessage()]
    assert lines == [
        f"{device.name}: signal 'machine_object' marked BAD_CONFIG: "
        "the server refused its monitored item: BadAttributeIdInvalid (0x80350000)"
    ]  # once per driver, not once per reconnect


async def test_a_device_whose_only_subscribed_node_is_unknown_still_reports_it(imm: ImmSimulator) -> None:
    text = f"""
[[devices]]
name = "ghosts"
protocol = "opcua"
profile = "injection_molding"
endpoint = "{imm.endpoint}"
[devices.opcua]
security_policy = "None"
security_mode = "None"
allow_insecure = true
[[devices.tags]]
name = "ghost"
node = "nsu={SIM_URI};s=IMM_1.NoSuchNode"
mode = "subscribe"
"""
    device = device_from(text)
    got = Collector()
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR, on_readings=got)
    await driver.connect()
    try:
        await got.wait_for(lambda: len(got.batches) >= 1, 2.0)
    finally:
        await driver.close()
    assert [(b.signal.tolist(), b.quality.tolist()) for b in got.batches] == [([0], [Quality.BAD_CONFIG])]


async def test_absolute_deadband_filters_small_changes(imm: ImmSimulator) -> None:
    node = "IMM_1.Moulds.Mould_1.TemperatureZones.TemperatureZone_1.LowDeviationTemperature1"
    text = f"""
[[devices]]
name = "deadband"
protocol = "opcua"
profile = "injection_molding"
endpoint = "{imm.endpoint}"
[devices.opcua]
security_policy = "None"
security_mode = "None"
allow_insecure = true
publishing_interval = 0.05
[[devices.tags]]
name = "band"
node = "nsu={SIM_URI};s={node}"
mode = "subscribe"
interval = 0.05
deadband = 1.0
"""
    device = device_from(text)
    got = Collector()
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR, on_readings=got)
    server = imm.server
    assert server is not None
    nodeid = ua.NodeId(node, imm.ns[SIM_URI])

    async def write(v: float) -> None:
        await server.write_attribute_value(nodeid, ua.DataValue(ua.Variant(v, ua.VariantType.Double)))
        await asyncio.sleep(0.15)

    await write(5.0)
    await driver.connect()
    try:
        await got.wait_for(lambda: len(got.batches) >= 1)
        # Steps chosen so the result is the same whether the server compares with the last reported
        # value (the spec) or the last sampled one (asyncua's server).
        for v in (5.4, 7.0, 7.3, 9.0, 9.5):
            await write(v)
        received = [float(v) for b in got.batches for v in b.value]
    finally:
        await driver.close()
        await write(5.0)
    assert received == [5.0, 7.0, 9.0]


async def test_status_codes_map_to_quality_with_sub_codes() -> None:
    src = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    srv = src + timedelta(seconds=1)

    def dv(value: object, code: int = 0, source: datetime | None = src) -> ua.DataValue:
        return ua.DataValue(
            ua.Variant(value), StatusCode=ua.StatusCode(code), SourceTimestamp=source, ServerTimestamp=srv
        )

    values = [
        dv(1.5),
        dv(2.5, ua.StatusCodes.UncertainLastUsableValue),
        dv(3.5, ua.StatusCodes.BadSensorFailure),
        dv(None, ua.StatusCodes.BadNodeIdUnknown),
        dv(True),
        dv("text"),
        dv(4.5, ua.StatusCodes.Good | 0x480),  # info bits (overflow) keep the value good
        dv(7, source=None),
        dv(9.0, ua.StatusCodes.UncertainEngineeringUnitsExceeded),
        dv(1.0, ua.StatusCodes.BadWaitingForInitialData),
    ]
    batch = datavalues_to_readings(np.arange(len(values), dtype=np.int32), values, now_ns=123)
    assert batch.quality.tolist() == [
        Quality.GOOD,
        Quality.UNCERTAIN_LAST_USABLE,
        Quality.BAD_SENSOR_FAILURE,
        Quality.BAD_CONFIG,
        Quality.GOOD,
        Quality.BAD_VALUE,
        Quality.GOOD,
        Quality.GOOD,
        Quality.UNCERTAIN_EU_EXCEEDED,
        Quality.BAD_WAITING_FOR_INITIAL,
    ]
    assert batch.value[0] == 1.5 and batch.value[1] == 2.5 and batch.value[4] == 1.0 and batch.value[6] == 4.5
    assert np.isnan(batch.value[[2, 3, 5, 9]]).all()
    assert batch.t_ns[0] == 1767323045678000000  # source timestamp kept
    assert batch.t_ns[7] == datetime_to_ns(srv)  # server timestamp when the source one is missing


async def test_node_id_and_browse_path_parsing() -> None:
    p = parse_node_id(f"nsu={IMM2MES_URI};i=1006")
    assert p.ns_uri == IMM2MES_URI and p.identifier == 1006
    assert p.resolve(["http://opcfoundation.org/UA/", "urn:x", IMM2MES_URI]) == ua.NodeId(1006, 2)
    assert p.resolve(["http://opcfoundation.org/UA/"]) is None
    assert parse_node_id("ns=2;s=Machine.Temp").resolve([]) == ua.NodeId("Machine.Temp", 2)
    assert parse_node_id("i=2253").resolve([]) == ua.NodeId(2253, 0)
    path = parse_browse_path(f"/2:IMM_1/{{{IMM2MES_URI}}}MachineStatus/MachineMode")
    assert [(e.name, e.ns_index, e.ns_uri) for e in path] == [
        ("IMM_1", 2, None),
        ("MachineStatus", None, IMM2MES_URI),
        ("MachineMode", 0, None),
    ]
    with pytest.raises(ValueError, match="not a NodeId"):
        parse_node_id("Machine.Temp")


async def test_unknown_event_field_is_bad_only_for_its_signal(imm: ImmSimulator) -> None:
    text = imm.device_config().replace(
        'fields.cycle_time = "CycleTime"', 'fields.cycle_time = "CycleTime"\nfields.mystery = "NoSuchField"'
    )
    device = device_from(text)
    rows = rows_of(device)
    got = Collector()
    driver = OpcUaDriver(device, rows, config_dir=CONFIG_DIR, on_readings=got)
    await driver.connect()
    try:
        await got.wait_for(lambda: any(rows["mystery"] in b.signal for b in got.batches))
    finally:
        await driver.close()
    event = next(b for b in got.batches if rows["mystery"] in b.signal)
    q = dict(zip(event.signal.tolist(), event.quality.tolist(), strict=True))
    assert q[rows["mystery"]] == Quality.BAD_CONFIG
    assert q[rows["cushion"]] == Quality.GOOD and q[rows["cycle_time"]] == Quality.GOOD


async def test_queue_overflow_and_missing_publishes_are_counted(
    imm: ImmSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncua's server drops the oldest queued value without the Overflow bit, so feed the decoded messages."""
    device = device_from(imm.device_config())
    got = Collector()
    driver = OpcUaDriver(device, rows_of(device), config_dir=CONFIG_DIR, on_readings=got)
    driver._subscription_id = 42

    def publish(seq: int, codes: list[int]) -> ua.PublishResult:
        items = [
            ua.MonitoredItemNotification(
                ClientHandle=h, Value=ua.DataValue(ua.Variant(200.0 + h), StatusCode=ua.StatusCode(c))
            )
            for h, c in enumerate(codes)
        ]
        message = ua.NotificationMessage(
            SequenceNumber=seq, NotificationData=[ua.DataChangeNotification(MonitoredItems=items)]
        )
        return ua.PublishResult(SubscriptionId=42, NotificationMessage=message)

    with caplog.at_level(logging.WARNING, logger="edge_agent.drivers.opcua"):
        driver._on_publish(publish(1, [0, 0, 0, 0]))
        driver._on_publish(publish(2, [0x480, 0, 0, 0]))  # Good with InfoType=DataValue | Overflow
        driver._on_publish(publish(5, [0, 0, 0, 0]))  # messages 3 and 4 never arrived
    assert driver.stats.overflows == 1 and driver.stats.missed_publishes == 2
    assert any("queue overflow" in r.getMessage() for r in caplog.records)
    assert any("2 notification message(s) missing" in r.getMessage() for r in caplog.records)
    assert [len(b) for b in got.batches] == [4, 4, 4]  # one batch per publish, values kept
    assert got.batches[1].value[0] == 200.0 and got.batches[1].quality[0] == Quality.GOOD


async def test_simulator_command_prints_a_valid_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from edge_agent import cli

    for machine, extra in (("imm", []), ("furnace", ["--secure", str(tmp_path), "--user", "op:pw"])):
        argv = ["simulate", machine, "--port", "0", "--print-config", *extra]
        assert await asyncio.to_thread(cli.main, argv) == 0
        text = capsys.readouterr().out
        device = device_from(text[text.index("#") :])
        assert device.endpoint.startswith("opc.tcp://127.0.0.1:") and not device.endpoint.endswith(":0")
    assert (tmp_path / "server-cert.der").is_file() and (tmp_path / "server-key.pem").is_file()


async def test_commissioning_read_covers_subscribed_tags_and_checks_event_fields(imm: ImmSimulator) -> None:
    from edge_agent.commissioning import read_devices

    text = imm.device_config().replace(
        'fields.cycle_time = "CycleTime"', 'fields.cycle_time = "CycleTime"\nfields.typo = "NoSuchField"'
    )
    config = parse_config(text, base_dir=CONFIG_DIR)
    device = config.devices[0]
    assert isinstance(device, OpcUaDevice)
    (result,) = await read_devices(config, CONFIG_DIR)
    assert result.error is None
    tags = [t.name for t in device.tags]
    by_tag = {r["tag"]: r for r in result.records}
    # every tag, polled or subscribed, in file order, then the event field the event type lacks
    assert [r["tag"] for r in result.records] == [*tags, "typo"]
    subscribed = [t.name for t in device.tags if t.mode == "subscribe"]
    assert subscribed == ["barrel_zone_1", "barrel_zone_2", "barrel_zone_3", "mould_zone_1"]
    for name in subscribed:
        assert by_tag[name]["quality"] == "GOOD"
        assert 20.0 < by_tag[name]["value"] < 400.0
        assert by_tag[name]["unit"] == "°C"
    assert by_tag["typo"]["quality"] == "BAD_CONFIG"
    assert by_tag["typo"]["problem"] == (
        "field NoSuchField is not in event type nsu=http://opcfoundation.org/UA/IMM2MES/;i=1006"
    )
    assert result.notes == [
        "device imm-1: event 'cycle': 6 field(s) (cushion, injection_time, dosing_time, peak_pressure, "
        "vp_position, cycle_time) are in its event type but not shown: their values arrive only with an "
        "event (run the agent)"
    ]
