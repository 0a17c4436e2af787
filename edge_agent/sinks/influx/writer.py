"""InfluxDB sink (influxdb-client async API): line protocol encoded at send time, gzip, Retry-After, dead letters for 400s."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import gzip
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

from edge_agent.records import Record
from edge_agent.sinks.delivery import SinkError
from edge_agent.sinks.influx.config import InfluxSink
from edge_agent.sinks.influx.encoder import LineProtocolEncoder

log = logging.getLogger("edge_agent.sinks.influx")

#: While the server does not answer, how often `wait_ready` asks it (GET /ping: no data, no token needed),
#: and how long one such question may take
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 5.0


class _Rejected(Exception):
    """The server answered 400 (or 413) to a body: some of its lines are bad (or it is too big)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class InfluxCounters:
    """Self-metrics of the InfluxDB sink."""

    requests: int = 0
    lines_written: int = 0
    rejected_requests: int = 0
    dead_letter_lines: int = 0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


_V2_NOT_FOUND = re.compile(r"\b(bucket|organization)\b.*\bnot found\b", re.IGNORECASE | re.DOTALL)


def not_found(config: InfluxSink, message: str) -> str:
    """What a 404 to a write means, from the server's message: a missing org or bucket, or no /api/v2/write at all."""
    where = f"InfluxDB {config.url}"
    if _V2_NOT_FOUND.search(message):
        # InfluxDB 2.x: 'bucket "x" not found', 'organization name "x" not found'
        return (
            f"{where}: org {config.org!r} or bucket {config.bucket!r} not found ({message}); "
            "check sinks.influx.org and sinks.influx.bucket"
        )
    if "database not found" in message:
        # InfluxDB 1.8+ behind its 2.x compatibility endpoint: the bucket names "database/retention_policy"
        return (
            f"{where}: the database of bucket {config.bucket!r} does not exist ({message}); on InfluxDB 1.x "
            "sinks.influx.bucket is 'database/retention_policy' (or just 'database'): check it, or create the database"
        )
    shown = " ".join(message.split())[:120] or "no message"
    return (
        f"{where}: the server has no /api/v2/write (HTTP 404: {shown}); an InfluxDB 1.x server? 1.8 and later "
        "serve it (org '-', bucket 'database/retention_policy'), older ones need an upgrade; "
        "otherwise check sinks.influx.url"
    )


