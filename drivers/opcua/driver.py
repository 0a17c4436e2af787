"""OPC UA driver: secure sessions, address resolution, batched reads, subscriptions and events as Readings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from cryptography import x509
from numpy.typing import NDArray

from edge_agent.drivers.base import ReadingsCallback, TagGroup, scan_groups
from edge_agent.drivers.opcua.address import split_browse_path, split_node_id
from edge_agent.drivers.opcua.config import OpcUaDevice, OpcUaOptions, OpcUaTag
from edge_agent.drivers.opcua.quality import quality_from_opcua_status
from edge_agent.trace_types import Traces, with_traces
from edge_agent.types import Quality, Readings, ValidityRules

log = logging.getLogger(__package__)  # edge_agent.drivers.opcua, as users filter it
_TRUSTSTORE_LOG = logging.getLogger("asyncuagds.validate")  # asyncua.crypto.truststore's logger

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
# Identity and trust failures: retrying cannot help, a person must change the config or the server.
_REFUSAL_CODES = {
    ua.StatusCodes.BadUserAccessDenied: "the server refused the user name or password",
    ua.StatusCodes.BadIdentityTokenRejected: "the server does not accept this kind of login "
    "(anonymous, user name or certificate); configure the identity the server asks for",
    ua.StatusCodes.BadIdentityTokenInvalid: "the server found the login token invalid",
    ua.StatusCodes.BadCertificateUntrusted: "the server does not trust the client certificate; "
    "copy it into the server's trusted-clients folder",
    ua.StatusCodes.BadCertificateInvalid: "the server found the client certificate invalid",
    ua.StatusCodes.BadCertificateUriInvalid: "the application URI in the client certificate does not "
    "match `application_uri`",
    ua.StatusCodes.BadSecurityChecksFailed: "the server rejected the secure channel (certificate or key)",
    ua.StatusCodes.BadSecurityPolicyRejected: "the server rejected the security policy",
}
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_OVERFLOW_BITS = 0x00000480  # InfoType=DataValue | Overflow: the server's queue dropped values
_MAX_NODES_PER_READ = ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
_MAX_BROWSE_PATHS = (
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds
)
_MAX_ITEMS_PER_CALL = ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall


def make_node_id(identifier: int | str | uuid.UUID | bytes, ns_index: int = 0) -> ua.NodeId:
    """A NodeId from plain Python values (asyncua annotates its constructor with its own UA scalar types)."""
    return ua.NodeId(identifier, ns_index)  # type: ignore[arg-type]


class OpcUaRefused(ConnectionError):
    """The server (or the driver, for an untrusted server) refused the connection; fix config, not network."""


class OpcUaConfigError(ValueError):
    """A device configuration the driver cannot use; the message names the device and the fix."""


@dataclass(frozen=True, slots=True)
class ParsedNodeId:
    """A NodeId as written in the config: namespace index or URI, identifier type and identifier."""

    identifier: int | str | uuid.UUID | bytes
    ns_index: int | None = None
    ns_uri: str | None = None

    def resolve(self, namespaces: Sequence[str]) -> ua.NodeId | None:
        """The NodeId with the namespace URI replaced by its index in `namespaces`; None if unknown."""
        if self.ns_uri is None:
            return make_node_id(self.identifier, self.ns_index or 0)
        try:
            return make_node_id(self.identifier, list(namespaces).index(self.ns_uri))
        except ValueError:
            return None


def parse_node_id(text: str) -> ParsedNodeId:
    """Parse `ns=2;s=X`, `nsu=URI;i=5`, `i=2258`, `g=<uuid>`, `b=<base64>`; ValueError names the text."""
    try:
        ns_index, ns_uri, value = split_node_id(text)
    except ValueError as exc:
        raise ValueError(f"NodeId {text!r}: {exc}") from None
    return ParsedNodeId(value, ns_index, ns_uri)


@dataclass(frozen=True, slots=True)
class PathElement:
    """One step of a browse path: a browse name with its namespace index or URI."""

    name: str
    ns_index: int | None = None
    ns_uri: str | None = None

    def qualified_name(self, namespaces: Sequence[str]) -> ua.QualifiedName | None:
        """The QualifiedName in the server's current namespace table; None if the URI is unknown."""
        if self.ns_uri is None:
            return ua.QualifiedName(self.name, self.ns_index or 0)
        try:
            return ua.QualifiedName(self.name, list(namespaces).index(self.ns_uri))
        except ValueError:
            return None


def parse_browse_path(text: str) -> list[PathElement]:
    """Parse `/2:IMM_1/2:MachineStatus` or `/{http://uri/}IMM_1/...` (a URI in braces in place of the index)."""
    try:
        elements = split_browse_path(text)
    except ValueError as exc:
        raise ValueError(f"browse path {text!r}: {exc}") from None
    return [PathElement(name, ns_index, ns_uri) for name, ns_index, ns_uri in elements]


