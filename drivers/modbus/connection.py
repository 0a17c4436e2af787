"""One Modbus TCP connection per endpoint, shared by every device and unit id behind it, with serialized requests and reconnect backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import weakref
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU
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
    of a 100-register request; the driver only needs the bytes. Registered on the client
    with `register()`, the documented hook for response classes, so pymodbus still does
    the framing, transaction ids and matching, and only this data step changes.
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


class MalformedResponse(Exception):
    """The device answered with fewer data bytes than the request asked for."""


_REQUESTS: dict[str, type[ModbusPDU]] = {
    "coil": ReadCoilsRequest,
    "discrete_input": ReadDiscreteInputsRequest,
    "holding_register": ReadHoldingRegistersRequest,
    "input_register": ReadInputRegistersRequest,
}


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
        for response_class in _PAYLOAD_RESPONSES:
            self._client.register(response_class)
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._state = "new"  # new -> up <-> down; closed
        self._failures = 0
        self._timeouts = 0  # consecutive requests without an answer, from units in _answered
        self._answered: set[int] = set()  # unit ids that answered on the current TCP session
        self._silent_drops = 0  # connections closed for silence since the last answer
        self._next_attempt = 0.0
        self._down_since = 0.0
        self._last_request_end = 0.0
        self._rng = random.Random()
        self._requests: dict[tuple[str, int, int, int], ModbusPDU] = {}

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

    def _mark_down(self, reason: str) -> None:
        now = time.monotonic()
        self.last_error = reason
        if self._state == "up":
            log.warning(
                "%s: %s; reconnecting with backoff up to %g s", self._who(), reason, self.backoff.maximum
            )
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
                    log.warning(
                        "%s: reconnected after %d failed attempt(s), %.1f s down",
                        self._who(),
                        self._failures,
                        time.monotonic() - self._down_since,
                    )
                else:
                    log.info("%s: connected", self._who())
                self._state = "up"
                self._failures = 0
                self._answered.clear()
                self.last_error = None
                return True
            self._mark_down(await self._connect_failure())
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

    async def read(self, table: str, unit_id: int, start: int, count: int, response_timeout: float) -> bytes:
        """Read one block, its data bytes as sent (registers big-endian, bits packed LSB first).

        Raises ModbusExceptionResponse, MalformedResponse, TimeoutError or NotConnected.
        """
        key = (table, unit_id, start, count)
        request = self._requests.get(key)
        if request is None:
            # A driver polls the same few blocks forever: build each request PDU once (what
            # the client's read_* methods would build every time) and hand it to execute(),
            # which numbers it anew per send.
            request = _REQUESTS[table](address=start, count=count, dev_id=unit_id)
            self._requests[key] = request
        async with self._lock:
            if not self._client.connected:
                raise NotConnected(self.last_error or "not connected")
            if self.request_pause > 0.0:
                wait = self._last_request_end + self.request_pause - time.monotonic()
                if wait > 0.0:
                    await asyncio.sleep(wait)
            # pymodbus times the response itself (one timer per request instead of two); the
            # timeout is set per request because devices sharing the connection may differ.
            self._client.comm_params.timeout_connect = response_timeout
            try:
                response: ModbusPDU = await self._client.execute(False, request)
            except ConnectionException as exc:
                self._mark_down(f"connection lost ({exc})")
                raise NotConnected(self.last_error or "not connected") from None
            except ModbusIOException as exc:
                if not self._client.connected:
                    self._mark_down("connection lost")
                    raise NotConnected(self.last_error or "not connected") from None
                if unit_id in self._answered:
                    self._timeouts += 1
                    if self._timeouts >= self.dead_after_timeouts:
                        self._drop_silent()
                raise TimeoutError(str(exc)) from None
            finally:
                self._last_request_end = time.monotonic()
            self._timeouts = 0
            self._silent_drops = 0
            self._answered.add(unit_id)
        if response.isError():
            where = f"{self._who()} unit {unit_id} {table} {start}+{count}"
            raise ModbusExceptionResponse(int(getattr(response, "exception_code", 0)), where)
        payload: bytes = getattr(response, "payload", b"")
        expected = (count + 7) // 8 if table in ("coil", "discrete_input") else 2 * count
        if len(payload) < expected:
            where = f"{self._who()} unit {unit_id} {table} {start}+{count}"
            raise MalformedResponse(f"{where}: {len(payload)} data bytes, expected {expected}")
        return payload

    def _drop_silent(self) -> None:
        self._mark_down(
            f"no answer to {self._timeouts} requests in a row; the connection may be dead without "
            "having been closed, so it is reopened"
        )
        self._timeouts = 0
        self._silent_drops += 1
        if self._silent_drops > 1:
            # reopening did not help (a device that accepts connections but never answers): back off
            # instead of reconnecting after every few timeouts
            self._next_attempt = time.monotonic() + self.backoff.delay(self._silent_drops - 1, self._rng)
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
