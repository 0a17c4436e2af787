"""The config of a Modbus TCP device: `[[devices]]` with `protocol = "modbus"`, its options and tags."""

from __future__ import annotations

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
        return self


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
