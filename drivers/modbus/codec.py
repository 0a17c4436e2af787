"""Decode Modbus register blocks into numbers: every type and byte order, vectorized over the tags of a request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray

from edge_agent.drivers.modbus.config import ByteOrder, ModbusTag
from edge_agent.types import ValidityRules

#: Registers a value of each numeric type occupies (bool on a register uses one).
REGISTER_WIDTH: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

_NUMPY_TYPE: dict[str, str] = {
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "float32": "f4",
    "int64": "i8",
    "uint64": "u8",
    "float64": "f8",
}

# Byte order names spell where the bytes of the big-endian value (A most significant)
# arrive on the wire. CDAB/DCBA send the low word first; BADC/DCBA swap the two bytes
# inside each register. For 64-bit values the same two rules apply to all four words.
_WORDS_REVERSED = frozenset({"CDAB", "DCBA"})
_BYTES_SWAPPED = frozenset({"BADC", "DCBA"})


#: Largest magnitude of each integer kind ("bit" is 1), to tell whether rounding can meet values without a fraction.
_LARGEST_RAW = {
    "int16": 2.0**15,
    "uint16": 2.0**16,
    "int32": 2.0**31,
    "uint32": 2.0**32,
    "int64": 2.0**63,
    "uint64": 2.0**64,
}

#: From here on every float64 is a whole number.
_NO_FRACTION = 2.0**52

#: More decimals than a float64 holds: a scale like 1/3 has no decimal resolution to round to.
_MAX_DECIMALS = 15


def decimals_of(number: float) -> int | None:
    """Decimals of the shortest decimal that reads back as `number` (0.001 -> 3, 2.5 -> 1, 100 -> 0); None past 15."""
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the config refuses NaN and infinity
    decimals = max(0, -exponent)
    return decimals if decimals <= _MAX_DECIMALS else None


def resolution_steps(scales: NDArray[np.float64], offsets: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per tag, 10**decimals of an integer register's engineering value (raw * scale + offset); 0 where it has none.

    An integer times a scale with d decimals, plus an offset with e, has at most max(d, e) decimals;
    rounding to them removes the binary noise of the product (284 * 0.001 = 0.28400000000000003).
    """
    steps = []
    for scale, offset in zip(scales.tolist(), offsets.tolist(), strict=True):
        d, e = decimals_of(scale), decimals_of(offset)
        steps.append(0.0 if d is None or e is None else 10.0 ** max(d, e))
    return np.array(steps, dtype=np.float64)


def sentinel_type(kind: str) -> np.dtype:
    """The type a DecodeBatch's raw values have, which its sentinels are converted to, to compare exactly.

    float32 sentinels are rounded to float32 (-9999.9 becomes -9999.900390625, what the register
    holds); 64-bit integer ones stay integers, since a double cannot tell 2**53 from 2**53 + 1.
    Bits are compared as 0.0/1.0.
    """
    return np.dtype(_NUMPY_TYPE[kind]) if kind in _NUMPY_TYPE else np.dtype(np.float64)


def is_bit_table(table: str) -> bool:
    """True for the single-bit tables (coils, discrete inputs)."""
    return table in ("coil", "discrete_input")


def tag_width(tag: ModbusTag) -> int:
    """How many registers (or bits, on a bit table) the tag occupies."""
    if is_bit_table(tag.table):
        return 1
    if tag.type == "string":
        assert tag.length is not None  # the config validator requires it
        return tag.length
    return REGISTER_WIDTH[tag.type]


def words_to_big_endian_bytes(words: NDArray[np.uint16], byte_order: ByteOrder) -> NDArray[np.uint8]:
    """Rows of registers as they arrived -> rows of bytes, most significant first (ABCD order)."""
    if byte_order in _WORDS_REVERSED:
        words = words[:, ::-1]
    wire = "<u2" if byte_order in _BYTES_SWAPPED else ">u2"
    as_bytes = np.ascontiguousarray(words, dtype=wire).view(np.uint8)
    return as_bytes.reshape(words.shape[0], words.shape[1] * 2)


