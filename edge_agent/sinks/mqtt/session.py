"""The paho-mqtt session that publishes QoS 1 batches: on a thread of the agent, or in a process of its own.

Why a process (`sinks.mqtt.publisher = "process"`): a QoS 1 message costs paho about 50 us of Python (publish, PUBACK parsing, the
message-info objects), and the agent's encoding and outbox cost about as much again. In one
process all of it runs under one GIL, which capped MQTT at ~12k messages/s on one core while the
second idled. Here paho gets its own interpreter; the agent hands it batches of
(topic, payload, retain) over a `multiprocessing.connection` pipe and gets one reply per batch.

This module imports only the standard library and paho, so the process stays small (no numpy,
pydantic or the agent's config). The agent side is `edge_agent.sinks.mqtt.publisher.MqttPublisher`.

Pipe protocol (pickled tuples), agent -> publisher: ("settings", Settings) first, then
("batch", id, [Message]) and ("stop",). Publisher -> agent: ("opened", config_error | None),
("done", id, error) with error "" on success, ("state", connected, connects, disconnects,
last_error), and ("log", level, logger, text) for log lines, which the agent logs as its own.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("edge_agent.sinks.mqtt")

#: topic, payload, retain
Message = tuple[str, bytes, bool]

# CONNACK reasons that no retry can fix (MQTT 5 codes and their 3.1.1 equivalents as paho reports them)
REFUSED_FOR_GOOD = {
    "Bad user name or password",
    "Not authorized",
    "Client identifier not valid",
    "Unsupported protocol version",
    "Banned",
    "Bad authentication method",
}

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_RECONNECT_MIN_S = 1.0
_RECONNECT_MAX_S = 10.0
#: While nothing listens at the broker's address, a new connection is tried every 0.5-1 s (jittered, so many
#: agents do not come back in step): a refused connect costs the broker nothing, and the agent is
#: publishing again within about a second of the broker's return, whatever the outage's length
_PROBE_MIN_S = 0.5
_PROBE_MAX_S = 1.0


@dataclass(frozen=True)
class Settings:
    """What the publisher process needs of `sinks.mqtt`, as plain values (the process does not import the config)."""

    host: str
    port: int
    client_id: str
    protocol: str = "3.1.1"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True
    keepalive: int = 30
    qos: int = 1
    max_inflight: int = 1000
    ack_timeout: float = 30.0
    will: Message | None = None
    online: Message | None = None

    @property
    def where(self) -> str:
        """How error messages name the broker and the setting."""
        return f"MQTT broker {self.host}:{self.port} (sinks.mqtt.url)"


@dataclass(eq=False)
class _Batch:
    """Messages handed to the I/O thread, and the PUBACK progress of their messages."""

    messages: list[Message]
    done: Callable[[str], None]
    infos: list[mqtt.MQTTMessageInfo] = field(default_factory=list)
    acked: int = 0  # infos[:acked] have their PUBACK
    error: str = ""
    deadline: float = 0.0


class _Disconnect:
    """Asks the I/O thread to send DISCONNECT and end."""


class PahoSession:
    """One paho client and the I/O thread that owns it: publishes, reads PUBACKs, keeps alive, reconnects.

    The I/O thread uses paho's external-loop API (`loop_read`, `loop_write`, `loop_misc`). The
    thread that publishes is the thread that reads, so a message costs no hand-off between two
    Python threads (with paho's own thread, the two fight over the GIL at every socket call).
    `done(error)` of a batch is called on the I/O thread once every message has its PUBACK ("")
    or the batch failed (the reason).
    """

    def __init__(
        self,
        settings: Settings,
        on_state: Callable[[PahoSession], None] = lambda _s: None,
        on_crash: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.on_state = on_state
        self.on_crash = on_crash
        self.broken = ""  # why the I/O thread died (a bug): every batch fails at once from then on
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self._connected = threading.Event()
        self._connack = threading.Event()
        self._refusal: str | None = None
        self._stopping = False
        self._jobs: queue.SimpleQueue[_Batch | _Disconnect] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._reconnect_delay = _RECONNECT_MIN_S
        self._retry_at = 0.0  # monotonic time of the next connection attempt, 0 when none is planned
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        """True between CONNACK and the next disconnect."""
        return self._connected.is_set()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None:
            client.tls_set(
                ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
            client.tls_insecure_set(not s.check_hostname)
        if s.will is not None:
            client.will_set(s.will[0], s.will[1], qos=1, retain=True)
        # 0 = no limit in paho: the I/O thread keeps the window of max_inflight itself (see _publish_window)
        client.max_inflight_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    # ------------------------------------------------------------------ paho callbacks (I/O thread)

    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            self.last_error = f"broker refused the connection: {reason}"
            self._connack.set()
            if self._refusal in REFUSED_FOR_GOOD:
                # retrying a refused login every few seconds only fills the broker's log
                client.disconnect()
            self.on_state(self)
            return
        self._refusal = None
        self._reconnect_delay = _RECONNECT_MIN_S
        self.connects += 1
        online = self.settings.online
        if online is not None:
            client.publish(online[0], online[1], qos=1, retain=True)
        self._connected.set()
        self._connack.set()
        self.on_state(self)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        # our own DISCONNECT (stop, or a login refused for good) is not an outage: no warning for it
        if self._connected.is_set() and not self._stopping:
            self.disconnects += 1
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT %s:%d: %s; reconnecting", self.settings.host, self.settings.port, reason)
        self._connected.clear()
        self.on_state(self)

    # ------------------------------------------------------------------ lifecycle

    def open(self, timeout: float = 10.0) -> str | None:
        """Connect and start the I/O thread; the text of a configuration error (TLS, login), else None.

        A broker that is down is not a configuration error: the I/O thread keeps trying.
        """
        where = self.settings.where
        try:
            self._client.connect(self.settings.host, self.settings.port, self.settings.keepalive)
        except ssl.SSLCertVerificationError as exc:
            return (
                f"{where}: its TLS certificate is not trusted ({exc.verify_message}); "
                "check sinks.mqtt.tls.ca_file (and check_hostname for the name in the certificate)"
            )
        except ssl.SSLError as exc:
            return f"{where}: TLS handshake failed ({exc.reason}); check sinks.mqtt.tls and the broker's TLS listener"
        except OSError as exc:
            self.last_error = f"cannot connect: {exc}"
            log.warning("%s: cannot connect (%s); will keep retrying", where, exc)
            self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
            self._start_thread()
            return None
        self._start_thread()
        got = self._connack.wait(timeout)
        if self._refusal is not None and self._refusal in REFUSED_FOR_GOOD:
            self.close()
            user = f"user {self.settings.username!r}" if self.settings.username else "anonymous login"
            return (
                f"{where} refused {user}: {self._refusal}; "
                "check sinks.mqtt.username and the password's environment variable"
            )
        if not got:
            log.warning("%s: no CONNACK within %.0f s; will keep retrying", where, timeout)
        return None

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._io_main, name=f"mqtt-{self.settings.client_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Disconnect cleanly (the broker then discards the last will) and stop the I/O thread."""
        self._stopping = True
        thread = self._thread
        if thread is not None:
            self._jobs.put(_Disconnect())
            self._wake()
            thread.join()
            self._thread = None
        else:
            self._client.disconnect()
        self._connected.clear()

    def submit(self, messages: list[Message], done: Callable[[str], None]) -> None:
        """Queue a batch; `done` gets "" once every message has its PUBACK, else the reason it failed."""
        if self.broken:
            done(self.broken)
            return
        self._jobs.put(_Batch(messages, done))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the buffer is full of wake-ups already: the thread will wake

    # ------------------------------------------------------------------ the I/O thread

    def _io_main(self) -> None:
        client = self._client
        active: deque[_Batch] = deque()  # published, waiting for PUBACKs, oldest first
        try:
            while True:
                if not self._take_jobs(active):
                    return
                sock = client.socket()
                if sock is None:
                    self._fail(active, "disconnected before acknowledging")
                    if self._refusal in REFUSED_FOR_GOOD:
                        self._sleep(1.0)  # a person must fix the login; close() ends this thread
                    else:
                        self._reconnect()
                    continue
                timeout = 1.0  # loop_misc runs at least once a second: keep-alive pings
                if active:
                    timeout = max(0.0, min(timeout, active[0].deadline - time.monotonic()))
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    timeout = 0.0  # TLS has decrypted bytes buffered: select would not see them
                wlist = [sock] if client.want_write() else []
                try:
                    readable, writable, _ = select.select([sock, self._wake_r], wlist, [], timeout)
                except (OSError, ValueError):
                    readable, writable = [sock], []  # socket closed under us: loop_read reports it
                if self._wake_r in readable:
                    self._drain_wake()
                rc = _SUCCESS
                if sock in readable or timeout == 0.0:
                    rc = client.loop_read()
                if rc == _SUCCESS and (writable or client.want_write()):
                    rc = client.loop_write()
                if rc == _SUCCESS:
                    client.loop_misc()
                self._publish_window(active)
        except Exception as exc:
            # a bug (or paho refusing something, such as a wildcard in a topic): fail loudly, never hang
            log.exception("MQTT %s:%d: the I/O thread failed", self.settings.host, self.settings.port)
            self.broken = f"MQTT {self.settings.host}:{self.settings.port}: publisher failed ({exc!r})"
            self._connected.clear()
            self.on_state(self)
            self.on_crash()
        finally:
            self._fail(active, "publisher stopped before acknowledging")
            for job in self._queued():
                if isinstance(job, _Batch):
                    job.done(f"MQTT {self.settings.host}:{self.settings.port}: publisher stopped")

    def _queued(self) -> Iterator[_Batch | _Disconnect]:
        """The jobs queued so far, oldest first, taken off the queue."""
        while True:
            try:
                yield self._jobs.get_nowait()
            except queue.Empty:
                return

    def _take_jobs(self, active: deque[_Batch]) -> bool:
        """Accept the queued batches and publish what the in-flight window allows; False on stop."""
        for job in self._queued():
            if isinstance(job, _Disconnect):
                self._disconnect()
                return False
            if not self._connected.is_set():
                job.done(
                    f"MQTT broker {self.settings.host}:{self.settings.port} not connected ({self.last_error})"
                )
                continue
            job.deadline = time.monotonic() + self.settings.ack_timeout
            active.append(job)
        self._publish_window(active)
        return True

    def _publish_window(self, active: deque[_Batch]) -> None:
        """Publish the next messages of the active batches, in order, up to `max_inflight` without PUBACK.

        The window is kept here, not by paho (its limit is set to 0 = none): paho walks every message it
        holds on each PUBACK to find queued ones, which makes a large batch quadratic.
        """
        self._settle(active)  # first: PUBACKs that arrived make room
        qos = self.settings.qos
        room = self.settings.max_inflight - sum(len(b.infos) - b.acked for b in active)
        publish = self._client.publish
        for batch in active:
            if room <= 0:
                break
            messages, infos = batch.messages, batch.infos
            before = len(infos)
            for topic, payload, retain in messages[before : before + room]:
                info = publish(topic, payload, qos=qos, retain=retain)
                if info.rc != _SUCCESS:
                    batch.error = f"publish to {topic} failed: {mqtt.error_string(info.rc)}"
                    break
                infos.append(info)
            if batch.error:
                break  # nothing after a failed message goes out: the sender resends from there, in order
            room -= len(infos) - before
        if qos == 0 or any(b.error for b in active):
            self._settle(active)

    def _disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the last will) and wait up to 2 s for it to leave."""
        client = self._client
        client.disconnect()
        deadline = time.monotonic() + 2.0
        while client.want_write() and time.monotonic() < deadline:
            sock = client.socket()
            if sock is None:
                return
            select.select([], [sock], [], 0.1)
            client.loop_write()

    def _settle(self, active: deque[_Batch]) -> None:
        """Complete batches whose every message has its PUBACK (in order); fail those past their deadline."""
        qos0 = self.settings.qos == 0
        where = f"MQTT broker {self.settings.host}:{self.settings.port}"
        while active:
            batch = active[0]
            infos, i, n = batch.infos, batch.acked, len(batch.infos)
            if qos0:
                i = n  # nothing comes back at QoS 0: handed to the socket is all there is
            while i < n and infos[i].is_published():
                i += 1
            batch.acked = i
            if batch.error:
                active.popleft()
                batch.done(f"MQTT {self.settings.host}:{self.settings.port}: {batch.error}")
                self._fail(active, "not sent: an earlier batch failed")
            elif i == len(batch.messages):
                active.popleft()
                batch.done("")
            elif time.monotonic() > batch.deadline:
                active.popleft()
                batch.done(f"{where}: no PUBACK within {self.settings.ack_timeout} s")
                self._fail(active, "not acknowledged: an earlier batch timed out")
            else:
                return

    def _fail(self, active: deque[_Batch], why: str) -> None:
        while active:
            active.popleft().done(f"MQTT broker {self.settings.host}:{self.settings.port} {why}")

    def _reconnect(self) -> None:
        """Open a new connection once the backoff delay has passed; a queued job cuts the wait short."""
        now = time.monotonic()
        if self._retry_at == 0.0:
            self._retry_at = now + self._reconnect_delay
        if now < self._retry_at and self._sleep(self._retry_at - now):
            return  # the job is handled first (failed, or the stop request); the wait goes on after it
        self._retry_at = 0.0
        try:
            self._client.reconnect()
        except ssl.SSLError as exc:
            # something answers but the handshake fails: each try costs the broker a handshake, back off
            self.last_error = f"cannot connect: {exc}"
            self._reconnect_delay = min(self._reconnect_delay * 2, _RECONNECT_MAX_S)
        except OSError as exc:
            # nothing listens (refused, unreachable, timed out): probe again soon
            self.last_error = f"cannot connect: {exc}"
            self._reconnect_delay = random.uniform(_PROBE_MIN_S, _PROBE_MAX_S)
        else:
            # connected: if the broker now refuses the login or drops us, the next tries back off
            self._reconnect_delay = min(self._reconnect_delay * 2, _RECONNECT_MAX_S)

    def _sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if a job arrived meanwhile (it is handled by the next pass)."""
        readable, _, _ = select.select([self._wake_r], [], [], seconds)
        if readable:
            self._drain_wake()
            return True
        return False

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass


def open_session(
    settings: Settings, on_state: Callable[[PahoSession], None], on_crash: Callable[[], None]
) -> tuple[PahoSession | None, str | None]:
    """A connected (or retrying) session, or None and the text of a configuration error naming the setting."""
    try:
        session = PahoSession(settings, on_state=on_state, on_crash=on_crash)
        error = session.open()
    except Exception as exc:  # e.g. a TLS file that cannot be read
        files = {"ca_file": settings.ca_file, "cert_file": settings.cert_file, "key_file": settings.key_file}
        named = ", ".join(f"{key} = {path!r}" for key, path in files.items() if path)
        hint = f"; check that sinks.mqtt.tls names readable files ({named})" if named else ""
        return None, f"{settings.where}: cannot set up the MQTT client ({exc}){hint}"
    return (None if error else session), error


# ---------------------------------------------------------------------- the publisher process


class _Pipe:
    """The process's end of the pipe; sends come from two threads (I/O and main), so they take a lock."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[object, ...]) -> None:
        """Send one message to the agent; a closed pipe (the agent is gone) is ignored: the main loop ends."""
        with self._lock:
            try:
                self.conn.send(message)
            except OSError:
                pass


class _ToAgent(logging.Handler):
    """Hands log records to the agent, which logs them with its own handlers and format."""

    def __init__(self, pipe: _Pipe) -> None:
        super().__init__()
        self.pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        """Forward one record as (level, logger name, text)."""
        self.pipe.send(("log", record.levelno, record.name, record.getMessage()))


def serve(conn: Connection) -> None:
    """The publisher process: read settings, connect, publish batches until "stop" or the agent's end of the pipe closes."""
    # the agent decides when this process ends: a Ctrl-C in the terminal (SIGINT to the whole process
    # group) or systemd's SIGTERM to the service's cgroup must not take it down before the agent's
    # shutdown flush has gone through it; if the agent dies instead, the pipe closes and this ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pipe = _Pipe(conn)
    root = logging.getLogger()
    root.addHandler(_ToAgent(pipe))
    root.setLevel(logging.INFO)
    kind, settings = conn.recv()
    if kind != "settings":
        raise RuntimeError(f"expected settings first, got {kind!r}")

    def state(s: PahoSession) -> None:
        pipe.send(("state", s.connected, s.connects, s.disconnects, s.last_error))

    # the process exits at a failure of its I/O thread: the agent starts a new one
    session, error = open_session(settings, state, on_crash=lambda: os._exit(1))
    pipe.send(("opened", error))
    if session is None:
        return
    state(session)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                # the agent died (a clean stop says "stop"): end without DISCONNECT, so that the
                # broker publishes the last will ("offline") as it would have for the agent itself
                os._exit(0)
            if message[0] == "stop":
                break
            _, batch_id, messages = message

            def done(error: str, batch_id: int = batch_id) -> None:
                pipe.send(("done", batch_id, error))

            session.submit(messages, done)
    finally:
        session.close()


def main() -> None:
    """Entry point of the publisher process: `python -m edge_agent.sinks.mqtt.session FD`."""
    serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
