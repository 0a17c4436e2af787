"""Modbus exception codes as the agent's Quality codes."""

from __future__ import annotations

from edge_agent.types import Quality

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTION_QUALITY: dict[int, Quality] = {
    0x01: Quality.BAD_CONFIG,  # illegal function: the device has no such table
    0x02: Quality.BAD_CONFIG,  # illegal data address: the register map is wrong
    0x03: Quality.BAD_CONFIG,  # illegal data value: quantity out of range
    0x04: Quality.BAD_DEVICE_FAILURE,  # server device failure
    0x05: Quality.BAD_DEVICE_BUSY,  # acknowledge: long operation in progress
    0x06: Quality.BAD_DEVICE_BUSY,  # server device busy
    0x08: Quality.BAD_DEVICE_FAILURE,  # memory parity error
    0x0A: Quality.BAD_GATEWAY_PATH,  # gateway path unavailable
    0x0B: Quality.BAD_GATEWAY_TARGET,  # gateway target device failed to respond
}


def quality_from_modbus_exception(code: int) -> Quality:
    """Map a Modbus exception code to a Quality (unknown codes are plain BAD)."""
    return MODBUS_EXCEPTION_QUALITY.get(code, Quality.BAD)