def decode_numbers(words: NDArray[np.uint16], type_: str, byte_order: ByteOrder) -> NDArray[np.float64]:
    """Decode rows of registers (one row per value) of one numeric type and byte order to float64."""
    width = REGISTER_WIDTH[type_]
    if words.ndim != 2 or words.shape[1] != width:
        raise ValueError(f"{type_} needs rows of {width} registers, got shape {words.shape}")
    if width == 1:
        return decode_words(words[:, 0], type_, byte_order)
    raw = words_to_big_endian_bytes(words, byte_order)
    return raw.view(">" + _NUMPY_TYPE[type_]).reshape(words.shape[0]).astype(np.float64)


def decode_words(column: NDArray[np.uint16], type_: str, byte_order: ByteOrder) -> NDArray[np.float64]:
    """Decode one-register values (int16, uint16): only the byte swap of the order matters."""
    if byte_order in _BYTES_SWAPPED:
        column = column.byteswap()
    return (column.view(np.int16) if type_ == "int16" else column).astype(np.float64)


def decode_register_bits(words: NDArray[np.uint16], bits: NDArray[np.integer]) -> NDArray[np.float64]:
    """Bit `bits[i]` (0 = least significant) of register `words[i]`, as 0.0/1.0."""
    return ((words.astype(np.uint32) >> bits.astype(np.uint32)) & 1).astype(np.float64)


def decode_string(words: Sequence[int] | NDArray[np.uint16], byte_order: ByteOrder) -> str:
    """ASCII text packed two characters per register; NULs and trailing blanks are dropped.

    Only the byte swap of the byte order applies (BADC, DCBA): text is never word-swapped.
    """
    block = np.asarray(words, dtype=np.uint16)
    wire = "<u2" if byte_order in _BYTES_SWAPPED else ">u2"
    raw = np.ascontiguousarray(block, dtype=wire).tobytes()
    return raw.replace(b"\x00", b"").decode("ascii", errors="replace").rstrip()


def wire_byte_order(width: int, byte_order: ByteOrder) -> tuple[int, ...]:
    """Positions in the wire bytes of a `width`-register value of its big-endian bytes, most significant first."""
    words = range(width - 1, -1, -1) if byte_order in _WORDS_REVERSED else range(width)
    inner = (1, 0) if byte_order in _BYTES_SWAPPED else (0, 1)
    return tuple(2 * w + b for w in words for b in inner)


def _as_slice(positions: NDArray[np.intp], step: int = 1) -> slice | None:
    """The slice selecting exactly `positions`, if they run from the first upwards by `step`."""
    if positions.size == 0:
        return None
    first = int(positions[0])
    if np.array_equal(positions, first + step * np.arange(positions.size)):
        return slice(first, first + step * positions.size, step if step != 1 else None)
    return None


def where(positions: NDArray[np.intp]) -> NDArray[np.intp] | slice:
    """`positions` as a slice when they run upwards by one, else unchanged: an index for the same elements."""
    return _as_slice(positions) or positions


