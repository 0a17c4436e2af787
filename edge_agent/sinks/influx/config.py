"""The config of the InfluxDB output: `[sinks.influx]`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from edge_agent.config_model import Model, Seconds, Secret


class InfluxSink(Model):
    """Write raw values and indicators to InfluxDB 2.x (or anything serving /api/v2/write)."""

    url: str = "http://127.0.0.1:8086"
    """Base URL of the server."""
    org: str = "shopfloor"
    """Organization."""
    bucket: str = "process"
    """Bucket."""
    token: Secret | None = None
    """API token, as `${ENV_NAME}`."""
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    """Lines per write request."""
    flush_interval: Seconds = 1.0
    """Seconds to wait for a batch to fill before writing what there is."""
    gzip: bool = True
    """Compress request bodies."""
    timeout: Seconds = 10.0
    """Seconds to wait for one write."""
    dead_letter: Path | None = None
    """File for lines the server rejected (HTTP 400, 413 or 422); default `<outbox dir>/influx.deadletter`;
    relative to the config file."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http(s)://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v
