"""The sinks at run time: a flush with a backlog at exit, a full disk under the outbox, a delivery loop that dies."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, stored_size
from edge_agent.records import AgentStatus, Kind, Record
from edge_agent.sink_set import SinkSet
from edge_agent.sinks.base import Delivery
from edge_agent.sinks.delivery import Backoff
from edge_agent.types import SignalTable
from tests.services import free_port


async def test_flush_on_exit_reports_progress_and_keeps_what_it_could_not_send(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing listens on the port: every write fails, so the whole backlog stays
    config = parse_config(
        f'[agent]\nname = "t"\n[sinks.influx]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[outbox]\ndir = "{tmp_path}"\n',
        "test.toml",
        tmp_path,
    )
    sinks = SinkSet(config, SignalTable(), AgentMetrics())
    await sinks.start(AgentStatus(time.time_ns(), "online", {}))
    for i in range(40):  # 40 status records, then the offline one at stop
        sinks.publish_status(AgentStatus(time.time_ns(), "online", {"i": i}))
    caplog.set_level(logging.INFO, logger="edge_agent.sink_set")
    await sinks.stop(2.5, AgentStatus(time.time_ns(), "offline", {}))
    progress = [r.getMessage() for r in caplog.records if "flushing outboxes" in r.getMessage()]
    assert len(progress) == 2, progress  # after 1 s and 2 s of the 2.5 s allowed
    assert progress[0].startswith("flushing outboxes before exit (1 of 2.5 s): influx ")
    assert progress[-1].endswith(" left of 41 (0 records/s)") and "influx 41 left" in progress[-1]
    assert any("41 records stay in the outboxes" in r.getMessage() for r in caplog.records)


class DiskFullOutbox(Outbox):
    """An outbox whose puts fail as SQLite's do on a full disk while `full` is set (nothing is stored)."""

    full = False

    def put(self, records: Sequence[Record]) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super().put(records)


class RecordingSink:
    """Accepts every send; raises `fail_first` from its first send (a bug in a sink, not an outage)."""

    name = "rec"

    def __init__(self, fail_first: Exception | None = None) -> None:
        self.accepted: list[int] = []
        self.fail_first = fail_first
        self.stopped = False

    async def send(self, records: Sequence[Record]) -> None:
        if self.fail_first is not None:
            error, self.fail_first = self.fail_first, None
            raise error
        self.accepted += [int(r.payload) for r in records]

    async def stop(self) -> None:
        self.stopped = True


def _records(first: int, count: int) -> list[Record]:
    return [Record(Kind.RAW, "m", f"{i:04d}".encode()) for i in range(first, first + count)]


def _sink_set(tmp_path: Path, outbox: Outbox, sink: RecordingSink) -> SinkSet:
    config = parse_config(f'[agent]\nname = "t"\n[outbox]\ndir = "{tmp_path}"\n', "test.toml", tmp_path)
    sinks = SinkSet(config, SignalTable(), AgentMetrics())
    sinks.backoff = Backoff(0.01, 0.05)
    sinks._add("rec", outbox, sink, Delivery(batch_records=100))  # type: ignore[arg-type]
    return sinks


def _on_a_full_disk(tmp_path: Path) -> tuple[DiskFullOutbox, RecordingSink, SinkSet]:
    """A sink set of one recording sink whose outbox refuses every put as a full disk does."""
    outbox = DiskFullOutbox(tmp_path / "rec.sqlite")
    outbox.full = True
    sink = RecordingSink()
    return outbox, sink, _sink_set(tmp_path, outbox, sink)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.01)


def _metric(sinks: SinkSet, name: str) -> float | None:
    return sinks.metrics.registry.get_sample_value(name, {"sink": "rec"})


async def test_the_outbox_writer_keeps_records_while_the_disk_is_full_and_stores_them_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox, sink, sinks = _on_a_full_disk(tmp_path)
    channel = sinks.channels[0]
    for k in range(5):
        sinks.publish_records(_records(k * 10, 10))
        await asyncio.sleep(0.05)  # several failed puts in between
    assert channel.writer is not None and not channel.writer.done()
    assert [int(r.payload) for r in channel.pending] == list(range(50)) and len(outbox) == 0
    errors = [r.getMessage() for r in caplog.records if "cannot store records" in r.getMessage()]
    assert len(errors) == 1 and "OperationalError: database or disk is full" in errors[0]

    outbox.full = False
    await _until(lambda: outbox.counters.acked_records == 50)
    assert sink.accepted == list(range(50))
    assert channel.pending == [] and channel.pending_bytes == 0
    assert (outbox.counters.put_records, outbox.counters.acked_records, outbox.counters.dropped_records) == (
        50,
        50,
        0,
    )
    await sinks.stop(1.0)
    assert sink.stopped
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        outbox._db.execute("SELECT 1")


async def test_records_past_the_memory_cap_are_dropped_oldest_first_and_counted_and_stop_still_closes(
    tmp_path: Path,
) -> None:
    outbox, sink, sinks = _on_a_full_disk(tmp_path)
    channel = sinks.channels[0]
    channel.pending_max_bytes = 20 * stored_size(_records(0, 1)[0])  # room for 20 records
    for k in range(10):
        sinks.publish_records(_records(k * 5, 5))
        await asyncio.sleep(0.02)
    kept = [int(r.payload) for r in channel.pending]
    assert 15 <= len(kept) <= 20 and kept == list(range(50 - len(kept), 50))  # the newest, in order
    assert outbox.counters.dropped_records == 50 - len(kept)
    assert outbox.counters.dropped_by_kind == {"raw": 50 - len(kept)}
    sinks.export_metrics()
    assert _metric(sinks, "edge_agent_sink_records_dropped_total") == 50 - len(kept)

    # the disk is still full at exit: stop gives up after the drain time, counts the rest and closes
    await asyncio.wait_for(sinks.stop(0.3), 5.0)
    assert channel.pending == [] and outbox.counters.dropped_records == 50
    assert _metric(sinks, "edge_agent_sink_records_dropped_total") == 50
    assert sink.stopped and sink.accepted == []
    with pytest.raises(sqlite3.ProgrammingError):
        outbox._db.execute("SELECT 1")


async def test_a_delivery_loop_that_dies_is_logged_at_once_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "rec.sqlite")
    sink = RecordingSink(fail_first=RuntimeError("a bug in the sink"))
    sinks = _sink_set(tmp_path, outbox, sink)
    sinks.publish_records(_records(0, 30))
    await _until(lambda: outbox.counters.acked_records == 30)
    assert sink.accepted == list(range(30))  # the batch of the dead loop is offered again, from the oldest
    assert outbox.counters.acked_records == 30 and len(outbox) == 0
    assert sinks.channels[0].delivery_restarts == 1
    died = [r for r in caplog.records if "delivery to rec stopped with an error" in r.getMessage()]
    assert len(died) == 1 and died[0].exc_info is not None and "a bug in the sink" in str(died[0].exc_info[1])
    sinks.export_metrics()
    assert _metric(sinks, "edge_agent_sink_restarts_total") == 1
    await sinks.stop(1.0)
    assert sink.stopped