def datetime_to_ns(dt: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware UTC datetime (microsecond resolution, as OPC UA decodes)."""
    return ((dt - _UNIX_EPOCH) // _ONE_US) * 1000


#: Variant type of a 32-bit float, whose values only equal sentinels rounded to float32.
_FLOAT = ua.VariantType.Float


def _as_float(value: Any) -> float | None:
    """A number for the engine; bools and enums count, text and structures do not."""
    kind = type(value)
    if kind is float or kind is int or kind is bool:
        return float(value)
    if isinstance(value, int | float):  # IntEnum, numpy scalars
        return float(value)
    return None


def datavalues_to_readings(
    rows: NDArray[np.int32],
    values: Sequence[ua.DataValue],
    now_ns: int,
    validity: ValidityRules | None = None,
) -> Readings:
    """Convert DataValues (one per row) to Readings: status to quality, source then server timestamp, else now.

    `validity` (one rule per row) turns implausible values into BAD_SENSOR_FAILURE.
    """
    n = len(values)
    val = np.empty(n, np.float64)
    q = np.empty(n, np.uint8)
    ts = np.empty(n, np.int64)
    # a Float holds -9999.9 as -9999.900390625: its sentinels are compared in float32
    single = np.zeros(n, np.bool_) if validity is not None and validity.sentinels.shape[1] else None
    for i, dv in enumerate(values):
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        quality = Quality.GOOD if code == 0 else quality_from_opcua_status(code)
        variant = dv.Value
        number = _as_float(variant.Value) if variant is not None else None
        if single is not None and variant is not None and variant.VariantType is _FLOAT:
            single[i] = True
        if number is None:
            number = np.nan
            if quality < Quality.BAD:
                quality = Quality.BAD_VALUE
        val[i] = number
        q[i] = quality
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts[i] = datetime_to_ns(stamp) if stamp is not None else now_ns
    if validity is not None:
        validity.apply(val, q, single=single)
    return Readings.of(rows, ts, val, q)


@dataclass(slots=True)
class _GroupPlan:
    """How one scan group is read on the current connection."""

    rows: NDArray[np.int32]
    """Signal-table rows of the group, in tag order."""
    readable: NDArray[np.intp] = field(default_factory=lambda: np.empty(0, np.intp))
    """Positions in `rows` whose node resolved."""
    chunks: list[list[ua.ReadValueId]] = field(default_factory=list)
    """Read requests, each within MaxNodesPerRead."""
    quality: NDArray[np.uint8] = field(default_factory=lambda: np.empty(0, np.uint8))
    """BAD_CONFIG where the node did not resolve, GOOD elsewhere."""
    validity: ValidityRules | None = None
    """Valid range and sentinels of the group's tags, in `rows` order; None when no tag has any."""
    names: tuple[str, ...] = ()
    """Tag names, in `rows` order."""
    points: tuple[int, ...] = ()
    """Per tag, the `points` of a trace tag (an array read as a curve), 0 for a value."""
    last_values: list[ua.DataValue] | None = None
    """The DataValues of the readable tags from the last Read (None when it failed): the arrays of its traces."""

    @property
    def trace(self) -> NDArray[np.bool_]:
        """Which tags of the group are traces."""
        return np.array([p > 0 for p in self.points], bool)


@dataclass(slots=True)
class DriverStats:
    """Counters a status page or a test can read."""

    connects: int = 0
    notifications: int = 0
    events: int = 0
    overflows: int = 0
    missed_publishes: int = 0


@contextlib.contextmanager
def _silenced(logger: logging.Logger) -> Iterator[None]:
    """Drop every record of `logger` inside the block."""
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _abs(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    return path if path.is_absolute() else base / path


def _thumbprint(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest()  # OPC UA identifies certificates by SHA-1 thumbprint


def _first_certificate(der: bytes) -> bytes:
    """The leaf of a DER certificate chain (servers may send the chain concatenated)."""
    length = int.from_bytes(der[2:4], "big") + 4
    return der[:length]


class OpcUaDriver:
    """One OPC UA device: a session kept alive, batched polls per scan group, subscriptions and events."""

    def __init__(
        self,
        device: OpcUaDevice,
        rows: Mapping[str, int],
        *,
        config_dir: Path,
        on_readings: ReadingsCallback | None = None,
        retry_delay: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.name = device.name
        self.device = device
        self.options: OpcUaOptions = device.opcua
        self.on_readings = on_readings
        self.stats = DriverStats()
        self._config_dir = config_dir
        self._retry_delay = retry_delay
        missing = [s for s in device.signal_names() if s not in rows]
        if missing:
            raise OpcUaConfigError(f"device {device.name}: no signal-table row for {', '.join(missing)}")
        self._rows = {s: int(rows[s]) for s in device.signal_names()}
        self._tags = {t.name: t for t in device.tags}
        self._groups = scan_groups(
            [(t.name, t.interval, t.mode == "poll") for t in device.tags], device.poll_interval
        )
        self._plans: dict[TagGroup, _GroupPlan] = {
            g: _GroupPlan(
                np.array([self._rows[t] for t in g.tags], np.int32),
                validity=ValidityRules.of([self._tags[t].validity() for t in g.tags]),
                names=g.tags,
                points=tuple(self._tags[t].points or 0 for t in g.tags),
            )
            for g in self._groups
        }
        self._subscribed = [t for t in device.tags if t.mode == "subscribe"]
        self._sub_rows = np.array([self._rows[t.name] for t in self._subscribed], np.int32)
        self._sub_validity = ValidityRules.of([t.validity() for t in self._subscribed])
        self._event_rows = [np.array([self._rows[s] for s in e.fields], np.int32) for e in device.events]
        self._check_security()
        self._client: Client | None = None
        self._connected = False
        self._state = "new"
        self._lost = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._subscription_id: int | None = None
        self._last_sequence: int | None = None
        self._max_nodes_per_read = 0
        self._max_browse_paths = 0
        self._max_items_per_call = 0
        self._bad_config_logged: set[str] = set()

    # ------------------------------------------------------------------ public API

    def groups(self) -> list[TagGroup]:
        """The polled tag groups (scan classes), fastest first."""
        return list(self._groups)

    @property
    def connected(self) -> bool:
        """True while a session is up."""
        return self._connected

    async def connect(self) -> None:
        """Connect once and keep reconnecting in the background; raises OpcUaRefused if trust or login fail."""
        if self._task is not None:
            return
        self._closing = False
        try:
            await self._connect_once()
        except OpcUaRefused as exc:
            self._set_state("refused", str(exc), logging.ERROR)
            raise
        except Exception as exc:
            self._set_state("unreachable", f"cannot connect ({_why(exc)}); retrying in the background")
        self._task = asyncio.create_task(self._supervise(), name=f"opcua-{self.name}")

    async def read(self, group: TagGroup) -> Readings:
        """One batched Read of a scan group (chunked by MaxNodesPerRead); problems become qualities.

        Trace tags (`points`) are read in the same Read as the group's values, so a curve and the
        cycle counter beside it are of one moment; they come back as the batch's traces.
        """
        plan = self._plans[group]
        readings = await self._read_values(group)
        if plan.last_values is not None and (readings.quality == Quality.BAD_VALUE).any():
            self._explain_arrays(plan, readings)
        if not any(plan.points):
            return readings
        trace = plan.trace
        return with_traces(readings.take(~trace), self._traces(plan, readings, trace))

    def _explain_arrays(self, plan: _GroupPlan, readings: Readings) -> None:
        """Say once why a value tag whose node holds an array is BAD_VALUE, and how to read it as a trace."""
        values = plan.last_values
        assert values is not None
        for k, pos in enumerate(plan.readable.tolist()):
            name = plan.names[pos]
            if plan.points[pos] or readings.quality[pos] != Quality.BAD_VALUE:
                continue
            if name in self._bad_config_logged:
                continue
            variant = values[k].Value
            array = _as_array(variant.Value) if variant is not None else None
            if array is not None:
                self._bad_config_logged.add(name)
                log.warning(
                    "%s: signal %r is BAD_VALUE: its node holds an array of %d numbers, not a value; "
                    "to read it as one curve per cycle, give the tag points = %d (logged once)",
                    self.name,
                    name,
                    array.shape[0],
                    array.shape[0],
                )

    def _traces(self, plan: _GroupPlan, readings: Readings, trace: NDArray[np.bool_]) -> Traces:
        """The arrays of the group's trace tags from the last Read; a failed read is the trace's quality."""
        at = {int(p): k for k, p in enumerate(plan.readable)}
        values = plan.last_values
        arrays: list[NDArray[np.float64] | None] = []
        qualities, stamps = [], []
        for pos in np.flatnonzero(trace):
            q, t, array = int(readings.quality[pos]), int(readings.t_ns[pos]), None
            k = at.get(int(pos))
            if values is not None and k is not None:
                dv = values[k]
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                q = Quality.GOOD if code == 0 else quality_from_opcua_status(code)
                raw = dv.Value.Value if dv.Value is not None else None
                if q < Quality.BAD:
                    array = _as_array(raw)
                    if array is None:
                        q = Quality.BAD_VALUE
                        why = "`points` is set, but its value is not an array of numbers"
                        self._bad_config(plan.names[pos], why)
            qualities.append(q)
            stamps.append(t)
            arrays.append(array)
        rows = plan.rows[trace]
        return Traces.of(rows.tolist(), stamps, arrays, [p for p in plan.points if p > 0], qualities)

    async def _read_values(self, group: TagGroup) -> Readings:
        """The Read of a group: every tag's value (a trace tag's is BAD_VALUE: it is not a number)."""
        plan = self._plans[group]
        plan.last_values = None
        now_ns = time.time_ns()
        client = self._client
        if client is None or not self._connected:
            return Readings.of(plan.rows, now_ns, np.full(len(plan.rows), np.nan), Quality.BAD_NOT_CONNECTED)
        try:
            parts = await asyncio.gather(*(self._read_chunk(client, chunk) for chunk in plan.chunks))
        except (TimeoutError, ua.UaStatusCodeError) as exc:
            code = exc.code if isinstance(exc, ua.UaStatusCodeError) else ua.StatusCodes.BadTimeout
            return Readings.of(
                plan.rows, now_ns, np.full(len(plan.rows), np.nan), quality_from_opcua_status(code)
            )
        except (ConnectionError, OSError, ua.UaError) as exc:
            log.debug("%s: read failed: %s", self.name, exc)
            return Readings.of(plan.rows, now_ns, np.full(len(plan.rows), np.nan), Quality.BAD_NOT_CONNECTED)
        values = [dv for part in parts for dv in part]
        plan.last_values = values
        if len(plan.readable) == len(plan.rows):
            return datavalues_to_readings(plan.rows, values, now_ns, plan.validity)
        validity = plan.validity.take(plan.readable) if plan.validity is not None else None
        good = datavalues_to_readings(plan.rows[plan.readable], values, now_ns, validity)
        out_val = np.full(len(plan.rows), np.nan)
        out_q = plan.quality.copy()
        out_t = np.full(len(plan.rows), now_ns, np.int64)
        out_val[plan.readable] = good.value
        out_q[plan.readable] = good.quality
        out_t[plan.readable] = good.t_ns
        return Readings.of(plan.rows, out_t, out_val, out_q)

    async def read_subscribed(self) -> Readings:
        """One Read of the subscribed tags' current values, for `edge-agent read` (the agent gets notifications)."""
        rows = self._sub_rows
        now_ns = time.time_ns()
        client = self._client
        if not self._subscribed:
            return Readings.empty()
        if client is None or not self._connected:
            return Readings.of(rows, now_ns, np.full(len(rows), np.nan), Quality.BAD_NOT_CONNECTED)
        try:
            namespaces = await client.get_namespace_array()
            nodes = await self._resolve_tags(client, self._subscribed, namespaces)
            readable = np.array([i for i, n in enumerate(nodes) if n is not None], np.intp)
            ids = [ua.ReadValueId(NodeId=nodes[i], AttributeId=ua.AttributeIds.Value) for i in readable]
            values = []
            for chunk in _chunks(ids, self._max_nodes_per_read):
                values += await self._read_chunk(client, chunk)
        except (TimeoutError, ua.UaStatusCodeError) as exc:
            code = exc.code if isinstance(exc, ua.UaStatusCodeError) else ua.StatusCodes.BadTimeout
            return Readings.of(rows, now_ns, np.full(len(rows), np.nan), quality_from_opcua_status(code))
        except (ConnectionError, OSError, ua.UaError):
            return Readings.of(rows, now_ns, np.full(len(rows), np.nan), Quality.BAD_NOT_CONNECTED)
        validity = self._sub_validity.take(readable) if self._sub_validity is not None else None
        good = datavalues_to_readings(rows[readable], values, now_ns, validity)
        out_val = np.full(len(rows), np.nan)
        out_q = np.full(len(rows), Quality.BAD_CONFIG, np.uint8)
        out_t = np.full(len(rows), now_ns, np.int64)
        out_val[readable] = good.value
        out_q[readable] = good.quality
        out_t[readable] = good.t_ns
        return Readings.of(rows, out_t, out_val, out_q)

    def event_of_signal(self) -> dict[str, str]:
        """Each event-field signal -> the name of its event, in config order."""
        return {signal: event.name for event in self.device.events for signal in event.fields}

    async def check_events(self) -> dict[str, str | None]:
        """Per event field signal: None if its event type has the field, else why not (for `edge-agent read`)."""
        client = self._client
        signals = [s for e in self.device.events for s in e.fields]
        if client is None or not self._connected:
            return dict.fromkeys(signals, "not connected")
        namespaces = await client.get_namespace_array()
        out: dict[str, str | None] = {}
        for event in self.device.events:
            type_id = parse_node_id(event.event_type).resolve(namespaces)
            source = parse_node_id(event.source).resolve(namespaces)
            unknown = f"event type {event.event_type} or source {event.source} is unknown to the server"
            if type_id is None or source is None:
                out.update(dict.fromkeys(event.fields, unknown))
                continue
            try:
                paths = await self._resolve_event_fields(client, type_id, list(event.fields.values()))
            except ua.UaStatusCodeError:
                out.update(dict.fromkeys(event.fields, unknown))
                continue
            for signal, path in zip(event.fields, paths, strict=True):
                missing = f"field {event.fields[signal]} is not in event type {event.event_type}"
                out[signal] = None if path is not None else missing
        return out

    async def close(self) -> None:
        """Stop reconnecting and close the session; idempotent."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_client(graceful=True)
        self._connected = False

    # ------------------------------------------------------------------ connection lifecycle

    def _set_state(self, state: str, message: str, level: int = logging.WARNING) -> None:
        """Log only when the connection state changes, so an outage is one line, not one per retry."""
        if state != self._state:
            log.log(level, "%s (%s): %s", self.name, self.device.endpoint, message)
            self._state = state

    async def _supervise(self) -> None:
        delay = self._retry_delay[0]
        while not self._closing:
            if self._connected:
                await self._lost.wait()
                self._lost.clear()
                if self._closing:
                    return
                self._connected = False
                self._set_state("lost", "connection lost; marking values not connected and reconnecting")
                self._deliver_not_connected()
                await self._drop_client(graceful=False)
                delay = self._retry_delay[0]
                continue
            await asyncio.sleep(delay)
            try:
                await self._connect_once()
            except OpcUaRefused as exc:
                self._set_state("refused", str(exc), logging.ERROR)
                delay = self._retry_delay[1]
            except Exception as exc:
                self._set_state("unreachable", f"cannot connect ({_why(exc)}); retrying")
                delay = min(delay * 2, self._retry_delay[1])

    async def _on_connection_lost(self, exc: Exception) -> None:
        log.debug("%s: asyncua reported connection loss: %r", self.name, exc)
        self._lost.set()

    def _deliver_not_connected(self) -> None:
        rows = np.concatenate([self._sub_rows, *self._event_rows]) if self._event_rows else self._sub_rows
        if self.on_readings is not None and len(rows):
            self.on_readings(
                Readings.of(rows, time.time_ns(), np.full(len(rows), np.nan), Quality.BAD_NOT_CONNECTED)
            )

    async def _drop_client(self, graceful: bool) -> None:
        client, self._client = self._client, None
        self._subscription_id = None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            if graceful:
                await asyncio.wait_for(client.disconnect(), timeout=2.0)
            else:
                await asyncio.wait_for(client.close_session(), timeout=1.0)
        except Exception as exc:
            log.debug("%s: closing the old session: %r", self.name, exc)
        client.disconnect_socket()

    async def _connect_once(self) -> None:
        opts = self.options
        client = Client(self.device.endpoint, timeout=opts.timeout, watchdog_intervall=opts.watchdog_interval)
        client.application_uri = opts.application_uri
        client.name = client.description = f"edge-agent {self.name}"
        client.session_timeout = int(opts.session_timeout * 1000)
        await self._setup_security(client)
        try:
            await client.connect()
        except ua.UaStatusCodeError as exc:
            reason = _REFUSAL_CODES.get(exc.code)
            if reason is not None:
                raise OpcUaRefused(f"{reason} ({ua.StatusCode(exc.code).name})") from None
            raise
        # Cleared before the callback is installed, so a loss during the setup below is not forgotten.
        self._lost.clear()
        try:
            client.connection_lost_callback = self._on_connection_lost
            namespaces = await client.get_namespace_array()
            await self._read_limits(client)
            await self._plan_reads(client, namespaces)
            await self._subscribe(client, namespaces)
        except BaseException:
            client.connection_lost_callback = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2.0)
            raise
        self._client = client
        self._connected = True
        self.stats.connects += 1
        self._set_state("connected", "connected", logging.INFO)

    # ------------------------------------------------------------------ security

    def _check_security(self) -> None:
        opts = self.options
        if opts.security_policy == "None":
            return
        if opts.server_certificate is None and opts.trust_store is None:
            raise OpcUaConfigError(
                f"device {self.name}: a secure channel needs the server to be trusted; set "
                "`server_certificate` (pin) or `trust_store` (folder of trusted certificates)"
            )

    async def _setup_security(self, client: Client) -> None:
        opts = self.options
        if opts.username is not None and opts.password is not None:
            client.set_user(opts.username)
            client.set_password(opts.password.get_secret_value())
        user_cert = _abs(self._config_dir, opts.user_certificate)
        user_key = _abs(self._config_dir, opts.user_private_key)
        if user_cert is not None and user_key is not None:
            for path, what in ((user_cert, "user_certificate"), (user_key, "user_private_key")):
                if not path.is_file():
                    raise OpcUaRefused(f"{what} {path} does not exist")
            await client.load_client_certificate(str(user_cert))
            await client.load_private_key(user_key)
        endpoints = await client.connect_and_get_server_endpoints()
        mode = _MODES[opts.security_mode]
        policy_uri = (
            security_policies.SecurityPolicyNone.URI
            if opts.security_policy == "None"
            else _POLICIES[opts.security_policy].URI
        )
        matching = [e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == policy_uri]
        if not matching:
            offered = sorted(
                {
                    f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}"
                    for e in endpoints
                }
            )
            raise OpcUaRefused(
                f"the server offers no endpoint with {opts.security_policy}/{opts.security_mode}; "
                f"it offers {', '.join(offered)}"
            )
        if opts.security_policy == "None":
            return
        server_der = _first_certificate(matching[0].ServerCertificate)
        await self._check_trusted(server_der)
        cert = _abs(self._config_dir, opts.certificate)
        key = _abs(self._config_dir, opts.private_key)
        assert cert is not None and key is not None  # enforced by the config model
        for path, what in ((cert, "certificate"), (key, "private_key")):
            if not path.is_file():
                raise OpcUaRefused(
                    f"client {what} {path} does not exist; make one with `edge-agent certs create`"
                )
        await client.set_security(
            _POLICIES[opts.security_policy], str(cert), str(key), server_certificate=server_der, mode=mode
        )

    async def _check_trusted(self, server_der: bytes) -> None:
        """Refuse a server whose certificate is neither pinned nor in (or issued from) the trust store, or is out of date."""
        leaf = x509.load_der_x509_certificate(server_der)
        store = _abs(self._config_dir, self.options.trust_store)
        if not await self._is_trusted(server_der, leaf):
            where = (
                f"pin it with server_certificate or copy it into trust_store {store}"
                if store
                else ("pin the right certificate with server_certificate")
            )
            raise OpcUaRefused(
                f"the server certificate is not trusted (subject {leaf.subject.rfc4514_string()}, "
                f"SHA-1 thumbprint {_thumbprint(server_der)}); if this is the right server, {where}"
            )
        self._check_validity(leaf, server_der)

    async def _is_trusted(self, server_der: bytes, leaf: x509.Certificate) -> bool:
        """Pinned, an exact copy in the trust store, or issued by a CA in it (validity dates aside)."""
        pinned = _abs(self._config_dir, self.options.server_certificate)
        store = _abs(self._config_dir, self.options.trust_store)
        if pinned is not None:
            if not pinned.is_file():
                raise OpcUaRefused(f"pinned server_certificate {pinned} does not exist")
            pinned_der = uacrypto.der_from_x509(await uacrypto.load_certificate(str(pinned)))
            if pinned_der == server_der:
                return True
        if store is None:
            return False
        if not store.is_dir():
            raise OpcUaRefused(f"trust_store {store} is not a folder")
        trusted = 0
        for path in sorted(store.iterdir()):
            if path.suffix.lower() in (".der", ".pem", ".crt", ".cer") and path.is_file():
                with contextlib.suppress(Exception):
                    cert = await uacrypto.load_certificate(str(path))
                    trusted += path.suffix.lower() in (".der", ".pem")  # what TrustStore loads
                    if uacrypto.der_from_x509(cert) == server_der:
                        return True
        # an empty store trusts nobody (asyncua's TrustStore cannot even be built from it)
        if not trusted:
            return False
        trust = TrustStore([store], [])
        await trust.load()
        # The chain is checked at a time inside the leaf's validity: an expired leaf issued by a
        # trusted CA is trusted but out of date, which _check_validity says in its own words.
        when = min(max(datetime.now(UTC), leaf.not_valid_before_utc), leaf.not_valid_after_utc)
        trust.policy_builder = trust.policy_builder.time(when)
        # asyncua logs a refused chain as an error with a traceback; the refusal says it all.
        # No await inside, so no other task's records are dropped.
        with _silenced(_TRUSTSTORE_LOG):
            chained = trust.is_trusted(leaf)
        return chained and not trust.is_revoked(leaf)

    def _check_validity(self, leaf: x509.Certificate, server_der: bytes) -> None:
        """Refuse a trusted certificate outside its validity dates, unless the device allows it (then warn)."""
        now = datetime.now(UTC)
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if start <= now <= end:
            return
        state = "expired" if now > end else "not yet valid"
        described = (
            f"the server certificate (subject {leaf.subject.rfc4514_string()}, SHA-1 thumbprint "
            f"{_thumbprint(server_der)}) is {state}: not_valid_before {start:%Y-%m-%d %H:%M:%S} UTC, "
            f"not_valid_after {end:%Y-%m-%d %H:%M:%S} UTC, now {now:%Y-%m-%d %H:%M:%S} UTC"
        )
        if self.options.allow_expired_server_certificate:
            log.warning("%s: %s; accepted (allow_expired_server_certificate = true)", self.name, described)
            return
        clock = "check this computer's clock, or " if state == "not yet valid" else ""
        raise OpcUaRefused(
            f"{described}; {clock}renew the certificate on the server and trust the new one, or set "
            "allow_expired_server_certificate = true in the device's [devices.opcua] to accept it"
        )

    # ------------------------------------------------------------------ addressing and reads

    async def _read_limits(self, client: Client) -> None:
        """The server's operational limits (0 = none); every bulk request of the driver stays within them."""
        ids = [make_node_id(i) for i in (_MAX_NODES_PER_READ, _MAX_BROWSE_PATHS, _MAX_ITEMS_PER_CALL)]
        try:
            values = [
                dv.Value.Value if dv.Value is not None else 0
                for dv in await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
            ]
        except ua.UaError:
            values = [0, 0, 0]
        read_cap, paths_cap, items_cap = (int(v) if isinstance(v, int) and v > 0 else 0 for v in values)
        own = self.options.max_nodes_per_read or 0
        self._max_nodes_per_read = min((c for c in (own, read_cap) if c > 0), default=0)
        self._max_browse_paths = paths_cap
        self._max_items_per_call = items_cap

    def _bad_config(self, tag: str, why: str) -> None:
        if tag not in self._bad_config_logged:
            self._bad_config_logged.add(tag)
            log.warning("%s: signal %r marked BAD_CONFIG: %s", self.name, tag, why)

    async def _resolve_tags(
        self, client: Client, tags: Sequence[OpcUaTag], namespaces: Sequence[str]
    ) -> list[ua.NodeId | None]:
        """NodeIds of the tags on this connection (URIs and browse paths resolved now); None = unknown."""
        out: list[ua.NodeId | None] = [None] * len(tags)
        paths: list[tuple[int, ua.BrowsePath]] = []
        for i, tag in enumerate(tags):
            if tag.node is not None:
                node = parse_node_id(tag.node).resolve(namespaces)
                if node is None:
                    self._bad_config(tag.name, f"namespace URI of {tag.node} is not on the server")
                out[i] = node
                continue
            assert tag.path is not None
            names = [e.qualified_name(namespaces) for e in parse_browse_path(tag.path)]
            if any(n is None for n in names):
                self._bad_config(tag.name, f"a namespace URI of {tag.path} is not on the server")
                continue
            bp = ua.BrowsePath()
            bp.StartingNode = make_node_id(ua.ObjectIds.ObjectsFolder)
            for qn in names:
                el: Any = ua.RelativePathElement()
                el.ReferenceTypeId = make_node_id(ua.ObjectIds.HierarchicalReferences)
                el.IsInverse = False  # asyncua defaults to True
                el.IncludeSubtypes = True
                el.TargetName = qn
                bp.RelativePath.Elements.append(el)
            paths.append((i, bp))
        if paths:
            results = []
            for chunk in _chunks([bp for _, bp in paths], self._max_browse_paths):
                results += await client.uaclient.translate_browsepaths_to_nodeids(chunk)
            for (i, _), res in zip(paths, results, strict=True):
                if res.StatusCode.is_good() and res.Targets:
                    out[i] = res.Targets[0].TargetId
                else:
                    self._bad_config(
                        tags[i].name, f"browse path {tags[i].path} not found ({res.StatusCode.name})"
                    )
        # A NodeId that parses may still not exist: one batched read of NodeClass finds the unknown ones.
        known = [(i, n) for i, n in enumerate(out) if n is not None]
        if known:
            checks = []
            for part in _chunks([n for _, n in known], self._max_nodes_per_read):
                checks += await client.uaclient.read_attributes(part, ua.AttributeIds.NodeClass)
            for (i, _), dv in zip(known, checks, strict=True):
                if dv.StatusCode is not None and not dv.StatusCode.is_good():
                    self._bad_config(
                        tags[i].name, f"node {tags[i].node or tags[i].path} is unknown to the server"
                    )
                    out[i] = None
        return out

    async def _plan_reads(self, client: Client, namespaces: Sequence[str]) -> None:
        for group, plan in self._plans.items():
            tags = [self._tags[name] for name in group.tags]
            nodes = await self._resolve_tags(client, tags, namespaces)
            readable = [i for i, n in enumerate(nodes) if n is not None]
            plan.readable = np.array(readable, np.intp)
            plan.quality = np.full(len(tags), Quality.BAD_CONFIG, np.uint8)
            plan.quality[plan.readable] = Quality.GOOD
            ids = [ua.ReadValueId(NodeId=nodes[i], AttributeId=ua.AttributeIds.Value) for i in readable]
            plan.chunks = _chunks(ids, self._max_nodes_per_read)

    async def _read_chunk(self, client: Client, chunk: list[ua.ReadValueId]) -> list[ua.DataValue]:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = chunk
        return await client.uaclient.read(params)

    # ------------------------------------------------------------------ subscriptions and events

    async def _subscribe(self, client: Client, namespaces: Sequence[str]) -> None:
        if not self._subscribed and not self.device.events:
            return
        opts = self.options
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = opts.publishing_interval * 1000
        # Keep-alive and lifetime sized so a slow publish cycle never expires the subscription.
        params.RequestedMaxKeepAliveCount = max(3, int(opts.watchdog_interval / opts.publishing_interval))
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 10
        params.PublishingEnabled = True
        self._last_sequence = None
        result = await client.uaclient.create_subscription(params, self._on_publish)
        self._subscription_id = result.SubscriptionId
        requests: list[ua.MonitoredItemCreateRequest] = []
        nodes = await self._resolve_tags(client, self._subscribed, namespaces)
        for handle, (tag, node) in enumerate(zip(self._subscribed, nodes, strict=True)):
            if node is None:
                continue
            requests.append(self._data_change_request(handle, tag, node))
        for k in range(len(self.device.events)):
            req = await self._event_request(client, namespaces, k)
            if req is not None:
                requests.append(req)
        results = []
        for chunk in _chunks(requests, self._max_items_per_call):
            create = ua.CreateMonitoredItemsParameters()
            create.SubscriptionId = result.SubscriptionId
            create.TimestampsToReturn = ua.TimestampsToReturn.Both
            create.ItemsToCreate = chunk
            results += await client.uaclient.create_monitored_items(create)
        bad = [t.name for t, n in zip(self._subscribed, nodes, strict=True) if n is None]
        for req, res in zip(requests, results, strict=True):
            if res.StatusCode.is_good():
                continue
            # A refused item never notifies: without a bad value of its own the signal would look
            # fine at its last value. The server keeps refusing it until the config changes.
            handle = req.RequestedParameters.ClientHandle
            if handle < len(self._subscribed):
                signals = [self._subscribed[handle].name]
            else:
                signals = list(self.device.events[handle - len(self._subscribed)].fields)
            why = (
                f"the server refused its monitored item: {res.StatusCode.name} (0x{res.StatusCode.value:08X})"
            )
            for signal in signals:
                self._bad_config(signal, why)
            bad += signals
        if bad and self.on_readings is not None:
            rows = np.array([self._rows[b] for b in bad], np.int32)
            self.on_readings(
                Readings.of(rows, time.time_ns(), np.full(len(rows), np.nan), Quality.BAD_CONFIG)
            )

    def _data_change_request(
        self, handle: int, tag: OpcUaTag, node: ua.NodeId
    ) -> ua.MonitoredItemCreateRequest:
        mparams = ua.MonitoringParameters()
        mparams.ClientHandle = handle
        mparams.SamplingInterval = (tag.interval or self.device.poll_interval) * 1000
        mparams.QueueSize = tag.queue_size
        mparams.DiscardOldest = True
        if tag.deadband > 0:
            flt = ua.DataChangeFilter()
            flt.Trigger = ua.DataChangeTrigger.StatusValue
            flt.DeadbandType = (
                ua.DeadbandType.Absolute if tag.deadband_type == "absolute" else ua.DeadbandType.Percent
            )
            flt.DeadbandValue = tag.deadband
            mparams.Filter = flt
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value)
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mparams
        return req

    async def _event_request(
        self, client: Client, namespaces: Sequence[str], k: int
    ) -> ua.MonitoredItemCreateRequest | None:
        event = self.device.events[k]
        type_id = parse_node_id(event.event_type).resolve(namespaces)
        source = parse_node_id(event.source).resolve(namespaces)
        if type_id is None or source is None:
            for signal in event.fields:
                self._bad_config(signal, f"event type {event.event_type} or source {event.source} is unknown")
            return None
        fields = await self._resolve_event_fields(client, type_id, list(event.fields.values()))
        select = [_select(make_node_id(ua.ObjectIds.BaseEventType), [ua.QualifiedName("Time", 0)])]
        for signal, path in zip(event.fields, fields, strict=True):
            if path is None:
                self._bad_config(
                    signal, f"field {event.fields[signal]} is not in event type {event.event_type}"
                )
                # Keep the position so field i stays select clause i + 1; the server returns null for it.
                path = [ua.QualifiedName(event.fields[signal], 0)]
            select.append(_select(type_id, path))
        where = ua.ContentFilter()
        element = ua.ContentFilterElement()
        element.FilterOperator = ua.FilterOperator.OfType
        operand = ua.LiteralOperand()
        operand.Value = ua.Variant(type_id)
        element.FilterOperands = [operand]
        where.Elements = [element]
        flt = ua.EventFilter()
        flt.SelectClauses = select
        flt.WhereClause = where
        mparams = ua.MonitoringParameters()
        mparams.ClientHandle = len(self._subscribed) + k
        mparams.SamplingInterval = 0
        mparams.QueueSize = 1000  # one event per cycle: a long publish gap must not lose cycles
        mparams.DiscardOldest = True
        mparams.Filter = flt
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = ua.ReadValueId(NodeId=source, AttributeId=ua.AttributeIds.EventNotifier)
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mparams
        return req

    async def _resolve_event_fields(
        self, client: Client, type_id: ua.NodeId, paths: list[str]
    ) -> list[list[ua.QualifiedName] | None]:
        """Browse names (with namespaces) of each field path, looked up in the event type and its supertypes."""
        known: dict[str, ua.QualifiedName] = {}
        node = client.get_node(type_id)
        for _ in range(10):  # type hierarchies are shallow; the bound guards against a reference cycle
            for child in await node.get_children():
                qn = await child.read_browse_name()
                known.setdefault(qn.Name, qn)
            parents = await node.get_referenced_nodes(
                refs=ua.ObjectIds.HasSubtype, direction=ua.BrowseDirection.Inverse
            )
            if not parents:
                break
            node = parents[0]
        out: list[list[ua.QualifiedName] | None] = []
        for path in paths:
            parts = [p for p in path.split("/") if p]
            head = known.get(parts[0]) if parts else None
            if head is None:
                out.append(None)
                continue
            # Members of a field object (InjectionUnitCycleParameters_1/CushionVolume) share its namespace.
            out.append([head, *(ua.QualifiedName(p, head.NamespaceIndex) for p in parts[1:])])
        return out

    def _on_publish(self, result: ua.PublishResult) -> None:
        """Turn one PublishResponse into one Readings batch (data changes) plus one batch per event."""
        message = result.NotificationMessage
        if result.SubscriptionId != self._subscription_id or not message.NotificationData:
            return
        seq = message.SequenceNumber
        if self._last_sequence is not None and seq != self._last_sequence + 1:
            missed = seq - self._last_sequence - 1
            if missed > 0:
                self.stats.missed_publishes += missed
                log.warning("%s: %d notification message(s) missing before #%d", self.name, missed, seq)
        self._last_sequence = seq
        now_ns = time.time_ns()
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                self._on_data_change(notification.MonitoredItems, now_ns)
            elif isinstance(notification, ua.EventNotificationList):
                self._on_events(notification.Events, now_ns)
            elif isinstance(notification, ua.StatusChangeNotification):
                log.warning("%s: subscription status changed: %s", self.name, notification.Status.name)
                self._lost.set()

    def _on_data_change(self, items: list[ua.MonitoredItemNotification], now_ns: int) -> None:
        n = len(items)
        if n == 0 or self.on_readings is None:
            return
        handles = np.fromiter((it.ClientHandle for it in items), np.int64, n)
        values = [it.Value for it in items]
        overflow = sum(
            1
            for dv in values
            if dv.StatusCode is not None and dv.StatusCode.value & _OVERFLOW_BITS == _OVERFLOW_BITS
        )
        if overflow:
            self.stats.overflows += overflow
            log.warning("%s: server queue overflow on %d item(s): raise queue_size", self.name, overflow)
        self.stats.notifications += n
        validity = self._sub_validity.take(handles) if self._sub_validity is not None else None
        self.on_readings(datavalues_to_readings(self._sub_rows[handles], values, now_ns, validity))

    def _on_events(self, events: list[ua.EventFieldList], now_ns: int) -> None:
        base = len(self._subscribed)
        for ev in events:
            k = ev.ClientHandle - base
            if not 0 <= k < len(self._event_rows) or self.on_readings is None:
                continue
            rows = self._event_rows[k]
            fields = ev.EventFields
            stamp = fields[0].Value if fields else None
            t_ns = datetime_to_ns(stamp) if isinstance(stamp, datetime) else now_ns
            vals = np.full(len(rows), np.nan)
            qual = np.full(len(rows), Quality.BAD_CONFIG, np.uint8)
            for j, variant in enumerate(fields[1 : len(rows) + 1]):
                number = _as_float(variant.Value) if variant is not None else None
                if number is not None:
                    vals[j] = number
                    qual[j] = Quality.GOOD
            self.stats.events += 1
            self.on_readings(Readings.of(rows, t_ns, vals, qual))


def _as_array(value: Any) -> NDArray[np.float64] | None:
    """A 1-D array of numbers as float64 (NaN stays NaN); None for anything else."""
    if not isinstance(value, list | tuple) or (value and isinstance(value[0], str | bytes)):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 else None


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    """`items` in runs of at most `size` (0 = one run); no runs for no items."""
    if not items:
        return []
    step = size if size > 0 else len(items)
    return [items[k : k + step] for k in range(0, len(items), step)]


def _select(type_id: ua.NodeId, path: list[ua.QualifiedName]) -> ua.SimpleAttributeOperand:
    op = ua.SimpleAttributeOperand()
    op.TypeDefinitionId = type_id
    op.BrowsePath = path
    op.AttributeId = ua.AttributeIds.Value
    return op


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
