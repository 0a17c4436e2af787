"""The Modbus TCP driver: plans each scan group's requests once, then reads and decodes them into Readings."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from edge_agent.drivers.base import TagGroup, scan_groups
from edge_agent.drivers.modbus.codec import (
    REGISTER_WIDTH,
    DecodeBatch,
    build_batches,
    decode_numbers,
    decode_string,
    is_bit_table,
    tag_width,
    where,
)
from edge_agent.drivers.modbus.config import ByteOrder, ModbusDevice, ModbusTag
from edge_agent.drivers.modbus.connection import (
    Backoff,
    BadFrames,
    MalformedResponse,
    ModbusConnection,
    ModbusExceptionResponse,
    NotConnected,
    acquire_connection,
    release_connection,
)
from edge_agent.drivers.modbus.planner import ReadRequest, TagSpan, plan_block_reads, plan_modbus_requests
from edge_agent.drivers.modbus.quality import quality_from_modbus_exception
from edge_agent.trace_types import Traces, with_traces
from edge_agent.types import BAD_THRESHOLD, Quality, Readings

assert Quality.GOOD == 0  # read() relies on it: a zeroed quality column is all GOOD
_F8, _U1, _I8 = np.dtype(np.float64), np.dtype(np.uint8), np.dtype(np.int64)


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """A planned request with its decode rules and the output slots of its tags."""

    request: ReadRequest
    batches: tuple[DecodeBatch, ...]
    slots: NDArray[np.intp]
    """Output positions of all tags of the request (strings included)."""
    strings: tuple[tuple[str, int, int, int, ByteOrder], ...]
    """(tag name, output position, offset in block, registers, byte order) of the string tags."""
    at: NDArray[np.intp] | slice = field(init=False)
    """`slots` as a slice when they are a run of positions (the usual case; cheaper to assign)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", where(self.slots))


