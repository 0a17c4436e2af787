"""`edge-agent demo`, the README's main command: four machines, the agent and an embedded broker."""

from __future__ import annotations

import gzip
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from edge_agent.cli import build_parser
from edge_agent.config import BUILTIN_PROFILES_DIR
from edge_agent.demo import PAGE_S, DemoView, demo_command
from edge_agent.profiles import find_profile
from edge_agent.records import Output, Source
from edge_agent.types import Readings
from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def _env_with_tmpdir(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


def test_demo_runs_the_plant_through_its_embedded_broker(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "14", "--broker-port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_with_tmpdir(tmp_path),
    )  # fmt: skip
    kinds: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with lock:
            kinds[(body["machine"], body["kind"])] += 1

    try:
        wait_for_port(port, timeout=30)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.subscribe("demo/uns/#", qos=1)
        client.loop_start()
        out, err = demo.communicate(timeout=90)
        time.sleep(0.5)
        client.loop_stop()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("edge-agent demo · MQTT mqtt://127.0.0.1:")
    config = Path(lines[0].split(" · config ")[1].split(" · ")[0])
    assert config.parent.parent == tmp_path and config.name == "agent.toml"
    # the demo's config and outbox are removed on exit (--keep keeps them)
    assert list(tmp_path.iterdir()) == []
    assert lines[-1].startswith("demo stopped:")
    last = {line.split(":")[0]: line for line in lines if " polls=" in line}
    assert set(last) == {
        *("imm-1", "dcm1", "tcu1", "furnace-1", "press-1", "weld-arc-1", "spot-1"),
        *("plating-ni1", "plating-ni2", "plating-anod"),
    }
    assert all(int(line.split("polls=")[1].split()[0]) >= 5 for line in last.values())
    assert "spread °C=" in last["furnace-1"] and "heat kW=" in last["tcu1"] and "OEE=" in last["dcm1"]
    for machine in ("imm-1", "dcm1", "tcu1", "furnace-1"):
        assert kinds[(machine, "raw")] >= 3, kinds
        assert kinds[(machine, "kpi")] >= 3, kinds
    assert kinds[("demo-agent", "status")] >= 1


def test_demo_names_a_taken_broker_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "5", "--broker-port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=_env_with_tmpdir(tmp_path),
        )  # fmt: skip
    assert demo.returncode == 2, demo.stderr
    assert demo.stdout == ""
    assert demo.stderr.splitlines() == [
        f"edge-agent demo: --broker-port {port}: the embedded MQTT broker cannot listen on "
        f"127.0.0.1:{port}, the port is already in use; pass another --broker-port, "
        "or leave it out to use a free port"
    ]
    assert list(tmp_path.iterdir()) == []


def test_demo_keep_leaves_its_config_and_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = build_parser().parse_args(["demo", "--plain", "--duration", "1", "--keep"])
    assert demo_command(args) == 0
    (workdir,) = tmp_path.iterdir()
    assert workdir.name.startswith("edge-agent-demo-")
    assert (workdir / "agent.toml").read_text(encoding="utf-8").startswith('[agent]\nname = "demo-agent"')
    assert (workdir / "outbox").is_dir()
    assert f"demo files kept in {workdir}\n" in capsys.readouterr().out


def _rendered(view: DemoView) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(view.render("demo"))
    return console.export_text()


def test_live_view_counts_the_baseline_cycles_the_prewhitener_holds_back() -> None:
    profile = find_profile("injection_molding", [BUILTIN_PROFILES_DIR])
    names = ["job_cycle_counter", "cushion", "barrel_zone_1"]
    view = DemoView({"imm-1": profile}, names)
    source = Source("imm-1")
    # the agent starts at counter 600 (the plant ran before) and sees 17 cycles; no spc record yet
    for counter in range(600, 618):
        raw = Readings.of(np.array([0, 1], np.int32), np.full(2, counter, np.int64), np.array([counter, 5.0]))
        view.update("imm-1", Output(raw=[(source, raw)]))
    cushion = next(line for line in _rendered(view).splitlines() if " cushion " in line)
    assert "base 17/50" in cushion
    # past the baseline the count stops at 50 until the limits arrive
    for counter in range(618, 700):
        raw = Readings.of(np.array([0], np.int32), np.array([counter], np.int64), np.array([counter]))
        view.update("imm-1", Output(raw=[(source, raw)]))
    assert view.machines["imm-1"].cycles == 99
    cushion = next(line for line in _rendered(view).splitlines() if " cushion " in line)
    assert "base 50/50" in cushion
    # a signal without control limits never shows a baseline
    view.machines["imm-1"].signals = ["barrel_zone_1"]
    zone = next(line for line in _rendered(view).splitlines() if " barrel_zone_1 " in line)
    assert "base" not in zone


