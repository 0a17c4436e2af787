"""Traces over the wire and bad input: array values read as one curve per cycle, and every way a curve or a
counter can be wrong ending as a reason code or a bad quality, never as a made-up number, said once in the log.

Modbus blocks come from the welding simulators (a 500-point block is four requests), OPC UA arrays from
the forging press; the "hostile" devices are those simulators with their register tables or nodes
changed under the reader, as a device rewriting its memory would.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import ua

from edge_agent.config import parse_config
from edge_agent.config_model import ConfigError
from edge_agent.core.traces import TraceReason
from edge_agent.drivers.modbus.planner import plan_block_reads
from edge_agent.drivers.registry import make_driver
from edge_agent.simulators import forging, welding_arc
from edge_agent.simulators.forging import ForgingSimulator
from edge_agent.simulators.plating import PlatingLineSimulator, tanks_toml
from edge_agent.simulators.welding_arc import ArcWeldingSimulator
from edge_agent.simulators.welding_spot import SpotWeldingSimulator
from edge_agent.trace_types import Traces, traces_of
from edge_agent.types import Quality
from tests.root_rig import Rig

# --------------------------------------------------------------------------- planning and config


def test_a_block_is_read_in_requests_of_whole_values() -> None:
    assert plan_block_reads(100, 1, 500, 125) == [(100, 125), (225, 125), (350, 125), (475, 125)]
    # float32: 124 registers (62 values) per request, never a value split across two
    assert plan_block_reads(0, 2, 100, 125) == [(0, 124), (124, 76)]
    with pytest.raises(ValueError, match="ends past address 65535"):
        plan_block_reads(65000, 2, 400, 125)


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ('table = "coil"\ntype = "bool"\npoints = 10', "`points` reads a block of numbers"),
        ('type = "uint16"\nlatched_by = "counter"', "`latched_by` only applies to a trace"),
        ('type = "uint16"\npoints = 10\nlatched_by = "nothing"', "latched_by names 'nothing', which is not"),
    ],
)
def test_trace_options_that_cannot_work_are_refused(tag: str, message: str) -> None:
    text = (
        '[[devices]]\nname = "d"\nprotocol = "modbus"\nprofile = "welding_arc"\n'
        'endpoint = "modbus-tcp://127.0.0.1:5022"\n'
        '[[devices.tags]]\nname = "counter"\naddress = 0\n'
        f'[[devices.tags]]\nname = "t"\naddress = 10\n{tag}\n'
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


# --------------------------------------------------------------------------- Modbus blocks


async def _arc_driver(sim: ArcWeldingSimulator, tmp_path: Path) -> tuple[Any, dict[str, int]]:
    config = parse_config(sim.device_config(), "agent.toml", tmp_path)
    (device,) = config.devices
    rows = {name: i for i, name in enumerate(device.signal_names())}
    driver = make_driver(device, rows, tmp_path)
    await driver.connect()
    return driver, rows


def _weld(sim: ArcWeldingSimulator) -> None:
    count = sim.values().get("weld_counter", 0)
    while sim.values().get("weld_counter", 0) == count:
        sim.advance(1.0)


async def test_a_register_block_is_one_trace_equal_to_the_device_memory(tmp_path: Path) -> None:
    sim = ArcWeldingSimulator(speed=0, seed=3)
    await sim.start()
    driver, rows = await _arc_driver(sim, tmp_path)
    try:
        _weld(sim)
        sent = driver.requests_sent
        (group,) = driver.groups()
        readings = await driver.read(group)
        traces = traces_of(readings)
        assert traces is not None and len(traces) == 2
        current, voltage = sim.trace()
        (i,) = traces.of_signal(rows["current_trace"])
        (u,) = traces.of_signal(rows["voltage_trace"])
        assert traces.quality.tolist() == [Quality.GOOD] * 2
        assert traces.length.tolist() == traces.points.tolist() == [500, 500]
        np.testing.assert_allclose(traces.values[i], current, rtol=0, atol=1e-9)
        np.testing.assert_allclose(traces.values[u], voltage, rtol=0, atol=1e-9)
        # no scalar value for a trace tag: a curve is not a number
        assert not np.isin(readings.signal, [rows["current_trace"], rows["voltage_trace"]]).any()
        assert rows["weld_counter"] in readings.signal.tolist()
        # the values' requests, four per 500-point block, the counter once before and once after both blocks
        assert driver.requests_sent - sent == len(driver.plan(group)) + 2 * 4 + 2
    finally:
        await driver.close()
        await sim.stop()


def _bump_counter_on(
    sim: ArcWeldingSimulator, when: Callable[[str, int, int], bool], times: int
) -> list[int]:
    """Make the device increment its weld counter when a read matches `when`, `times` times (a new weld
    written while the reader is between requests); returns the list of bumps done so far."""
    tables = sim.server.units[sim.server.default_unit]
    read = tables.read
    done: list[int] = []

    def hooked(table: str, address: int, count: int) -> list[int] | list[bool] | None:
        if len(done) < times and when(table, address, count):
            sim.weld_counter.increment()
            sim.server.write_raw("weld_counter", sim.weld_counter.value)
            done.append(address)
        return read(table, address, count)

    tables.read = hooked  # type: ignore[method-assign]
    return done


@pytest.mark.parametrize(
    ("counter_elsewhere", "times", "quality"),
    [
        # the counter in another scan group: a block rewritten once is read again, consistent
        (True, 1, Quality.GOOD),
        (True, 2, Quality.BAD_VALUE),
        # the counter among the group's values: the block read again is of a later weld than they are
        (False, 1, Quality.BAD_VALUE),
    ],
)
async def test_a_block_rewritten_while_read_is_read_again_once(
    counter_elsewhere: bool, times: int, quality: Quality, tmp_path: Path
) -> None:
    sim = ArcWeldingSimulator(speed=0, seed=3)
    await sim.start()
    text = sim.device_config()
    if counter_elsewhere:
        text = text.replace('name = "weld_counter"\n', 'name = "weld_counter"\ninterval = 5.0\n')
    config = parse_config(text, "agent.toml", tmp_path)
    (device,) = config.devices
    rows = {name: i for i, name in enumerate(device.signal_names())}
    driver = make_driver(device, rows, tmp_path)
    await driver.connect()
    try:
        _weld(sim)
        first_chunk = welding_arc.TRACE_CURRENT_AT
        done = _bump_counter_on(sim, lambda t, a, c: t == welding_arc.IR and a == first_chunk, times)
        group = next(g for g in driver.groups() if "current_trace" in g.tags)
        assert ("weld_counter" in group.tags) is not counter_elsewhere
        traces = traces_of(await driver.read(group))
        assert traces is not None
        (i,) = traces.of_signal(rows["current_trace"])
        assert len(done) == times
        assert traces.quality[i] == quality
        if quality == Quality.BAD_VALUE:
            assert np.isnan(traces.values[i]).all()
        else:
            np.testing.assert_allclose(traces.values[i], sim.trace()[0], atol=1e-9)
    finally:
        await driver.close()
        await sim.stop()


async def test_a_block_of_a_later_cycle_than_the_values_read_with_it_is_bad(tmp_path: Path) -> None:
    sim = ArcWeldingSimulator(speed=0, seed=3)
    await sim.start()
    driver, rows = await _arc_driver(sim, tmp_path)
    try:
        _weld(sim)
        # the counter alone (2 registers at 8) is read just before the first block: a weld ends in between
        done = _bump_counter_on(sim, lambda t, a, c: t == welding_arc.IR and a == 8 and c == 2, 1)
        (group,) = driver.groups()
        readings = await driver.read(group)
        traces = traces_of(readings)
        assert traces is not None and done == [8]
        (i,) = traces.of_signal(rows["current_trace"])
        assert traces.quality[i] == Quality.BAD_VALUE
    finally:
        await driver.close()
        await sim.stop()


# --------------------------------------------------------------------------- OPC UA arrays and bad input


def _forging_config(sim: ForgingSimulator, points: int) -> str:
    return sim.device_config().replace("points = 720", f"points = {points}")


@pytest.mark.parametrize(
    ("points", "reason"), [(720, TraceReason.OK), (800, TraceReason.SHORT), (600, TraceReason.LONG)]
)
async def test_an_opcua_array_is_a_trace_and_its_length_is_checked(
    points: int, reason: TraceReason, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = ForgingSimulator(speed=1e-9, seed=4)
    await sim.start()
    rig = await Rig.open(sim, _forging_config(sim, points), tmp_path, 3.0)
    try:
        with caplog.at_level(logging.WARNING, "edge_agent.features.forging"):
            await rig.step(25)
        raw = traces_of(rig.raw[-1][1])
        assert raw is not None
        (k,) = raw.of_signal(rig.pipeline.rows_of("press-1")["force_signature"])
        assert raw.length[k] == 720 and raw.points[k] == points
        stroke = sim.last
        assert stroke is not None
        n = min(points, 720)
        np.testing.assert_allclose(raw.values[k, :n], np.round(stroke.signature[:n], 3), atol=1e-9)
        records = [f for _, s, f in rig.records if s == "stroke"]
        assert {f["trace_reason"] for f in records[-3:]} == {float(reason)}
        if reason == TraceReason.OK:
            assert np.isfinite(records[-1]["energy"]) and np.isfinite(records[-1]["rms_max"])
        else:
            # no number from a curve of the wrong length, but the balance (scalars) is still there
            assert all(np.isnan(f["energy"]) and np.isnan(f["rms_max"]) for f in records)
            assert all(np.isfinite(f["left_right"]) for f in records)
            lines = [r.getMessage() for r in caplog.records if f"reason={int(reason)}" in r.getMessage()]
            assert len(lines) == 1 and reason.name in lines[0] and "press-1" in lines[0]
    finally:
        await rig.close()
        await sim.stop()


async def test_nan_points_and_a_skipping_counter_are_no_data_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = ForgingSimulator(speed=1e-9, seed=4)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, 3.0)
    assert sim.server is not None
    node = sim.server.get_node(ua.NodeId("Press_1.Monitoring.Ram.ForceSignature", sim.ns[forging.SIM_URI]))
    try:
        await rig.step(25)  # the reference exists
        with caplog.at_level(logging.WARNING, "edge_agent.features.forging"):
            for _ in range(3):
                sim.advance(3.0)
                await sim.publish(sim.server)
                holes = list(np.round(sim.last.signature, 3)) if sim.last else []
                holes[100:140] = [float("nan")] * 40  # a monitor that lost samples
                await node.write_value(ua.DataValue(ua.Variant(holes, ua.VariantType.Double)))
                await rig.step_read()
            # the press strokes three times between two reads: the counter skips two
            rig.step_s = 9.0
            await rig.step(2)
        records = [f for _, s, f in rig.records if s == "stroke"]
        assert [f["trace_reason"] for f in records[-5:-2]] == [float(TraceReason.NAN_POINTS)] * 3
        assert all(np.isnan(f["rms_max"]) and np.isnan(f["energy"]) for f in records[-5:-2])
        assert [f["skipped"] for f in records[-2:]] == [2.0, 2.0]
        messages = [r.getMessage() for r in caplog.records]
        assert sum("NAN_POINTS" in m for m in messages) == 1
        assert sum("skipped" in m for m in messages) == 1
    finally:
        await rig.close()
        await sim.stop()


async def test_a_rectifier_at_0_a_with_its_voltage_up_is_no_data_not_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = PlatingLineSimulator(speed=0, seed=8, faults=["current_sensor_failure:station=ni1"])
    sim.advance(300.0)
    await sim.start()
    rig = await Rig.open(sim, tanks_toml("plating", sim.endpoint, stations=["ni1"]), tmp_path, 2.0)
    try:
        with caplog.at_level(logging.WARNING, "edge_agent.features.plating"):
            await rig.step(30)
    finally:
        await rig.close()
        await sim.stop()
    tank = [f for _, s, f in rig.records if s == "tank"]
    assert {f["reason"] for f in tank} == {float(TraceReason.OPEN_CIRCUIT)}
    assert all(np.isnan(f["current_density"]) and np.isnan(f["resistance"]) for f in tank)
    lines = [r.getMessage() for r in caplog.records if "OPEN_CIRCUIT" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("plating-ni1: ")


async def test_a_weld_without_an_arc_has_no_heat_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = ArcWeldingSimulator(speed=0, seed=3, faults=["no_arc"])
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, 2.0)
    try:
        with caplog.at_level(logging.WARNING, "edge_agent.features.welding_arc"):
            await rig.step(120)  # three welds
    finally:
        await rig.close()
        await sim.stop()
    welds = [f for _, s, f in rig.records if s == "weld"]
    assert len(welds) >= 2
    for f in welds:
        assert f["reason"] == TraceReason.NO_CURRENT and f["trace_reason"] == TraceReason.NO_CURRENT
        assert np.isnan(f["heat_input"]) and np.isnan(f["power"]) and np.isnan(f["short_period_cv"])
    assert [a.rule for a in rig.starts("weld")] == ["no_arc"]
    assert sum("NO_CURRENT" in r.getMessage() for r in caplog.records) == 1


async def test_spot_traces_give_r_beta_and_see_expulsion(tmp_path: Path) -> None:
    sim = SpotWeldingSimulator(speed=0, seed=4)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, 3.0)
    try:
        await rig.step(10)
        sim.set_fault("expulsion")
        await rig.step(5)
    finally:
        await rig.close()
        await sim.stop()
    spots = [f for _, s, f in rig.records if s == "spot"]
    assert all(f["reason"] == 0 for f in spots)
    assert all(140e-6 < f["r_beta"] < 200e-6 for f in spots[:8])
    assert all(f["expulsion_drop"] < 0.08 for f in spots[:8])
    assert all(f["expulsion_drop"] >= 0.08 for f in spots[-3:])  # the resistance steps down in the trace


def test_traces_pack_and_concatenate() -> None:
    t = Traces.of([3, 4], [1, 2], [np.arange(5.0), None], [4, 6], [Quality.GOOD, Quality.BAD_TIMEOUT])
    assert t.values.shape == (2, 6) and t.length.tolist() == [5, 0]
    assert t.values[0, :4].tolist() == [0.0, 1.0, 2.0, 3.0] and np.isnan(t.values[0, 4:]).all()
    assert np.isnan(t.values[1]).all()
    both = Traces.concat([t, Traces.of([5], [3], [np.ones(8)], [8], [Quality.GOOD])])
    assert both.values.shape == (3, 8) and both.signal.tolist() == [3, 4, 5]


async def test_an_array_read_as_a_value_says_how_to_read_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = ForgingSimulator(speed=1e-9, seed=4)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config().replace("points = 720\n", ""), tmp_path, 3.0)
    try:
        with caplog.at_level(logging.WARNING, "edge_agent.drivers.opcua.driver"):
            await rig.step(3)
    finally:
        await rig.close()
        await sim.stop()
    row = rig.pipeline.rows_of("press-1")["force_signature"]
    bad = [r.quality[r.signal == row] for _, r in rig.raw]
    assert all(q.tolist() == [Quality.BAD_VALUE] for q in bad)
    lines = [r.getMessage() for r in caplog.records if "force_signature" in r.getMessage()]
    assert lines == [
        "press-1: signal 'force_signature' is BAD_VALUE: its node holds an array of 720 numbers, not a value; "
        "to read it as one curve per cycle, give the tag points = 720 (logged once)"
    ]
