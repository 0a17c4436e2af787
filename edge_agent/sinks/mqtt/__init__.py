"""MQTT output: unified-namespace topics, JSON payloads, QoS 1 acknowledged by PUBACK, retained status, last will (README.md here).

`PLUGIN` is loaded on first use: the publisher process runs `edge_agent.sinks.mqtt.session`, which
imports this package, and must stay small (the standard library and paho, no pydantic or numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.sinks.base import SinkPlugin

    PLUGIN: SinkPlugin


def __getattr__(name: str) -> object:
    if name == "PLUGIN":
        from edge_agent.sinks.mqtt.plugin import PLUGIN

        return PLUGIN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