def _screen(view: DemoView, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(view.render("edge-agent demo · web http://127.0.0.1:8080/ · Ctrl-C stops", height))
    return [line.rstrip() for line in console.export_text().rstrip("\n").split("\n")]


def _machines(n: int) -> DemoView:
    kinds = ["injection_molding", "die_casting", "mold_tcu", "furnace"]
    profiles = {f"machine-{i:02d}": find_profile(kinds[i % 4], [BUILTIN_PROFILES_DIR]) for i in range(n)}
    view = DemoView(profiles, ["cushion"])
    for name, m in view.machines.items():
        m.values = {s: 12345.678 for s in m.signals}
        m.spc = {s: {"cl": -1234.5678, "cpk": 12.3456, "n": 60.0} for s in m.signals}
        m.figures = {"OEE": 0.87, "avail": 1.0, "spread °C": 2.25, "heat kW": 8.4}
        m.active = {f"{m.signals[0]}:rules": "rules alarm"} if name.endswith("3") else {}
    for i in range(9):
        view.events.appendleft(
            f"03:1{i}:00 machine-03 cushion rules: rules alarm (WE1+WE2+N1+N5+MR_HIGH+EWMA_LOW+CUSUM_NEG)"
        )
    return view


def test_the_live_view_fits_an_80x24_terminal() -> None:
    lines = _screen(_machines(4))
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80, "\n".join(lines)
    rows = [line for line in lines if line.startswith("machine-")]
    assert len(rows) == 4  # one line per machine
    for row in rows:
        # the numbers whole, never "1.23…"
        assert " 1.235e+04 " in row and " -1235 " in row and " 12.35 " in row, row
    assert rows[3].endswith(" 1") and rows[0].endswith(" ok")
    assert sum("rules alarm" in line for line in lines) == 5  # the latest alarms, one line each


def test_the_live_view_scrolls_machines_that_do_not_fit() -> None:
    lines = _screen(_machines(40))
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80, "\n".join(lines)
    rows = [line for line in lines if line.startswith("machine-")]
    caption = next(line for line in lines if line.startswith("machines "))
    first, last = map(int, caption.split()[1].split("-"))
    # which page shows depends on the clock; each but the last is full
    assert caption.endswith(f"of 40, next page every {PAGE_S:g} s") and last - first + 1 == len(rows)
    assert len(rows) == 12 or last == 40
    assert [int(row.split()[0].split("-")[1]) + 1 for row in rows] == list(range(first, last + 1))


class FakeInfluxDB2:
    """An HTTP server answering /api/v2/write as InfluxDB 2 does: 401 without the token, 404 for an unknown org or
    bucket, 400 "writing requires points" to an empty body, 204 otherwise; `revoked` turns the token down from then on.
    """

    def __init__(self, token: str = "s3cret", org: str = "acme", bucket: str = "demo") -> None:
        self.token, self.org, self.bucket = token, org, bucket
        self.writes: list[
            tuple[str, dict[str, str], int]
        ] = []  # (Authorization, query, lines) of each answered 204
        self.refused = 0
        self.revoke_after: int | None = None
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # /ping, /health
                self._answer(204, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                auth = self.headers.get("Authorization", "")
                revoked = fake.revoke_after is not None and len(fake.writes) >= fake.revoke_after
                if auth != f"Token {fake.token}" or (revoked and body):
                    fake.refused += 1
                    self._answer(401, {"code": "unauthorized", "message": "unauthorized access"})
                elif query.get("org") != fake.org:
                    self._answer(
                        404,
                        {"code": "not found", "message": f'organization name "{query.get("org")}" not found'},
                    )
                elif query.get("bucket") != fake.bucket:
                    self._answer(
                        404, {"code": "not found", "message": f'bucket "{query.get("bucket")}" not found'}
                    )
                elif not body:
                    self._answer(400, {"code": "invalid", "message": "writing requires points"})
                else:
                    fake.writes.append((auth, query, body.count(b"\n") + 1))
                    self._answer(204, None)

            def _answer(self, status: int, body: dict | None) -> None:
                data = orjson.dumps(body) if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _demo(tmp_path: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in _env_with_tmpdir(tmp_path).items() if k != "INFLUX_TOKEN"}
    if token is not None:
        env["INFLUX_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", *args],
        cwd=REPO, capture_output=True, text=True, timeout=90, env=env,
    )  # fmt: skip


def test_demo_says_which_influx_option_to_fix(tmp_path: Path) -> None:
    influx = FakeInfluxDB2()
    try:
        url = influx.url
        cases = [
            ({}, [], "wants a token (401 unauthorized access): set INFLUX_TOKEN (or pass --influx-token) to a token "
             "that may write to bucket 'process' of organization 'shopfloor'"),
            ({"token": "wrong"}, [], "refused the token (401 unauthorized access): give one that may write to "
             "bucket 'process' of organization 'shopfloor' in INFLUX_TOKEN or --influx-token"),
            ({}, ["--influx-token", "s3cret"], "has no bucket 'process' of organization 'shopfloor' (404 organization "
             'name "shopfloor" not found); pass --influx-org and --influx-bucket naming ones that exist there'),
            ({"token": "s3cret"}, ["--influx-org", "acme"], "has no bucket 'process' of organization 'acme' (404 "
             'bucket "process" not found); pass --influx-org and --influx-bucket naming ones that exist there'),
        ]  # fmt: skip
        for env, args, message in cases:
            done = _demo(tmp_path, "--duration", "3", "--influx-url", url, *args, **env)  # type: ignore[arg-type]
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert done.stderr.splitlines() == [f"edge-agent demo: InfluxDB {url} {message}"], args
            assert done.stdout == ""
    finally:
        influx.close()
    assert list(tmp_path.iterdir()) == []  # stopped before anything was made
    assert influx.writes == []


def test_demo_writes_with_token_org_and_bucket_and_tells_what_happens_to_the_unsent(tmp_path: Path) -> None:
    influx = FakeInfluxDB2()
    influx.revoke_after = 2  # then the token stops working: the demo's backlog is never delivered
    try:
        done = _demo(
            tmp_path, "--duration", "5", "--influx-url", influx.url, "--influx-org", "acme",
            "--influx-bucket", "demo", token="s3cret",
        )  # fmt: skip
    finally:
        influx.close()
    assert done.returncode == 0, done.stderr
    assert len(influx.writes) == 2 and influx.refused >= 1
    for auth, query, lines in influx.writes:
        assert auth == "Token s3cret" and query["org"] == "acme" and query["bucket"] == "demo" and lines > 0
    err = done.stderr
    assert "s3cret" not in done.stdout + err
    # the hints name the demo's options, not a config file the user does not have
    assert "sinks.influx" not in err and "config" not in err, err
    refused = [line for line in err.splitlines() if "refused the token" in line]
    assert refused and all("pass --influx-token or set INFLUX_TOKEN" in line for line in refused), err
    # what was not delivered goes with the temporary folder: no promise of a "next start"
    assert "next start" not in err
    unsent = [line for line in err.splitlines() if "were not delivered before the demo stopped" in line]
    assert len(unsent) == 1 and unsent[0].endswith(
        "were not delivered before the demo stopped; they are deleted with the demo's temporary folder "
        "(demo --keep keeps them)"
    ), err
    assert list(tmp_path.iterdir()) == []
    assert done.stdout.splitlines()[0].startswith("edge-agent demo · MQTT ")
    assert f" · InfluxDB {influx.url} · " in done.stdout.splitlines()[0]


def test_a_second_ctrl_c_ends_the_demo_at_once_and_removes_its_folder(tmp_path: Path) -> None:
    nobody = free_port()  # a broker that never answers: the first Ctrl-C would wait 5 s to flush
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--mqtt-url", f"mqtt://127.0.0.1:{nobody}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_with_tmpdir(tmp_path),
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        assert demo.stdout.readline().startswith("edge-agent demo · MQTT ")
        time.sleep(1.0)
        demo.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert demo.poll() is None  # flushing towards a broker that is not there
        demo.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code = demo.wait(15)
        waited = time.monotonic() - sent
        err = demo.stderr.read()  # type: ignore[union-attr]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert waited < 1.5 and code == 130, (waited, code, err)
    (line,) = [line for line in err.splitlines() if "SIGINT again" in line]
    assert line.endswith(
        "were not delivered before the demo stopped; they are deleted with the demo's temporary folder "
        "(demo --keep keeps them)"
    )
    assert "stopping now without waiting for delivery" in line and "next start" not in err
    assert "(sinks.mqtt.url)" not in err and "(--mqtt-url)" in err  # the demo's option, not a config key
    assert list(tmp_path.iterdir()) == []
