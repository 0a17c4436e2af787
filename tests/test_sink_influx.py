"""InfluxDB sink through the on-disk outbox against a real VictoriaMetrics: round trip, SIGKILL during an outage,
outbox cap during an outage, a corrupted outbox file, lines refused with HTTP 400."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_agent.outbox import Outbox, stored_size
from edge_agent.records import Kind, Record, RecordPacker, Source
from edge_agent.sinks.delivery import Backoff, DeliveryLoop, SinkError
from edge_agent.sinks.influx.config import InfluxSink
from edge_agent.sinks.influx.encoder import LineProtocolEncoder
from edge_agent.sinks.influx.writer import InfluxWriter, parse_retry_after
from edge_agent.types import Quality, Readings, SignalTable
from tests.services import VictoriaMetrics, free_port
from tests.sink_services import TunedVictoriaMetrics

REPO = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000_000_000_000  # ns; every test writes distinct timestamps so points never overwrite each other
FAST = Backoff(initial=0.05, maximum=0.5)


def _furnace_table() -> SignalTable:
    table = SignalTable()
    for zone in range(4):
        table.add("furnace-1", f"zone_{zone}", "°C")
    return table


def _lines(measurement: str, first: int, count: int) -> Record:
    """`count` single-value lines with distinct timestamps, as one record; same-length records for same counts."""
    body = "".join(
        f"{measurement},machine=m1,signal=s value={1_000_000 + i}.5 {T0 + i * 1_000_000}\n"
        for i in range(first, first + count)
    )
    return Record(Kind.RAW, "m1", body.encode(), count)


@pytest.fixture
def own_vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics this test may stop and restart."""
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    yield vm
    vm.stop()


async def _deliver_all(outbox: Outbox, writer: InfluxWriter, timeout: float = 30) -> DeliveryLoop:
    loop = DeliveryLoop(outbox, writer, batch_records=500, batch_values=5000, backoff=FAST)
    loop.start()
    try:
        assert await loop.wait_drained(timeout), f"outbox still holds {len(outbox)} records"
    finally:
        await loop.stop()
    return loop


