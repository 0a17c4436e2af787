"""Decoding straight from response bytes: the batch layouts against the word decoder, the response classes, short answers."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge_agent.config import parse_config
from edge_agent.drivers.base import TagGroup
from edge_agent.drivers.modbus.codec import (
    REGISTER_WIDTH,
    build_batches,
    decode_numbers,
    decode_register_bits,
)
from edge_agent.drivers.modbus.config import ModbusDevice, ModbusTag
from edge_agent.drivers.modbus.connection import _PAYLOAD_RESPONSES, Backoff, _HoldingRegisters
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.simulators.modbus_server import encode_registers
from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from edge_agent.types import Quality

_TYPES = ["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "bit"]
_ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


@st.composite
def register_layouts(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, int, float, float]], list[int]]:
    """Tags (type, order, offset, bit, scale, offset) laid out on a register image, back to back or with gaps."""
    words: list[int] = []
    tags = []
    scaled = draw(st.booleans())  # unscaled batches take the in-place path
    for _ in range(draw(st.integers(1, 12))):
        type_ = draw(st.sampled_from(_TYPES))
        order = draw(st.sampled_from(_ORDERS))
        words.extend([0xA55A] * draw(st.sampled_from([0, 0, 1, 3])))  # gaps, usually none
        width = 1 if type_ == "bit" else REGISTER_WIDTH[type_]
        words.extend(draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width)))
        scale = draw(st.sampled_from([1.0, 0.1, -2.0])) if scaled else 1.0
        offset = draw(st.sampled_from([0.0, 5.0])) if scaled else 0.0
        tags.append((type_, order, len(words) - width, draw(st.integers(0, 15)), scale, offset))
    return tags, words


def _tag(i: int, type_: str, order: str, address: int, bit: int, scale: float, offset: float) -> ModbusTag:
    if type_ == "bit":
        return ModbusTag(name=f"t{i}", address=address, type="bool", bit=bit)
    return ModbusTag(
        name=f"t{i}",
        address=address,
        type=type_,
        byte_order=order,
        scale=scale,
        offset=offset,  # type: ignore[arg-type]
    )


@settings(max_examples=300)
@given(register_layouts())
def test_bytes_decode_equals_word_decode(
    layout: tuple[list[tuple[str, str, int, int, float, float]], list[int]],
) -> None:
    tags, words = layout
    block = np.array(words, dtype=np.uint16)
    payload = block.astype(">u2").tobytes()
    members = [(i, t[2], _tag(i, *t), t[1] if t[0] != "bit" else "ABCD") for i, t in enumerate(tags)]
    got = np.full(len(tags), -1.0)
    for batch in build_batches(members):  # type: ignore[arg-type]
        batch.decode_into(payload, got, np.zeros(len(got), np.uint8))
    for i, (type_, order, offset, bit, scale, add) in enumerate(tags):
        if type_ == "bit":
            expected = decode_register_bits(block[offset : offset + 1], np.array([bit]))[0]
        else:
            width = REGISTER_WIDTH[type_]
            raw = decode_numbers(block[None, offset : offset + width], type_, order)[0]  # type: ignore[arg-type]
            expected = raw * scale + add
            if type_.startswith(("int", "uint")) and scale == 0.1 and abs(expected) * 10 < 2**52:
                # an integer register at scale 0.1 is rounded to its resolution, one decimal
                expected = round(expected, 1)
        if math.isnan(expected):
            assert math.isnan(got[i]), (i, type_, order)
        else:
            assert got[i] == expected, (i, type_, order)


def test_back_to_back_layouts_are_read_in_place() -> None:
    # 100 uint16 in order (the benchmark map), and DCBA float32 pairs: no gather, no arithmetic
    same = [(i, i, ModbusTag(name=f"r{i}", address=i), "ABCD") for i in range(100)]
    (batch,) = build_batches(same)  # type: ignore[arg-type]
    assert batch.direct and batch.target == slice(0, 100) and batch.gather == slice(0, 200)
    floats = [(i, 2 * i, ModbusTag(name=f"f{i}", address=2 * i, type="float32"), "DCBA") for i in range(3)]
    (batch,) = build_batches(floats)  # type: ignore[arg-type]
    assert batch.direct and batch.wire == np.dtype("<f4")
    payload = np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes()
    out = np.zeros(3)
    batch.decode_into(payload, out, np.zeros(len(out), np.uint8))
    assert out.tolist() == [1.5, -2.0, 3.25]
    # a gap or a word swap needs the gather
    gap = [(0, 0, ModbusTag(name="a", address=0), "ABCD"), (1, 2, ModbusTag(name="b", address=2), "ABCD")]
    assert not build_batches(gap)[0].direct  # type: ignore[arg-type]
    cdab = [(0, 0, ModbusTag(name="a", address=0, type="int32"), "CDAB")]
    assert not build_batches(cdab)[0].direct  # type: ignore[arg-type]
    words = np.array(encode_registers(-5, "int32", "CDAB"))
    assert build_batches(cdab)[0].decode(words).tolist() == [-5.0]  # type: ignore[arg-type]


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.data())
def test_flags_from_packed_bytes(bits: list[bool], data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.integers(0, len(bits) - 1), min_size=1, max_size=10, unique=True))
    members = [
        (k, p, ModbusTag(name=f"c{p}", table="coil", address=p, type="bool"), "ABCD")
        for k, p in enumerate(picks)
    ]
    (batch,) = build_batches(members)  # type: ignore[arg-type]
    payload = np.packbits(np.array(bits, dtype=bool), bitorder="little").tobytes()
    out = np.full(len(picks), -1.0)
    batch.decode_into(payload, out, np.zeros(len(out), np.uint8))
    assert out.tolist() == [float(bits[p]) for p in picks]


def test_payload_responses_keep_the_bytes_and_check_the_byte_count() -> None:
    assert {cls.function_code for cls in _PAYLOAD_RESPONSES} == {1, 2, 3, 4}
    response = _HoldingRegisters()
    response.decode(bytes([4, 0x12, 0x34, 0xAB, 0xCD]))
    assert response.payload == bytes([0x12, 0x34, 0xAB, 0xCD])
    assert "4 data bytes" in str(response)
    with pytest.raises(ModbusIOException):
        _HoldingRegisters().decode(bytes([6, 0x12, 0x34]))


def _device(sim: MoldTcuSimulator) -> ModbusDevice:
    device = parse_config(sim.device_config()).devices[0]
    assert isinstance(device, ModbusDevice)
    return device


async def test_short_answer_is_comm_failure_on_that_request_only(tcu_sim: MoldTcuSimulator) -> None:
    device = _device(tcu_sim)
    driver = ModbusDriver(device, {n: i for i, n in enumerate(device.signal_names())}, backoff=Backoff())
    await driver.connect()
    conn = driver._conn
    assert conn is not None
    execute: Callable[[bool, ModbusPDU], Awaitable[ModbusPDU]] = conn._client.execute  # type: ignore[assignment]

    async def short_input_registers(no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        response = await execute(no_response_expected, request)
        if request.function_code == 4:
            response.payload = response.payload[:-1]  # type: ignore[attr-defined]
        return response

    conn._client.execute = short_input_registers  # type: ignore[method-assign]
    try:
        names = device.signal_names()
        readings = [await driver.read(g) for g in driver.groups()]
    finally:
        await driver.close()
    got = {
        names[row]: Quality(q)
        for r in readings
        for row, q in zip(r.signal.tolist(), r.quality.tolist(), strict=True)
    }
    inputs = {t.name for t in device.tags if t.table == "input_register"}
    assert inputs and all(got[name] == Quality.BAD_COMM_FAILURE for name in inputs)
    assert all(q == Quality.GOOD for name, q in got.items() if name not in inputs)
    assert driver.last_error is not None and "expected" in driver.last_error


async def test_equal_group_objects_find_their_plan(tcu_sim: MoldTcuSimulator) -> None:
    device = _device(tcu_sim)
    driver = ModbusDriver(device, {n: i for i, n in enumerate(device.signal_names())})
    try:
        for group in driver.groups() * 2:
            copy = TagGroup(group.interval_s, tuple(group.tags))
            for g in (group, copy):
                readings = await driver.read(g)
                assert len(readings) == len(group.tags)
                assert int(readings.quality.max()) == Quality.GOOD
    finally:
        await driver.close()


@pytest.fixture
async def tcu_sim() -> AsyncIterator[MoldTcuSimulator]:
    sim = MoldTcuSimulator(speed=0, seed=3)
    await sim.start()
    sim.advance(600)
    yield sim
    await sim.stop()