@dataclass(frozen=True, slots=True)
class DecodeBatch:
    """Tags of one request sharing a decode rule: gathered from the response bytes at once, decoded in one call."""

    kind: str
    """A numeric type name, "bit" (bit of a register) or "flag" (coil / discrete input)."""
    byte_order: ByteOrder
    """Byte order of the numeric types."""
    index: NDArray[np.intp]
    """Offsets into the response block: shape (tags, width) for multi-register numbers, (tags,) otherwise."""
    bits: NDArray[np.uint8]
    """For kind "bit": which bit of the register."""
    out: NDArray[np.intp]
    """Where the decoded values go in the group's output arrays."""
    scale: NDArray[np.float64]
    """Multiplier per tag."""
    offset: NDArray[np.float64]
    """Added after scaling."""
    identity: bool = False
    """True when every scale is 1 and every offset 0 (the arithmetic is skipped)."""
    validity: ValidityRules | None = None
    """Valid range and sentinel raw values of the tags, in batch order, the sentinels converted to the batch's
    raw type (`sentinel_type`); None when no tag has any."""
    steps: NDArray[np.float64] | None = field(init=False)
    """Integer kinds with scaling: 10**decimals per tag that the engineering values are rounded to;
    None when nothing is rounded (floats, identity scaling, scales without a short decimal)."""
    unrounded: NDArray[np.bool_] | None = field(init=False)
    """Tags of a rounded batch whose scale or offset has no short decimal (1/3): kept as computed."""
    huge: bool = field(init=False)
    """A value of the batch can be so large that value * step holds no fraction (64-bit registers): such
    values are kept as computed, since multiplying and dividing back could move them by one unit in the last place."""
    wire: np.dtype = field(init=False)
    """dtype the gathered bytes of one value are read as (the register kinds)."""
    gather: NDArray[np.intp] | slice = field(init=False)
    """Which bytes (register kinds) or bits (flags) of the response to take: a slice when they are
    adjacent in order, so the values are read in place; else positions of shape (tags, bytes per value)."""
    target: NDArray[np.intp] | slice = field(init=False)
    """`out`, as a slice when it is a run of positions (slice assignment is several times cheaper)."""
    first_byte: int = field(init=False)
    """Where the values start in the response bytes when `gather` is a slice."""
    direct: bool = field(init=False)
    """Numbers lying back to back, unscaled: decoding is a single read of the bytes in place."""

    def __post_init__(self) -> None:
        # Everything about the layout is worked out once per planned request, so a poll
        # only gathers, converts and stores.
        set_ = object.__setattr__
        set_(self, "target", where(self.out))
        set_(self, "first_byte", 0)
        set_(self, "direct", False)
        # a float's resolution is not its scale's: only integers (and bits) are rounded
        steps, unrounded = None, None
        if not self.identity and self.kind not in ("float32", "float64"):
            steps = resolution_steps(self.scale, self.offset)
            unrounded = steps == 0
            if unrounded.all():
                steps, unrounded = None, None
            elif unrounded.any():
                steps[unrounded] = 1.0  # a harmless divisor; `where` keeps these values as they are
            else:
                unrounded = None
        set_(self, "steps", steps)
        set_(self, "unrounded", unrounded)
        huge = False
        if steps is not None:
            largest = _LARGEST_RAW.get(self.kind, 1.0) * np.abs(self.scale) + np.abs(self.offset)
            huge = bool((largest * steps >= _NO_FRACTION).any())
        set_(self, "huge", huge)
        if self.kind == "flag":
            set_(self, "wire", np.dtype(np.uint8))
            set_(self, "gather", _as_slice(self.index) or self.index)
            return
        if self.kind == "bit":
            type_, width = "uint16", 1
        else:
            type_, width = self.kind, REGISTER_WIDTH[self.kind]
        first = self.index if self.index.ndim == 1 else self.index[:, 0]
        nbytes = 2 * width
        order = wire_byte_order(width, self.byte_order)
        adjacent = _as_slice(first, width) if first.size else None
        if adjacent is not None and order == tuple(range(nbytes)):
            set_(self, "wire", np.dtype(">" + _NUMPY_TYPE[type_]))
            set_(self, "gather", slice(2 * adjacent.start, 2 * adjacent.stop))
        elif adjacent is not None and order == tuple(range(nbytes - 1, -1, -1)):
            set_(self, "wire", np.dtype("<" + _NUMPY_TYPE[type_]))
            set_(self, "gather", slice(2 * adjacent.start, 2 * adjacent.stop))
        else:
            set_(self, "wire", np.dtype(">" + _NUMPY_TYPE[type_]))
            set_(self, "gather", 2 * first[:, None] + np.array(order, dtype=np.intp)[None, :])
        if isinstance(self.gather, slice):
            set_(self, "first_byte", self.gather.start)
            set_(self, "direct", self.kind != "bit" and self.identity)

    def raw(self, payload: bytes) -> NDArray:
        """The batch's values as stored on the device (integers, floats or 0/1), from a response's data bytes."""
        if self.kind == "flag":
            return np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")[self.gather]
        if isinstance(self.gather, slice):
            return np.frombuffer(payload, dtype=self.wire, count=self.index.shape[0], offset=self.first_byte)
        gathered = np.frombuffer(payload, dtype=np.uint8)[self.gather]
        return gathered.view(self.wire).reshape(gathered.shape[0])

    def engineering(self, payload: bytes) -> NDArray:
        """raw * scale + offset of the batch's tags, in batch order (with identity scaling, the raw values).

        Integer registers are rounded to the decimals their scale and offset imply.
        """
        return self.scaled(self.unscaled(payload))

    def unscaled(self, payload: bytes) -> NDArray:
        """The raw values, and for kind "bit" the bits of the registers: what `sentinels` are compared with."""
        raw = self.raw(payload)
        return decode_register_bits(raw, self.bits) if self.kind == "bit" else raw

    def scaled(self, raw: NDArray) -> NDArray:
        """raw * scale + offset, integers rounded to the decimals the scale and offset imply."""
        if self.identity:
            return raw
        value = raw * self.scale + self.offset
        steps = self.steps
        if steps is None:
            return value
        # an integer over a power of ten is correctly rounded: the double nearest the decimal value
        scaled = value * steps
        rounded = np.rint(scaled) / steps
        if self.huge:
            keep = np.abs(scaled) >= _NO_FRACTION
            return np.where(keep if self.unrounded is None else keep | self.unrounded, value, rounded)
        return rounded if self.unrounded is None else np.where(self.unrounded, value, rounded)

    def decode_into(self, payload: bytes, value: NDArray[np.float64], quality: NDArray[np.uint8]) -> None:
        """Store the engineering values of the batch's tags, from a response's data bytes, at `out` in `value`.

        A value its tag's validity rules refuse becomes NaN with BAD_SENSOR_FAILURE in `quality`.
        """
        # the assignment converts to float64 in place, without a temporary
        if self.direct:
            # positional arguments: keywords cost frombuffer a third of its time here
            raw = np.frombuffer(payload, self.wire, self.out.shape[0], self.first_byte)
            value[self.target] = raw
            if self.validity is not None:
                # the doubles hold every raw value exactly, but those of 64-bit integers
                self.validity.apply(value, quality, raw=raw if self.validity.integer else None, at=self.out)
        elif self.validity is None:
            value[self.target] = self.engineering(payload)
        else:
            # sentinels are raw values: 32767 on the wire, whatever the scale makes of it
            raw = self.unscaled(payload)
            value[self.target] = self.scaled(raw)
            self.validity.apply(value, quality, raw=raw, at=self.out)

    def decode(self, block: NDArray | Sequence[int] | Sequence[bool]) -> NDArray[np.float64]:
        """Engineering values of the batch's tags from one response block (registers or bits), NaN where invalid."""
        if self.kind == "flag":
            payload = np.packbits(np.asarray(block, dtype=bool), bitorder="little").tobytes()
        else:
            payload = np.ascontiguousarray(block, dtype=">u2").tobytes()
        raw = self.unscaled(payload)
        value = np.array(self.scaled(raw), dtype=np.float64)
        if self.validity is not None:
            self.validity.apply(value, np.zeros(value.shape, np.uint8), raw=raw)
        return value


