"""An outbox written by the previous version (records encoded before the outbox, commit 828f028) drains after the
upgrade, through a real Mosquitto and a real VictoriaMetrics, exactly as that version wrote it; new records follow it."""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from pathlib import Path

import orjson

from edge_agent.config import parse_config
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox
from edge_agent.records import AgentStatus, Output, Source, is_packed
from edge_agent.sink_set import SinkSet
from edge_agent.types import Readings
from tests.fixtures.outbox_828f028 import inputs
from tests.services import Mosquitto, VictoriaMetrics
from tests.sink_services import Point, Subscriber, parse_line_protocol

FIXTURE = Path(inputs.__file__).parent
T_NEW = 1_795_000_100_000_000_000


def _expected(sink: str) -> list[dict]:
    lines = (FIXTURE / "expected.jsonl").read_bytes().splitlines()
    return [entry for entry in map(orjson.loads, lines) if entry["sink"] == sink]


def _stored(vm: VictoriaMetrics) -> list[Point]:
    points = []
    for series in vm.export():
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        for t_ms, value in zip(series["timestamps"], series["values"], strict=True):
            points.append(Point(name, tuple(sorted(labels.items())), t_ms, value))
    return sorted(points, key=lambda p: (p.name, p.labels, p.t_ms))


async def test_an_outbox_left_by_828f028_drains_after_the_upgrade_then_new_records_follow(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    for name in ("mqtt", "influx"):
        shutil.copy(FIXTURE / f"{name}.sqlite", outbox_dir / f"{name}.sqlite")
    old_mqtt = _expected("mqtt")
    old_influx = _expected("influx")
    for name, entries in (("mqtt", old_mqtt), ("influx", old_influx)):
        # the fixture is what it claims: rows encoded by the old version, waiting to be sent
        box = Outbox(outbox_dir / f"{name}.sqlite")
        rows = box.take(1000)
        box.close()
        assert [(s.record.key, s.record.payload) for s in rows] == [
            (e["key"], e["payload"].encode()) for e in entries
        ]
        assert not any(is_packed(s.record.payload) for s in rows)

    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    sub = Subscriber(mosquitto.port, "upgrade/#", client_id="sub-upgrade")
    try:
        config = parse_config(
            f'[agent]\nname = "edge-up"\n'
            # a topic prefix of its own: the backlog keeps the topics it was written with, new records get this
            f'[sinks.mqtt]\nurl = "{mosquitto.url}"\ntopic_prefix = "upgrade/new"\n'
            f'[sinks.influx]\nurl = "{vm.url}"\nflush_interval = 0.05\n'
            f'[outbox]\ndir = "{outbox_dir}"\n',
            "upgrade.toml",
            tmp_path,
        )
        table = inputs.table()
        sinks = SinkSet(config, table, AgentMetrics())
        await sinks.start(AgentStatus(time.time_ns(), "online", {}))
        machine = inputs.MACHINES[0]
        after = Source(machine.machine, equipment="upgrade_after")
        rows = table.rows_of(machine.machine)
        sinks.publish(Output(raw=[(after, Readings.of(rows, T_NEW, [1.5, 2.5, 3.5]))]))
        await sinks.stop(10.0)
        new_raw = "upgrade/new/plant1/area1/line1/imm-0/raw"
        # the agent's online status (on connect), every old message, the new raw poll
        assert await asyncio.to_thread(sub.wait_for, len(old_mqtt) + 2, 10) == len(old_mqtt) + 2
        await asyncio.sleep(0.3)  # nothing more comes
        received = list(sub.raw)
        stored = _stored(vm)
    finally:
        sub.close()
        vm.stop()

    # MQTT: the old rows went out as they were written, byte for byte and in order, before the new record
    old = [(topic, payload) for topic, payload, _ in received if topic.startswith("upgrade/uns/")]
    assert old == [(e["key"], e["payload"].encode()) for e in old_mqtt]
    topics = [topic for topic, _, _ in received]
    assert topics[0] == "upgrade/new/plant1/area1/line1/edge-up/status"
    assert topics.index(new_raw) == len(topics) - 1
    body = orjson.loads(received[-1][1])
    assert body["equipment"] == "upgrade_after" and body["seq"] == 1 and body["boot"] == sinks.packer.boot_ms
    assert body["signals"] == ["melt_temp", 'we"ird,name=1 x\\y', "cycle_time"]
    assert body["values"] == [1.5, 2.5, 3.5] and body["t_ms"] == [T_NEW // 1_000_000] * 3

    # InfluxDB: exactly the points of the old lines, then the new record's
    expected = [p for e in old_influx for p in parse_line_protocol(e["payload"].encode())]
    units = {"melt_temp": "°C", 'we"ird,name=1 x\\y': "deg C", "cycle_time": ""}
    tags = {"area": "area1", "line": "line1", "machine": "imm-0", "site": "plant1"}
    for signal, value in zip(units, (1.5, 2.5, 3.5), strict=True):
        labels = {**tags, "signal": signal, **({"unit": units[signal]} if units[signal] else {})}
        for field, number in (("value", value), ("quality", 0.0)):
            expected.append(
                Point(f"upgrade_after_{field}", tuple(sorted(labels.items())), T_NEW // 10**6, number)
            )
    expected.sort(key=lambda p: (p.name, p.labels, p.t_ms))
    assert [(p.name, p.labels, p.t_ms) for p in stored] == [(p.name, p.labels, p.t_ms) for p in expected]
    # VictoriaMetrics keeps 12 significant decimal digits
    assert all(math.isclose(s.value, e.value, rel_tol=1e-11) for s, e in zip(stored, expected, strict=True))
