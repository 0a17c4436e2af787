"""What the MQTT package registers: its config model, the files it reads and its config sections."""

from __future__ import annotations

from edge_agent.sinks.base import SinkPlugin
from edge_agent.sinks.mqtt.config import MqttSink, TlsOptions

PLUGIN = SinkPlugin(
    name="mqtt",
    config_model=MqttSink,
    paths=("tls.ca_file", "tls.cert_file", "tls.key_file"),
    sections=(("[sinks.mqtt]", MqttSink), ("[sinks.mqtt.tls]", TlsOptions)),
)