async def test_raw_values_land_with_tags_units_quality(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    table = _furnace_table()
    packer = RecordPacker(table)
    source = Source("furnace-1", equipment="it_furnace", site="p1", area="ht", line="l2")
    rows = table.rows_of("furnace-1")
    batches = [
        Readings.of(
            rows,
            T0 + k * 1_000_000_000,
            [850.0 + k, 851.25, 849.5, 10.0],
            [0, 0, 0, Quality.BAD_SENSOR_FAILURE],
        )
        for k in range(3)
    ]
    outbox = Outbox(tmp_path / "influx.db")
    await outbox.put_async([packer.raw(source, r) for r in batches])
    writer = InfluxWriter(InfluxSink(url=victoria.url), tmp_path / "dead.jsonl")
    await _deliver_all(outbox, writer)
    await writer.stop()
    outbox.close()
    values = victoria.export('{__name__="it_furnace_value"}')
    by_signal = {s["metric"]["signal"]: s for s in values}
    assert sorted(by_signal) == ["zone_0", "zone_1", "zone_2"]  # zone_3 was bad: no value field
    z0 = by_signal["zone_0"]
    assert z0["metric"] == {
        "__name__": "it_furnace_value",
        "site": "p1",
        "area": "ht",
        "line": "l2",
        "machine": "furnace-1",
        "signal": "zone_0",
        "unit": "°C",
    }
    assert z0["values"] == [850.0, 851.0, 852.0]
    assert z0["timestamps"] == [T0 // 1_000_000 + k * 1000 for k in range(3)]
    quality = {s["metric"]["signal"]: s["values"] for s in victoria.export('{__name__="it_furnace_quality"}')}
    assert quality["zone_3"] == [float(Quality.BAD_SENSOR_FAILURE)] * 3
    assert quality["zone_1"] == [0.0] * 3
    assert not (tmp_path / "dead.jsonl").exists()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from edge_agent.sinks.influx.config import InfluxSink
    from edge_agent.outbox import Outbox
    from edge_agent.sinks.delivery import Backoff, DeliveryLoop, SinkError
    from edge_agent.sinks.influx.writer import InfluxWriter
    from tests.test_sink_influx import _lines

    async def main(path, url):
        outbox = Outbox(path)
        loop = DeliveryLoop(outbox, InfluxWriter(InfluxSink(url=url), path + ".dead"), backoff=Backoff(0.05, 0.2))
        loop.start()
        for k in range(10_000):
            await outbox.put_async([_lines("killed", k * 50, 50)])
            # the put returned: these 50 points are acknowledged into the outbox
            print(k + 1, flush=True)
            await asyncio.sleep(0.005)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_sigkill_during_outage_loses_no_acknowledged_point(own_vm: VictoriaMetrics, tmp_path: Path) -> None:
    path = tmp_path / "influx.db"
    own_vm.stop()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), own_vm.url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    own_vm.start()
    outbox = Outbox(path)
    stored_points = sum(s.record.n for s in outbox.take(100_000))
    outbox.release()
    assert stored_points >= acknowledged * 50  # nothing acknowledged was lost by the kill
    writer = InfluxWriter(InfluxSink(url=own_vm.url), tmp_path / "dead.jsonl")

    async def deliver() -> None:
        await _deliver_all(outbox, writer)
        await writer.stop()

    asyncio.run(deliver())
    outbox.close()
    assert own_vm.count('{__name__="killed_value"}') == stored_points


async def test_cap_reached_during_outage_counts_every_drop(own_vm: VictoriaMetrics, tmp_path: Path) -> None:
    record = _lines("capped", 0, 40)  # every record below has this same stored size
    size = stored_size(record)
    capacity = 40
    outbox = Outbox(tmp_path / "influx.db", max_bytes=capacity * size + size // 2)
    writer = InfluxWriter(InfluxSink(url=own_vm.url), tmp_path / "dead.jsonl")
    own_vm.stop()
    loop = DeliveryLoop(outbox, writer, batch_records=5, backoff=FAST)
    loop.start()
    total = 100
    for k in range(total):
        await outbox.put_async([_lines("capped", k * 40, 40)])
        await asyncio.sleep(0.002)
    assert loop.counters.failures >= 1  # the loop was trying, and failing, all along
    overflow = total - capacity
    assert outbox.counters.dropped_records == overflow
    assert outbox.counters.dropped_values == overflow * 40
    assert outbox.counters.dropped_by_kind == {"raw": overflow}
    own_vm.start()
    assert await loop.wait_drained(30)
    await loop.stop()
    await writer.stop()
    outbox.close()
    assert own_vm.count('{__name__="capped_value"}') == (total - overflow) * 40


async def test_corrupted_outbox_file_starts_counts_and_delivers_the_rest(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    path = tmp_path / "influx.db"
    outbox = Outbox(path)
    outbox.put([_lines("corrupt", k * 10, 10) for k in range(30)])
    outbox.close()
    raw = bytearray(path.read_bytes())
    damaged = 0
    for k in (3, 17, 29):  # flip a digit inside three records' payloads
        marker = f"value={1_000_000 + k * 10 + 4}.5 ".encode()
        at = raw.find(marker)
        assert at > 0
        raw[at + 6] = ord("9") if raw[at + 6] != ord("9") else ord("8")
        damaged += 1
    path.write_bytes(bytes(raw))
    reopened = Outbox(path)
    assert len(reopened) == 30
    writer = InfluxWriter(InfluxSink(url=victoria.url), tmp_path / "dead.jsonl")
    await _deliver_all(reopened, writer)
    await writer.stop()
    assert reopened.counters.corrupt_records == damaged
    reopened.close()
    assert victoria.count('{__name__="corrupt_value"}') == (30 - damaged) * 10


def test_outbox_file_with_a_damaged_page_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "influx.db"
    outbox = Outbox(path)
    for k in range(200):
        outbox.put([_lines("trunc", k * 20, 20)])
    outbox.close()
    page = int.from_bytes(path.read_bytes()[16:18], "big")  # the page size in the file header
    pages = path.stat().st_size // page
    with path.open("r+b") as f:  # a disk fault: one page in the middle of the file is garbage
        f.seek(pages // 2 * page)
        f.write(b"\xa5" * page)
    reopened = Outbox(path)
    assert reopened.counters.salvaged_files == 1
    kept = len(reopened)
    assert 0 < kept < 200
    assert kept + reopened.counters.corrupt_records == 200  # no acks happened, so the count is exact
    got = reopened.take(1000)
    assert [s.record for s in got] == [_lines("trunc", (s.id - 1) * 20, 20) for s in got]
    reopened.close()
    assert list(tmp_path.glob("influx.db.damaged-*"))


@pytest.fixture
def dedup_vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics with deduplication on, as a production setup that may receive a point twice runs it.

    Bisecting re-sends lines VictoriaMetrics had already stored before the bad one; InfluxDB overwrites such
    a point, VictoriaMetrics keeps both copies unless deduplication is on.
    """
    vm = TunedVictoriaMetrics(tmp_path / "vm-dedup", flags=["-dedup.minScrapeInterval=1ms"])
    vm.start()
    yield vm
    vm.stop()


async def test_lines_refused_with_400_go_to_dead_letter_rest_lands(
    dedup_vm: VictoriaMetrics, tmp_path: Path
) -> None:
    victoria = dedup_vm
    # VictoriaMetrics skips malformed lines silently (204); an over-long line (> -influx.maxLineSize, 256 KiB)
    # is what it refuses with a real 400, so that is the bad line here
    huge = f"refused,machine=m1,signal={'x' * 300_000} value=1 {T0}\n".encode()
    records = [_lines("refused", k * 100, 100) for k in range(10)]
    records[2] = Record(Kind.RAW, "m1", records[2].payload + huge, 101)
    records[7] = Record(Kind.RAW, "m1", huge + records[7].payload, 101)
    outbox = Outbox(tmp_path / "influx.db")
    await outbox.put_async(records)
    dead = tmp_path / "dead.jsonl"
    writer = InfluxWriter(InfluxSink(url=victoria.url), dead)
    await _deliver_all(outbox, writer)
    await writer.stop()
    outbox.close()
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert len(letters) == 2
    assert all(entry["line"].encode() + b"\n" == huge for entry in letters)
    assert all("too long line" in entry["reason"] for entry in letters)
    assert writer.counters.dead_letter_lines == 2
    assert victoria.count('{__name__="refused_value"}') == 1000


async def test_uncompressed_writes_land(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    """sinks.influx.gzip = false sends plain bodies (it once sent a None Content-Encoding and nothing went out)."""
    outbox = Outbox(tmp_path / "influx.db")
    await outbox.put_async([_lines("plain_body", k * 10, 10) for k in range(5)])
    writer = InfluxWriter(InfluxSink(url=victoria.url, gzip=False), tmp_path / "dead.jsonl")
    await _deliver_all(outbox, writer)
    await writer.stop()
    outbox.close()
    assert writer.counters.lines_written == 50
    assert victoria.count('{__name__="plain_body_value"}') == 50


class _PartialWriteServer:
    """A stand-in for InfluxDB 2.x answering 422 (part of the body refused, the rest taken) for points before 2000.

    VictoriaMetrics never answers 422; InfluxDB does for points outside a bucket's retention,
    which is what a long outage's backlog meets.
    """

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.requests = 0

    async def __aenter__(self) -> str:
        from aiohttp import web

        async def write(request: web.Request) -> web.Response:
            self.requests += 1
            lines = (await request.read()).splitlines(keepends=True)
            old = [ln for ln in lines if int(ln.rsplit(b" ", 1)[1]) < 946_684_800_000_000_000]
            self.taken += [ln for ln in lines if ln not in old]
            if old:
                body = {"code": "unprocessable entity", "message": "points beyond retention policy dropped=1"}
                return web.json_response(body, status=422)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/api/v2/write", write)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_points_refused_with_422_go_to_dead_letter_and_the_rest_flows(tmp_path: Path) -> None:
    """A 422 is a partial write: the refused points are isolated and set aside instead of retried forever."""
    records = [_lines("partial", k * 10, 10) for k in range(5)]
    stale = b"partial,machine=m1,signal=s value=1 315532800000000000\n"  # 1980: beyond any retention
    records[3] = Record(Kind.RAW, "m1", records[3].payload + stale, 11)
    outbox = Outbox(tmp_path / "influx.db")
    await outbox.put_async(records)
    dead = tmp_path / "dead.jsonl"
    async with _PartialWriteServer() as url:
        writer = InfluxWriter(InfluxSink(url=url), dead)
        await _deliver_all(outbox, writer, timeout=10)
        await writer.stop()
    outbox.close()
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [entry["line"].encode() + b"\n" for entry in letters] == [stale]
    assert "retention" in letters[0]["reason"]
    assert writer.counters.dead_letter_lines == 1


async def test_unwritable_dead_letter_file_keeps_the_lines_in_the_outbox(tmp_path: Path) -> None:
    """Refused lines leave the outbox only once they are on disk elsewhere: an unwritable dead-letter path is retried."""
    stale = b"partial,machine=m1,signal=s value=1 315532800000000000\n"
    outbox = Outbox(tmp_path / "influx.db")
    await outbox.put_async([Record(Kind.RAW, "m1", stale, 1)])
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the dead-letter folder should be")
    async with _PartialWriteServer() as url:
        writer = InfluxWriter(InfluxSink(url=url), blocker / "dead.jsonl")
        loop = DeliveryLoop(outbox, writer, batch_records=500, batch_values=5000, backoff=FAST)
        loop.start()
        await asyncio.sleep(0.5)
        assert len(outbox) == 1 and writer.counters.dead_letter_lines == 0  # kept, and the loop still runs
        blocker.unlink()
        assert await loop.wait_drained(10)
        await loop.stop()
        await writer.stop()
    outbox.close()
    assert writer.counters.dead_letter_lines == 1
    assert (blocker / "dead.jsonl").read_bytes().count(b"315532800000000000") == 1


class _BusyServer:
    """An InfluxDB stand-in on a fixed port that answers /ping (204) but refuses every write with 503."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pings = 0

    async def __aenter__(self) -> _BusyServer:
        from aiohttp import web

        async def write(_request: web.Request) -> web.Response:
            return web.Response(status=503, text="busy")

        async def ping(_request: web.Request) -> web.Response:
            self.pings += 1
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/api/v2/write", write)
        app.router.add_get("/ping", ping)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_wait_ready_probes_only_a_server_that_did_not_answer(tmp_path: Path) -> None:
    """A refusal (503) is the back-off's to wait out; a write that got no answer is retried once /ping answers."""
    port = free_port()
    writer = InfluxWriter(InfluxSink(url=f"http://127.0.0.1:{port}"), tmp_path / "dead.jsonl")
    records = [_lines("probe", 0, 5)]
    try:
        async with _BusyServer(port) as busy:
            with pytest.raises(SinkError, match="HTTP 503"):
                await writer.send(records)
            with pytest.raises(TimeoutError):  # up, and said no: no probe cuts the back-off short
                await asyncio.wait_for(writer.wait_ready(), 2.5)
            assert busy.pings == 0
        with pytest.raises(SinkError, match="unreachable"):
            await writer.send(records)
        waiting = asyncio.ensure_future(writer.wait_ready())
        await asyncio.sleep(1.5)  # probes fail while nothing listens
        assert not waiting.done()
        async with _BusyServer(port) as back:
            await asyncio.wait_for(waiting, 3.0)  # the next probe after the server is back
            assert back.pings == 1
    finally:
        await writer.stop()


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_line_protocol_escapes_and_skips_nan() -> None:
    table = SignalTable()
    table.add("m 1", "temp,zone=1", "deg C")
    record = RecordPacker(table).raw(
        Source("m 1", equipment="oven"), Readings.of([0, 0], [5, 6], [1.0, np.nan])
    )
    assert LineProtocolEncoder().encode([record]) == (
        b"oven,area=area1,line=line1,machine=m\\ 1,site=plant1,signal=temp\\,zone\\=1,unit=deg\\ C "
        b"value=1.0,quality=0i 5\n"
        b"oven,area=area1,line=line1,machine=m\\ 1,site=plant1,signal=temp\\,zone\\=1,unit=deg\\ C "
        b"quality=139i 6\n"
    )


class _NotFoundServer:
    """An HTTP server in plain asyncio that answers every request with 404 and a given body, as servers do."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.paths: list[str] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.paths.append(head.split(b" ", 2)[1].decode())
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: "
                + self.content_type.encode()
                + b"\r\nContent-Length: "
                + str(len(self.body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + self.body
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("body", "content_type", "says", "not_said"),
    [
        # InfluxDB 1.7 and older, or anything else without the path: Go's default 404 page
        (
            b"404 page not found\n",
            "text/plain; charset=utf-8",
            r"the server has no /api/v2/write \(HTTP 404: 404 page not found\); an InfluxDB 1\.x server\? 1\.8 and later serve it",
            "sinks.influx.org",
        ),
        (
            b"<html><body>Not Found</body></html>",
            "text/html",
            r"has no /api/v2/write .*check sinks\.influx\.url",
            "sinks.influx.org",
        ),
        # InfluxDB 2.x itself
        (
            b'{"code":"not found","message":"bucket \\"process\\" not found"}',
            "application/json",
            r"org 'shopfloor' or bucket 'process' not found \(bucket \"process\" not found\); check sinks\.influx\.org and sinks\.influx\.bucket",
            "/api/v2/write",
        ),
        (
            b'{"code":"not found","message":"organization name \\"shopfloor\\" not found"}',
            "application/json",
            r"org 'shopfloor' or bucket 'process' not found",
            "/api/v2/write",
        ),
        # InfluxDB 1.8's compatibility endpoint with a database that does not exist
        (
            b'{"error":"database not found: \\"process\\""}',
            "application/json",
            r"the database of bucket 'process' does not exist .*'database/retention_policy'",
            "/api/v2/write",
        ),
    ],
)
async def test_a_404_says_whether_the_org_or_bucket_or_the_write_endpoint_is_missing(
    tmp_path: Path, body: bytes, content_type: str, says: str, not_said: str
) -> None:
    """A 404 from a server without /api/v2/write (InfluxDB 1.7, a wrong URL) is not reported as a missing org/bucket."""
    server = _NotFoundServer(body, content_type)
    async with server as url:
        writer = InfluxWriter(InfluxSink(url=url, gzip=False), tmp_path / "dead.jsonl")
        try:
            with pytest.raises(SinkError, match=says) as caught:
                await writer.send([_lines("nf", 0, 1)])
        finally:
            await writer.stop()
    assert not_said not in str(caught.value)
    assert server.paths == ["/api/v2/write?org=shopfloor&bucket=process&precision=ns"]
