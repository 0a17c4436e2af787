"""Line-protocol prefixes: built once per row a source sends, whatever order and span the rows come in."""

from __future__ import annotations

import numpy as np

from edge_agent.records import Source
from edge_agent.sinks.influx.encoder import LineProtocolEncoder
from edge_agent.types import Readings, SignalTable

T = 1_790_000_000_000_000_000


def _lines(encoder: LineProtocolEncoder, source: Source, rows: list[int]) -> list[str]:
    readings = Readings.of(rows, T, [float(r) for r in rows])
    return encoder.raw(source, readings).payload.decode().splitlines()


def test_prefixes_follow_rows_in_any_order_and_outside_the_first_span() -> None:
    table = SignalTable()
    for i in range(6):
        table.add("other", f"o{i}")
    rows = [table.add("imm1", f"t{i}", "bar" if i % 2 else "") for i in range(6)]
    late = table.add("imm1", "late", "K")  # a tag added by a reload lands after every other row
    encoder = LineProtocolEncoder(table)
    src = Source("imm1", "imm")
    head = "imm,area=area1,line=line1,machine=imm1,site=plant1,signal="
    first = _lines(encoder, src, [rows[4], rows[2]])
    assert first == [
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}t2 value=8.0,quality=0i {T}",
    ]
    # below and above the span seen so far, one row twice, and the late row far past it
    again = _lines(encoder, src, [rows[0], rows[5], rows[4], rows[4], late])
    assert again == [
        f"{head}t0 value=6.0,quality=0i {T}",
        f"{head}t5,unit=bar value=11.0,quality=0i {T}",
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}t4 value=10.0,quality=0i {T}",
        f"{head}late,unit=K value=12.0,quality=0i {T}",
    ]
    # another source's rows never pick up this source's tags
    assert _lines(encoder, Source("other", "press"), [0])[0].startswith(
        "press,area=area1,line=line1,machine=other,"
    )
    assert np.array_equal(encoder._row_prefixes(src, "imm", np.empty(0, np.int64)), np.empty(0, dtype=object))


def test_status_fields_keep_their_type_for_numpy_scalars() -> None:
    """Health figures typed as numpy scalars are integer/float fields, never strings (a type conflict in InfluxDB)."""
    from edge_agent.records import AgentStatus

    encoder = LineProtocolEncoder(SignalTable())
    health = {
        "devices": np.int64(3),
        "ok": np.bool_(True),
        "load": np.float32(0.5),
        "lag_s": np.float64(np.nan),
    }
    line = encoder.status(Source("edge-1", "agent"), AgentStatus(T, "online", health)).payload.decode()
    assert line.split(" ")[1] == "online=1i,devices=3i,ok=1i,load=0.5"
