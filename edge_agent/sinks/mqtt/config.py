"""The config of the MQTT output: `[sinks.mqtt]` and its TLS settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edge_agent.config_model import Model, Secret


def check_topic_template(template: str) -> None:
    """Raise ValueError naming the placeholders if `template` cannot be filled."""
    try:
        template.format(prefix="p", enterprise="e", site="s", area="a", line="l", machine="m", kind="raw")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{template!r} is not usable ({exc}); placeholders: prefix, enterprise, site, area, line, machine, kind"
        ) from None


class TlsOptions(Model):
    """TLS towards a broker."""

    ca_file: Path
    """CA certificate(s) that signed the broker's certificate (relative paths are relative to the config file)."""
    cert_file: Path | None = None
    """Client certificate, for brokers that require one."""
    key_file: Path | None = None
    """Private key of the client certificate."""
    check_hostname: bool = True
    """Verify the broker's name against its certificate (leave on outside a lab)."""


class MqttSink(Model):
    """Publish raw values, indicators, alarms and status to an MQTT broker (unified namespace)."""

    url: str = "mqtt://127.0.0.1:1883"
    """`mqtt://host:port` or `mqtts://host:port`."""
    topic_prefix: str = "spBv1.0-free/uns"
    """First topic levels; the rest is `{site}/{area}/{line}/{machine}/{raw|kpi|alarm|status}`."""
    topic_template: str = "{prefix}/{site}/{area}/{line}/{machine}/{kind}"
    """Topic layout; placeholders: prefix, enterprise, site, area, line, machine, kind."""
    qos: Literal[0, 1, 2] = 1
    """MQTT QoS of data messages; 1 = at least once (the outbox acknowledges on PUBACK)."""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    """MQTT protocol version. 3.1.1 by default: every broker speaks it (some cloud IoT hubs speak
    nothing else), the agent uses no feature of 5, and paho spends 7-15 % less per message on it
    (no reason code and properties object per PUBACK)."""
    client_id: str | None = None
    """Client id; default `edge-agent-{site}-{hostname}`."""
    username: str | None = None
    """User name, if the broker asks for one."""
    password: Secret | None = None
    """Password, as `${ENV_NAME}`."""
    tls: TlsOptions | None = None
    """TLS settings; required for mqtts://."""
    keepalive: int = Field(default=30, ge=5, le=3600)
    """Keep-alive in seconds; the broker publishes the last will after 1.5x this without traffic."""
    max_inflight: int = Field(default=1000, ge=1, le=65535)
    """QoS 1 messages on the wire before a PUBACK is awaited."""
    publisher: Literal["thread", "process"] = "thread"
    """Where paho runs. `thread`: an I/O thread in the agent (about 12k QoS 1 messages/s; a
    gateway with 100 devices polled at 10 Hz sends about 1k). `process`: a publisher process of its
    own (+26 MB resident), so paho's per-message work does not share the agent's GIL: about 1.5x
    the messages/s (16-18k in bench_sinks) and faster catch-up of a backlog after an outage."""

    @field_validator("topic_prefix", "topic_template")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        # MQTT forbids them in a topic one publishes to: paho would refuse every message
        bad = sorted({c for c in v if c in "+#\0"})
        if bad:
            raise ValueError(f"must not contain the MQTT wildcard or NUL characters {bad}")
        return v

    @field_validator("topic_template")
    @classmethod
    def _fillable(cls, v: str) -> str:
        check_topic_template(v)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v

    @model_validator(mode="after")
    def _tls_for_mqtts(self) -> MqttSink:
        if self.url.startswith("mqtts:") and self.tls is None:
            raise ValueError("mqtts:// needs a [sinks.mqtt.tls] section with at least ca_file")
        if self.username is not None and self.password is None:
            raise ValueError("`username` needs `password` (as '${ENV_NAME}')")
        return self
