"""The config of a Modbus TCP device: `[[devices]]` with `protocol = "modbus"`, its options and tags."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edge_agent.config_model import DeviceBase, Model, Name, Seconds, TagBase, check_unique

ModbusTable = Literal["coil", "discrete_input", "holding_register", "input_register"]


ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]


ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


#: Values an integer register of each type can hold, to refuse sentinels it never sends.
_INTEGER_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}

#: Signed twin of each unsigned type, to suggest when a negative sentinel sits on an unsigned tag.
_SIGNED = {"uint16": "int16", "uint32": "int32", "uint64": "int64"}


def _article(word: str) -> str:
    """The article before a type name: an int16, a uint16."""
    return "an" if word[0] in "aeio" else "a"


def _fits_float32(number: float) -> bool:
    """True when `number` rounds to a finite float32 (3.4028235e38 does, 3.4028236e38 does not)."""
    try:
        struct.pack(">f", number)
    except OverflowError:
        return False
    return True


class ModbusTag(TagBase):
    """One value read over Modbus TCP."""

    name: Name
    """Signal name, unique within the device (used in topics and series)."""
    table: ModbusTable = "holding_register"
    """Which Modbus table: coil (FC1), discrete_input (FC2), holding_register (FC3), input_register (FC4)."""
    address: int = Field(ge=0, le=65535)
    """Register or bit address as in the device manual, interpreted with the device's `address_base`."""
    type: ModbusType = "uint16"
    """Data type; coils and discrete inputs are always bool."""
    bit: int | None = Field(default=None, ge=0, le=15)
    """For `type = "bool"` on a register: which bit (0 = least significant)."""
    length: int | None = Field(default=None, ge=1, le=125)
    """For `type = "string"`: number of registers (two ASCII characters each)."""
    byte_order: ByteOrder | None = None
    """Byte/word order of multi-register values; defaults to the device's `byte_order`."""
    scale: float = 1.0
    """Engineering value = raw * scale + offset."""
    offset: float = 0.0
    """Added after scaling."""
    unit: str = ""
    """Engineering unit shown with the value (°C, bar, mm/s, ...)."""
    unit_id: int | None = Field(default=None, ge=0, le=255)
    """Unit id behind a Modbus TCP gateway; defaults to the device's `unit_id`."""
    interval: Seconds | None = None
    """Poll interval of this tag in seconds (its scan class); defaults to the device's `poll_interval`."""
    points: int | None = Field(default=None, ge=2, le=65536)
    """Read a block of this many values of `type` from `address` on as one trace (a weld's current, a
    force signature): it reaches the equipment features as a curve per read, not as a value. A block
    wider than a request is read in several, each a whole number of values."""
    latched_by: Name | None = None
    """For a trace: the tag of the counter the device increments after writing the block (its cycle
    counter). The counter is read before and after the block: a block the device rewrote meanwhile is
    read once more, and a trace still torn, or of another cycle than the counter read with the
    group's values, is BAD_VALUE."""

    @model_validator(mode="after")
    def _check_trace(self) -> ModbusTag:
        if self.points is not None and (
            self.table in ("coil", "discrete_input") or self.type in ("bool", "string")
        ):
            raise ValueError("`points` reads a block of numbers: use a register table and a numeric type")
        if self.latched_by is not None and self.points is None:
            raise ValueError("`latched_by` only applies to a trace (a tag with `points`)")
        return self

    @model_validator(mode="after")
    def _check_type_fields(self) -> ModbusTag:
        bit_table = self.table in ("coil", "discrete_input")
        if bit_table and self.type != "bool":
            raise ValueError(f'a {self.table} holds single bits: use type = "bool" (got {self.type!r})')
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise ValueError('`bit` only applies to type = "bool" on a register table')
        if self.type == "string" and self.length is None:
            raise ValueError('type = "string" needs `length` (number of registers)')
        if self.type != "string" and self.length is not None:
            raise ValueError('`length` only applies to type = "string"')
        problems = self._sentinel_problems()
        if problems:
            raise ValueError(f"tag {self.name}: " + "; ".join(problems))
        return self

    def _sentinel_problems(self) -> list[str]:
        """Sentinels the tag's type can never hold, each with the way out (the comparison is exact)."""
        if not self.sentinels:
            return []
        if self.type == "string":
            return ["a string has no number to compare with `sentinels`: remove them"]
        problems = []
        for s in self.sentinels:
            if self.type == "bool":
                if s not in (0, 1):
                    problems.append(f"sentinel {s} is neither 0 nor 1, the only values of a bool")
            elif self.type == "float32":
                # accepted if it rounds to a float32: compared as that float32, what a device writing it sends
                if not _fits_float32(s):
                    problems.append(
                        f"sentinel {s} is beyond the largest float32 (3.4028235e+38), so the register never "
                        'holds it: give the value the device sends, or set type = "float64" if the register '
                        "is 64 bits wide"
                    )
            elif self.type in _INTEGER_RANGE:
                problems += self._integer_sentinel_problem(s, *_INTEGER_RANGE[self.type])
        return problems

    def _integer_sentinel_problem(self, s: int | float, low: int, high: int) -> list[str]:
        """Why an integer register never holds `s` (a fraction, or outside low..high); empty if it can."""
        if isinstance(s, float) and not s.is_integer():
            hint = ""
            if self.scale != 0:
                # likely the engineering value: name the raw one if it is a whole number the register holds
                raw = (s - self.offset) / self.scale
                whole = round(raw)
                if abs(raw - whole) <= 1e-9 * max(1.0, abs(raw)) and low <= whole <= high:
                    hint = f" ({s} is raw {whole} here)"
            return [
                f"sentinel {s} has a fraction, which {_article(self.type)} {self.type} register never holds: "
                f"sentinels are raw values, before `scale` and `offset`{hint}"
            ]
        whole = int(s)
        if low <= whole <= high:
            return []
        where = f"sentinel {s} is outside {self.type} ({low}..{high}), so the register never holds it"
        signed = _SIGNED.get(self.type)
        if signed is not None and whole < 0 and _INTEGER_RANGE[signed][0] <= whole:
            return [
                f"{where}: write it as the register reads it ({whole + high + 1}), "
                f'or set type = "{signed}" if the register is signed'
            ]
        return [f"{where}: give the raw value as the device sends it, or correct `type`"]


