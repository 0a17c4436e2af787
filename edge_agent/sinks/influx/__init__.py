"""InfluxDB output: line protocol to /api/v2/write, gzip, Retry-After, dead letters for refused lines (README.md here)."""

from __future__ import annotations

from edge_agent.sinks.base import SinkPlugin
from edge_agent.sinks.influx.config import InfluxSink

PLUGIN = SinkPlugin(
    name="influx",
    config_model=InfluxSink,
    paths=("dead_letter",),
    sections=(("[sinks.influx]", InfluxSink),),
)