def build_batches(
    tags: Sequence[tuple[int, int, ModbusTag, ByteOrder]],
) -> list[DecodeBatch]:
    """Group the (output position, offset in block, tag, effective byte order) of one request into DecodeBatches.

    String tags are not numbers and are left to `decode_string`.
    """
    groups: dict[tuple[str, ByteOrder], list[tuple[int, int, ModbusTag]]] = {}
    for out, offset, tag, order in tags:
        if tag.type == "string":
            continue
        if is_bit_table(tag.table):
            key: tuple[str, ByteOrder] = ("flag", "ABCD")
        elif tag.type == "bool":
            key = ("bit", "ABCD")
        else:
            key = (tag.type, order)
        groups.setdefault(key, []).append((out, offset, tag))
    batches = []
    for (kind, order), members in sorted(groups.items()):
        offsets = np.array([m[1] for m in members], dtype=np.intp)
        if kind in ("flag", "bit") or REGISTER_WIDTH[kind] == 1:
            index = offsets
        else:
            index = offsets[:, None] + np.arange(REGISTER_WIDTH[kind], dtype=np.intp)[None, :]
        batches.append(
            DecodeBatch(
                kind=kind,
                byte_order=order,
                index=index,
                bits=np.array([m[2].bit or 0 for m in members], dtype=np.uint8),
                out=np.array([m[0] for m in members], dtype=np.intp),
                scale=np.array([m[2].scale for m in members], dtype=np.float64),
                offset=np.array([m[2].offset for m in members], dtype=np.float64),
                identity=all(m[2].scale == 1.0 and m[2].offset == 0.0 for m in members),
                validity=ValidityRules.of([m[2].validity() for m in members], sentinel_type(kind)),
            )
        )
    return batches
