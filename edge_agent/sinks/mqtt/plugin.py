"""What the MQTT package registers: its config, how the agent builds the publisher, and how it previews records."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from edge_agent.config_model import Model
from edge_agent.records import Record
from edge_agent.sinks.base import Delivery, SinkContext, SinkPlugin
from edge_agent.sinks.mqtt.config import MqttSink, TlsOptions
from edge_agent.sinks.mqtt.encoder import MqttEncoder

if TYPE_CHECKING:
    from edge_agent.sinks.mqtt.publisher import MqttPublisher

#: Records per take and batches on the wire at once (the publisher's own window, sinks.mqtt.max_inflight,
#: still caps the messages without PUBACK). A second batch lets a put go out while the last batch waits
#: for its PUBACKs; more batches or smaller ones cost throughput with a backlog (bench_sinks: 2000 x 1
#: 12.4k msg/s, 2000 x 2 11.3k, 1000 x 4 11.1k, 200 x 8 10.6k).
BATCH_RECORDS = 1000
BATCHES_IN_FLIGHT = 2


def _open(config: Model, context: SinkContext) -> MqttPublisher:
    from edge_agent.sinks.mqtt.publisher import MqttPublisher  # paho only when the sink runs

    cfg = cast(MqttSink, config)
    encoder = MqttEncoder(cfg.topic_prefix, cfg.topic_template)
    online = encoder.status(context.online)
    # the will says offline for the run that announced online; seq 0: the broker sends it at a time nobody knows
    will = encoder.status(dataclasses.replace(context.online, seq=0, state="offline", health={}))
    client_id = cfg.client_id or f"edge-agent-{context.agent_name}-{socket.gethostname()}"
    # the agent queues a numbered offline status itself at a clean stop
    return MqttPublisher(cfg, client_id=client_id, online=online, will=will, offline_at_stop=False)


def _preview(config: Model | None, records: Sequence[Record]) -> list[Record]:
    cfg = cast(MqttSink, config) if config is not None else MqttSink()
    return MqttEncoder(cfg.topic_prefix, cfg.topic_template).encode(records)


PLUGIN = SinkPlugin(
    name="mqtt",
    config_model=MqttSink,
    open=_open,
    delivery=lambda _config: Delivery(batch_records=BATCH_RECORDS, in_flight=BATCHES_IN_FLIGHT),
    paths=("tls.ca_file", "tls.cert_file", "tls.key_file"),
    sections=(("[sinks.mqtt]", MqttSink), ("[sinks.mqtt.tls]", TlsOptions)),
    preview=_preview,
)
