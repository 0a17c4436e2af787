"""Puts on the writer thread and takes/acks on the reader thread at the same time: nothing waits on the other side's
queue, and every record comes out once, in order, with the byte count back at zero."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.records import Kind, Record


async def test_a_put_does_not_queue_behind_the_reader_thread(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    blocked = threading.Event()
    try:
        # occupy the reader thread, as a take or an ack on a slow disk would
        stuck = asyncio.get_running_loop().run_in_executor(outbox._reader, blocked.wait, 10.0)
        await asyncio.wait_for(outbox.put_async([Record(Kind.RAW, "k", b"x")]), 2.0)
        assert len(outbox) == 1
        blocked.set()
        await stuck
        assert [s.record.payload for s in await outbox.take_async(10)] == [b"x"]
    finally:
        blocked.set()
        await outbox.close_async()


@pytest.mark.parametrize(
    ("when_full", "cap"), [("drop_oldest", 1 << 30), ("drop_oldest", 64 * 1024), ("drop_newest", 64 * 1024)]
)
def test_concurrent_put_take_ack_keep_order_and_counts(tmp_path: Path, when_full: str, cap: int) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=cap, when_full=when_full)  # type: ignore[arg-type]
    total = 3000
    done = threading.Event()

    def produce() -> None:
        for k in range(0, total, 30):
            outbox.put(
                [Record(Kind.RAW, f"m{i % 7}", f"{i}:".encode() + b"y" * 300, 2) for i in range(k, k + 30)]
            )
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    seen: list[int] = []
    while not (done.is_set() and len(outbox) == 0):
        got = outbox.take(50)
        seen += [int(s.record.payload.split(b":")[0]) for s in got]
        outbox.ack([s.id for s in got])
    producer.join()
    c = outbox.counters
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # in order, each once
    assert len(seen) + c.dropped_records == total
    assert c.acked_records == len(seen) and c.dropped_values == 2 * c.dropped_records
    assert outbox.bytes_used == 0 and len(outbox) == 0 and outbox.in_flight == 0
    outbox.close()
