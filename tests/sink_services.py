"""Sink-test helpers on top of tests/services.py: a broker that keeps sessions across restarts, a TLS broker with a
password file (certificates made here), a subscriber that records every message, a VictoriaMetrics with extra flags."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import Mosquitto, VictoriaMetrics, require_binary


@dataclass
class PersistentMosquitto(Mosquitto):
    """A broker that saves sessions and queued QoS 1 messages on stop, so a subscriber misses nothing over a restart."""

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "user root\n"  # see TlsMosquitto: the default drop to user "mosquitto" cannot write pytest's temp dirs
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 0\n"  # unlimited: the subscriber's queue must not drop during the test
            "log_type error\nlog_type warning\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        )
        return [require_binary("/usr/sbin/mosquitto", "mosquitto"), "-c", str(conf)]


@dataclass
class TlsFiles:
    """A CA, a broker certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate the certificates of a TLS test broker into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca("edge-agent test CA")
    other_cert, _ = _ca("some other CA")
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.server_key)
    return files


@dataclass
class TlsMosquitto(Mosquitto):
    """A broker with only a TLS listener and a password file (no anonymous logins)."""

    tls: TlsFiles | None = None
    users: dict[str, str] = field(default_factory=dict)

    def _command(self) -> list[str]:
        assert self.tls is not None
        passwd = self.workdir / "passwd"
        passwd.write_text("")
        tool = require_binary("/usr/bin/mosquitto_passwd", "mosquitto")
        for user, password in self.users.items():
            subprocess.run([tool, "-b", str(passwd), user, password], check=True, capture_output=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # running as root, mosquitto would switch to user "mosquitto", who cannot read pytest's temp dirs
            "user root\npersistence false\nlog_type error\nlog_type warning\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.tls.ca}\ncertfile {self.tls.server_cert}\nkeyfile {self.tls.server_key}\n"
            f"allow_anonymous false\npassword_file {passwd}\n"
        )
        return [require_binary("/usr/sbin/mosquitto", "mosquitto"), "-c", str(conf)]


class Subscriber:
    """A paho client on `topic_filter` with a persistent session (QoS 1) that records every message it gets."""

    def __init__(self, port: int, topic_filter: str, client_id: str = "test-subscriber") -> None:
        self.messages: list[tuple[str, dict]] = []
        self.raw: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._filter = topic_filter
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        self.client.on_connect = lambda c, *_: c.subscribe(self._filter, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"subscriber could not subscribe to {topic_filter} on port {port}")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.raw.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            try:
                self.messages.append((msg.topic, orjson.loads(msg.payload)))
            except orjson.JSONDecodeError:
                self.messages.append((msg.topic, {"payload": msg.payload.decode(errors="replace")}))

    def wait_for(self, count: int, timeout: float) -> int:
        """Wait until at least `count` messages arrived; returns how many did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return len(self.messages)
            time.sleep(0.05)
        return len(self.messages)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class TunedVictoriaMetrics(VictoriaMetrics):
    """VictoriaMetrics with extra command-line flags."""

    flags: list[str] = field(default_factory=list)

    def _command(self) -> list[str]:
        return [*super()._command(), *self.flags]


@dataclass(frozen=True)
class Point:
    """One numeric field of one line of line protocol, as a TSDB stores it: series name, labels, ms, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    t_ms: int
    value: float


def _split(text: str, sep: str, quotes: bool = False) -> list[str]:
    """`text` split at each `sep` outside a backslash escape (and, with `quotes`, outside a double-quoted string)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = quoted = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' and quotes:
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if escaped:
            out.append({"n": "\n"}.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def parse_line_protocol(body: bytes) -> list[Point]:
    """The points of line-protocol text as VictoriaMetrics stores them: series `<measurement>_<field>`, the tags as
    labels, ms timestamps; a string field becomes the number 0 (measured with VictoriaMetrics 1.79)."""
    points = []
    for line in body.decode().splitlines():
        # a quote is a plain character in the measurement and the tags, a string's delimiter in a field value
        series, *rest = _split(line, " ")
        fields, stamp = " ".join(rest).rsplit(" ", 1)
        measurement, *tags = _split(series, ",")
        labels = tuple(sorted((_unescape(k), _unescape(v)) for k, v in (_split(t, "=") for t in tags)))
        for field_text in _split(fields, ",", quotes=True):
            key, value = _split(field_text, "=")
            if value.startswith('"'):
                number = 0.0
            else:
                number = float(value[:-1]) if value.endswith("i") else float(value)
            points.append(
                Point(f"{_unescape(measurement)}_{_unescape(key)}", labels, int(stamp) // 1_000_000, number)
            )
    return points
