"""A full disk under the outbox: the caller sees SQLite's own error, and the outbox works again once there is room."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import CHECKPOINT_BYTES, Outbox
from edge_agent.records import Kind, Record


class FullDisk:
    """A connection whose writes fail like SQLite's on a full disk: it rolls the transaction back, then raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def _fail(self, sql: str) -> None:
        if self.full and sql.lstrip().upper().startswith(("INSERT", "DELETE")):
            self.db.execute("ROLLBACK")  # SQLITE_FULL ends the transaction before the error reaches us
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._fail(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._fail(sql)
        return self.db.executemany(sql, rows)


def _records(first: int, count: int) -> list[Record]:
    return [Record(Kind.RAW, "m", str(i).encode()) for i in range(first, first + count)]


def test_a_put_on_a_full_disk_raises_sqlites_error_and_stores_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    try:
        outbox.put(_records(0, 3))
        used = outbox.bytes_used
        disk = FullDisk(outbox._db)
        outbox._db = disk  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            outbox.put(_records(3, 4))
        assert (len(outbox), outbox.bytes_used, outbox.counters.put_records) == (3, used, 3)
        disk.full = False
        outbox.put(_records(3, 4))
        assert [int(s.record.payload) for s in outbox.take(100)] == list(range(7))
        assert outbox.counters.put_records == 7 and outbox.counters.dropped_records == 0
    finally:
        outbox._db = getattr(outbox._db, "db", outbox._db)
        outbox.close()


def test_an_ack_on_a_full_disk_raises_sqlites_error_and_can_be_repeated(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    try:
        outbox.put(_records(0, 5))
        ids = [s.id for s in outbox.take(5)]
        disk = FullDisk(outbox._rdb)
        outbox._rdb = disk  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            outbox.ack(ids)
        assert (len(outbox), outbox.in_flight, outbox.counters.acked_records) == (5, 5, 0)
        disk.full = False
        outbox.ack(ids)
        assert (len(outbox), outbox.in_flight, outbox.counters.acked_records) == (0, 0, 5)
    finally:
        outbox._rdb = getattr(outbox._rdb, "db", outbox._rdb)
        outbox.close()


class CheckpointFails(FullDisk):
    """Deletes work, the WAL checkpoint after them fails (the database file cannot grow)."""

    def _fail(self, sql: str) -> None:
        if self.full and "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")


def test_an_ack_whose_checkpoint_fails_is_still_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    try:
        outbox.put(_records(0, 5))
        outbox._unchecked_bytes = CHECKPOINT_BYTES  # the next ack checkpoints
        ids = [s.id for s in outbox.take(5)]
        disk = CheckpointFails(outbox._rdb)
        outbox._rdb = disk  # type: ignore[assignment]
        outbox.ack(ids)  # committed: the failed checkpoint must not make it look failed
        assert (len(outbox), outbox.in_flight, outbox.counters.acked_records) == (0, 0, 5)
        assert outbox._unchecked_bytes == CHECKPOINT_BYTES  # the next ack tries the checkpoint again
    finally:
        outbox._rdb = getattr(outbox._rdb, "db", outbox._rdb)
        outbox.close()


def test_a_second_outbox_on_the_same_file_is_refused_with_the_holder(tmp_path: Path) -> None:
    """Two agents on one outbox would both deliver every record: the second open names the holder and the fix."""
    from edge_agent.outbox import OutboxError

    first = Outbox(tmp_path / "mqtt.sqlite")
    first.put(_records(0, 3))
    with pytest.raises(
        OutboxError, match=rf"in use by another process \(pid {os.getpid()}\).*sinks.outbox.dir"
    ):
        Outbox(tmp_path / "mqtt.sqlite")
    first.close()
    again = Outbox(tmp_path / "mqtt.sqlite")  # released at close
    assert len(again) == 3
    again.close()


def test_an_outbox_that_cannot_be_opened_is_not_set_aside_as_damaged(tmp_path: Path) -> None:
    """Only a damaged file is moved aside and salvaged; one SQLite cannot open (here a folder) stays where it is."""
    from edge_agent.outbox import OutboxError

    path = tmp_path / "mqtt.sqlite"
    path.mkdir()
    (path / "keep").write_text("not ours to move")
    with pytest.raises(OutboxError, match=r"cannot open .*check that the folder is writable"):
        Outbox(path)
    assert (path / "keep").exists() and not list(tmp_path.glob("*.damaged-*"))
    # the failed open released its lock: trying again meets the same problem, not "in use"
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(path)


def test_counting_drops_never_waits_behind_a_take_or_an_ack(tmp_path: Path) -> None:
    """The event loop counts records it had to drop itself: that must not wait for the lock a take or an ack holds."""
    outbox = Outbox(tmp_path / "mqtt.sqlite")
    counting = threading.Thread(target=outbox.count_dropped, args=(_records(0, 3),))
    with outbox._lock:  # as the reader thread holds it through a take's SELECT or an ack's commit
        counting.start()
        counting.join(timeout=5)
        assert not counting.is_alive()
    assert outbox.counters.dropped_records == 3 and outbox.counters.dropped_by_kind == {"raw": 3}
    outbox.close()


def test_a_half_opened_outbox_releases_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the second connection cannot be made, the failed open lets go of the lock: the next open works."""
    real = Outbox._connect
    calls = []

    def second_fails(self: Outbox, path: Path) -> sqlite3.Connection:
        calls.append(path)
        if len(calls) == 2:
            raise sqlite3.OperationalError("unable to open database file")
        return real(self, path)

    monkeypatch.setattr(Outbox, "_connect", second_fails)
    with pytest.raises(sqlite3.OperationalError):
        Outbox(tmp_path / "mqtt.sqlite")
    monkeypatch.setattr(Outbox, "_connect", real)
    outbox = Outbox(tmp_path / "mqtt.sqlite")
    outbox.put(_records(0, 2))
    assert len(outbox) == 2
    outbox.close()
