"""One Modbus TCP connection per endpoint, shared by every device and unit id behind it, with serialized requests and reconnect backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import weakref
from collections import deque
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

log = logging.getLogger("edge_agent.modbus")

#: Consecutive unanswered requests after which a connection counts as dead and is reopened.
#: A TCP session can die without a FIN or RST ever arriving (NAT or firewall state lost, a gateway
#: rebooted behind a switch): the socket stays "open" and every request times out, while a new
#: connection would work at once. Any answer, a Modbus exception included, resets the count, and
#: only units that have answered on this session count: a dead unit behind a live gateway (it never
#: answered) cannot condemn the connection that the gateway's other units share.
DEAD_AFTER_TIMEOUTS = 3

#: Largest MBAP length field: the unit id plus a PDU of at most 253 bytes (Modbus Application
#: Protocol v1.1b3, 4.1; Modbus Messaging on TCP/IP v1.0b, 3.1.3).
MAX_MBAP_LENGTH = 254

#: Transaction ids of the last requests on a connection; an answer carrying one of them is late
#: (its request timed out) or repeated, and is dropped without failing the request in flight.
RECENT_TRANSACTIONS = 16

#: What each kind of rejected frame means (the `kind` label of edge_agent_modbus_bad_frames_total).
BAD_FRAME_KINDS = {
    "protocol_id": "the MBAP protocol id is not 0 (not Modbus, or the byte stream lost its place)",
    "length": "the MBAP length is out of range or disagrees with the PDU's own byte count",
    "truncated": "a frame was still incomplete when the response timeout ran out",
    "undecodable": "the frame could not be parsed at all",
    "transaction_id": "the transaction id is not the request's (nor a recent request's)",
    "unit_id": "the unit id is not the request's",
    "function_code": "the function code is neither the request's nor its exception code",
    "byte_count": "the byte count is not what the request asked for (values would shift or be missing)",
    "stale": "a late or repeated answer to an earlier request (dropped; the request in flight is unaffected)",
}
#: Kinds after which the byte stream cannot be trusted: the connection is closed and reopened.
_STREAM_BROKEN = frozenset({"protocol_id", "length", "truncated", "undecodable"})


class BadFrames:
    """The frames rejected on behalf of one device, counted by kind (BAD_FRAME_KINDS); each kind is logged once."""

    __slots__ = ("counts", "device")

    def __init__(self, device: str) -> None:
        self.device = device
        self.counts: dict[str, int] = {}
        """Rejected frames by kind since the driver started (exported by the agent's metrics)."""


class ModbusExceptionResponse(Exception):
    """The device answered a request with a Modbus exception code."""

    def __init__(self, code: int, where: str) -> None:
        self.code = code
        super().__init__(f"{where}: Modbus exception 0x{code:02X}")


class NotConnected(Exception):
    """The connection is down (refused, lost, or waiting for the next reconnect attempt)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter between reconnect attempts."""

    initial: float = 0.5
    """Wait after the first failed attempt, seconds."""
    maximum: float = 30.0
    """Cap of the wait, seconds."""
    jitter: float = 0.5
    """The wait is drawn uniformly from [(1 - jitter) * w, w], so many agents do not retry in step."""

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after `failures` consecutive failed attempts (>= 1)."""
        ceiling = min(self.maximum, self.initial * 2 ** max(0, failures - 1))
        return ceiling * (1.0 - self.jitter * rng.random())


class _PayloadMixin:
    """Keeps the data bytes of a read response as they came, for the codec to decode with numpy.

    pymodbus decodes every register with its own struct.unpack into a list of ints (and
    formats that list for a debug line even when debug is off), which costs about half
    of a 100-register request; the driver only needs the bytes. The driver's framer
    (`_CheckedFramer`) makes these objects itself once a frame has passed its checks;
    `decode` serves clients that `register()` the classes instead (the benchmark's
    `raw_bytes` side).
    """

    payload: bytes = b""
    function_code: int

    def decode(self, data: bytes) -> None:
        """Keep the data bytes after the byte count (the same length check as pymodbus)."""
        if (data_len := data[0]) >= len(data):
            raise ModbusIOException(
                f"byte_count {data_len} > length of packet {len(data)}", function_code=self.function_code
            )
        self.payload = data[1 : 1 + data_len]

    def __str__(self) -> str:
        return f"{type(self).__name__}(function_code={self.function_code}, {len(self.payload)} data bytes)"


class _HoldingRegisters(_PayloadMixin, ReadHoldingRegistersResponse):
    """FC3 response with its register bytes kept."""


class _InputRegisters(_PayloadMixin, ReadInputRegistersResponse):
    """FC4 response with its register bytes kept."""


class _Coils(_PayloadMixin, ReadCoilsResponse):
    """FC1 response with its packed bits kept."""


class _DiscreteInputs(_PayloadMixin, ReadDiscreteInputsResponse):
    """FC2 response with its packed bits kept."""


_PAYLOAD_RESPONSES = (_Coils, _DiscreteInputs, _HoldingRegisters, _InputRegisters)
"""For `client.register()` (benchmarks/bench_modbus.py)."""


class MalformedResponse(Exception):
    """The device's answer does not fit the request (function code, unit id, byte count, framing); see BAD_FRAME_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


_PayloadResponse = _Coils | _DiscreteInputs | _HoldingRegisters | _InputRegisters
_RESPONSES: dict[str, type[_PayloadResponse]] = {
    "coil": _Coils,
    "discrete_input": _DiscreteInputs,
    "holding_register": _HoldingRegisters,
    "input_register": _InputRegisters,
}


_REQUESTS: dict[str, type[ModbusPDU]] = {
    "coil": ReadCoilsRequest,
    "discrete_input": ReadDiscreteInputsRequest,
    "holding_register": ReadHoldingRegistersRequest,
    "input_register": ReadInputRegistersRequest,
}


@dataclass(frozen=True, slots=True)
class _Expected:
    """A read request, built once per planned block, with what its answer must look like."""

    request: ModbusPDU
    function_code: int
    nbytes: int
    """Data bytes the answer must carry (2 per register, or the bits packed 8 to a byte)."""
    what: str
    """The request's size in words, for messages."""
    where: str
    """Unit, table and block, for messages."""
    response: type[_PayloadResponse]

    @classmethod
    def of(cls, table: str, unit_id: int, start: int, count: int) -> _Expected:
        """The request for one block, and the shape of its answer."""
        request = _REQUESTS[table](address=start, count=count, dev_id=unit_id)
        bits = table in ("coil", "discrete_input")
        nbytes = (count + 7) // 8 if bits else 2 * count
        what = f"{count} {'bits' if bits else 'registers'} ({nbytes} bytes)"
        where = f"unit {unit_id} {table} {start}+{count}"
        return cls(request, request.function_code, nbytes, what, where, _RESPONSES[table])


class _CheckedFramer(FramerSocket):
    """MBAP framing that checks every frame against the request in flight before anything is decoded.

    pymodbus 3.16 matches an answer to its request by transaction id (0 counts as any) and unit
    id (0 counts as any) only; it takes any function code it knows, keeps the data of an answer
    longer than asked for, and raises inside asyncio's data_received when a frame's MBAP length
    and byte count disagree (a traceback, then the connection closes). This framer, put in place
    of pymodbus's on each client, decides each frame with a few integer comparisons instead:

    - the frame disagrees with itself (protocol id, MBAP length out of range or not matching the
      PDU's byte count): the stream has lost its place, so the request fails and the connection
      is closed (`ModbusConnection._bad_frame`), to be reopened by the next read;
    - it answers an earlier request (late, or repeated): dropped, the request goes on waiting;
    - it does not fit the request (transaction id, unit id, function code, byte count): the
      request fails at once with the reason;
    - otherwise it becomes the response object (data bytes kept) or an ExceptionResponse.
    """

    def __init__(self, conn: ModbusConnection, decoder: DecodePDU) -> None:
        super().__init__(decoder)
        self.conn = conn
        self.expected: _Expected | None = None
        """The request in flight (set by ModbusConnection.read under its lock)."""
        self.recent: deque[int] = deque(maxlen=RECENT_TRANSACTIONS)
        """Transaction ids of the last requests of this session."""

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:
        """Take the complete frames at the start of `data`; returns (bytes used, answer to the request or None)."""
        try:
            return self._frames(data, exp_devid, exp_tid)
        except Exception as exc:  # anything raised here would end as a traceback in data_received
            self.conn._bad_frame("undecodable", f"{len(data)} bytes that cannot be parsed ({exc!r})")
            return len(data), None

    def _frames(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:
        conn = self.conn
        n = len(data)
        used = 0
        pending = not conn._client.ctx.response_future.done()
        answer: ModbusPDU | None = None
        while n - used >= 7:
            tid = data[used] << 8 | data[used + 1]
            protocol = data[used + 2] << 8 | data[used + 3]
            length = data[used + 4] << 8 | data[used + 5]
            if protocol:
                conn._bad_frame("protocol_id", f"protocol id {protocol} (Modbus TCP has 0)")
                return n, None
            if not 2 <= length <= MAX_MBAP_LENGTH:
                conn._bad_frame(
                    "length", f"MBAP length {length}, outside 2..{MAX_MBAP_LENGTH} (unit id and a PDU)"
                )
                return n, None
            end = used + 6 + length
            if end > n:
                break  # the rest of the frame is on its way
            unit = data[used + 6]
            function_code = data[used + 7]
            if function_code & 0x80:
                if length != 3:
                    conn._bad_frame(
                        "length",
                        f"MBAP length {length} for an exception response (function code "
                        f"0x{function_code:02X}), which has 3",
                    )
                    return n, None
            elif 1 <= function_code <= 4 and (length < 3 or data[used + 8] != length - 3):
                counted = f"the byte count says {data[used + 8]}" if length >= 3 else "no byte count"
                conn._bad_frame(
                    "length", f"MBAP length {length} holds {max(0, length - 3)} data bytes but {counted}"
                )
                return n, None
            frame, used = used, end
            if not pending:
                # the request was answered, or timed out, already
                if tid == exp_tid or tid in self.recent:
                    conn._bad_frame("stale", f"transaction id {tid}", request=False)
                else:
                    conn._bad_frame(
                        "transaction_id", f"transaction id {tid}, which no recent request had", request=False
                    )
                continue
            if tid != exp_tid:
                if tid in self.recent:
                    conn._bad_frame("stale", f"transaction id {tid}", request=False)
                else:
                    pending = False
                    conn._bad_frame(
                        "transaction_id",
                        f"transaction id {tid} in answer to a request with transaction id {exp_tid}",
                    )
                continue
            pending = False
            if unit != exp_devid:
                conn._bad_frame("unit_id", f"unit id {unit} answered a request to unit {exp_devid}")
                continue
            expected = self.expected
            assert expected is not None  # a request is in flight
            want = expected.function_code
            if function_code != want:
                if function_code == want | 0x80:
                    answer = ExceptionResponse(want, data[frame + 8], unit, tid)
                else:
                    conn._bad_frame(
                        "function_code",
                        f"function code 0x{function_code:02X} in answer to a function code 0x{want:02X} request",
                    )
                continue
            if length - 3 != expected.nbytes:
                conn._bad_frame(
                    "byte_count", f"byte count {length - 3} in answer to a request for {expected.what}"
                )
                continue
            response = expected.response(dev_id=unit, transaction_id=tid)
            response.payload = data[frame + 9 : end]
            answer = response
        return used, answer


class ModbusConnection:
    """A pymodbus client for one host:port; requests are serialized because a pymodbus client is not concurrency-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        request_pause: float = 0.0,
        backoff: Backoff | None = None,
        dead_after_timeouts: int = DEAD_AFTER_TIMEOUTS,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = f"modbus-tcp://{host}:{port}"
        self.connect_timeout = connect_timeout
        self.request_pause = request_pause
        self.backoff = backoff or Backoff()
        self.dead_after_timeouts = dead_after_timeouts
        """Consecutive timeouts that close the connection for a reconnect (see DEAD_AFTER_TIMEOUTS)."""
        self.users: set[str] = set()
        """Names of the devices using the connection (for log lines)."""
        self.last_error: str | None = None
        """Why the connection is down, or None while it is up."""
        # pymodbus gets no retries and no reconnects of its own: the reconnect backoff is
        # ours, so it is logged once per state change.
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            timeout=connect_timeout,
            retries=0,
            reconnect_delay=0.0,
            trace_connect=self._on_connect_change,
        )
        self._client.set_max_no_responses(1 << 30)
        ctx = self._client.ctx
        if not isinstance(ctx.framer, FramerSocket) or not isinstance(
            getattr(ctx, "recv_buffer", None), bytes
        ):
            raise RuntimeError(
                "pymodbus's client internals changed (TransactionManager.framer, recv_buffer): port "
                "drivers/modbus/connection.py's _CheckedFramer to this pymodbus version"
            )
        self._framer = _CheckedFramer(self, ctx.framer.decoder)
        ctx.framer = self._framer
        # pymodbus silently empties a receive buffer over 264 bytes, and what follows would be read
        # as the start of a frame; the framer never leaves more than one unfinished frame there
        ctx.max_buffer_size = 1 << 20
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._state = "new"  # new -> up <-> down; closed
        self._quiet = False  # the last drop was logged as a bad frame already: its reopen is not news
        self._failures = 0
        self._timeouts = 0  # consecutive requests without an answer, from units in _answered
        self._answered: set[int] = set()  # unit ids that answered on the current TCP session
        self._drops = 0  # connections we closed (silence, broken frames) since the last good answer
        self._next_attempt = 0.0
        self._down_since = 0.0
        self._last_request_end = 0.0
        self._rng = random.Random()
        self._expected: dict[tuple[str, int, int, int], _Expected] = {}
        self._own_bad_frames = BadFrames("modbus")
        self._bad_frames = self._own_bad_frames  # the device whose request is (or was last) in flight

    @property
    def connected(self) -> bool:
        """True while the TCP connection is open."""
        return self._client.connected

    def _who(self) -> str:
        return f"{', '.join(sorted(self.users)) or 'modbus'} at {self.endpoint}"

    def _on_connect_change(self, connected: bool) -> None:
        if connected:
            return
        if self._state == "up":
            self._mark_down("connection lost")
        # pymodbus leaves a request in flight waiting for its timeout when the peer closes;
        # failing it now turns a lost connection into BAD_NOT_CONNECTED at once.
        pending = getattr(self._client.ctx, "response_future", None)
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException("connection closed by the device"))

    def _mark_down(self, reason: str, *, quiet: bool = False) -> None:
        now = time.monotonic()
        self.last_error = reason
        if self._state == "up":
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s: %s; reconnecting with backoff up to %g s",
                self._who(),
                reason,
                self.backoff.maximum,
            )
            self._quiet = quiet
            self._down_since = now
            self._failures = 0
            self._next_attempt = now  # the first reconnect is immediate
        elif self._state == "new":
            log.warning(
                "%s: cannot connect (%s); retrying with backoff up to %g s",
                self._who(),
                reason,
                self.backoff.maximum,
            )
            self._down_since = now
        self._state = "down"

    async def ensure_connected(self) -> bool:
        """Connect if down and the backoff allows an attempt now; never waits for the backoff."""
        if self._state == "closed":
            return False
        if self._client.connected:
            return True
        async with self._connect_lock:
            if self._client.connected:
                return True
            now = time.monotonic()
            if self._state == "down" and now < self._next_attempt:
                return False
            self._client.comm_params.timeout_connect = self.connect_timeout
            ok = await self._client.connect()
            if ok and self._client.connected:
                if self._state == "down":
                    log.log(
                        logging.DEBUG if self._quiet else logging.WARNING,
                        "%s: reconnected after %d failed attempt(s), %.1f s down",
                        self._who(),
                        self._failures,
                        time.monotonic() - self._down_since,
                    )
                else:
                    log.info("%s: connected", self._who())
                self._state = "up"
                self._quiet = False
                self._failures = 0
                self._answered.clear()
                self._framer.recent.clear()
                self.last_error = None
                return True
            self._mark_down(await self._connect_failure())
            if self._quiet:
                # the drop itself was logged as a bad frame; that the device is gone now is news
                self._quiet = False
                log.warning(
                    "%s: cannot reconnect (%s); retrying with backoff up to %g s",
                    self._who(),
                    self.last_error,
                    self.backoff.maximum,
                )
            self._failures += 1
            self._next_attempt = time.monotonic() + self.backoff.delay(self._failures, self._rng)
            return False

    async def _connect_failure(self) -> str:
        """Why a connect attempt failed; a host name that does not resolve is told apart from no answer."""
        # pymodbus's connect() swallows the resolver's error, so the name is looked up again here
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM),
                self.connect_timeout,
            )
        except socket.gaierror as exc:
            return (
                f"cannot resolve the host name {self.host!r} ({exc.strerror}); check the endpoint's "
                "spelling and the DNS or /etc/hosts"
            )
        except (OSError, TimeoutError):
            pass  # the resolver is slow or broken: say what the connect attempt saw
        return f"no connection within {self.connect_timeout:g} s (refused or unreachable)"

    async def read(
        self,
        table: str,
        unit_id: int,
        start: int,
        count: int,
        response_timeout: float,
        bad_frames: BadFrames | None = None,
    ) -> bytes:
        """Read one block, its data bytes as sent (registers big-endian, bits packed LSB first).

        Frames rejected meanwhile are counted in `bad_frames` (the calling device's).
        Raises ModbusExceptionResponse, MalformedResponse, TimeoutError or NotConnected.
        """
        key = (table, unit_id, start, count)
        expected = self._expected.get(key)
        if expected is None:
            # A driver polls the same few blocks forever: build each request PDU once (what
            # the client's read_* methods would build every time) and hand it to execute(),
            # which numbers it anew per send.
            expected = self._expected[key] = _Expected.of(table, unit_id, start, count)
        async with self._lock:
            if not self._client.connected:
                raise NotConnected(self.last_error or "not connected")
            self._bad_frames = bad_frames or self._own_bad_frames
            ctx = self._client.ctx
            if ctx.recv_buffer:
                # part of a frame arrived after its request was done with; pymodbus drops it when
                # sending, and its rest would then be taken for the start of the next answer
                self._bad_frame(
                    "truncated",
                    f"{len(ctx.recv_buffer)} bytes of an unfinished frame between requests",
                    request=False,
                )
                raise NotConnected(self.last_error or "not connected")
            if self.request_pause > 0.0:
                wait = self._last_request_end + self.request_pause - time.monotonic()
                if wait > 0.0:
                    await asyncio.sleep(wait)
            # pymodbus times the response itself (one timer per request instead of two); the
            # timeout is set per request because devices sharing the connection may differ.
            self._client.comm_params.timeout_connect = response_timeout
            self._framer.expected = expected
            request = expected.request
            try:
                response: ModbusPDU = await self._client.execute(False, request)
            except MalformedResponse:
                if self._client.connected:
                    # a wrong answer is an answer all the same: the session is alive
                    self._timeouts = 0
                    self._answered.add(unit_id)
                raise
            except ConnectionException as exc:
                self._mark_down(f"connection lost ({exc})")
                raise NotConnected(self.last_error or "not connected") from None
            except ModbusIOException:
                if not self._client.connected:
                    self._mark_down("connection lost")
                    raise NotConnected(self.last_error or "not connected") from None
                if buffered := ctx.recv_buffer:
                    size = f" of {6 + (buffered[4] << 8 | buffered[5])}" if len(buffered) >= 6 else ""
                    self._bad_frame(
                        "truncated",
                        f"{len(buffered)}{size} bytes when the response timeout of {response_timeout:g} s ran out",
                    )
                    raise TimeoutError(self.last_error) from None
                if unit_id in self._answered:
                    self._timeouts += 1
                    if self._timeouts >= self.dead_after_timeouts:
                        self._drop_silent()
                raise TimeoutError(f"unit {unit_id}: no response within {response_timeout:g} s") from None
            finally:
                self._framer.recent.append(request.transaction_id)
                self._last_request_end = time.monotonic()
            self._timeouts = 0
            self._drops = 0
            self._answered.add(unit_id)
            if response.isError():
                where = f"{self._bad_frames.device} at {self.endpoint} {expected.where}"
                raise ModbusExceptionResponse(int(getattr(response, "exception_code", 0)), where)
            payload: bytes = getattr(response, "payload", b"")
            if len(payload) != expected.nbytes:
                # the framer lets no such answer through; this keeps the codec safe if that ever changes
                message = self._bad_frame(
                    "byte_count", f"{len(payload)} data bytes, expected {expected.nbytes}"
                )
                raise MalformedResponse("byte_count", message)
        return payload

    def _bad_frame(self, kind: str, detail: str, *, request: bool = True) -> str:
        """Count a rejected frame (logged once per device and kind), fail the request waiting for it, and close
        the connection if the byte stream cannot be trusted any more (see BAD_FRAME_KINDS).

        `request` says whether the frame was taken as the answer to the request in flight (so the
        message names that request); a frame that was not is only counted, or closes the connection.
        Returns the message.
        """
        bad_frames = self._bad_frames
        broken = kind in _STREAM_BROKEN
        expected = self._framer.expected
        where = f"{bad_frames.device} at {self.endpoint}"
        if request and expected is not None:
            where = f"{where} {expected.where}"
        if kind == "truncated":
            what = "incomplete frame from the device"
        elif broken:
            what = "malformed frame from the device"
        elif kind == "stale":
            what = "late or repeated answer from the device, dropped"
        else:
            what = "wrong answer from the device"
        message = f"{where}: {what}: {detail}"
        seen = bad_frames.counts.get(kind, 0)
        bad_frames.counts[kind] = seen + 1
        if seen == 0:
            log.log(
                logging.INFO if kind == "stale" else logging.WARNING,
                "%s%s [%s]; each kind of bad frame is logged once per device, and all are counted in "
                "edge_agent_modbus_bad_frames_total",
                message,
                "; connection reopened" if broken else "",
                kind,
            )
        else:
            log.debug("%s [%s]", message, kind)
        future = self._client.ctx.response_future
        if kind == "stale":
            # a late answer is still an answer: the session is alive, reopening it would not help
            self._timeouts = 0
        elif not future.done():
            future.set_exception(MalformedResponse(kind, message))
        if broken and self._client.connected:
            self._drop(message, quiet=True)
        return message

    def _drop_silent(self) -> None:
        self._drop(
            f"no answer to {self._timeouts} requests in a row; the connection may be dead without "
            "having been closed, so it is reopened"
        )

    def _drop(self, reason: str, *, quiet: bool = False) -> None:
        """Close the connection for the next read to reopen; after a drop that did not help, back off."""
        self._mark_down(reason, quiet=quiet)
        self._timeouts = 0
        self._drops += 1
        if self._drops > 1:
            # reopening did not help (a device that accepts connections but never answers, or answers
            # garbage): back off instead of reconnecting at every poll
            self._next_attempt = time.monotonic() + self.backoff.delay(self._drops - 1, self._rng)
        # state is "down" already, so the disconnect callback neither logs again nor marks anything
        self._client.close()

    def close(self) -> None:
        """Close the TCP connection; idempotent."""
        if self._state != "closed":
            self._state = "closed"
            self._client.close()


_PoolKey = tuple[str, int]
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_PoolKey, tuple[ModbusConnection, int]]] = (
    weakref.WeakKeyDictionary()
)


def acquire_connection(
    host: str,
    port: int,
    user: str,
    *,
    connect_timeout: float,
    request_pause: float,
    backoff: Backoff | None = None,
) -> ModbusConnection:
    """The shared connection to host:port in the running event loop (made on first use, reference counted)."""
    pool = _POOLS.setdefault(asyncio.get_running_loop(), {})
    key = (host, port)
    entry = pool.get(key)
    if entry is None or entry[0]._state == "closed":
        conn = ModbusConnection(
            host, port, connect_timeout=connect_timeout, request_pause=request_pause, backoff=backoff
        )
        entry = (conn, 0)
    conn, refs = entry
    # A gateway is only as gentle as its most demanding device asks.
    conn.request_pause = max(conn.request_pause, request_pause)
    conn.users.add(user)
    pool[key] = (conn, refs + 1)
    return conn


def release_connection(conn: ModbusConnection, user: str) -> None:
    """Drop one reference; the last one closes the connection."""
    pool = _POOLS.get(asyncio.get_running_loop(), {})
    key = (conn.host, conn.port)
    entry = pool.get(key)
    conn.users.discard(user)
    if entry is None or entry[0] is not conn:
        conn.close()
        return
    refs = entry[1] - 1
    if refs <= 0:
        del pool[key]
        conn.close()
    else:
        pool[key] = (conn, refs)
