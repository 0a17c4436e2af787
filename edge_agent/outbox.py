"""Disk store-and-forward for one sink: SQLite in WAL mode, bounded by bytes, with exact drop and corruption counts.

Invariants (docs/outbox.md explains the choices):

I1  A record is in the outbox (committed, and with sync="full" fsynced) before `put` returns;
    the sink is only ever given records that `take` read back from the outbox.
I2  A record leaves the outbox only by `ack` (the sink confirmed it), by a counted drop
    (the cap was reached) or as a counted corrupt record. Nothing else deletes rows.
I3  `take` hands records out in id order, and ids only grow (AUTOINCREMENT never reuses one),
    so the order of puts is the order of delivery: per series and overall.
I4  A taken, unacknowledged record (in flight) is never dropped: the sink may be sending it.
    Every stored row with id <= `_taken_upto` is in flight; every row above it is not.
I5  `_bytes` equals the sum of `stored_size` over the rows in the table; the cap is enforced on it.
I6  After a crash nothing is in flight: every stored record is delivered again (at least once);
    records acknowledged just before a crash may be delivered twice (consumers dedupe).

Concurrency: puts run on a writer connection and thread, takes and acks on a reader connection and
thread (WAL lets a reader work during a writer's fsync; SQLite serializes the two writers, put and
ack). So a put never queues behind a take, and waits for an ack only for its short commit.
`_lock` guards the memory state (`_taken_upto`, `_inflight`, `_bytes`, `_count`, counters).
A put that fits only inserts rows above every id a take can have seen, so it needs `_lock` only to
decide that it fits and to count what it added. A put that must drop holds `_lock` for its whole
transaction: its victims must not be taken meanwhile (I4).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from edge_agent.records import Kind, Record, Stored

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A registration for the next put's wake-up: the loop it is in and the event a put sets.
Watch = tuple[asyncio.AbstractEventLoop, asyncio.Event]

#: Bytes counted per row on top of its key and payload: rowid, columns, b-tree cell and index entry.
ROW_OVERHEAD = 64

#: Bytes put between two WAL checkpoints, which run on the reader thread after an ack.
CHECKPOINT_BYTES = 16 * 1024 * 1024
#: WAL pages after which the writer checkpoints after all: nothing is acknowledged (an outage), so the
#: reader's checkpoints do not come, and the WAL must not grow without bound.
WRITER_CHECKPOINT_PAGES = 8192

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    crc     INTEGER NOT NULL,
    key     TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_rank ON records (rank, id);
"""


def stored_size(record: Record) -> int:
    """Bytes a record counts against the cap."""
    return len(record.payload) + len(record.key.encode()) + ROW_OVERHEAD


#: Kind by its stored number (a dict lookup is several times cheaper than calling the enum per row).
_KINDS: dict[int, Kind] = {int(k): k for k in Kind}


def _crc(key: str, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(key.encode()))


class OutboxError(RuntimeError):
    """The outbox cannot be opened as configured (in use by another agent, unreadable, read-only); the message says what to do."""


