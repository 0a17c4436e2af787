"""A Modbus TCP server on plain asyncio sockets that answers wrongly on purpose, in one of many ways (for driver tests).

It is not pymodbus, so it can break every rule pymodbus would keep: wrong transaction or unit
ids, wrong function codes, byte counts and MBAP lengths that disagree, truncated frames,
random bytes, late and repeated answers, a trickle, silence, a close in the middle of a
frame, a reset. `mode` is read at every request, so a test can make the server turn sane
while the driver keeps its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

#: Every way the server can answer; "sane" answers correctly.
MODES = (
    "sane",
    "exception",
    "exception_wrong_fc",
    "wrong_tid",
    "tid_zero",
    "wrong_unit",
    "wrong_fc",
    "unknown_fc",
    "byte_count_long",
    "byte_count_short",
    "byte_count_lies",
    "oversized",
    "mbap_too_long",
    "mbap_short",
    "mbap_long",
    "protocol_id",
    "truncated",
    "random",
    "late",
    "duplicate",
    "trailing_partial",
    "trickle",
    "silence",
    "close_mid_frame",
    "rst",
)

#: The table each read function code reads, and the one a "wrong_fc" answer comes from.
_OTHER_FC = {1: 2, 2: 1, 3: 4, 4: 3}


def register_value(function_code: int, address: int) -> int:
    """What a sane server holds in a register: holding (FC3) and input (FC4) registers differ everywhere."""
    if function_code == 3:
        return (1000 + 7 * address) & 0xFFFF
    return (20000 + 13 * address) & 0xFFFF


def bit_value(function_code: int, address: int) -> bool:
    """What a sane server holds in a bit: coils (FC1) and discrete inputs (FC2) differ at most addresses."""
    if function_code == 1:
        return address % 3 == 0
    return address % 3 != 0


def read_pdu(function_code: int, start: int, count: int) -> bytes:
    """The correct response PDU (function code, byte count, data) of a read request."""
    if function_code in (1, 2):
        packed = bytearray((count + 7) // 8)
        for i in range(count):
            if bit_value(function_code, start + i):
                packed[i // 8] |= 1 << (i % 8)
        return bytes([function_code, len(packed)]) + bytes(packed)
    words = b"".join(struct.pack(">H", register_value(function_code, start + i)) for i in range(count))
    return bytes([function_code, len(words)]) + words


def mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None, protocol: int = 0) -> bytes:
    """An MBAP header (its length field given or right) followed by the PDU."""
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


class HostileModbusServer:
    """Answers read requests (FC1-4) on loopback in the way `mode` says; see MODES."""

    def __init__(self, mode: str = "sane", *, delay: float = 0.3, seed: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode
        """How the next answers go wrong (read at every request; set "sane" to heal the server)."""
        self.delay = delay
        """Seconds a "late" answer waits, and the whole time a "trickle" answer takes."""
        self.sessions = 0
        """TCP connections accepted so far."""
        self.requests = 0
        """Requests received so far."""
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free loopback port and return it."""
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listener, every session and every pending answer."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        # a session ends on the EOF its closed writer gives its reader; waiting for it here keeps
        # the event loop's teardown from cancelling it (asyncio would log that as an error)
        await asyncio.gather(*self._tasks, *self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _later(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        self._writers.add(writer)
        me = asyncio.current_task()
        assert me is not None
        self._sessions.add(me)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                function_code, start, count = struct.unpack(">BHH", pdu[:5])
                if await self._answer(writer, self.mode, tid, unit, function_code, start, count):
                    break
        self._writers.discard(writer)
        self._sessions.discard(me)
        writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, mode: str, tid: int, unit: int, fc: int, start: int, count: int
    ) -> bool:
        """Write one answer as `mode` says; True when the session is to end."""
        good = read_pdu(fc, start, count)
        frame = mbap(tid, unit, good)
        if mode in (
            "sane",
            "late",
            "duplicate",
            "trailing_partial",
            "trickle",
            "truncated",
            "close_mid_frame",
        ):
            if mode == "late":
                self._later(self._write_after(writer, frame, self.delay))
            elif mode == "duplicate":
                writer.write(frame + frame)
            elif mode == "trailing_partial":
                writer.write(frame + frame[:5])  # the answer, then the start of a frame that never ends
            elif mode == "trickle":
                self._later(self._trickle(writer, frame))
            elif mode in ("truncated", "close_mid_frame"):
                writer.write(frame[: len(frame) // 2])
                if mode == "close_mid_frame":
                    await writer.drain()
                    return True
            else:
                writer.write(frame)
            return False
        if mode == "silence":
            return False
        if mode == "rst":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        writer.write(self._wrong(mode, tid, unit, fc, start, count, good))
        return False

    def _wrong(self, mode: str, tid: int, unit: int, fc: int, start: int, count: int, good: bytes) -> bytes:
        """The bytes of a wrong answer that keeps the connection."""
        if mode == "exception":
            return mbap(tid, unit, bytes([fc | 0x80, 0x02]))
        if mode == "exception_wrong_fc":
            return mbap(tid, unit, bytes([_OTHER_FC[fc] | 0x80, 0x02]))
        if mode == "wrong_tid":
            return mbap(tid ^ 0x5A5A, unit, good)
        if mode == "tid_zero":
            return mbap(0, unit, good)  # pymodbus takes 0 as "any transaction"
        if mode == "wrong_unit":
            return mbap(tid, (unit + 1) & 0xFF, good)
        if mode == "wrong_fc":
            return mbap(tid, unit, read_pdu(_OTHER_FC[fc], start, count))  # the other table, same size
        if mode == "unknown_fc":
            return mbap(tid, unit, bytes([0x41]) + good[1:])
        data = good[2:]
        if mode == "byte_count_long":
            # one extra register (or bit byte) in front: every value would shift by one
            extra = b"\x12\x34" if fc in (3, 4) else b"\xff"
            return mbap(tid, unit, bytes([fc, len(data) + len(extra)]) + extra + data)
        if mode == "byte_count_short":
            cut = data[: len(data) - (2 if fc in (3, 4) else 1)]
            return mbap(tid, unit, bytes([fc, len(cut)]) + cut)
        if mode == "byte_count_lies":
            # the MBAP length covers two bytes more than the byte count announces
            return mbap(tid, unit, good + b"\x00\x00")
        if mode == "oversized":
            # a full-size PDU (253 bytes), consistent in itself, for a request of a few values
            return mbap(tid, unit, bytes([fc, 251]) + bytes(range(251)))
        if mode == "mbap_too_long":
            body = bytes([fc, 255]) + bytes(298)
            return mbap(tid, unit, body, length=len(body) + 1)  # 301: beyond any Modbus frame
        if mode == "mbap_short":
            # the length covers the unit id, function code and byte count; the data follows anyway
            return mbap(tid, unit, good, length=3)
        if mode == "mbap_long":
            return mbap(tid, unit, good, length=len(good) + 11)  # announces 10 bytes that never come
        if mode == "protocol_id":
            return mbap(tid, unit, good, protocol=1)
        if mode == "random":
            return bytes(self._rng.randrange(256) for _ in range(9 + self._rng.randrange(40)))
        raise AssertionError(f"no wrong answer for mode {mode!r}")

    async def _write_after(self, writer: asyncio.StreamWriter, data: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(data)

    async def _trickle(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        step = self.delay / len(frame)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(len(frame)):
                if writer.is_closing():
                    return
                writer.write(frame[i : i + 1])
                await asyncio.sleep(step)
