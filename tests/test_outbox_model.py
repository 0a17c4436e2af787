"""The outbox against a plain list model: put, take, ack, release, crash-and-reopen, full (hypothesis state machine)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge_agent.outbox import Outbox, stored_size
from edge_agent.records import Kind, Record

CAP = 4096


@dataclass
class Row:
    """A record as the model holds it."""

    id: int
    record: Record

    @property
    def size(self) -> int:
        return stored_size(self.record)


class OutboxModel(RuleBasedStateMachine):
    """Every operation is applied to the real outbox and to a list; they must agree on every read."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.generation = 0
        self.rows: list[Row] = []
        self.next_id = 1
        self.taken_upto = 0
        self.inflight: list[int] = []
        self.serial = 0
        self.dropped = 0
        self.dropped_values = 0
        self.outbox: Outbox | None = None

    @initialize(
        when_full=st.sampled_from(["drop_oldest", "drop_newest"]),
        keep_priority=st.booleans(),
        sync=st.sampled_from(["full", "normal"]),
    )
    def open_outbox(self, when_full: str, keep_priority: bool, sync: str) -> None:
        self.options = {"when_full": when_full, "keep_priority": keep_priority, "sync": sync}
        self.outbox = Outbox(self._path(), max_bytes=CAP, **self.options)  # type: ignore[arg-type]

    def _path(self) -> Path:
        return self.tmp / f"gen{self.generation}" / "sink.db"

    # ---------------------------------------------------------------- the model's drop policy

    def _victim(self, rank: int) -> Row | None:
        candidates = [r for r in self.rows if r.id > self.taken_upto]
        if self.options["keep_priority"]:
            if self.options["when_full"] == "drop_oldest":
                eligible = [r for r in candidates if r.record.kind.drop_rank <= rank]
                return min(eligible, key=lambda r: (r.record.kind.drop_rank, r.id), default=None)
            eligible = [r for r in candidates if r.record.kind.drop_rank < rank]
            return min(eligible, key=lambda r: (r.record.kind.drop_rank, -r.id), default=None)
        if self.options["when_full"] == "drop_oldest":
            return candidates[0] if candidates else None
        return None

    def _model_put(self, records: list[Record]) -> None:
        used = sum(r.size for r in self.rows)
        if used + sum(stored_size(r) for r in records) <= CAP:
            for rec in records:
                self.rows.append(Row(self.next_id, rec))
                self.next_id += 1
            return
        for rec in records:
            size = stored_size(rec)
            fits = True
            while sum(r.size for r in self.rows) + size > CAP:
                victim = self._victim(rec.kind.drop_rank) if size <= CAP else None
                if victim is None:
                    fits = False
                    break
                self.rows.remove(victim)
                self.dropped += 1
                self.dropped_values += victim.record.n
            if fits:
                self.rows.append(Row(self.next_id, rec))
                self.next_id += 1
            else:
                self.dropped += 1
                self.dropped_values += rec.n

    # ---------------------------------------------------------------- rules

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(list(Kind)),
                st.sampled_from([0, 90, 700, 1300]) | st.integers(0, 1500),
                st.integers(1, 50),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def put(self, batch: list[tuple[Kind, int, int]]) -> None:
        records = []
        for kind, size, n in batch:
            self.serial += 1
            payload = f"{self.serial}:".encode() + b"x" * size
            records.append(Record(kind, f"site/m{self.serial % 3}/{kind.topic_name}", payload, n))
        assert self.outbox is not None
        self.outbox.put(records)
        self._model_put(records)

    @rule(n=st.integers(1, 8))
    def take(self, n: int) -> None:
        assert self.outbox is not None
        got = self.outbox.take(n)
        expected = [r for r in self.rows if r.id > self.taken_upto][:n]
        assert [(s.id, s.record) for s in got] == [(r.id, r.record) for r in expected]
        if expected:
            self.taken_upto = expected[-1].id
        self.inflight.extend(r.id for r in expected)

    @precondition(lambda self: bool(self.inflight))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(self.inflight), min_size=1, unique=True))
        assert self.outbox is not None
        self.outbox.ack(chosen)
        self.rows = [r for r in self.rows if r.id not in chosen]
        self.inflight = [i for i in self.inflight if i not in chosen]

    @rule()
    def release(self) -> None:
        assert self.outbox is not None
        self.outbox.release()
        self.taken_upto = 0
        self.inflight = []

    @rule()
    def crash_and_reopen(self) -> None:
        """Copy the files of the open database (what kill -9 leaves on disk), reopen the copy."""
        assert self.outbox is not None
        old = self._path()
        self.generation += 1
        new = self._path()
        new.parent.mkdir(parents=True)
        for suffix in ("", "-wal"):
            if Path(f"{old}{suffix}").exists():
                shutil.copyfile(f"{old}{suffix}", f"{new}{suffix}")
        self.outbox.close()
        self.outbox = Outbox(new, max_bytes=CAP, **self.options)  # type: ignore[arg-type]
        self.taken_upto = 0
        self.inflight = []
        self.dropped = 0
        self.dropped_values = 0

    # ---------------------------------------------------------------- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        if self.outbox is None:
            return
        assert len(self.outbox) == len(self.rows)
        assert self.outbox.bytes_used == sum(r.size for r in self.rows)
        assert self.outbox.bytes_used <= CAP
        assert self.outbox.counters.dropped_records == self.dropped
        assert self.outbox.counters.dropped_values == self.dropped_values
        assert self.outbox.in_flight == len(self.inflight)
        assert self.outbox.counters.corrupt_records == 0

    def teardown(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


OutboxModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestOutboxModel = OutboxModel.TestCase
