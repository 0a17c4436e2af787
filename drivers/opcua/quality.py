"""OPC UA StatusCodes as the agent's Quality codes."""

from __future__ import annotations

from edge_agent.types import Quality

# OPC UA StatusCode (Part 4, 7.39 / Part 6 annex) -> quality. Codes not listed keep
# their severity (good/uncertain/bad) with the generic sub-code.
_OPCUA_STATUS: dict[int, Quality] = {
    0x00000000: Quality.GOOD,
    0x40000000: Quality.UNCERTAIN,
    0x40900000: Quality.UNCERTAIN_LAST_USABLE,  # UncertainLastUsableValue
    0x40930000: Quality.UNCERTAIN_SENSOR_NOT_ACCURATE,  # UncertainSensorNotAccurate
    0x40940000: Quality.UNCERTAIN_EU_EXCEEDED,  # UncertainEngineeringUnitsExceeded
    0x40950000: Quality.UNCERTAIN_SUBNORMAL,  # UncertainSubNormal
    0x80000000: Quality.BAD,
    0x80330000: Quality.BAD_CONFIG,  # BadNodeIdInvalid
    0x80340000: Quality.BAD_CONFIG,  # BadNodeIdUnknown
    0x80350000: Quality.BAD_CONFIG,  # BadAttributeIdInvalid
    0x80890000: Quality.BAD_CONFIG,  # BadConfigurationError
    0x808A0000: Quality.BAD_NOT_CONNECTED,  # BadNotConnected
    0x80310000: Quality.BAD_NOT_CONNECTED,  # BadNoCommunication
    0x800D0000: Quality.BAD_NOT_CONNECTED,  # BadServerNotConnected
    0x80AE0000: Quality.BAD_NOT_CONNECTED,  # BadConnectionClosed
    0x80860000: Quality.BAD_NOT_CONNECTED,  # BadSecureChannelClosed
    0x808B0000: Quality.BAD_DEVICE_FAILURE,  # BadDeviceFailure
    0x808C0000: Quality.BAD_SENSOR_FAILURE,  # BadSensorFailure
    0x80050000: Quality.BAD_COMM_FAILURE,  # BadCommunicationError
    0x808D0000: Quality.BAD_OUT_OF_SERVICE,  # BadOutOfService
    0x800A0000: Quality.BAD_TIMEOUT,  # BadTimeout
    0x80320000: Quality.BAD_WAITING_FOR_INITIAL,  # BadWaitingForInitialData
}


def quality_from_opcua_status(code: int) -> Quality:
    """Map an OPC UA StatusCode value to a Quality, keeping the known sub-codes."""
    code &= 0xFFFF0000  # the low 16 bits are info bits (overflow, limits), not the reason
    known = _OPCUA_STATUS.get(code)
    if known is not None:
        return known
    severity = code >> 30
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    return Quality.BAD
