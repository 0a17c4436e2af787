"""A put that lands between an empty take and the wait still wakes the delivery loop at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edge_agent.outbox import Outbox
from edge_agent.records import Kind, Record


async def test_a_put_after_watch_wakes_the_later_wait(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    try:
        watched = outbox.watch()
        assert await outbox.take_async(10) == []
        await outbox.put_async([Record(Kind.RAW, "k", b"x")])  # lands before the loop starts waiting
        began = time.monotonic()
        await asyncio.wait_for(outbox.wait_for_data(5.0, watched), 1.0)
        assert time.monotonic() - began < 0.5
        # without a watch taken before the take, the same put is not seen: the wait runs its course
        began = time.monotonic()
        await outbox.wait_for_data(0.3)
        assert time.monotonic() - began >= 0.29
    finally:
        await outbox.close_async()