@dataclass(frozen=True, slots=True)
class PlannedTrace:
    """A trace tag (`points`): its block's requests, how its values decode, the counter that latches it."""

    name: str
    row: int
    unit_id: int
    table: str
    chunks: tuple[tuple[int, int], ...]
    """(start, count) of the block's requests, each a whole number of values."""
    type: str
    byte_order: ByteOrder
    points: int
    scale: float
    offset: float
    low: float
    """Points below this engineering value (valid_min) are NaN."""
    high: float
    sentinels: tuple[float, ...]
    """Raw values that mean "no valid point" (NaN)."""
    counter: tuple[int, str, int, int] | None
    """(unit id, table, start, registers) of the `latched_by` counter."""
    counter_decode: tuple[str, ByteOrder, float, float] | None
    """(type, byte order, scale, offset) of the counter, to compare it with its value read in the group."""
    counter_pos: int
    """Position of the counter's value in the group's scalar output, -1 when it is not in the group."""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """Everything needed to poll one scan group: requests, signal rows, numeric-tag mask."""

    group: TagGroup
    reads: tuple[PlannedRead, ...]
    rows: NDArray[np.int32]
    numeric: NDArray[np.bool_]
    """False for string tags: text is not a number, so it stays out of Readings."""
    numeric_rows: NDArray[np.int32]
    """Signal rows of the numeric tags, the `signal` column of every Readings of the group."""
    all_numeric: bool
    has_floats: bool
    """Whether a float type can bring NaN/Inf (integers cannot)."""
    has_strings: bool
    traces: tuple[PlannedTrace, ...] = ()
    """The group's trace tags, read after its values."""
    size: int = field(init=False)
    """Tags in the group."""
    plain: bool = field(init=False)
    """All numeric and no floats: a poll without failures needs no masking."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.rows))
        object.__setattr__(self, "plain", self.all_numeric and not self.has_floats)


def _protocol_address(device: ModbusDevice, tag: ModbusTag) -> int:
    address = tag.address - device.modbus.address_base
    if address < 0:
        raise ValueError(
            f"device {device.name!r} tag {tag.name!r}: address {tag.address} is below the device's "
            f"address_base {device.modbus.address_base}; use addresses from {device.modbus.address_base}"
        )
    return address


def plan_group(device: ModbusDevice, group: TagGroup, rows: Mapping[str, int]) -> GroupPlan:
    """Plan the requests of one scan group of a device; errors name the device and tag."""
    by_name = {t.name: t for t in device.tags}
    # trace tags are blocks read on their own (plan_traces), not values among the group's
    tags = [by_name[name] for name in group.tags if by_name[name].points is None]
    opts = device.modbus
    spans = []
    for tag in tags:
        width = tag_width(tag)
        cap = opts.max_bits_per_request if is_bit_table(tag.table) else opts.max_registers_per_request
        if width > cap:
            raise ValueError(
                f"device {device.name!r} tag {tag.name!r} spans {width} registers, more than "
                f"max_registers_per_request = {cap}; raise the cap or shorten the tag"
            )
        start = _protocol_address(device, tag)
        if start + width > 65536:
            raise ValueError(
                f"device {device.name!r} tag {tag.name!r} ends past address 65535 "
                f"(starts at {tag.address}, {width} wide)"
            )
        unit = tag.unit_id if tag.unit_id is not None else opts.unit_id
        spans.append(TagSpan(unit, tag.table, start, width))
    requests = plan_modbus_requests(
        spans,
        max_gap=opts.max_gap,
        max_registers=opts.max_registers_per_request,
        max_bits=opts.max_bits_per_request,
    )
    reads = []
    for req in requests:
        members = []
        strings = []
        for i in req.tags:
            tag = tags[i]
            order: ByteOrder = tag.byte_order or opts.byte_order
            offset = spans[i].start - req.start
            members.append((i, offset, tag, order))
            if tag.type == "string":
                strings.append((tag.name, i, offset, spans[i].width, order))
        reads.append(
            PlannedRead(
                req,
                tuple(build_batches(members)),
                np.array(req.tags, dtype=np.intp),
                tuple(strings),
            )
        )
    missing = [name for name in group.tags if name not in rows]
    if missing:
        raise KeyError(f"device {device.name!r}: no signal-table row for tag(s) {', '.join(missing)}")
    all_rows = np.array([rows[t.name] for t in tags], dtype=np.int32)
    numeric = np.array([t.type != "string" for t in tags], dtype=bool)
    numeric_rows = all_rows[numeric]
    numeric_rows.flags.writeable = False  # shared by every Readings of the group
    return GroupPlan(
        group=group,
        reads=tuple(reads),
        rows=all_rows,
        numeric=numeric,
        numeric_rows=numeric_rows,
        all_numeric=bool(numeric.all()),
        has_floats=any(t.type in ("float32", "float64") for t in tags),
        has_strings=any(t.type == "string" for t in tags),
        traces=plan_traces(device, group, rows, [t.name for t in tags]),
    )


def _decode_block(tr: PlannedTrace, payload: bytes) -> NDArray[np.float64]:
    """The engineering values of a trace block; points outside the tag's valid range or at a sentinel are NaN."""
    words = np.frombuffer(payload, dtype=">u2")
    raw = decode_numbers(words.reshape(tr.points, REGISTER_WIDTH[tr.type]), tr.type, tr.byte_order)
    points = raw * tr.scale + tr.offset if tr.scale != 1.0 or tr.offset != 0.0 else raw.copy()
    bad = ~np.isfinite(points) | (points < tr.low) | (points > tr.high)
    if tr.sentinels:
        bad |= np.isin(raw, tr.sentinels)
    points[bad] = np.nan
    return points


