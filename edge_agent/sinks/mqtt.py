"""MQTT sink (paho-mqtt 2.x, MQTT 3.1.1 or 5): QoS 1 publishing acknowledged by PUBACK, retained status, last will, TLS."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttSink
from edge_agent.records import Record
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


class MqttPublisher:
    """Publishes outbox records to one broker; `send` returns only when the broker acknowledged every message.

    paho's own network thread does the socket work and reconnects on its own; publishing and the
    wait for PUBACKs run on a worker thread, so the event loop never blocks on the broker.
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
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    # ------------------------------------------------------------------ paho callbacks (network thread)

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
        self.connects += 1
        if self._online is not None:
            client.publish(self._online.key, self._online.payload, qos=1, retain=True)
        self._connected.set()
        self._connack.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        if self._connected.is_set() and not self._stopping:
            self.disconnects += 1
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT %s:%d: %s; paho reconnects on its own", self.host, self.port, reason)
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
            # broker down or unreachable: not a configuration error; paho keeps trying in the background
            self.last_error = f"cannot connect: {exc}"
            log.warning("%s: cannot connect (%s); will keep retrying", where, exc)
            self._client.connect_async(self.host, self.port, self.config.keepalive)
            self._client.loop_start()
            return
        self._client.loop_start()
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

    async def stop(self, publish_offline: bool = True) -> None:
        """Publish the offline status (retained), disconnect cleanly and stop paho's thread."""
        client = self._client
        self._stopping = True
        if publish_offline and self._will is not None and self.connected:
            info = client.publish(self._will.key, self._will.payload, qos=1, retain=True)
            await asyncio.to_thread(_wait_quietly, info, 5.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._connected.clear()

    # ------------------------------------------------------------------ sending

    async def send(self, records: Sequence[Record]) -> None:
        """Publish every record at the configured QoS; return when all are acknowledged, else raise SinkError."""
        if not self.connected:
            raise SinkError(
                f"MQTT broker {self.host}:{self.port} not connected ({self.last_error or 'connecting'})"
            )
        await asyncio.to_thread(self._publish_and_wait, records)

    def _publish_and_wait(self, records: Sequence[Record]) -> None:
        client = self._client
        qos = self.config.qos
        infos = []
        for record in records:
            info = client.publish(record.key, record.payload, qos=qos, retain=record.kind.name == "STATUS")
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise SinkError(f"MQTT publish to {record.key} failed: {mqtt.error_string(info.rc)}")
            infos.append(info)
        if qos == 0:
            return
        deadline = time.monotonic() + self.ack_timeout
        for info in infos:
            while not info.is_published():
                if not self.connected:
                    raise SinkError(f"MQTT broker {self.host}:{self.port} disconnected before acknowledging")
                if time.monotonic() > deadline:
                    raise SinkError(
                        f"MQTT broker {self.host}:{self.port}: no PUBACK within {self.ack_timeout} s"
                    )
                info.wait_for_publish(0.2)


def _wait_quietly(info: mqtt.MQTTMessageInfo, timeout: float) -> None:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        pass  # best effort on shutdown: the broker's last will says offline anyway