class InfluxWriter:
    """Writes outbox records to /api/v2/write as line protocol; `send` returns once every line is stored
    or dead-lettered.

    A 400 means the server refused some lines. InfluxDB 2.x writes the good lines of the body and names
    the first bad one; VictoriaMetrics skips malformed lines itself (204) but refuses a whole body with
    400 for an over-long line, having stored the lines before it. Either way the body is bisected:
    halves are re-sent until each refused line stands alone and goes to the dead-letter file with the
    server's reason. Re-sending a line that was already stored is harmless: a point is identified by
    its series and timestamp, so it is overwritten with the same value.
    """

    def __init__(self, config: InfluxSink, dead_letter: Path, name: str = "influx") -> None:
        self.name = name
        self.config = config
        self.dead_letter = Path(dead_letter)
        self.counters = InfluxCounters()
        self.encoder = LineProtocolEncoder()
        self._client: InfluxDBClientAsync | None = None
        self._service: WriteService | None = None
        self._unanswered = False  # the last write got no HTTP answer at all (refused, reset, timed out)

    async def start(self) -> None:
        """Create the HTTP client (nothing is sent until the first write)."""
        token = self.config.token.get_secret_value() if self.config.token is not None else "unset"
        # gzip is done here at level 1 on a worker thread; the client's own gzip runs level 9 on the event loop
        self._client = InfluxDBClientAsync(
            url=self.config.url,
            token=token,
            org=self.config.org,
            timeout=int(self.config.timeout * 1000),
            enable_gzip=False,
        )
        self._service = WriteService(self._client.api_client)

    async def stop(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.close()
        self._client = None
        self._service = None

    async def send(self, records: Sequence[Record]) -> None:
        """Write the lines of all records; raise SinkError if the server cannot take them now."""
        if self._service is None:
            await self.start()
        body = self.encoder.encode(records)
        if not body:
            return  # e.g. only indicator sets whose every value was undefined
        try:
            await self._post(body)
        except _Rejected as exc:
            self.counters.rejected_requests += 1
            log.warning(
                "influx %s: HTTP %d (%s); isolating the refused lines",
                self.config.url,
                exc.status,
                exc.reason,
            )
            lines = body.splitlines(keepends=True)
            bad: list[tuple[bytes, str]] = []
            await self._bisect(lines, exc.reason, bad)
            try:
                await asyncio.to_thread(self._write_dead_letters, bad)
            except OSError as err:
                # the refused lines stay in the outbox until they can be set aside (disk full, bad path)
                raise SinkError(
                    f"influx: cannot write {len(bad)} refused lines to {self.dead_letter} ({err}); "
                    "free disk space or fix sinks.influx.dead_letter"
                ) from None
            self.counters.dead_letter_lines += len(bad)
            log.error(
                "influx: %d lines refused by the server moved to %s (first reason: %s)",
                len(bad),
                self.dead_letter,
                bad[0][1] if bad else "-",
            )

    async def wait_ready(self) -> None:
        """Return once the server answers GET /ping after a write got no answer; never after an HTTP refusal.

        A refusal (401, 404, 5xx, Retry-After) comes from a server that is up: the back-off decides when to try again.
        """
        if not self._unanswered:
            await asyncio.get_running_loop().create_future()  # never done: the back-off ends this wait
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if await self._ping():
                return

    async def _ping(self) -> bool:
        """True if the server answered /ping with 2xx within PROBE_TIMEOUT_S (the same base URL as the writes)."""
        client = self._client
        if client is None:
            return False  # stopped: the next send starts a client
        try:
            async with asyncio.timeout(min(self.config.timeout, PROBE_TIMEOUT_S)):
                await client.ping()
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError):
            return False
        return True

    async def _bisect(self, lines: list[bytes], reason: str, bad: list[tuple[bytes, str]]) -> None:
        """Send `lines` (known to be refused as a whole) in halves until every refused line stands alone."""
        if len(lines) == 1:
            bad.append((lines[0], reason))
            return
        mid = len(lines) // 2
        for half in (lines[:mid], lines[mid:]):
            try:
                await self._post(b"".join(half))
            except _Rejected as exc:
                await self._bisect(half, exc.reason, bad)

    async def _post(self, body: bytes) -> None:
        assert self._service is not None
        cfg = self.config
        data = body
        # no Content-Encoding header at all without gzip: the client would send None as a header
        # value, which aiohttp refuses before anything goes out
        encoding: dict[str, str] = {}
        if cfg.gzip:
            data = await asyncio.to_thread(gzip.compress, body, 1)
            encoding["content_encoding"] = "gzip"
        self.counters.requests += 1
        try:
            await self._service.post_write_async(
                org=cfg.org,
                bucket=cfg.bucket,
                body=data,
                precision=WritePrecision.NS,
                content_type="text/plain; charset=utf-8",
                **encoding,
            )
        except ApiException as exc:
            self._unanswered = False
            status = int(exc.status or 0)
            raw_message = exc.message or exc.reason or ""
            message = (
                raw_message.decode(errors="replace") if isinstance(raw_message, bytes) else str(raw_message)
            )
            # 422: InfluxDB 2.x took part of the body and refused the rest (points outside the bucket's
            # retention after a long outage, a field type conflict): retrying it would block the sink
            if status in (400, 413, 422):
                raise _Rejected(status, message.strip()) from None
            if status in (401, 403):
                raise SinkError(
                    f"InfluxDB {cfg.url} refused the token ({status} {message}); "
                    "check sinks.influx.token and its environment variable"
                ) from None
            if status == 404:
                raise SinkError(not_found(cfg, message.strip())) from None
            raise SinkError(
                f"InfluxDB {cfg.url}: HTTP {status} {message}", retry_after=parse_retry_after(exc.retry_after)
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._unanswered = True
            raise SinkError(f"InfluxDB {cfg.url} unreachable: {exc or type(exc).__name__}") from None
        self._unanswered = False
        self.counters.lines_written += body.count(b"\n")

    def _write_dead_letters(self, bad: list[tuple[bytes, str]]) -> None:
        if not bad:
            return
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        with self.dead_letter.open("ab") as f:
            for line, reason in bad:
                f.write(
                    orjson.dumps(
                        {"time": now, "reason": reason, "line": line.rstrip(b"\n").decode(errors="replace")}
                    )
                    + b"\n"
                )
            f.flush()
            # the lines leave the outbox once this returns: they must be on disk first
            os.fsync(f.fileno())
