"""Request planning: merge the tags of a device into the fewest Modbus read requests within the protocol limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Protocol limits per read request (Modbus Application Protocol v1.1b3, 6.1-6.4).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

#: Order of the tables in a plan (and of their function codes 1..4).
TABLE_ORDER = {"coil": 0, "discrete_input": 1, "holding_register": 2, "input_register": 3}


@dataclass(frozen=True, slots=True)
class TagSpan:
    """Where one tag sits on the wire: unit id, table, protocol start address and width."""

    unit_id: int
    table: str
    start: int
    """Protocol (0-based) address of the first register or bit."""
    width: int
    """Registers (or bits) occupied."""

    @property
    def end(self) -> int:
        """One past the last register or bit."""
        return self.start + self.width


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One planned read: a contiguous block of one table of one unit id, and the tags it carries."""

    unit_id: int
    table: str
    start: int
    count: int
    tags: tuple[int, ...]
    """Positions of the carried tags in the planner's input."""

    @property
    def end(self) -> int:
        """One past the last register or bit read."""
        return self.start + self.count


def plan_modbus_requests(
    spans: Sequence[TagSpan],
    *,
    max_gap: int,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadRequest]:
    """Merge tag spans into read requests, ordered by unit id, table and address; deterministic.

    Tags are taken in address order and a tag joins the current request when the
    request stays within the cap (`max_registers` or `max_bits`) and the run of
    unused registers (or bits) before the tag is at most `max_gap`. Taking tags in
    address order and closing a request only when the next tag does not fit gives
    the fewest requests for that order. A tag wider than the cap is an error.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS_PER_READ}, got {max_registers}")
    if not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise ValueError(f"max_bits must be 1..{MAX_BITS_PER_READ}, got {max_bits}")
    order = sorted(
        range(len(spans)),
        key=lambda i: (spans[i].unit_id, TABLE_ORDER[spans[i].table], spans[i].start, spans[i].width, i),
    )
    requests: list[ReadRequest] = []
    current: list[int] = []
    req_start = req_end = 0
    req_key: tuple[int, str] | None = None
    cap = 0

    def close() -> None:
        if current and req_key is not None:
            requests.append(
                ReadRequest(req_key[0], req_key[1], req_start, req_end - req_start, tuple(current))
            )

    for i in order:
        span = spans[i]
        if span.start < 0 or span.end > 65536:
            raise ValueError(f"tag #{i} spans addresses {span.start}..{span.end - 1}, outside 0..65535")
        span_cap = max_bits if span.table in ("coil", "discrete_input") else max_registers
        if span.width > span_cap:
            raise ValueError(f"tag #{i} is {span.width} wide, more than the {span_cap} one request may read")
        key = (span.unit_id, span.table)
        fits = (
            key == req_key and span.start - req_end <= max_gap and max(req_end, span.end) - req_start <= cap
        )
        if fits:
            current.append(i)
            req_end = max(req_end, span.end)
            continue
        close()
        current = [i]
        req_key, req_start, req_end, cap = key, span.start, span.end, span_cap
    close()
    return requests


def plan_block_reads(start: int, width: int, points: int, max_registers: int) -> list[tuple[int, int]]:
    """(start, count) of the requests that read `points` values of `width` registers from `start` on.

    Each request holds a whole number of values, as many as fit `max_registers`: a value split
    across two requests could mix two writes of the device.
    """
    if width < 1 or points < 1:
        raise ValueError(f"a block needs width >= 1 and points >= 1, got {width} and {points}")
    per = max_registers // width
    if per < 1:
        raise ValueError(f"a value of {width} registers does not fit a request of {max_registers}")
    end = start + width * points
    if end > 65536:
        raise ValueError(f"the block {start}..{end - 1} ends past address 65535")
    step = per * width
    return [(a, min(step, end - a)) for a in range(start, end, step)]
