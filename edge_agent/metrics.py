"""Self-monitoring: the agent's own health as Prometheus metrics (pollers, sinks, indicator core)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMPUTE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class _BadFrameCounts(Collector):
    """edge_agent_modbus_bad_frames_total{device,kind}, read at scrape time from each driver's `bad_frames.counts`.

    The drivers count the frames they reject themselves (they do not depend on the metrics), so
    this costs nothing per poll. A driver made anew (a config reload) starts from 0 again, which
    Prometheus takes as a counter reset.
    """

    def __init__(self) -> None:
        self.drivers: Mapping[str, object] = {}

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The metric's name and help, without reading the drivers."""
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One sample per device and kind of bad frame seen."""
        family = self._family()
        for device, driver in list(self.drivers.items()):
            counts = getattr(getattr(driver, "bad_frames", None), "counts", None)
            if counts:
                for kind, n in list(counts.items()):
                    family.add_metric([device, kind], n)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "edge_agent_modbus_bad_frames",
            "Modbus frames rejected because they do not fit the request or the protocol, by kind "
            "(drivers/modbus/connection.py BAD_FRAME_KINDS)",
            labels=["device", "kind"],
        )


class AgentMetrics:
    """Every metric the agent exposes, in a registry of its own so several agents can live in one test process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.poll_latency = Histogram(
            "edge_agent_poll_latency_seconds",
            "Time of one batched read of a tag group",
            ["device"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.poll_errors = Counter(
            "edge_agent_poll_errors", "Reads that failed as a whole", ["device"], registry=r
        )
        self.bad_values = Counter(
            "edge_agent_bad_values", "Values read with bad quality", ["device"], registry=r
        )
        self.values_read = Counter("edge_agent_values_read", "Values read", ["device"], registry=r)
        self.overruns = Counter(
            "edge_agent_poll_overruns", "Polls that ended after their next slot began", ["device"], registry=r
        )
        self.reconnects = Counter(
            "edge_agent_reconnects", "Connections re-established after a loss", ["device"], registry=r
        )
        self.connected = Gauge("edge_agent_device_connected", "1 while connected", ["device"], registry=r)
        self.outbox_depth = Gauge(
            "edge_agent_outbox_records", "Records waiting in the outbox", ["sink"], registry=r
        )
        self.outbox_bytes = Gauge(
            "edge_agent_outbox_bytes", "Bytes of the outbox on disk", ["sink"], registry=r
        )
        self.sent = Counter(
            "edge_agent_sink_records_sent", "Records acknowledged by the sink", ["sink"], registry=r
        )
        self.dropped = Counter(
            "edge_agent_sink_records_dropped",
            "Records dropped because the outbox was full",
            ["sink"],
            registry=r,
        )
        self.retries = Counter("edge_agent_sink_retries", "Failed deliveries retried", ["sink"], registry=r)
        self.sink_connected = Gauge(
            "edge_agent_sink_connected",
            "1 while the sink holds a connection (MQTT: since CONNACK)",
            ["sink"],
            registry=r,
        )
        self.sink_restarts = Counter(
            "edge_agent_sink_restarts",
            "Restarts after a failure: a sink's delivery loop, the MQTT publisher process or session",
            ["sink"],
            registry=r,
        )
        self.dropped_batches = Counter(
            "edge_agent_dropped_batches",
            "Batches read from a device that had left the config by the time they arrived (after a reload)",
            registry=r,
        )
        self.compute_time = Histogram(
            "edge_agent_indicator_compute_seconds",
            "Time of one indicator-core update",
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.alarms_active = Gauge("edge_agent_alarms_active", "Alarms currently active", registry=r)
        self._bad_frames = _BadFrameCounts()
        r.register(self._bad_frames)

    def watch_drivers(self, drivers: Mapping[str, object]) -> None:
        """Export the bad-frame counts of these drivers (by device name; the mapping is read at every scrape)."""
        self._bad_frames.drivers = drivers

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP on a thread of prometheus-client's own; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
