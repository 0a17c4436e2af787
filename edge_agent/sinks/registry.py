"""The sinks the agent knows, one line each: the config's `[sinks]` table, its docs and the sink set are built from it."""

from __future__ import annotations

import importlib

from edge_agent.sinks.base import SinkPlugin

#: Sink packages, each exporting PLUGIN (a SinkPlugin). Adding a sink is adding its package and a line.
PACKAGES = (
    "edge_agent.sinks.mqtt",
    "edge_agent.sinks.influx",
)

SINKS: dict[str, SinkPlugin] = {}
for _package in PACKAGES:
    _plugin: SinkPlugin = importlib.import_module(_package).PLUGIN
    SINKS[_plugin.name] = _plugin