# SQLite errors that mean the file itself is damaged (set aside and salvaged), not that it is unreachable
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _claim(path: Path) -> int:
    """Take the outbox's lock file for this process, or raise OutboxError naming the process that holds it.

    Two agents on one outbox would each take and deliver the same records; SQLite would let them.
    """
    lock = Path(f"{path}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OutboxError(
            f"outbox {path} is in use by another process (pid {holder}); two agents must not share an "
            "outbox: stop the other one, or give this one its own sinks.outbox.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class OutboxCounters:
    """What happened to records since the outbox was opened; exported as self-metrics."""

    put_records: int = 0
    put_values: int = 0
    acked_records: int = 0
    acked_values: int = 0
    dropped_records: int = 0
    dropped_values: int = 0
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    corrupt_records: int = 0
    """Rows whose checksum did not match, or that could not be read back from a damaged file."""
    salvaged_files: int = 0
    """Damaged database files set aside at start-up (their readable rows were kept)."""


class Outbox:
    """A bounded on-disk FIFO of encoded records for one sink; every call is one SQLite transaction.

    The methods are blocking; the event loop uses the `*_async` versions, which run puts on the
    outbox's writer thread and takes and acks on its reader thread (so SQLite and its fsyncs never
    block the loop, and each connection is only ever used from one thread at a time).
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 512 * 1024 * 1024,
        when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        keep_priority: bool = True,
        sync: Literal["full", "normal"] = "full",
        name: str | None = None,
    ) -> None:
        if max_bytes < 4096:
            raise ValueError(f"outbox max_bytes must be at least 4096 (got {max_bytes})")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"outbox when_full must be 'drop_oldest' or 'drop_newest' (got {when_full!r})")
        if sync not in ("full", "normal"):
            raise ValueError(f"outbox sync must be 'full' or 'normal' (got {sync!r})")
        self.path = Path(path)
        self.name = name or self.path.stem
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.keep_priority = keep_priority
        self.sync = sync
        self.counters = OutboxCounters()
        self._lock = threading.Lock()
        # the drop counters and their log throttle: held only while counting, so the event loop can count
        # records it dropped itself without waiting behind SQLite (order: _lock, then _counters_lock)
        self._counters_lock = threading.Lock()
        self._put_lock = threading.Lock()  # one put at a time: its "fits" decision holds until it commits
        # Serializes the two connections' write transactions. SQLite would too, but its busy handler
        # sleeps 1, 2, 5... ms between tries; a lock hands over the moment the other commit ends.
        # Order: _put_lock, then _lock, then _commit_lock.
        self._commit_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{self.name}-put")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{self.name}-take")
        self._inflight: dict[int, tuple[int, int]] = {}  # id -> (stored size, n)
        self._taken_upto = 0
        self._bytes = 0
        self._count = 0
        self._drop_log_at = 0.0
        self._drops_unlogged = 0
        self._waiters: list[Watch] = []
        # a separate lock: the event loop must never wait behind an fsync held under _lock
        self._waiters_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _claim(self.path)
        try:
            self._db = self._open()  # puts
            self._rdb = self._connect(self.path)  # takes, acks, corrupt-record deletes, checkpoints
            # SQLite checkpoints in the commit that crosses 1000 WAL pages: copying 16 MB to the database
            # file and its fsync then land on one put (tens of ms). The reader thread checkpoints instead,
            # after an ack, while puts go on (a passive checkpoint does not take the write lock).
            self._db.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
            self._rdb.execute("PRAGMA wal_autocheckpoint=0")
            if self.sync == "full":
                # A lost ack only means a duplicate delivery after a crash (I6), never a lost record, so
                # acks commit without their own fsync; the next put's fsync of the WAL covers them.
                self._rdb.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            # a half-opened outbox must not keep its lock: a retry (or a reload) would find it "in use"
            for name in ("_rdb", "_db"):
                db = getattr(self, name, None)
                if db is not None:
                    db.close()
            os.close(self._lock_fd)
            self._writer.shutdown(wait=False)
            self._reader.shutdown(wait=False)
            raise
        self._unchecked_bytes = 0

    # ------------------------------------------------------------------ opening and salvage

    def _connect(self, path: Path) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one call is exactly one transaction;
        # the timeout is how long a put waits for an ack's commit (and the other way round)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
        # only takes effect for a new file: records are 0.5-5 KB, and with 4 KB pages most of them
        # straddle pages (put, and the delete at ack, cost about twice as much as with 16 KB pages)
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
        return db

    def _open(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = self._connect(self.path)
            # quick_check walks every b-tree page: a file torn by a disk fault is caught here, at start-up,
            # rather than by the first take long after
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            db.executescript(_SCHEMA)
            self._bytes, self._count = db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM records"
            ).fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            # only a damaged file is set aside; a locked, unreadable or read-only one is not the
            # file's fault, and moving it would strand its backlog
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorname not in _DAMAGED:
                raise OutboxError(
                    f"outbox {self.name}: cannot open {self.path} ({exc}); check that the folder is "
                    "writable by the agent's user and the disk is not full"
                ) from exc
            return self._salvage(exc)

    def _salvage(self, error: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Set a damaged file aside, copy every row that still reads back, count the rest as corrupt."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        damaged = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(Path(f"{damaged}{suffix}"))
        log.error(
            "outbox %s: %s is damaged (%s); moved it to %s and keeping the records that still read back",
            self.name,
            self.path,
            error,
            damaged,
        )
        rows, lost = _read_what_survives(damaged)
        db = self._connect(self.path)
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO records (id, kind, rank, n, size, crc, key, payload) VALUES (?,?,?,?,?,?,?,?)", rows
        )
        db.execute("COMMIT")
        self._bytes = sum(r[4] for r in rows)
        self._count = len(rows)
        self.counters.corrupt_records += lost
        self.counters.salvaged_files += 1
        log.error("outbox %s: kept %d records, %d could not be read", self.name, len(rows), lost)
        return db

    # ------------------------------------------------------------------ put

    def put(self, records: Sequence[Record]) -> None:
        """Store records durably (one transaction), dropping by policy when the cap is reached."""
        if not records:
            return
        rows = [
            (int(r.kind), r.kind.drop_rank, r.n, stored_size(r), _crc(r.key, r.payload), r.key, r.payload)
            for r in records
        ]
        incoming = sum(row[3] for row in rows)
        with self._put_lock:
            with self._lock:
                fits = self._bytes + incoming <= self.max_bytes
            if fits:
                # only acks and corrupt deletes change _bytes meanwhile, and they lower it: it still fits
                self._transaction(
                    lambda db: db.executemany(
                        "INSERT INTO records (kind, rank, n, size, crc, key, payload) VALUES (?,?,?,?,?,?,?)",
                        rows,
                    )
                )
                with self._lock:
                    self._counted_put(rows, incoming, len(rows), [])
            else:
                with self._lock:
                    self._counted_put(rows, *self._transaction(lambda _db: self._put_when_full(rows)))
        self._wake()

    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """`body` on the writer connection in one transaction: committed, or rolled back and re-raised."""
        db = self._db
        with self._commit_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = body(db)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        return result

    def _counted_put(
        self, rows: list[tuple], added_bytes: int, added_rows: int, dropped: list[tuple[int, int]]
    ) -> None:
        # memory state changes only after the commit, so a failed commit leaves I5 intact
        self._bytes += added_bytes
        self._count += added_rows
        self._unchecked_bytes += added_bytes
        self.counters.put_records += len(rows)
        self.counters.put_values += sum(row[2] for row in rows)
        self._count_drops(dropped)

    def _put_when_full(self, rows: list[tuple]) -> tuple[int, int, list[tuple[int, int]]]:
        """Insert row by row, evicting by policy; returns (bytes added net, rows added net, [(kind, n) dropped])."""
        db = self._db
        net_bytes = 0
        net_rows = 0
        dropped: list[tuple[int, int]] = []
        for row in rows:
            kind, rank, n, size = row[0], row[1], row[2], row[3]
            fits = True
            while self._bytes + net_bytes + size > self.max_bytes:
                victim = self._victim(rank) if size <= self.max_bytes else None
                if victim is None:
                    fits = False
                    break
                vid, vkind, vn, vsize = victim
                db.execute("DELETE FROM records WHERE id = ?", (vid,))
                net_bytes -= vsize
                net_rows -= 1
                dropped.append((vkind, vn))
            if fits:
                db.execute(
                    "INSERT INTO records (kind, rank, n, size, crc, key, payload) VALUES (?,?,?,?,?,?,?)", row
                )
                net_bytes += size
                net_rows += 1
            else:
                dropped.append((kind, n))
        return net_bytes, net_rows, dropped

    def _victim(self, rank: int) -> tuple[int, int, int, int] | None:
        """The stored record to evict for a new record of `rank`, or None to drop the new one (I4: never in flight)."""
        # rows above _taken_upto are exactly the rows not in flight (I4)
        floor = self._taken_upto
        if self.keep_priority:
            if self.when_full == "drop_oldest":
                # lowest rank first, oldest first within it; never a rank above the newcomer's
                sql = "SELECT id, kind, n, size FROM records WHERE id > ? AND rank <= ? ORDER BY rank, id LIMIT 1"
            else:
                # only a strictly lower rank makes way for a newcomer; newest first within it
                sql = (
                    "SELECT id, kind, n, size FROM records WHERE id > ? AND rank < ? "
                    "ORDER BY rank, id DESC LIMIT 1"
                )
            found = self._db.execute(sql, (floor, rank)).fetchone()
        elif self.when_full == "drop_oldest":
            found = self._db.execute(
                "SELECT id, kind, n, size FROM records WHERE id > ? ORDER BY id LIMIT 1", (floor,)
            ).fetchone()
        else:
            found = None
        return None if found is None else (found[0], found[1], found[2], found[3])

    def count_dropped(self, records: Sequence[Record]) -> None:
        """Count records dropped before they reached the outbox (the disk could not take them); never waits on SQLite."""
        # called on the event loop: only the counters' own lock, never _lock (a take or an ack holds it)
        self._count_drops([(int(r.kind), r.n) for r in records])

    def _count_drops(self, dropped: list[tuple[int, int]]) -> None:
        if not dropped:
            return
        with self._counters_lock:
            self._count_drops_locked(dropped)

    def _count_drops_locked(self, dropped: list[tuple[int, int]]) -> None:
        c = self.counters
        for kind, n in dropped:
            c.dropped_records += 1
            c.dropped_values += n
            name = Kind(kind).topic_name
            c.dropped_by_kind[name] = c.dropped_by_kind.get(name, 0) + 1
        self._drops_unlogged += len(dropped)
        now = time.monotonic()
        # one line per 10 s at most: a full outbox during a long outage must not flood the log
        if now - self._drop_log_at >= 10.0:
            log.warning(
                "outbox %s full (%d bytes cap, %s): dropped %d records since last report, %d in total %s",
                self.name,
                self.max_bytes,
                self.when_full,
                self._drops_unlogged,
                c.dropped_records,
                c.dropped_by_kind,
            )
            self._drop_log_at = now
            self._drops_unlogged = 0

    # ------------------------------------------------------------------ take / ack / release

    def take(
        self, max_records: int, max_bytes: int | None = None, max_values: int | None = None
    ) -> list[Stored]:
        """The oldest records not yet in flight (at least one if any, then up to the limits); they become in flight."""
        out: list[Stored] = []
        corrupt: list[tuple[int, int]] = []
        with self._lock:
            cursor = self._rdb.execute(
                "SELECT id, kind, n, size, crc, key, payload FROM records WHERE id > ? ORDER BY id LIMIT ?",
                (self._taken_upto, max_records),
            )
            total = 0
            values = 0
            for rid, kind, n, size, crc, key, payload in cursor:
                if max_bytes is not None and out and total + size > max_bytes:
                    break
                if max_values is not None and out and values + n > max_values:
                    break
                self._taken_upto = rid
                if _crc(key, payload) != crc or kind not in _KINDS:
                    corrupt.append((rid, size))
                    continue
                total += size
                values += n
                self._inflight[rid] = (size, n)
                out.append(Stored(rid, Record(_KINDS[kind], key, bytes(payload), n)))
            cursor.close()
            if corrupt:
                self._delete_corrupt(corrupt)
        return out

    def _delete_corrupt(self, corrupt: list[tuple[int, int]]) -> None:
        db = self._rdb
        with self._commit_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM records WHERE id = ?", [(rid,) for rid, _ in corrupt])
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        self._bytes -= sum(size for _, size in corrupt)
        self._count -= len(corrupt)
        self.counters.corrupt_records += len(corrupt)
        log.error(
            "outbox %s: skipped %d corrupt records (checksum mismatch), first id %d",
            self.name,
            len(corrupt),
            corrupt[0][0],
        )

    def ack(self, ids: Iterable[int]) -> None:
        """Delete records the sink confirmed; only in-flight ids may be acknowledged."""
        ids = sorted(set(ids))
        if not ids:
            return
        with self._lock:
            # every stored row with an id in a run is in flight (I4) and in `ids`, so the ranges delete
            # exactly the acknowledged rows
            unknown = [i for i in ids if i not in self._inflight]
            if unknown:
                raise ValueError(f"outbox {self.name}: ack of ids not in flight: {unknown[:5]}")
            db = self._rdb  # synchronous=NORMAL: no fsync of its own (see __init__)
            with self._commit_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    # one range delete per run of consecutive ids (a batch is usually one run)
                    db.executemany("DELETE FROM records WHERE id BETWEEN ? AND ?", _runs(ids))
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            for i in ids:
                size, n = self._inflight.pop(i)
                self._bytes -= size
                self._count -= 1
                self.counters.acked_records += 1
                self.counters.acked_values += n
            checkpoint = self._unchecked_bytes >= CHECKPOINT_BYTES
            if checkpoint:
                self._unchecked_bytes = 0
        if checkpoint:
            # outside _lock: a put's bookkeeping must not wait for the checkpoint's fsync
            try:
                self._rdb.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.OperationalError as exc:
                # the ack is committed: raising would make the caller ack again (ids no longer in flight);
                # a failed checkpoint (disk full) only postpones it, to the next ack
                self._unchecked_bytes = CHECKPOINT_BYTES
                log.warning(
                    "outbox %s: WAL checkpoint failed (%s); trying again after the next ack", self.name, exc
                )

    def release(self) -> None:
        """Forget what is in flight: the next take starts again from the oldest stored record."""
        with self._lock:
            self._inflight.clear()
            self._taken_upto = 0

    async def release_async(self) -> None:
        """`release` on the reader thread, so it comes after any take still queued there."""
        await self._run(self._reader, self.release)

    # ------------------------------------------------------------------ state

    @property
    def bytes_used(self) -> int:
        """Bytes counted against the cap (I5)."""
        return self._bytes

    def __len__(self) -> int:
        return self._count

    @property
    def in_flight(self) -> int:
        """Records taken and not yet acknowledged."""
        return len(self._inflight)

    def close(self) -> None:
        """Finish queued calls, checkpoint and close the database; stops the outbox's threads."""
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        with self._put_lock, self._lock:
            self._rdb.close()
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()
                os.close(self._lock_fd)

    # ------------------------------------------------------------------ asyncio side

    async def _run(self, executor: ThreadPoolExecutor, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def put_async(self, records: Sequence[Record]) -> None:
        """`put` on the writer thread."""
        await self._run(self._writer, self.put, records)

    async def take_async(
        self, max_records: int, max_bytes: int | None = None, max_values: int | None = None
    ) -> list[Stored]:
        """`take` on the reader thread."""
        result: list[Stored] = await self._run(self._reader, self.take, max_records, max_bytes, max_values)
        return result

    async def ack_async(self, ids: Sequence[int]) -> None:
        """`ack` on the reader thread."""
        await self._run(self._reader, self.ack, ids)

    async def close_async(self) -> None:
        """`close` on a helper thread (it waits for the outbox threads to finish)."""
        await asyncio.to_thread(self.close)

    def watch(self) -> Watch:
        """Start listening for puts now; pass the result to `wait_for_data` after a take came back empty.

        Registering before the take closes the gap in which a put lands after the take looked
        and before the waiter is in place (that put would otherwise wait for the next one).
        """
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._waiters_lock:
            self._waiters.append(entry)
        return entry

    def unwatch(self, watched: Watch) -> None:
        """Stop listening (the take found data after all)."""
        with self._waiters_lock:
            if watched in self._waiters:
                self._waiters.remove(watched)

    async def wait_for_data(self, wait_s: float, watched: Watch | None = None) -> None:
        """Return when a put happened (since `watched` began, or from now) or after `wait_s` seconds."""
        entry = watched or self.watch()
        try:
            await asyncio.wait_for(entry[1].wait(), wait_s)
        except TimeoutError:
            pass
        finally:
            self.unwatch(entry)

    def _wake(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # that loop is closed; its waiter is gone with it


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does on SQLITE_FULL, SQLITE_IOERR...)."""
    # a ROLLBACK without a transaction raises "no transaction is active", which would hide the real error
    if db.in_transaction:
        db.execute("ROLLBACK")


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct ids as (first, last) runs of consecutive ids."""
    runs: list[tuple[int, int]] = []
    first = last = ids[0]
    for i in ids[1:]:
        if i != last + 1:
            runs.append((first, last))
            first = i
        last = i
    runs.append((first, last))
    return runs


def _read_what_survives(path: Path) -> tuple[list[tuple], int]:
    """Rows of a damaged outbox file that read back with a valid checksum, and how many did not.

    A scan stops with an error at a damaged page. The scan then reads one row at a time and steps
    past ids it cannot reach, until rows read again. Ids are dense (each put takes the next ones),
    so the ids skipped between readable rows are the lost rows; rows acknowledged or dropped before
    the damage also leave gaps, so `lost` is an upper bound. Damage to an interior page can hide
    everything below it: the file is kept aside for `sqlite3 FILE .recover` in that case.
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return [], 0
    sql = "SELECT id, kind, rank, n, size, crc, key, payload FROM records WHERE id > ? ORDER BY id LIMIT ?"
    rows: list[tuple] = []
    lost = 0
    try:
        try:
            top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            last_id = int(top[0]) if top else 0
        except sqlite3.DatabaseError:
            last_id = 0
        after = 0  # every id <= after has been read or given up on
        seen = 0  # last id read back, good or bad
        damaged_before_first = False
        failures_in_a_row = 0
        limit = 1000
        while True:
            try:
                batch = db.execute(sql, (after, limit)).fetchall()
            except sqlite3.DatabaseError:
                if limit > 1:
                    limit = 1  # read up to the damaged page row by row
                    continue
                after += 1
                failures_in_a_row += 1
                damaged_before_first = damaged_before_first or not seen
                if (last_id and after >= last_id) or failures_in_a_row > 1_000_000:
                    break
                continue
            failures_in_a_row = 0
            limit = 1000
            if not batch:
                break
            for row in batch:
                rid, _kind, _rank, _n, _size, crc, key, payload = row
                if (seen or damaged_before_first) and rid - seen > 1:
                    lost += rid - seen - 1
                seen = rid
                if isinstance(key, str) and isinstance(payload, bytes) and _crc(key, payload) == crc:
                    rows.append(row)
                else:
                    lost += 1
            after = batch[-1][0]
        if last_id > seen:
            lost += last_id - seen
    except sqlite3.DatabaseError:
        pass
    finally:
        db.close()
    return rows, lost