def plan_traces(
    device: ModbusDevice, group: TagGroup, rows: Mapping[str, int], scalars: list[str]
) -> tuple[PlannedTrace, ...]:
    """The block reads of the group's trace tags; `scalars` are the group's other tags, in output order."""
    by_name = {t.name: t for t in device.tags}
    opts = device.modbus
    out = []
    for name in group.tags:
        tag = by_name[name]
        if tag.points is None:
            continue
        width = REGISTER_WIDTH[tag.type]
        start = _protocol_address(device, tag)
        try:
            chunks = plan_block_reads(start, width, tag.points, opts.max_registers_per_request)
        except ValueError as exc:
            raise ValueError(f"device {device.name!r} tag {tag.name!r}: {exc}") from None
        counter, counter_decode = None, None
        if tag.latched_by is not None:
            c = by_name[tag.latched_by]
            counter = (
                c.unit_id if c.unit_id is not None else opts.unit_id,
                c.table,
                _protocol_address(device, c),
                tag_width(c),
            )
            if c.type in REGISTER_WIDTH and c.type != "bool" and not is_bit_table(c.table):
                counter_decode = (c.type, c.byte_order or opts.byte_order, c.scale, c.offset)
        low, high, sentinels = tag.validity()
        out.append(
            PlannedTrace(
                name=tag.name,
                row=int(rows[tag.name]),
                unit_id=tag.unit_id if tag.unit_id is not None else opts.unit_id,
                table=tag.table,
                chunks=tuple(chunks),
                type=tag.type,
                byte_order=tag.byte_order or opts.byte_order,
                points=tag.points,
                scale=tag.scale,
                offset=tag.offset,
                low=-np.inf if low is None else float(low),
                high=np.inf if high is None else float(high),
                sentinels=tuple(float(x) for x in sentinels),
                counter=counter,
                counter_decode=counter_decode,
                counter_pos=scalars.index(tag.latched_by) if tag.latched_by in scalars else -1,
            )
        )
    return tuple(out)


