"""`[web]`: the agent's live web page (off unless enabled; loopback unless a token is set)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from edge_agent.config_model import Model, Secret

#: Hosts that count as loopback besides the 127.0.0.0/8 and ::1 literals.
_LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: a bind only this machine reaches."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebConfig(Model):
    """The live web page served by the agent: machines, control charts, alarms, sinks (docs/web.md)."""

    enabled: bool = False
    """Serve the page; `edge-agent run --web HOST:PORT` turns it on for one run whatever this says."""
    host: str = "127.0.0.1"
    """Address to listen on, an IP literal or `localhost`. Anything but loopback (e.g. `0.0.0.0`, every
    interface) needs a `token`."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port (0: a free one, logged at start)."""
    token: Secret | None = None
    """Access token, written `${EDGE_AGENT_WEB_TOKEN}`; required for a bind other than loopback. Open the
    page once as `http://HOST:PORT/?token=TOKEN` (the browser then keeps it in a cookie), or send
    `Authorization: Bearer TOKEN` to the API."""
    update_interval: float = Field(default=0.5, ge=0.2, le=10.0)
    """Seconds between two live updates of an open page, whatever the poll rate (0.2: five a second at most)."""
    chart_points: int = Field(default=100, ge=10, le=1000)
    """Points kept and drawn per control chart."""

    @field_validator("host")
    @classmethod
    def _ip_or_localhost(cls, v: str) -> str:
        if v in _LOOPBACK_NAMES:
            return v
        try:
            ipaddress.ip_address(v.strip("[]"))
        except ValueError:
            raise ValueError(
                f"{v!r} is not an IP address; write an address such as 127.0.0.1, 0.0.0.0 or ::1, or localhost"
            ) from None
        return v.strip("[]")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebConfig:
        if not is_loopback(self.host) and self.token is None:
            raise ValueError(
                f'listening on {self.host} lets other machines in: set `token = "${{EDGE_AGENT_WEB_TOKEN}}"` '
                "(and export it), or listen on 127.0.0.1"
            )
        return self

    @property
    def address(self) -> str:
        """`host:port` as a URL writes it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def with_listen(web: WebConfig, listen: str) -> WebConfig:
    """`web` turned on at `listen` (`HOST:PORT`, `:PORT` or `PORT`, from `--web`); ValueError says what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        host, port_text = "", listen
    host = host.strip("[]") or web.host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--web {listen!r}: write HOST:PORT, e.g. 127.0.0.1:8080 or :8080") from None
    try:
        return WebConfig.model_validate({**web.model_dump(), "enabled": True, "host": host, "port": port})
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        detail = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ValueError(f"--web {listen}: {detail.removeprefix('Value error, ')}") from None
