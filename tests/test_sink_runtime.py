"""Shutting down with a backlog: the outbox flush reports its progress and leaves the rest on disk."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.metrics import AgentMetrics
from edge_agent.records import AgentStatus
from edge_agent.sinks.runtime import SinkSet
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
    caplog.set_level(logging.INFO, logger="edge_agent.sinks.runtime")
    await sinks.stop(2.5, AgentStatus(time.time_ns(), "offline", {}))
    progress = [r.getMessage() for r in caplog.records if "flushing outboxes" in r.getMessage()]
    assert len(progress) == 2, progress  # after 1 s and 2 s of the 2.5 s allowed
    assert progress[0].startswith("flushing outboxes before exit (1 of 2.5 s): influx ")
    assert progress[-1].endswith(" left of 41 (0 records/s)") and "influx 41 left" in progress[-1]
    assert any("41 records stay in the outboxes" in r.getMessage() for r in caplog.records)