class ModbusDriver:
    """Polls one Modbus TCP device: planned block reads, per-request fault isolation, shared connection per endpoint."""

    def __init__(
        self,
        device: ModbusDevice,
        rows: Mapping[str, int],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = device.name
        self.device = device
        parts = urlsplit(device.endpoint)
        assert parts.hostname is not None and parts.port is not None  # checked by the config
        self.host: str = parts.hostname
        self.port: int = parts.port
        self.backoff = backoff or Backoff()
        self._groups = scan_groups([(t.name, t.interval, True) for t in device.tags], device.poll_interval)
        self._plans = {g: plan_group(device, g, rows) for g in self._groups}
        # groups() hands out these very objects and callers pass them back every poll:
        # finding the plan by identity spares hashing a tuple of every tag name
        self._plan_of_id = {id(g): p for g, p in self._plans.items()}
        self._timeout = device.modbus.timeout
        self._conn: ModbusConnection | None = None
        self._closed = False
        self.last_strings: dict[str, tuple[str, Quality]] = {}
        """Text and quality of each string tag from the last read (text is not a number, so not in Readings)."""
        self.last_error: str | None = None
        """Why the last read did not fully succeed (None if it did)."""
        self.requests_sent = 0
        """Requests put on the wire since start (for metrics and benchmarks)."""
        self.bad_frames = BadFrames(self.name)
        """Frames from the device rejected since start, by kind (exported as edge_agent_modbus_bad_frames_total)."""

    def groups(self) -> list[TagGroup]:
        """The scan groups (one per poll interval), fastest first."""
        return list(self._groups)

    def plan(self, group: TagGroup) -> list[ReadRequest]:
        """The read requests one poll of `group` sends."""
        return [r.request for r in self._plans[group].reads]

    @property
    def connected(self) -> bool:
        """True while the connection to the endpoint is open."""
        return self._conn is not None and self._conn.connected

    async def connect(self) -> None:
        """Join (or open) the shared connection; an unreachable device is retried by `read`, never raised."""
        if self._closed:
            # a closed driver stays closed: reopening would hold a connection nobody releases
            return
        conn = self._conn
        if conn is None:
            conn = self._conn = acquire_connection(
                self.host,
                self.port,
                self.name,
                connect_timeout=self.device.modbus.timeout,
                request_pause=self.device.modbus.request_pause,
                backoff=self.backoff,
            )
        # close() may run while this waits; it releases `conn`, so only the local name is used after
        if not await conn.ensure_connected():
            self.last_error = conn.last_error

    async def read(self, group: TagGroup) -> Readings:
        """Poll one scan group; every failure becomes a bad quality on the tags it touched."""
        # This runs for every request of every device: few calls, few numpy operations.
        plan = self._plan_of_id.get(id(group))
        if plan is None or plan.group is not group:
            plan = self._plans[group]  # an equal TagGroup made elsewhere
        n = plan.size
        conn = self._conn
        if conn is None or not conn.connected:
            if conn is None and not self._closed:
                await self.connect()
                conn = self._conn
            if conn is None:
                self.last_error = "driver closed"
                return self._readings(
                    plan,
                    np.full(n, time.time_ns(), dtype=np.int64),
                    np.full(n, np.nan),
                    np.full(n, Quality.BAD_NOT_CONNECTED, dtype=np.uint8),
                )
            if not conn.connected and not await conn.ensure_connected():
                self.last_error = conn.last_error or "not connected"
                return self._readings(
                    plan,
                    np.full(n, time.time_ns(), dtype=np.int64),
                    np.full(n, np.nan),
                    np.full(n, Quality.BAD_NOT_CONNECTED, dtype=np.uint8),
                )
        # Every slot is written by exactly one request below (its values or its failure);
        # GOOD is 0, so quality starts zeroed and only failures write it.
        value = np.empty(n, _F8)
        quality = np.zeros(n, _U1)
        t_ns = np.empty(n, _I8)
        errors: list[str] = []
        timeout = self._timeout
        silent_units: set[int] = set()
        failure: Quality | None = None
        for planned in plan.reads:
            req = planned.request
            at = planned.at
            if failure is not None or (silent_units and req.unit_id in silent_units):
                # After a lost connection the rest of the poll would fail the same way; after a
                # timeout, one per unit id and poll is enough: a dead unit behind a gateway must
                # not cost a timeout for each of its requests.
                quality[at] = failure if failure is not None else Quality.BAD_TIMEOUT
                t_ns[at] = time.time_ns()
                continue
            self.requests_sent += 1
            try:
                payload = await conn.read(
                    req.table, req.unit_id, req.start, req.count, timeout, self.bad_frames
                )
            except ModbusExceptionResponse as exc:
                quality[at] = quality_from_modbus_exception(exc.code)
                errors.append(str(exc))
            except MalformedResponse as exc:
                # an answer that does not fit the request: its values are not this block's
                quality[at] = Quality.BAD_COMM_FAILURE
                errors.append(str(exc))
            except TimeoutError as exc:
                quality[at] = Quality.BAD_TIMEOUT
                silent_units.add(req.unit_id)
                errors.append(str(exc))
            except NotConnected as exc:
                quality[at] = failure = Quality.BAD_NOT_CONNECTED
                if not errors or errors[-1] != str(exc):
                    # after a malformed frame the connection is closed with that frame as its reason
                    errors.append(str(exc))
            else:
                t_ns[at] = time.time_ns()
                for batch in planned.batches:
                    batch.decode_into(payload, value, quality)
                if planned.strings:
                    self._decode_strings(planned, payload)
                continue
            t_ns[at] = time.time_ns()
        if plan.has_strings:
            for planned in plan.reads:
                for name, pos, *_ in planned.strings:
                    if quality[pos] != Quality.GOOD:
                        self.last_strings[name] = ("", Quality(int(quality[pos])))
        if plan.traces:
            traces = await self._read_traces(conn, plan, value, quality, failure, errors)
            self.last_error = "; ".join(errors) or None
            return with_traces(self._readings(plan, t_ns, value, quality, failed=bool(errors)), traces)
        if not errors:
            self.last_error = None
            if plan.plain:
                # all numbers, none of them floats, all good: nothing to mask
                return Readings(plan.numeric_rows, t_ns, value, quality)
            return self._readings(plan, t_ns, value, quality, failed=False)
        self.last_error = "; ".join(errors)
        return self._readings(plan, t_ns, value, quality)

    async def _read_traces(
        self,
        conn: ModbusConnection,
        plan: GroupPlan,
        value: NDArray[np.float64],
        quality: NDArray[np.uint8],
        failure: Quality | None,
        errors: list[str],
    ) -> Traces:
        """Read the group's trace blocks after its values; a failure is the traces' quality, never an exception.

        Blocks latched by one counter are read between one pair of reads of it.
        """
        arrays: dict[int, NDArray[np.float64] | None] = {}
        qualities: dict[int, Quality] = {}
        stamps: dict[int, int] = {}
        by_counter: dict[tuple[int, str, int, int] | None, list[int]] = {}
        for k, tr in enumerate(plan.traces):
            by_counter.setdefault(tr.counter, []).append(k)
        for members in by_counter.values():
            traces = [plan.traces[k] for k in members]
            blocks: list[NDArray[np.float64] | None] = [None] * len(traces)
            q = failure
            if q is None:
                try:
                    blocks, q = await self._read_blocks(conn, traces, value, quality)
                except ModbusExceptionResponse as exc:
                    q = quality_from_modbus_exception(exc.code)
                    errors.append(str(exc))
                except MalformedResponse as exc:
                    q = Quality.BAD_COMM_FAILURE
                    errors.append(str(exc))
                except TimeoutError as exc:
                    q = Quality.BAD_TIMEOUT
                    errors.append(str(exc))
                except NotConnected as exc:
                    q = Quality.BAD_NOT_CONNECTED
                    errors.append(str(exc))
            now = time.time_ns()
            for k, block in zip(members, blocks, strict=True):
                arrays[k], qualities[k], stamps[k] = block, q if q is not None else Quality.GOOD, now
        order = range(len(plan.traces))
        return Traces.of(
            [tr.row for tr in plan.traces],
            [stamps[k] for k in order],
            [arrays[k] for k in order],
            [tr.points for tr in plan.traces],
            [qualities[k] for k in order],
        )

    async def _read_blocks(
        self,
        conn: ModbusConnection,
        traces: list[PlannedTrace],
        value: NDArray[np.float64],
        quality: NDArray[np.uint8],
    ) -> tuple[list[NDArray[np.float64] | None], Quality | None]:
        """Blocks latched by one counter: read between two reads of it, again once if the device rewrote them."""
        timeout = self._timeout
        first = traces[0]
        none: list[NDArray[np.float64] | None] = [None] * len(traces)
        for _ in range(2):
            before = await self._read_counter(conn, first)
            payloads = []
            for tr in traces:
                parts = []
                for start, count in tr.chunks:
                    self.requests_sent += 1
                    parts.append(
                        await conn.read(tr.table, tr.unit_id, start, count, timeout, self.bad_frames)
                    )
                payloads.append(b"".join(parts))
            after = await self._read_counter(conn, first)
            if before == after:
                break
        else:
            return none, Quality.BAD_VALUE  # the device kept rewriting the blocks while they were read
        decode = first.counter_decode
        if decode is not None and first.counter_pos >= 0 and quality[first.counter_pos] < BAD_THRESHOLD:
            type_, order, scale, offset = decode
            words = np.frombuffer(before, dtype=">u2").reshape(1, REGISTER_WIDTH[type_])
            if float(decode_numbers(words, type_, order)[0]) * scale + offset != value[first.counter_pos]:
                return none, Quality.BAD_VALUE  # a cycle ended between the group's values and the blocks
        return [_decode_block(tr, payload) for tr, payload in zip(traces, payloads, strict=True)], None

    async def _read_counter(self, conn: ModbusConnection, tr: PlannedTrace) -> bytes:
        """The raw registers of the trace's counter (empty without one)."""
        if tr.counter is None:
            return b""
        unit, table, start, width = tr.counter
        self.requests_sent += 1
        return await conn.read(table, unit, start, width, self._timeout, self.bad_frames)

    def _decode_strings(self, planned: PlannedRead, payload: bytes) -> None:
        for name, _, offset, width, order in planned.strings:
            words = np.frombuffer(payload, dtype=">u2", count=width, offset=2 * offset)
            self.last_strings[name] = (decode_string(words, order), Quality.GOOD)

    def _readings(
        self, plan: GroupPlan, t_ns: NDArray, value: NDArray, quality: NDArray, failed: bool = True
    ) -> Readings:
        if not plan.all_numeric:
            keep = plan.numeric
            t_ns, value, quality = t_ns[keep], value[keep], quality[keep]
        # Readings.of's rules, without its copies (this is the hot path): a non-finite
        # value is BAD_VALUE, and a bad value is NaN.
        if plan.has_floats:
            quality[~np.isfinite(value) & (quality < BAD_THRESHOLD)] = Quality.BAD_VALUE
        if failed or plan.has_floats:
            value[quality >= BAD_THRESHOLD] = np.nan
        return Readings(plan.numeric_rows, t_ns, value, quality)

    async def close(self) -> None:
        """Leave the shared connection (the last user closes it) for good; idempotent."""
        self._closed = True
        if self._conn is not None:
            release_connection(self._conn, self.name)
            self._conn = None