class ModbusOptions(Model):
    """Options of a Modbus TCP connection and its request planning."""

    unit_id: int = Field(default=1, ge=0, le=255)
    """Default unit (slave) id of the tags."""
    address_base: Literal[0, 1] = 0
    """1 if the register map counts from 1 (as many manuals do), so every tag address is at least 1; 0 for protocol addresses."""
    byte_order: ByteOrder = "ABCD"
    """Default byte/word order of multi-register values (ABCD = big-endian, Modbus standard)."""
    max_gap: int = Field(default=10, ge=0, le=124)
    """Largest run of unused registers (or bits) a merged request may read across."""
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    """A smaller cap for fragile PLCs; the protocol limit is 125."""
    max_bits_per_request: int = Field(default=2000, ge=1, le=2000)
    """A smaller cap for coil/discrete-input reads; the protocol limit is 2000."""
    request_pause: float = Field(default=0.0, ge=0, le=10)
    """Seconds to wait between requests on the connection (some gateways need it)."""
    timeout: Seconds = 1.0
    """Seconds to wait for one response."""


class ModbusDevice(DeviceBase):
    """A device polled over Modbus TCP."""

    protocol: Literal["modbus"]
    """Protocol of the device."""
    modbus: ModbusOptions = Field(default_factory=ModbusOptions)
    """Connection and request-planning options."""
    tags: list[ModbusTag] = Field(min_length=1)
    """The register map."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "modbus-tcp" or not parts.hostname or port is None:
            raise ValueError("expected modbus-tcp://HOST:PORT, e.g. modbus-tcp://192.0.2.10:502")
        return v

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, v: list[ModbusTag]) -> list[ModbusTag]:
        check_unique(v, "tag")
        by_name = {t.name: t for t in v}
        for t in v:
            counter = by_name.get(t.latched_by) if t.latched_by is not None else None
            if t.latched_by is not None and (counter is None or counter.points is not None):
                raise ValueError(
                    f"tag {t.name!r}: latched_by names {t.latched_by!r}, which is not a scalar tag of the "
                    "device; name the tag of the counter the device increments after writing the trace"
                )
        return v

    def problems(self, where: str, config_dir: Path) -> list[str]:
        """Tag addresses below the device's `address_base`, which a tag model alone cannot see."""
        base = self.modbus.address_base
        return [
            f"{where}.tags[{j}].address: below the device's address_base = {base}, so it "
            f"names no register; write the address as the manual counts it (from {base}), or set "
            f"modbus.address_base = 0 if the map uses protocol addresses (got {tag.address})"
            for j, tag in enumerate(self.tags)
            if tag.address < base
        ]
