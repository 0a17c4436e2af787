"""Decoding table: every type x byte order against hand-computed register images."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.drivers.modbus.codec import build_batches, decode_numbers, decode_register_bits, decode_string
from edge_agent.drivers.modbus.config import ModbusTag
from edge_agent.simulators.modbus_server import encode_registers

# (type, byte order, registers as they arrive, expected value), computed by hand:
#   int16  -200       = 0xFF38
#   uint16 4660       = 0x1234
#   int32  -123456789 = 0xF8A4_32EB
#   uint32 3735928559 = 0xDEAD_BEEF
#   float32 -2.5      = 0xC020_0000
#   int64  0x0102030405060708, uint64 0xFEDCBA9876543210
#   float64 1234.5    = 0x4093_4A00_0000_0000
# CDAB reverses the register order, BADC swaps the bytes inside each register, DCBA does both.
TABLE = [
    ("int16", "ABCD", [0xFF38], -200),
    ("int16", "CDAB", [0xFF38], -200),
    ("int16", "BADC", [0x38FF], -200),
    ("int16", "DCBA", [0x38FF], -200),
    ("uint16", "ABCD", [0x1234], 4660),
    ("uint16", "CDAB", [0x1234], 4660),
    ("uint16", "BADC", [0x3412], 4660),
    ("uint16", "DCBA", [0x3412], 4660),
    ("int32", "ABCD", [0xF8A4, 0x32EB], -123456789),
    ("int32", "CDAB", [0x32EB, 0xF8A4], -123456789),
    ("int32", "BADC", [0xA4F8, 0xEB32], -123456789),
    ("int32", "DCBA", [0xEB32, 0xA4F8], -123456789),
    ("uint32", "ABCD", [0xDEAD, 0xBEEF], 3735928559),
    ("uint32", "CDAB", [0xBEEF, 0xDEAD], 3735928559),
    ("uint32", "BADC", [0xADDE, 0xEFBE], 3735928559),
    ("uint32", "DCBA", [0xEFBE, 0xADDE], 3735928559),
    ("float32", "ABCD", [0xC020, 0x0000], -2.5),
    ("float32", "CDAB", [0x0000, 0xC020], -2.5),
    ("float32", "BADC", [0x20C0, 0x0000], -2.5),
    ("float32", "DCBA", [0x0000, 0x20C0], -2.5),
    ("int64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("int64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("int64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("int64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    ("uint64", "ABCD", [0xFEDC, 0xBA98, 0x7654, 0x3210], 0xFEDCBA9876543210),
    ("uint64", "CDAB", [0x3210, 0x7654, 0xBA98, 0xFEDC], 0xFEDCBA9876543210),
    ("uint64", "BADC", [0xDCFE, 0x98BA, 0x5476, 0x1032], 0xFEDCBA9876543210),
    ("uint64", "DCBA", [0x1032, 0x5476, 0x98BA, 0xDCFE], 0xFEDCBA9876543210),
    ("float64", "ABCD", [0x4093, 0x4A00, 0x0000, 0x0000], 1234.5),
    ("float64", "CDAB", [0x0000, 0x0000, 0x4A00, 0x4093], 1234.5),
    ("float64", "BADC", [0x9340, 0x004A, 0x0000, 0x0000], 1234.5),
    ("float64", "DCBA", [0x0000, 0x0000, 0x004A, 0x9340], 1234.5),
]


@pytest.mark.parametrize(("type_", "order", "registers", "expected"), TABLE)
def test_decode_table(type_: str, order: str, registers: list[int], expected: float) -> None:
    words = np.array([registers], dtype=np.uint16)
    got = decode_numbers(words, type_, order)  # type: ignore[arg-type]
    assert got.shape == (1,)
    assert got[0] == float(expected)


@pytest.mark.parametrize(("type_", "order", "registers", "expected"), TABLE)
def test_simulator_encoder_agrees_with_table(
    type_: str, order: str, registers: list[int], expected: float
) -> None:
    # the simulators encode with struct, the driver decodes with numpy: both must match the hand table
    assert encode_registers(expected, type_, order) == registers


def test_decode_many_rows_at_once() -> None:
    words = np.array([[0xDEAD, 0xBEEF], [0x0000, 0x0001], [0xFFFF, 0xFFFF]], dtype=np.uint16)
    assert decode_numbers(words, "uint32", "ABCD").tolist() == [3735928559.0, 1.0, 4294967295.0]
    assert decode_numbers(words, "int32", "ABCD").tolist() == [-559038737.0, 1.0, -1.0]


def test_float_specials_decode_to_nan_and_inf() -> None:
    nan = decode_numbers(np.array([[0x7FC0, 0x0000]], dtype=np.uint16), "float32", "ABCD")
    inf = decode_numbers(np.array([[0xFF80, 0x0000]], dtype=np.uint16), "float32", "ABCD")
    assert math.isnan(nan[0])
    assert inf[0] == -math.inf


def test_register_bits() -> None:
    words = np.array([0x8001, 0x8001, 0x8001, 0x0004], dtype=np.uint16)
    bits = np.array([0, 15, 1, 2])
    assert decode_register_bits(words, bits).tolist() == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("order", "registers", "expected"),
    [
        ("ABCD", [0x4142, 0x3132, 0x0000], "AB12"),
        ("CDAB", [0x4142, 0x3132, 0x0000], "AB12"),  # text is never word-swapped
        ("BADC", [0x4241, 0x3231, 0x0000], "AB12"),
        ("DCBA", [0x4241, 0x3231, 0x0000], "AB12"),
        ("ABCD", [0x4D4F, 0x4C44, 0x2D37, 0x2020], "MOLD-7"),  # trailing blanks dropped
    ],
)
def test_decode_string(order: str, registers: list[int], expected: str) -> None:
    assert decode_string(registers, order) == expected  # type: ignore[arg-type]


def test_wrong_row_width_is_an_error() -> None:
    with pytest.raises(ValueError, match="float32 needs rows of 2 registers"):
        decode_numbers(np.zeros((1, 3), dtype=np.uint16), "float32", "ABCD")


def test_batches_apply_scale_offset_and_group_by_rule() -> None:
    tags = [
        ModbusTag(name="a", address=0, type="int16", scale=0.1),
        ModbusTag(name="b", address=1, type="uint32", byte_order="CDAB"),
        ModbusTag(name="c", address=3, type="int16", scale=2.0, offset=-1.0),
        ModbusTag(name="d", address=4, type="bool", bit=3),
    ]
    members = [(i, t.address, t, t.byte_order or "ABCD") for i, t in enumerate(tags)]
    batches = build_batches(members)  # type: ignore[arg-type]
    block = np.array([0xFF38, 0x0002, 0x0001, 7, 0x0008], dtype=np.uint16)
    out = np.full(4, np.nan)
    for batch in batches:
        out[batch.out] = batch.decode(block)
    assert out.tolist() == pytest.approx([-20.0, 65538.0, 13.0, 1.0])
    assert len(batches) == 3  # the two int16 tags share one batch


_TYPES = ["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**53), 2**53),  # exact in float64
    "uint64": (0, 2**53),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, str, float]:
    type_ = draw(st.sampled_from(_TYPES))
    order = draw(st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]))
    if type_ in _RANGES:
        low, high = _RANGES[type_]
        return type_, order, draw(st.integers(low, high))
    width = 32 if type_ == "float32" else 64
    value = draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    return type_, order, value


@given(typed_values())
def test_round_trip_against_struct_encoder(case: tuple[str, str, float]) -> None:
    type_, order, value = case
    words = np.array([encode_registers(value, type_, order)], dtype=np.uint16)
    decoded = decode_numbers(words, type_, order)  # type: ignore[arg-type]
    if type_ == "float32":
        assert decoded[0] == struct.unpack(">f", struct.pack(">f", value))[0]
    else:
        assert decoded[0] == float(value)


def test_scaled_integers_are_rounded_to_the_resolution_of_the_scale() -> None:
    # 284 * 0.001 is 0.28400000000000003 in binary floating point; the register holds 0.284
    tags = [
        ModbusTag(name="flow", address=0, type="uint16", scale=0.001),
        ModbusTag(name="temp", address=1, type="int16", scale=0.1, offset=-40.05),
        ModbusTag(name="big", address=2, type="uint32", scale=0.01),
        ModbusTag(name="third", address=4, type="uint16", scale=1 / 3),
        ModbusTag(name="gain", address=5, type="int16", scale=2.5),
    ]
    members = [(i, t.address, t, "ABCD") for i, t in enumerate(tags)]
    block = np.array([284, 2345, 0x0001, 0x86A3, 7, 3], dtype=np.uint16)
    out = np.full(len(tags), np.nan)
    for batch in build_batches(members):  # type: ignore[arg-type]
        out[batch.out] = batch.decode(block)
    assert 284 * 0.001 == 0.28400000000000003  # the noise this removes
    assert [repr(v) for v in out.tolist()] == ["0.284", "194.45", "1000.03", repr(7 * (1 / 3)), "7.5"]


@pytest.mark.parametrize(("scale", "decimals"), [(0.1, 1), (0.01, 2), (0.001, 3), (0.05, 2)])
def test_every_scaled_register_value_is_the_nearest_double_to_its_decimal(
    scale: float, decimals: int
) -> None:
    raw = np.arange(-(2**15), 2**15, dtype=np.int64)
    tags = [(0, 0, ModbusTag(name="v", address=0, type="int16", scale=scale), "ABCD")]
    (batch,) = build_batches(tags)  # type: ignore[arg-type]
    got = np.array([batch.decode(np.array([r], dtype=np.int16).view(np.uint16))[0] for r in raw[::97]])
    # an integer over a power of ten is correctly rounded: the double nearest the decimal value
    exact = (raw[::97] * round(scale * 10**decimals)) / 10**decimals
    assert got.tolist() == exact.tolist()
