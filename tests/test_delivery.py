"""The delivery loop with several batches in flight: streaming sends, acks in outbox order, in-order resends after a failure."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Outbox
from edge_agent.records import Kind, Record
from edge_agent.sinks.delivery import Backoff, DeliveryLoop, SinkError


class SlowSink:
    """Accepts each send after `delay` seconds; fails the sends listed in `fail_calls` (1-based call numbers)."""

    name = "slow"

    def __init__(self, delay: float, fail_calls: Sequence[int] = ()) -> None:
        self.delay = delay
        self.fail_calls = set(fail_calls)
        self.calls = 0
        self.concurrent = 0
        self.most_concurrent = 0
        self.accepted: list[int] = []  # record numbers, in the order of accepted sends

    async def send(self, records: Sequence[Record]) -> None:
        self.calls += 1
        call = self.calls
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.concurrent -= 1
        if call in self.fail_calls:
            raise SinkError(f"send {call} refused")
        self.accepted += [int(r.payload) for r in records]


def _records(first: int, count: int) -> list[Record]:
    return [Record(Kind.RAW, "m", str(i).encode()) for i in range(first, first + count)]


async def test_batches_stream_without_waiting_for_earlier_acks(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    sink = SlowSink(delay=0.3)
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=4)
    loop.start()
    try:
        for k in range(4):  # four puts while the first send is still on the wire
            await outbox.put_async(_records(k * 10, 10))
            await asyncio.sleep(0.02)
        assert await loop.wait_drained(5.0)
    finally:
        await loop.stop()
        await outbox.close_async()
    assert sink.most_concurrent >= 3  # each put went out at once, not after the PUBACKs of the one before
    assert sink.accepted == list(range(40))
    assert outbox.counters.acked_records == 40


async def test_a_failed_batch_is_resent_with_the_ones_after_it_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.put_async(_records(0, 50))
    sink = SlowSink(delay=0.05, fail_calls=[2])
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=3, backoff=Backoff(0.01, 0.05))
    loop.start()
    try:
        assert await loop.wait_drained(5.0)
    finally:
        await loop.stop()
        await outbox.close_async()
    # batch 2 failed while later batches were in flight and got through: they are sent again after it
    assert sink.accepted[:20] == list(range(10)) + list(range(20, 30))
    assert sorted(set(sink.accepted)) == list(range(50))
    last_copy = {n: i for i, n in enumerate(sink.accepted)}
    assert sorted(last_copy, key=last_copy.__getitem__) == list(range(50))
    assert loop.counters.failures == 1 and loop.counters.consecutive_failures == 0
    assert outbox.counters.acked_records == 50 and len(outbox) == 0


class DiskFullSink(SlowSink):
    """Fails its first `failures` sends with ENOSPC, as a sink does whose dead-letter file cannot be written."""

    def __init__(self, failures: int) -> None:
        super().__init__(delay=0.0)
        self.failures = failures

    async def send(self, records: Sequence[Record]) -> None:
        if self.calls < self.failures:
            self.calls += 1
            raise OSError(28, "No space left on device")
        await super().send(records)


async def _drain_alive(loop: DeliveryLoop, outbox: Outbox) -> None:
    """Run `loop` until the outbox is empty, checking that it is still running then; stop it and close the outbox."""
    task = loop.start()
    try:
        assert await loop.wait_drained(5.0)
        assert not task.done()
    finally:
        await loop.stop()
        await outbox.close_async()


async def test_an_oserror_from_the_sink_is_retried_with_backoff_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.put_async(_records(0, 30))
    sink = DiskFullSink(failures=3)
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=1, backoff=Backoff(0.01, 0.05))
    await _drain_alive(loop, outbox)
    assert sink.accepted == list(range(30))
    assert loop.counters.failures == 3 and loop.counters.consecutive_failures == 0
    assert outbox.counters.acked_records == 30 and len(outbox) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["sink slow: OSError: [Errno 28] No space left on device; retrying with backoff"]


class AckOnFullDisk(Outbox):
    """An outbox whose first `failures` acks fail as SQLite's do on a full disk (nothing deleted)."""

    failures = 0

    def ack(self, ids: Iterable[int]) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().ack(ids)


async def test_an_ack_on_a_full_disk_is_retried_without_sending_again(tmp_path: Path) -> None:
    outbox = AckOnFullDisk(tmp_path / "o.sqlite")
    outbox.failures = 4
    await outbox.put_async(_records(0, 30))
    sink = SlowSink(delay=0.0)
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=2, backoff=Backoff(0.01, 0.05))
    await _drain_alive(loop, outbox)
    assert sink.accepted == list(range(30))  # each batch sent once: only its ack was repeated
    assert outbox.counters.acked_records == 30 and len(outbox) == 0
    assert loop.counters.failures == 4 and loop.counters.consecutive_failures == 0
    assert loop.counters.last_error == "OperationalError: database or disk is full"


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler, e.g. "Task exception was never retrieved"."""
    running = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    running.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    running.set_exception_handler(None)


async def test_sends_failing_behind_the_oldest_leave_no_unread_exception(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.put_async(_records(0, 30))
    sink = SlowSink(delay=0.05, fail_calls=[1, 2, 3])  # the whole window fails, as in an outage
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=3, backoff=Backoff(0.01, 0.05))
    await _drain_alive(loop, outbox)
    assert sink.accepted == list(range(30))
    gc.collect()  # a task's unread exception is reported when the task is collected
    assert [c.get("message") for c in loop_errors] == []


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.01)


class ComesBack(SlowSink):
    """Refuses every send while `down`; `wait_ready` returns once it is up again, as a reconnect would say."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.down = True
        self.back = asyncio.Event()
        self.retry_after: float | None = None
        self.attempts: list[float] = []

    async def send(self, records: Sequence[Record]) -> None:
        self.attempts.append(time.monotonic())
        if self.down:
            raise SinkError("down", retry_after=self.retry_after)
        await super().send(records)

    async def wait_ready(self) -> None:
        await self.back.wait()


async def test_a_sink_reachable_again_cuts_a_long_back_off_short(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.put_async(_records(0, 30))
    sink = ComesBack()
    # the first pause alone is 10-20 s: only the sink's word can end it early
    loop = DeliveryLoop(outbox, sink, batch_records=10, in_flight=2, backoff=Backoff(20.0, 30.0))
    task = loop.start()
    try:
        await _until(lambda: len(sink.attempts) > 0)
        await asyncio.sleep(0.2)
        # the window failed once and the loop is backing off, not retrying
        assert loop.counters.failures == 1 and loop.counters.retry_delay_s >= 10
        sink.down = False
        sink.back.set()
        assert await loop.wait_drained(5.0)
        assert not task.done()
    finally:
        await loop.stop()
        await outbox.close_async()
    assert sink.accepted == list(range(30))
    assert loop.counters.failures == 1 and loop.counters.consecutive_failures == 0


async def test_a_server_asking_for_a_pause_gets_it_even_when_reachable(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.put_async(_records(0, 10))
    sink = ComesBack()
    sink.retry_after = 0.5  # Retry-After: 0.5 s, from a server that is up
    sink.back.set()
    loop = DeliveryLoop(outbox, sink, batch_records=10, backoff=Backoff(0.01, 0.05))
    task = loop.start()
    try:
        await _until(lambda: len(sink.attempts) >= 2)
        sink.down = False
        assert await loop.wait_drained(5.0)
        assert not task.done()
    finally:
        await loop.stop()
        await outbox.close_async()
    assert sink.attempts[1] - sink.attempts[0] >= 0.45  # not cut short by wait_ready
    assert sink.accepted == list(range(10))
