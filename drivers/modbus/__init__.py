"""Modbus TCP driver: request planning, decoding, shared connections with reconnect backoff."""

from drivers.modbus.codec import decode_numbers, decode_register_bits, decode_string, tag_width
from drivers.modbus.connection import Backoff, ModbusConnection
from drivers.modbus.driver import ModbusDriver, plan_group
from drivers.modbus.planner import ReadRequest, TagSpan, plan_modbus_requests

__all__ = [
    "Backoff",
    "ModbusConnection",
    "ModbusDriver",
    "ReadRequest",
    "TagSpan",
    "decode_numbers",
    "decode_register_bits",
    "decode_string",
    "plan_group",
    "plan_modbus_requests",
    "tag_width",
]
