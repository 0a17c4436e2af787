"""Request planning: hypothesis properties (coverage, limits, gaps, maximal merging) and the die-casting map."""

from __future__ import annotations

import itertools
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import Config, ConfigError, load_config, parse_config
from edge_agent.drivers.base import TagGroup
from edge_agent.drivers.modbus.driver import ModbusDriver, plan_group
from edge_agent.drivers.modbus.planner import TagSpan, plan_modbus_requests

BIT_TABLES = ("coil", "discrete_input")


@st.composite
def spans_and_limits(draw: st.DrawFn) -> tuple[list[TagSpan], int, int, int]:
    max_registers = draw(st.integers(4, 125))
    max_bits = draw(st.integers(1, 2000))
    max_gap = draw(st.integers(0, 20))
    spans = []
    for _ in range(draw(st.integers(0, 60))):
        table = draw(st.sampled_from(["coil", "discrete_input", "holding_register", "input_register"]))
        cap = max_bits if table in BIT_TABLES else max_registers
        width = 1 if table in BIT_TABLES else draw(st.integers(1, min(4, cap)))
        start = draw(st.integers(0, 400))
        spans.append(TagSpan(draw(st.integers(1, 3)), table, start, width))
    return spans, max_gap, max_registers, max_bits


@settings(max_examples=300, deadline=None)
@given(spans_and_limits())
def test_plan_properties(case: tuple[list[TagSpan], int, int, int]) -> None:
    spans, max_gap, max_registers, max_bits = case
    plan = plan_modbus_requests(spans, max_gap=max_gap, max_registers=max_registers, max_bits=max_bits)
    # every tag is carried by exactly one request
    carried = sorted(i for req in plan for i in req.tags)
    assert carried == list(range(len(spans)))
    for req in plan:
        members = [spans[i] for i in req.tags]
        # a request holds one unit id and table, and every member lies inside it
        assert {(s.unit_id, s.table) for s in members} == {(req.unit_id, req.table)}
        assert all(req.start <= s.start and s.end <= req.end for s in members)
        # it starts and ends on a tag (no wasted registers at the edges)
        assert req.start == min(s.start for s in members)
        assert req.end == max(s.end for s in members)
        # within the protocol limit and the device cap
        cap = max_bits if req.table in BIT_TABLES else max_registers
        assert 1 <= req.count <= cap
        # no run of unused registers longer than max_gap
        used = set()
        for s in members:
            used.update(range(s.start, s.end))
        run = longest = 0
        for address in range(req.start, req.end):
            run = 0 if address in used else run + 1
            longest = max(longest, run)
        assert longest <= max_gap
    # maximal merging: two neighbouring requests of one unit/table could not have been one
    for a, b in itertools.pairwise(plan):
        if (a.unit_id, a.table) == (b.unit_id, b.table):
            cap = max_bits if a.table in BIT_TABLES else max_registers
            first_of_b = min(spans[i].start for i in b.tags)
            assert first_of_b - a.end > max_gap or max(a.end, b.end) - a.start > cap


@given(spans_and_limits())
def test_plan_is_deterministic(case: tuple[list[TagSpan], int, int, int]) -> None:
    spans, max_gap, max_registers, max_bits = case
    kwargs = {"max_gap": max_gap, "max_registers": max_registers, "max_bits": max_bits}
    assert plan_modbus_requests(spans, **kwargs) == plan_modbus_requests(list(spans), **kwargs)


def test_plan_examples() -> None:
    spans = [
        TagSpan(1, "holding_register", 0, 2),
        TagSpan(1, "holding_register", 5, 1),  # gap 3: merged
        TagSpan(1, "holding_register", 20, 2),  # gap 14: new request
        TagSpan(2, "holding_register", 0, 1),  # other unit id: new request
        TagSpan(1, "coil", 0, 1),
        TagSpan(1, "coil", 1999, 1),  # 2000 bits: fits one read with a big gap allowed
    ]
    plan = plan_modbus_requests(spans, max_gap=10)
    assert [(r.unit_id, r.table, r.start, r.count, r.tags) for r in plan] == [
        (1, "coil", 0, 1, (4,)),
        (1, "coil", 1999, 1, (5,)),
        (1, "holding_register", 0, 6, (0, 1)),
        (1, "holding_register", 20, 2, (2,)),
        (2, "holding_register", 0, 1, (3,)),
    ]
    wide = plan_modbus_requests(spans[4:], max_gap=1998)
    assert [(r.start, r.count) for r in wide] == [(0, 2000)]


def test_device_cap_splits_requests() -> None:
    spans = [TagSpan(1, "holding_register", a, 1) for a in range(0, 30)]
    plan = plan_modbus_requests(spans, max_gap=0, max_registers=8)
    assert [r.count for r in plan] == [8, 8, 8, 6]


def test_tag_wider_than_cap_is_an_error() -> None:
    with pytest.raises(ValueError, match="tag #0 is 4 wide, more than the 2"):
        plan_modbus_requests([TagSpan(1, "holding_register", 0, 4)], max_gap=0, max_registers=2)


def test_die_casting_map_needs_ten_times_fewer_requests() -> None:
    config = load_config("config/die-casting.toml")
    device = config.devices[0]
    rows = {name: i for i, name in enumerate(device.signal_names())}
    driver = ModbusDriver(device, rows)  # type: ignore[arg-type]
    requests = [r for g in driver.groups() for r in driver.plan(g)]
    assert len(device.tags) >= 10 * len(requests)


def test_address_base_one_and_bad_addresses_name_the_tag() -> None:
    text = """
[[devices]]
name = "m1"
protocol = "modbus"
profile = "die_casting"
endpoint = "modbus-tcp://127.0.0.1:5020"
[devices.modbus]
address_base = 1
max_registers_per_request = 2
[[devices.tags]]
name = "shot_counter"
address = 1
type = "uint32"
[[devices.tags]]
name = "fill_time"
address = 0
"""
    with pytest.raises(
        ConfigError, match=r"devices\[0\]\.tags\[1\]\.address: below the device's address_base = 1"
    ):
        parse_config(text)
    # the driver keeps its own check for a device that did not come through parse_config
    device = Config.model_validate(tomllib.loads(text)).devices[0]
    rows = {"shot_counter": 0, "fill_time": 1}
    with pytest.raises(ValueError, match="'fill_time': address 0 is below the device's address_base 1"):
        plan_group(device, TagGroup(1.0, ("shot_counter", "fill_time")), rows)  # type: ignore[arg-type]
    plan = plan_group(device, TagGroup(1.0, ("shot_counter",)), rows)  # type: ignore[arg-type]
    assert [(r.request.start, r.request.count) for r in plan.reads] == [(0, 2)]
