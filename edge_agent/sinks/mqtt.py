"""MQTT sink (paho-mqtt 2.x, MQTT 3.1.1 or 5): QoS 1 publishing acknowledged by PUBACK, retained status, last will, TLS.

paho runs in a publisher process of its own (`edge_agent.sinks.mqtt_io`, which explains why); this
module is the agent's side of it: it starts the process, hands it batches, awaits their PUBACKs,
mirrors its connection state and restarts it if it dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.config import MqttSink
from edge_agent.records import Kind, Record
from edge_agent.sinks.delivery import SinkConfigError, SinkError
from edge_agent.sinks.mqtt_io import Message, PahoSession, Settings

log = logging.getLogger(__name__)

#: The directory that holds the `edge_agent` package, for the publisher process's import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 30.0


class MqttPublisher:
    """Publishes outbox records to one broker; `send` returns only when the broker acknowledged every message.

    The paho session lives in a publisher process (one per sink) that this object starts and
    talks to over a pipe: a batch goes out as one pickled list of (topic, payload, retain) and
    comes back as one reply. A reader thread takes the replies, completes the senders' futures and
    mirrors the session's state (connected, counts, last error) and log lines. If the process
    dies, every batch it held fails (the delivery loop resends them from the outbox) and a new
    process is started after a back-off.
    """

    def __init__(
        self,
        config: MqttSink,
        client_id: str | None = None,
        online: Record | None = None,
        will: Record | None = None,
        name: str = "mqtt",
        ack_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.config = config
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.client_id = client_id or config.client_id or f"edge-agent-{socket.gethostname()}"
        self._will = will
        tls = config.tls
        self.settings = Settings(
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            protocol=config.protocol,
            username=config.username,
            password=config.password.get_secret_value() if config.password is not None else None,
            ca_file=str(tls.ca_file) if tls is not None else None,
            cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
            key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
            check_hostname=tls.check_hostname if tls is not None else True,
            keepalive=config.keepalive,
            qos=config.qos,
            max_inflight=config.max_inflight,
            ack_timeout=ack_timeout,
            will=_message(will) if will is not None else None,
            online=_message(online) if online is not None else None,
        )
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self.restarts = 0
        self._counts_before = (0, 0)  # connects and disconnects of the processes before this one
        self._connected = False
        self._stopping = False
        self._session: PahoSession | None = None  # publisher = "thread": the session runs in this process
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, concurrent.futures.Future[None]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        # one thread writes to the pipe, in order: a full pipe must block it, never the event loop
        self._sender = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-pipe")

    @property
    def connected(self) -> bool:
        """True while the publisher process reports a connection (between CONNACK and the next disconnect)."""
        return self._connected

    @property
    def pid(self) -> int | None:
        """The publisher process's pid (for its resident memory in self-metrics and benchmarks)."""
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 10.0) -> None:
        """Start the publisher process and connect; raises SinkConfigError for TLS or credential problems.

        A broker that is down is not an error: the process keeps retrying and `send` fails until it connects.
        """
        if self.config.publisher == "thread":
            self._session = PahoSession(self.settings, on_state=self._mirror)
            error = await asyncio.to_thread(self._session.open, timeout)
            if error is not None:
                raise SinkConfigError(error)
            return
        error = await asyncio.to_thread(self._spawn, timeout + 20.0)
        if error is not None:
            await self.stop(publish_offline=False)
            raise SinkConfigError(error)
        self._reader = threading.Thread(target=self._read_replies, name=f"{self.name}-replies", daemon=True)
        self._reader.start()

    def _spawn(self, timeout: float) -> str | None:
        """Start a publisher process and wait for its connection attempt; its configuration error, if any."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.sinks.mqtt_io", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
            )
        conn = Connection(ours.detach())
        self._conn = conn
        conn.send(("settings", self.settings))
        deadline = time.monotonic() + timeout
        while conn.poll(max(0.0, deadline - time.monotonic())):
            reply = conn.recv()
            if reply[0] == "opened":
                return reply[1]  # type: ignore[no-any-return]
            self._handle(reply)
        raise SinkError(f"{self.settings.where}: the publisher process did not start within {timeout:.0f} s")

    async def stop(self, publish_offline: bool = True) -> None:
        """Publish the offline status (retained), disconnect cleanly and end the publisher process."""
        if publish_offline and self._will is not None and self.connected:
            try:
                await asyncio.wait_for(self.send([self._will]), 5.0)
            except (SinkError, TimeoutError):
                pass  # best effort on shutdown: the broker's last will says offline anyway
        self._stopping = True
        if self._session is not None:
            await asyncio.to_thread(self._session.close)
            self._connected = False
            return
        await asyncio.to_thread(self._end_process)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join)
            self._reader = None
        self._sender.shutdown(wait=False)
        self._connected = False

    def _end_process(self) -> None:
        process, conn = self._process, self._conn
        if conn is not None:
            try:
                conn.send(("stop",))
            except OSError:
                pass  # already gone
        if process is not None:
            try:
                process.wait(10.0)  # DISCONNECT takes at most 2 s
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if conn is not None and self._reader is None:
            conn.close()

    # ------------------------------------------------------------------ sending (event loop side)

    async def send(self, records: Sequence[Record]) -> None:
        """Publish every record at the configured QoS; return when all are acknowledged, else raise SinkError."""
        conn = self._conn
        if not self._connected or (conn is None and self._session is None):
            raise SinkError(
                f"MQTT broker {self.host}:{self.port} not connected ({self.last_error or 'connecting'})"
            )
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._session is not None:
            self._session.submit([_message(r) for r in records], functools.partial(_complete, future))
            await asyncio.wrap_future(future)
            return
        assert conn is not None
        batch_id = next(self._ids)
        with self._pending_lock:
            self._pending[batch_id] = future
        messages = [_message(r) for r in records]
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._sender, conn.send, ("batch", batch_id, messages)
            )
        except OSError as exc:
            with self._pending_lock:
                self._pending.pop(batch_id, None)
            raise SinkError(f"MQTT {self.host}:{self.port}: publisher process gone ({exc})") from None
        await asyncio.wrap_future(future)

    def _mirror(self, session: PahoSession) -> None:
        """The in-process session's state, as the publisher process would report it."""
        self._connected = session.connected
        self.connects, self.disconnects, self.last_error = (
            session.connects,
            session.disconnects,
            session.last_error,
        )

    # ------------------------------------------------------------------ replies (reader thread)

    def _read_replies(self) -> None:
        """Complete batches and mirror state from the process's replies; restart the process if it dies."""
        delay = _RESTART_MIN_S
        while True:
            conn = self._conn
            assert conn is not None
            try:
                while True:
                    self._handle(conn.recv())
            except (EOFError, OSError):
                pass
            conn.close()
            self._connected = False
            self._fail_pending("publisher process ended before acknowledging")
            if self._stopping:
                return
            code = self._process.wait() if self._process is not None else None
            self.last_error = f"publisher process exited (code {code})"
            log.error("MQTT %s:%d: %s; restarting it in %.0f s", self.host, self.port, self.last_error, delay)
            self._counts_before = (self.connects, self.disconnects)
            time.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX_S)
            while not self._stopping:
                try:
                    error = self._spawn(30.0)
                except (OSError, SinkError, EOFError) as exc:
                    error = str(exc)
                if error is None:
                    self.restarts += 1
                    break
                log.error("MQTT %s:%d: publisher process restart failed: %s", self.host, self.port, error)
                time.sleep(delay)
                delay = min(delay * 2, _RESTART_MAX_S)
            if self._stopping:
                return

    def _handle(self, reply: tuple) -> None:  # type: ignore[type-arg]
        kind = reply[0]
        if kind == "done":
            with self._pending_lock:
                future = self._pending.pop(reply[1], None)
            if future is not None:
                _complete(future, reply[2])
        elif kind == "state":
            _, self._connected, connects, disconnects, self.last_error = reply
            self.connects = self._counts_before[0] + connects
            self.disconnects = self._counts_before[1] + disconnects
        elif kind == "log":
            _, level, logger, text = reply
            logging.getLogger(logger).log(level, "%s", text)

    def _fail_pending(self, why: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(SinkError(f"MQTT broker {self.host}:{self.port}: {why}"))


def _complete(future: concurrent.futures.Future[None], error: str) -> None:
    """Complete a sender's future with a batch's outcome ("" = every message acknowledged)."""
    if future.done():
        return
    if error:
        future.set_exception(SinkError(error))
    else:
        future.set_result(None)


def _message(record: Record) -> Message:
    """What the publisher process needs of a record; status messages are retained."""
    return record.key, record.payload, record.kind is Kind.STATUS
