"""MQTT sink (paho-mqtt 2.x, MQTT 3.1.1 or 5): QoS 1 publishing acknowledged by PUBACK, retained status, last will, TLS.

The paho session (`edge_agent.sinks.mqtt.session`) runs on a thread of the agent by default, or with
`sinks.mqtt.publisher = "process"` in a publisher process of its own (session.py explains why); this
module is the agent's side of either: it hands the session batches, awaits their PUBACKs, mirrors
its connection state and replaces it if it fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
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

from edge_agent.records import Kind, Record
from edge_agent.sinks.delivery import SinkConfigError, SinkError
from edge_agent.sinks.mqtt.config import MqttSink
from edge_agent.sinks.mqtt.encoder import MqttEncoder
from edge_agent.sinks.mqtt.session import Message, PahoSession, Settings, open_session

log = logging.getLogger("edge_agent.sinks.mqtt")

#: The directory that holds the `edge_agent` package, for the publisher process's import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 30.0


class MqttPublisher:
    """Publishes outbox records to one broker; `send` returns only when the broker acknowledged every message.

    `send` encodes the records it is given (topic and JSON from `sinks.mqtt`'s template and prefix);
    `online` and `will` are messages already encoded. `offline_at_stop` publishes the will's
    offline status at a clean stop (the agent queues its own offline status instead).

    With `publisher = "thread"` the paho session runs in this process and completes the senders'
    futures itself; a session whose I/O thread failed is replaced at the next send.
    With `publisher = "process"` it runs in a publisher process (one per sink) that this object
    starts and talks to over a pipe: a batch goes out as one pickled list of (topic, payload,
    retain) and comes back as one reply. A reader thread takes the replies, completes the senders'
    futures and mirrors the session's state (connected, counts, last error) and log lines. If the
    process dies, every batch it held fails (the delivery loop resends them from the outbox) and a
    new process is started after a back-off.
    """

    def __init__(
        self,
        config: MqttSink,
        client_id: str | None = None,
        online: Record | None = None,
        will: Record | None = None,
        name: str = "mqtt",
        ack_timeout: float = 30.0,
        offline_at_stop: bool = True,
    ) -> None:
        self.name = name
        self.config = config
        self.encoder = MqttEncoder(config.topic_prefix, config.topic_template)
        self.offline_at_stop = offline_at_stop
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
        self._started_at = 0.0  # monotonic time the current process started
        self._stop_event = threading.Event()  # cuts a restart back-off short
        # a restart (by the reader thread) and the end of the process (by stop) never interleave
        self._life_lock = threading.Lock()
        self._connected = False
        self._stopping = False
        # wait_ready: the connection count a failed send was made on, and a wake-up for each state change
        self._failed_on = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_changed = asyncio.Event()
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
        """The publisher process's pid (None with the thread publisher), for operators and tests."""
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 10.0) -> None:
        """Start the publisher process and connect; raises SinkConfigError for TLS or credential problems.

        A broker that is down is not an error: the process keeps retrying and `send` fails until it connects.
        """
        self._loop = asyncio.get_running_loop()
        if self.config.publisher == "thread":
            self._session, error = await asyncio.to_thread(
                open_session, self.settings, self._mirror, lambda: None
            )
            if error is not None:
                raise SinkConfigError(error)
            return
        try:
            error = await asyncio.to_thread(self._spawn, timeout + 20.0)
        except (EOFError, OSError, SinkError) as exc:
            code = await asyncio.to_thread(self._discard_process)
            raise SinkConfigError(
                f"{self.settings.where}: the MQTT publisher process failed to start ({_failure(exc, code)}); "
                "its own error is in the agent's log output (stderr or the journal)"
            ) from None
        if error is not None:
            await self.stop(publish_offline=False)
            raise SinkConfigError(error)
        self._started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read_replies, name=f"{self.name}-replies", daemon=True)
        self._reader.start()

    def _spawn(self, timeout: float) -> str | None:
        """Start a publisher process and wait for its connection attempt; its configuration error, if any."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.sinks.mqtt.session", str(theirs.fileno())],
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

    def _discard_process(self) -> int | None:
        """Kill the current publisher process if it still runs, reap it and close its pipe; its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            self._close(conn)
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()

    async def stop(self, publish_offline: bool | None = None) -> None:
        """Publish the offline status (retained; by default if `offline_at_stop`), disconnect, end the publisher process."""
        if publish_offline is None:
            publish_offline = self.offline_at_stop
        if publish_offline and self._will is not None and self.connected:
            try:
                await asyncio.wait_for(self._publish([self._will]), 5.0)
            except (SinkError, TimeoutError):
                pass  # best effort on shutdown: the broker's last will says offline anyway
        self._stopping = True
        self._stop_event.set()
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
        # under the lock: a restart in progress finishes first (and its process is the one ended
        # here), and none starts after it, since _stopping is already set
        with self._life_lock:
            process, conn = self._process, self._conn
            if conn is not None:
                # through the sender thread, the pipe's only writer: "stop" never lands inside a batch's bytes
                try:
                    self._sender.submit(conn.send, ("stop",)).result(10.0)
                except (OSError, RuntimeError, concurrent.futures.TimeoutError):
                    pass  # already gone, or not reading: the wait below ends it
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
        """Encode and publish outbox records at the configured QoS; return when all are acknowledged, else raise SinkError."""
        connection = self.connects
        messages = self.encoder.encode(records)
        if not messages:
            return
        try:
            await self._publish(messages)
        except SinkError:
            self._failed_on = max(self._failed_on, connection)
            raise

    async def wait_ready(self) -> None:
        """Return once a connection newer than the one the last failed send was made on is up (the broker is back)."""
        while True:
            self._state_changed.clear()
            if self._connected and self.connects > self._failed_on:
                return
            await self._state_changed.wait()

    def _notify(self) -> None:
        """Wake `wait_ready` after a state change (called on the session's or the reply reader's thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody waits any more
                loop.call_soon_threadsafe(self._state_changed.set)

    async def _publish(self, records: Sequence[Record]) -> None:
        """Publish encoded messages (key = topic, payload = JSON)."""
        if self._session is not None and self._session.broken:
            await self._renew_session()
        conn = self._conn
        if not self._connected or (conn is None and self._session is None):
            raise SinkError(
                f"MQTT broker {self.host}:{self.port} not connected ({self.last_error or 'connecting'})"
            )
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        messages = [_message(r) for r in records]
        if self._session is not None:
            self._session.submit(messages, functools.partial(_complete, future))
            await asyncio.wrap_future(future)
            return
        assert conn is not None
        batch_id = next(self._ids)
        with self._pending_lock:
            self._pending[batch_id] = future
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._sender, conn.send, ("batch", batch_id, messages)
            )
        except OSError as exc:
            with self._pending_lock:
                self._pending.pop(batch_id, None)
            raise SinkError(f"MQTT {self.host}:{self.port}: publisher process gone ({exc})") from None
        await asyncio.wrap_future(future)

    async def _renew_session(self) -> None:
        """Replace an in-process session whose I/O thread died (what a new process does in process mode)."""
        old = self._session
        assert old is not None
        log.error("MQTT %s:%d: %s; starting a new session", self.host, self.port, old.broken)
        await asyncio.to_thread(old.close)
        self._counts_before = (self.connects, self.disconnects)
        session, error = await asyncio.to_thread(open_session, self.settings, self._mirror, lambda: None)
        if session is None:
            raise SinkError(error or "cannot start a new MQTT session")
        self._session = session
        self.restarts += 1

    def _mirror(self, session: PahoSession) -> None:
        """The in-process session's state, as the publisher process would report it."""
        self._connected = session.connected
        self.connects = self._counts_before[0] + session.connects
        self.disconnects = self._counts_before[1] + session.disconnects
        self.last_error = session.broken or session.last_error
        self._notify()

    # ------------------------------------------------------------------ replies (reader thread)

    def _read_replies(self) -> None:
        """Complete batches and mirror state from the process's replies; restart the process if it dies."""
        delay = _RESTART_MIN_S
        while True:
            conn, process = self._conn, self._process
            assert conn is not None and process is not None
            try:
                while True:
                    self._handle(conn.recv())
            except (EOFError, OSError):
                pass
            except Exception:
                # a bug on this side must not leave senders waiting for ever: end the process as if it had died
                log.exception(
                    "MQTT %s:%d: reading the publisher process's replies failed", self.host, self.port
                )
                process.kill()
            self._connected = False
            self._fail_pending("publisher process ended before acknowledging")
            self._close(conn)
            if self._stopping:
                return
            code = process.wait()
            if time.monotonic() - self._started_at > 60.0:
                # it ran well for a while: a new failure, not the same one again
                delay = _RESTART_MIN_S
            self.last_error = f"publisher process exited (code {code})"
            log.error("MQTT %s:%d: %s; restarting it in %.0f s", self.host, self.port, self.last_error, delay)
            self._counts_before = (self.connects, self.disconnects)
            if not self._restart(delay):
                return
            delay = min(delay * 2, _RESTART_MAX_S)

    def _restart(self, delay: float) -> bool:
        """Start a new publisher process after `delay` s, doubling while starts fail; False once stopping."""
        while not self._stop_event.wait(delay):
            delay = min(delay * 2, _RESTART_MAX_S)
            with self._life_lock:
                if self._stopping:
                    return False
                try:
                    error = self._spawn(30.0)
                except (EOFError, OSError, SinkError) as exc:
                    error = _failure(exc, self._discard_process())
                else:
                    if error is not None:
                        self._discard_process()  # it refused the settings and ended
            if error is None:
                self.restarts += 1
                self._started_at = time.monotonic()
                return True
            log.error("MQTT %s:%d: publisher process restart failed: %s", self.host, self.port, error)
        return False

    def _close(self, conn: Connection) -> None:
        """Close a pipe through the sender thread, so that it never closes under a write in progress."""
        try:
            self._sender.submit(conn.close)
        except RuntimeError:
            conn.close()  # the sender has shut down: nothing writes any more

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
            self._notify()
        elif kind == "log":
            _, level, logger, text = reply
            logging.getLogger(logger).log(level, "%s", text)

    def _fail_pending(self, why: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            _complete(future, f"MQTT broker {self.host}:{self.port}: {why}")


def _complete(future: concurrent.futures.Future[None], error: str) -> None:
    """Complete a sender's future with a batch's outcome ("" = every message acknowledged)."""
    # the event loop may cancel the future (the sender gave up) between any check and the set
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error:
            future.set_exception(SinkError(error))
        else:
            future.set_result(None)


def _failure(exc: BaseException, code: int | None) -> str:
    """What went wrong with a publisher process that did not answer: the exception and its exit code."""
    what = "it closed its pipe" if isinstance(exc, EOFError) else str(exc) or type(exc).__name__
    return f"{what}; exit code {code}"


def _message(record: Record) -> Message:
    """What the publisher process needs of a record; status messages are retained."""
    return record.key, record.payload, record.kind is Kind.STATUS
