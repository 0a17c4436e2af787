"""The harness's real services work end to end: paho publishes to Mosquitto, influxdb-client writes to VictoriaMetrics."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as mqtt
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

from tests.services import Mosquitto, VictoriaMetrics


def _connected_client(broker: Mosquitto, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK from the broker"
    return client


def test_mqtt_round_trip_delivers_exact_payload(mosquitto: Mosquitto) -> None:
    payload = b'{"v":1,"machine":"imm-1","values":[1.5,NaN]}\x00\xff'
    received: list[tuple[str, bytes, int]] = []
    got = threading.Event()

    sub = _connected_client(mosquitto, "sub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload, msg.qos))
        got.set()

    sub.on_message = on_message
    sub.subscribe("test/#", qos=1)
    assert subscribed.wait(10)

    pub = _connected_client(mosquitto, "pub")
    info = pub.publish("test/site/area/line/imm-1/raw", payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()
    assert got.wait(10)
    assert received == [("test/site/area/line/imm-1/raw", payload, 1)]
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()


def test_influx_write_round_trip_keeps_values_and_timestamps(victoria: VictoriaMetrics) -> None:
    lines = [
        "roundtrip,site=s1,machine=furnace-1 zone_1=850.25 1700000000123000000",
        "roundtrip,site=s1,machine=furnace-1 zone_1=851.5 1700000001456000000",
        "roundtrip,site=s1,machine=furnace-1 zone_1=-0.125 1700000002789000000",
    ]

    async def write() -> None:
        async with InfluxDBClientAsync(url=victoria.url, token="unused", org="shopfloor") as client:
            ok = await client.write_api().write(bucket="process", record="\n".join(lines))
            assert ok is True

    asyncio.run(write())
    series = victoria.export('{__name__="roundtrip_zone_1"}')
    assert len(series) == 1
    assert series[0]["metric"]["machine"] == "furnace-1"
    assert series[0]["metric"]["site"] == "s1"
    assert series[0]["values"] == [850.25, 851.5, -0.125]
    # VictoriaMetrics stores milliseconds; the sub-ms part of the ns timestamps is dropped by design
    assert series[0]["timestamps"] == [1700000000123, 1700000001456, 1700000002789]
