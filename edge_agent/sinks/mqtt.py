"""MQTT sink (paho-mqtt 2.x, MQTT 3.1.1 or 5): QoS 1 publishing acknowledged by PUBACK, retained status, last will, TLS."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttSink
from edge_agent.records import Kind, Record
from edge_agent.sinks.delivery import SinkConfigError, SinkError

log = logging.getLogger(__name__)

# CONNACK reasons that no retry can fix (MQTT 5 codes and their 3.1.1 equivalents as paho reports them)
_REFUSED_FOR_GOOD = {
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


@dataclass(eq=False)
class _Batch:
    """Records handed to the I/O thread, and the PUBACK progress of their messages."""

    records: Sequence[Record]
    future: concurrent.futures.Future[None]
    infos: list[mqtt.MQTTMessageInfo] = field(default_factory=list)
    acked: int = 0  # infos[:acked] have their PUBACK
    error: str = ""
    deadline: float = 0.0


class _Disconnect:
    """Asks the I/O thread to send DISCONNECT and end."""


class MqttPublisher:
    """Publishes outbox records to one broker; `send` returns only when the broker acknowledged every message.

    One I/O thread of this class owns the paho client (paho's external-loop API: `loop_read`,
    `loop_write`, `loop_misc`): it publishes, reads PUBACKs, keeps the connection alive and reconnects.
    The thread that publishes is the thread that reads, so a message costs no hand-off between two
    Python threads (with paho's own thread, the two fight over the GIL at every socket call and QoS 1
    throughput halves). The event loop only queues batches and awaits their futures.
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
        self.ack_timeout = ack_timeout
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.client_id = client_id or config.client_id or f"edge-agent-{socket.gethostname()}"
        self._online = online
        self._will = will
        self._connected = threading.Event()
        self._connack = threading.Event()
        self._refusal: str | None = None
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self._stopping = False
        self._jobs: queue.SimpleQueue[_Batch | _Disconnect] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._reconnect_delay = _RECONNECT_MIN_S
        self._retry_at = 0.0  # monotonic time of the next connection attempt, 0 when none is planned
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(not cfg.tls.check_hostname)
        if self._will is not None:
            client.will_set(self._will.key, self._will.payload, qos=1, retain=True)
        # 0 = no limit in paho: the I/O thread keeps the window of cfg.max_inflight itself (see _publish_window)
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
            if self._refusal in _REFUSED_FOR_GOOD:
                # retrying a refused login every few seconds only fills the broker's log
                client.disconnect()
            return
        self._refusal = None
        self._reconnect_delay = _RECONNECT_MIN_S
        self.connects += 1
        if self._online is not None:
            client.publish(self._online.key, self._online.payload, qos=1, retain=True)
        self._connected.set()
        self._connack.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        # our own DISCONNECT (stop, or a login refused for good) is not an outage: no warning for it
        if self._connected.is_set() and not self._stopping:
            self.disconnects += 1
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT %s:%d: %s; reconnecting", self.host, self.port, reason)
        self._connected.clear()

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """True between CONNACK and the next disconnect."""
        return self._connected.is_set()

    async def start(self, timeout: float = 10.0) -> None:
        """Connect; raises SinkConfigError for TLS or credential problems, keeps retrying if the broker is down."""
        where = f"MQTT broker {self.host}:{self.port} (sinks.mqtt.url)"
        try:
            # no I/O thread yet: this is the only thread using the client
            await asyncio.to_thread(self._client.connect, self.host, self.port, self.config.keepalive)
        except ssl.SSLCertVerificationError as exc:
            raise SinkConfigError(
                f"{where}: its TLS certificate is not trusted ({exc.verify_message}); "
                "check sinks.mqtt.tls.ca_file (and check_hostname for the name in the certificate)"
            ) from None
        except ssl.SSLError as exc:
            raise SinkConfigError(
                f"{where}: TLS handshake failed ({exc.reason}); check sinks.mqtt.tls and the broker's TLS listener"
            ) from None
        except OSError as exc:
            # broker down or unreachable: not a configuration error; the I/O thread keeps trying
            self.last_error = f"cannot connect: {exc}"
            log.warning("%s: cannot connect (%s); will keep retrying", where, exc)
            self._client.connect_async(self.host, self.port, self.config.keepalive)
            self._start_thread()
            return
        self._start_thread()
        got = await asyncio.to_thread(self._connack.wait, timeout)
        if self._refusal is not None and self._refusal in _REFUSED_FOR_GOOD:
            await self.stop(publish_offline=False)
            user = f"user {self.config.username!r}" if self.config.username else "anonymous login"
            raise SinkConfigError(
                f"{where} refused {user}: {self._refusal}; "
                "check sinks.mqtt.username and the password's environment variable"
            )
        if not got:
            log.warning("%s: no CONNACK within %.0f s; will keep retrying", where, timeout)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._io_main, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    async def stop(self, publish_offline: bool = True) -> None:
        """Publish the offline status (retained), disconnect cleanly and stop the I/O thread."""
        if publish_offline and self._will is not None and self.connected:
            try:
                await asyncio.wait_for(self.send([self._will]), 5.0)
            except (SinkError, TimeoutError):
                pass  # best effort on shutdown: the broker's last will says offline anyway
        self._stopping = True
        thread = self._thread
        if thread is not None:
            self._jobs.put(_Disconnect())
            self._wake()
            await asyncio.to_thread(thread.join)
            self._thread = None
        else:
            self._client.disconnect()
        self._connected.clear()

    # ------------------------------------------------------------------ sending (event loop side)

    async def send(self, records: Sequence[Record]) -> None:
        """Publish every record at the configured QoS; return when all are acknowledged, else raise SinkError."""
        if not self.connected or self._thread is None:
            raise SinkError(
                f"MQTT broker {self.host}:{self.port} not connected ({self.last_error or 'connecting'})"
            )
        batch = _Batch(records, concurrent.futures.Future())
        self._jobs.put(batch)
        self._wake()
        await asyncio.wrap_future(batch.future)

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
                    if self._refusal in _REFUSED_FOR_GOOD:
                        self._sleep(1.0)  # a person must fix the login; stop() ends this thread
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
        finally:
            self._fail(active, "publisher stopped before acknowledging")
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Batch) and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(SinkError(f"MQTT {self.host}:{self.port}: publisher stopped"))

    def _take_jobs(self, active: deque[_Batch]) -> bool:
        """Accept the batches queued by `send` and publish what the in-flight window allows; False on stop."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Disconnect):
                self._disconnect()
                return False
            if not job.future.set_running_or_notify_cancel():
                continue  # the sender gave up (cancelled): nothing to publish
            if not self._connected.is_set():
                job.future.set_exception(
                    SinkError(f"MQTT broker {self.host}:{self.port} not connected ({self.last_error})")
                )
                continue
            job.deadline = time.monotonic() + self.ack_timeout
            active.append(job)
        self._publish_window(active)
        return True

    def _publish_window(self, active: deque[_Batch]) -> None:
        """Publish the next messages of the active batches, in order, up to `max_inflight` without PUBACK.

        The window is kept here, not by paho (its limit is set to 0 = none): paho walks every message it
        holds on each PUBACK to find queued ones, which makes a large batch quadratic.
        """
        self._settle(active)  # first: PUBACKs that arrived make room
        qos = self.config.qos
        room = self.config.max_inflight - sum(len(b.infos) - b.acked for b in active)
        publish = self._client.publish
        for batch in active:
            if room <= 0:
                break
            records, infos = batch.records, batch.infos
            before = len(infos)
            for record in records[before : before + room]:
                info = publish(record.key, record.payload, qos=qos, retain=record.kind is Kind.STATUS)
                if info.rc != _SUCCESS:
                    batch.error = f"publish to {record.key} failed: {mqtt.error_string(info.rc)}"
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
        qos0 = self.config.qos == 0
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
                batch.future.set_exception(SinkError(f"MQTT {self.host}:{self.port}: {batch.error}"))
                self._fail(active, "not sent: an earlier batch failed")
            elif i == len(batch.records):
                active.popleft()
                batch.future.set_result(None)
            elif time.monotonic() > batch.deadline:
                active.popleft()
                batch.future.set_exception(
                    SinkError(f"MQTT broker {self.host}:{self.port}: no PUBACK within {self.ack_timeout} s")
                )
                self._fail(active, "not acknowledged: an earlier batch timed out")
            else:
                return

    def _fail(self, active: deque[_Batch], why: str) -> None:
        while active:
            active.popleft().future.set_exception(SinkError(f"MQTT broker {self.host}:{self.port} {why}"))

    def _reconnect(self) -> None:
        """Open a new connection once the backoff delay has passed; a queued job cuts the wait short."""
        now = time.monotonic()
        if self._retry_at == 0.0:
            self._retry_at = now + self._reconnect_delay
        if now < self._retry_at and self._sleep(self._retry_at - now):
            return  # the job is handled first (failed, or the stop request); the wait goes on after it
        self._retry_at = 0.0
        self._reconnect_delay = min(self._reconnect_delay * 2, _RECONNECT_MAX_S)
        try:
            self._client.reconnect()
        except OSError as exc:
            self.last_error = f"cannot connect: {exc}"

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
