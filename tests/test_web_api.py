"""The web page's live state and its HTTP side: API answers, streams, headers, tokens, read-only, demo switches.

The state is fed by a real agent's pipeline (the die-casting profile, readings made here) and
checked value by value; the server runs around a real agent polling the mould TCU simulator on a
free port, and is asked with aiohttp's client. The browser side is tests/test_web_browser.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from edge_agent.agent import Agent
from edge_agent.config import parse_config
from edge_agent.simulators.die_casting import DieCastingSimulator
from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from edge_agent.simulators.plant import Plant
from edge_agent.types import Quality, Readings
from edge_agent.web.config import WebConfig, with_listen
from edge_agent.web.demo_controls import PlantControls
from edge_agent.web.server import CSP, WebServer
from edge_agent.web.state import LiveState, _headlines, rule_names

TOKEN = "s3cret-web-token-0123456789"
MQTT_PASSWORD = "mqtt-password-never-shown"
CYCLE_NS = 60 * 10**9  # the die-casting profile's nominal cycle


def _die_casting_agent(tmp_path: Path) -> Agent:
    devices = DieCastingSimulator().device_config(name="dcm1", endpoint="modbus-tcp://127.0.0.1:1")
    text = '[agent]\nname = "web-test"\n\n' + devices
    return Agent(parse_config(text, str(tmp_path / "agent.toml"), tmp_path), tmp_path, sinks=False)


def _shot(agent: Agent, k: int, t_ns: int, pressure: float, quality: int = Quality.GOOD) -> Readings:
    rows = agent.pipeline.rows_of("dcm1")
    return Readings.of(
        [rows["shot_counter"], rows["intensification_pressure"], rows["machine_state"]],
        t_ns,
        [float(k), pressure, 3.0],
        [Quality.GOOD, quality, Quality.GOOD],
    )


def test_the_state_keeps_values_charts_and_alarms_from_the_pipeline(tmp_path: Path) -> None:
    agent = _die_casting_agent(tmp_path)
    state = LiveState(agent, chart_points=40)
    state.attach()
    assert agent.on_output is not None
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000 * 10**9
    pressures = list(750.0 + rng.normal(0.0, 5.0, 110))
    pressures[100] = 540.0  # a step below the LSL (600 bar) on shot 100
    for k, p in enumerate(pressures):
        out = agent.pipeline.process_many(
            [("dcm1", _shot(agent, k, t0 + k * CYCLE_NS, p))], t0 + k * CYCLE_NS
        )
        agent.on_output("dcm1", out[0])
    view = state.machine("dcm1")
    assert view is not None
    signals = {s["name"]: s for s in view["signals"]}
    assert signals["intensification_pressure"]["value"] == pressures[-1]
    assert (
        signals["intensification_pressure"]["quality"] == "GOOD"
        and signals["intensification_pressure"]["unit"] == "bar"
    )
    assert signals["shot_counter"]["value"] == 109.0
    assert view["machine"]["last_good_ms"] == (t0 + 109 * CYCLE_NS) // 10**6
    # never connected (the agent was not started): offline, whatever the values say
    assert view["machine"]["state"] == "offline"

    chart = next(c for c in view["charts"] if c["signal"] == "intensification_pressure")
    assert (chart["lsl"], chart["usl"]) == (600.0, 900.0)
    assert chart["lcl"] < chart["cl"] < chart["ucl"]
    points = chart["points"]
    assert len(points) == 40  # chart_points: the oldest are overwritten
    times = [p[0] for p in points]
    assert times == sorted(times) and times[-1] == (t0 + 109 * CYCLE_NS) // 10**6
    # the pipeline charts one point per shot: the last 40 shots' raw values, in order
    assert [p[1] for p in points] == pytest.approx(pressures[70:])
    hit = {p[0]: p[2] for p in points if p[2]}
    step_ms = (t0 + 100 * CYCLE_NS) // 10**6
    assert step_ms in hit and "WE1" in hit[step_ms] and "BELOW_LSL" in hit[step_ms]
    # a signal with `imr, rules, cusum, capability` shows no EWMA bits, which it does not judge
    assert all("EWMA" not in rules for rules in hit.values())

    alarms = state.alarms()
    spec = [a for a in alarms["recent"] if (a["signal"], a["rule"]) == ("intensification_pressure", "spec")]
    assert (
        spec and spec[-1]["start_ms"] == step_ms and spec[-1]["value"] == 540.0 and spec[-1]["limit"] == 600.0
    )
    assert spec[-1]["severity"] == "alarm" and spec[-1]["message"] == "below the LSL"
    # cleared after five good shots: the clear time is that shot's
    assert (
        spec[-1]["clear_ms"] is not None and step_ms < spec[-1]["clear_ms"] <= (t0 + 106 * CYCLE_NS) // 10**6
    )
    assert all(a["machine"] == "dcm1" for a in alarms["active"])

    overview = state.overview()
    (machine,) = overview["machines"]
    assert machine["name"] == "dcm1" and machine["charts"] == 8 and machine["poll_interval_s"] == 1.0
    assert machine["endpoint"] == "modbus-tcp://127.0.0.1:1"
    figures = {f["key"]: f["value"] for f in machine["figures"]}
    assert 0.0 <= figures["oee.availability"] <= 1.0


def test_a_bad_reading_shows_its_quality_and_keeps_the_last_good_read(tmp_path: Path) -> None:
    agent = _die_casting_agent(tmp_path)
    state = LiveState(agent)
    state.attach()
    t0 = 1_700_000_000 * 10**9
    out = agent.pipeline.process_many([("dcm1", _shot(agent, 1, t0, 750.0))], t0)[0]
    agent.on_output("dcm1", out)
    late = _shot(agent, 1, t0 + 10**9, 0.0, Quality.BAD_NOT_CONNECTED)
    # two batches in one flush: the later reading of a row wins
    agent.on_output("dcm1", agent.pipeline.process_many([("dcm1", late)], t0 + 10**9)[0])
    view = state.machine("dcm1")
    assert view is not None
    signal = next(s for s in view["signals"] if s["name"] == "intensification_pressure")
    assert signal["value"] is None and signal["quality"] == "BAD_NOT_CONNECTED" and not signal["good"]
    assert signal["t_ms"] == (t0 + 10**9) // 10**6
    assert view["machine"]["last_good_ms"] == (t0 + 10**9) // 10**6  # shot_counter stayed good
    assert state.machine("no-such-machine") is None


def test_a_feature_without_headlines_shows_its_first_fields_on_the_overview() -> None:
    figures = {
        "cycle": {"stopped": 0.0},
        "oee": {"availability": 0.9, "oee": 0.8, "apt_s": 12.0},
        "weld_quality": {"current_ka": 9.5, "nugget_ok": 1.0, "energy_kj": 2.5, "expulsions": 0.0},
    }
    shown = [(f["key"], f["label"], f["unit"], f["value"]) for f in _headlines(figures)]
    assert shown == [
        ("oee.oee", "OEE", "%", 0.8),
        ("oee.availability", "Availability", "%", 0.9),
        ("weld_quality.current_ka", "Current ka", "", 9.5),
        ("weld_quality.nugget_ok", "Nugget ok", "", 1.0),
        ("weld_quality.energy_kj", "Energy kj", "", 2.5),
    ]


def test_rule_names() -> None:
    assert rule_names(0b10001) == "WE1+N1"
    assert rule_names(0) == ""


def test_web_config_refuses_other_machines_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"listening on 0\.0\.0\.0 lets other machines in: set `token"):
        WebConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="not an IP address"):
        WebConfig(host="plant-gateway")
    with pytest.raises(ValueError, match="environment reference"):
        WebConfig(host="0.0.0.0", token="plain-text")  # type: ignore[arg-type]
    monkeypatch.setenv("EDGE_AGENT_WEB_TOKEN", TOKEN)
    web = WebConfig(host="0.0.0.0", token="${EDGE_AGENT_WEB_TOKEN}")  # type: ignore[arg-type]
    assert web.token is not None and web.token.get_secret_value() == TOKEN and TOKEN not in repr(web)
    assert with_listen(WebConfig(), ":9000").port == 9000 and with_listen(WebConfig(), ":9000").enabled
    assert with_listen(WebConfig(), "[::1]:9000").address == "[::1]:9000"
    with pytest.raises(
        ValueError, match=r"--web 192.168.1.5:80: listening on 192.168.1.5 lets other machines in"
    ):
        with_listen(WebConfig(), "192.168.1.5:80")
    with pytest.raises(ValueError, match="write HOST:PORT"):
        with_listen(WebConfig(), "web")


# --------------------------------------------------------------------------- the server around a running agent


class _Running:
    def __init__(self, agent: Agent, web: WebServer, sim: MoldTcuSimulator) -> None:
        self.agent, self.web, self.sim = agent, web, sim
        self.url = web.url.rstrip("/")


async def _start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, web: WebConfig, demo: bool = False
) -> AsyncIterator[_Running]:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", MQTT_PASSWORD)
    sim = MoldTcuSimulator(speed=20.0)
    await sim.start("127.0.0.1", 0)
    text = (
        '[agent]\nname = "web-test"\n\n'
        '[sinks.mqtt]\nurl = "mqtt://127.0.0.1:1"\nusername = "agent"\npassword = "${TEST_MQTT_PASSWORD}"\n\n'
        + sim.device_config(name="tcu1", poll_interval=0.05)
    )
    agent = Agent(parse_config(text, str(tmp_path / "agent.toml"), tmp_path), tmp_path, sinks=False)
    controls = None
    if demo:
        plant = Plant(machines={"mold-tcu": sim})  # the demo's plant with its one machine started here
        controls = PlantControls(plant, {"tcu1": "mold-tcu"})
    server = WebServer(agent, web, demo=controls)
    await agent.start()
    await server.start()
    try:
        yield _Running(agent, server, sim)
    finally:
        await server.stop()
        await agent.stop(flush_timeout=0)
        await sim.stop()


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Running]:
    """An agent polling the TCU simulator every 50 ms, with its page on a free loopback port."""
    async for r in _start(tmp_path, monkeypatch, WebConfig(enabled=True, port=0, update_interval=0.2)):
        yield r


async def _wait_for_values(session: aiohttp.ClientSession, url: str) -> dict:
    for _ in range(100):
        async with session.get(url + "/api/machines/tcu1") as answer:
            body = await answer.json()
        if body["machine"]["state"] == "online":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError("tcu1 never came online on the page")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_pages_carry_a_strict_csp_and_no_inline_script(running: _Running) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/alarms", "/sinks", "/machines/tcu1"):
            async with session.get(running.url + path) as answer:
                assert answer.status == 200
                assert answer.headers["Content-Security-Policy"] == CSP
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["Server"] == "edge-agent"  # no versions to look up
                html = await answer.text()
        parser = _Tags()
        parser.feed(html)
        scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
        assert scripts == [{"src": "/static/app.js", "defer": None}]
        assert not [t for t, attrs in parser.tags if any(k.startswith("on") or k == "style" for k in attrs)]
        assert all(t != "style" for t, _ in parser.tags)
        for name, ctype in (
            ("app.js", "text/javascript"),
            ("app.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ):
            async with session.get(f"{running.url}/static/{name}") as answer:
                assert answer.status == 200 and answer.content_type == ctype
                etag = answer.headers["ETag"]
            async with session.get(f"{running.url}/static/{name}", headers={"If-None-Match": etag}) as answer:
                assert answer.status == 304
        for path in ("/static/../config.py", "/static/index.html", "/static/nope.js", "/machines/nope"):
            async with session.get(running.url + path) as answer:
                assert answer.status == 404, path
        async with session.get(running.url + "/api/machines/nope") as answer:
            assert answer.status == 404 and (await answer.json())["error"] == "no machine 'nope'"


async def test_the_api_answers_live_values_and_never_a_secret(running: _Running) -> None:
    async with aiohttp.ClientSession() as session:
        body = await _wait_for_values(session, running.url)
        signals = {s["name"]: s for s in body["signals"]}
        assert 10.0 < signals["supply_temp"]["value"] < 120.0 and signals["supply_temp"]["unit"] == "°C"
        assert signals["pump_running"]["quality"] == "GOOD"
        assert body["machine"]["connected"] is True and body["machine"]["protocol"] == "modbus"
        assert body["demo"] is False and "faults" not in body
        answers = []
        for path in ("/api/overview", "/api/machines/tcu1", "/api/alarms", "/api/sinks", "/"):
            async with session.get(running.url + path) as answer:
                answers.append(await answer.text())
        assert not any(MQTT_PASSWORD in a or "TEST_MQTT_PASSWORD" in a for a in answers)
        overview = orjson.loads(answers[0])
        assert [m["name"] for m in overview["machines"]] == ["tcu1"]
        assert overview["agent"]["name"] == "web-test"
        assert overview["agent"]["health"]["devices_connected"] == 1


async def test_the_page_is_read_only_outside_the_demo(running: _Running) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url + "/api/demo") as answer:
            assert answer.status == 404
        async with session.post(
            running.url + "/api/demo/faults", json={"machine": "tcu1", "fault": "flow_loss", "on": True}
        ) as answer:
            assert answer.status == 405
        for path in ("/", "/api/overview"):
            async with session.post(running.url + path) as answer:
                assert answer.status == 405
    assert running.sim.active_faults == {}


async def test_a_loopback_page_refuses_another_host_name(running: _Running) -> None:
    # a site that rebinds its DNS name to 127.0.0.1 reaches the port, but names itself in Host
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url + "/api/overview", headers={"Host": "evil.example:80"}) as answer:
            assert answer.status == 421
        async with session.get(running.url + "/api/overview", headers={"Host": "localhost:1"}) as answer:
            assert answer.status == 200


async def test_a_stream_sends_a_few_updates_a_second_whatever_the_poll_rate(running: _Running) -> None:
    # the device is polled 20 times a second; the page asked for an update every 0.2 s at most
    events: list[float] = []
    async with aiohttp.ClientSession() as session:
        await _wait_for_values(session, running.url)
        async with session.get(running.url + "/api/machines/tcu1/stream") as answer:
            assert answer.content_type == "text/event-stream"
            assert answer.headers["Content-Security-Policy"] == CSP
            began = time.monotonic()
            values = []
            while time.monotonic() - began < 2.0:
                line = await asyncio.wait_for(answer.content.readline(), 2.0)
                if line.startswith(b"data: "):
                    events.append(time.monotonic())
                    values.append(orjson.loads(line[6:])["signals"][0]["value"])
    assert 5 <= len(events) <= 2.0 / 0.2 + 2, len(events)
    gaps = np.diff(events)
    assert gaps.min() > 0.1, gaps  # never two updates closer than half the interval
    assert len(set(values)) > 1  # and they carry the values as they move


async def test_streams_end_when_the_server_stops(running: _Running) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(running.url + "/api/overview/stream") as answer,
    ):
        await answer.content.readline()
        await asyncio.wait_for(running.web.stop(), 5.0)
        rest = await asyncio.wait_for(answer.content.read(), 5.0)
    assert b"data: " in rest or rest == b""


async def test_a_token_guards_every_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_WEB_TOKEN", TOKEN)
    web = WebConfig(enabled=True, port=0, token="${EDGE_AGENT_WEB_TOKEN}")  # type: ignore[arg-type]
    async for r in _start(tmp_path, monkeypatch, web):
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            for path in ("/", "/api/overview", "/static/app.js", "/api/alarms/stream"):
                async with session.get(r.url + path) as answer:
                    assert answer.status == 401, path
                    assert "?token=TOKEN" in await answer.text()
            async with session.get(r.url + "/alarms?token=wrong") as answer:
                assert answer.status == 401
            async with session.get(r.url + f"/alarms?token={TOKEN}", allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/alarms"
                cookie = answer.cookies["edge_agent_web"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
            async with session.get(r.url + "/api/overview") as answer:
                assert answer.status == 200
                assert TOKEN not in await answer.text()
            async with session.get(r.url + f"//evil.example/?token={TOKEN}", allow_redirects=False) as answer:
                assert answer.headers["Location"] == "/evil.example/"  # never to another site
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(r.url + "/api/sinks", headers=headers) as answer:
                assert answer.status == 200
            # with a token the Host check gives way: the token is the guard
            async with session.get(
                r.url + "/api/sinks", headers={**headers, "Host": "gw.plant:8080"}
            ) as answer:
                assert answer.status == 200


async def test_the_demo_switches_a_fault_from_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for r in _start(tmp_path, monkeypatch, WebConfig(enabled=True, port=0), demo=True):
        async with aiohttp.ClientSession() as session:
            async with session.get(r.url + "/api/demo") as answer:
                faults = {f["name"]: f for f in (await answer.json())["faults"]["tcu1"]}
            assert (
                faults["flow_loss"]["active"] is False and "flow falls" in faults["flow_loss"]["description"]
            )
            assert "silent" in faults  # the link faults too
            switch = {"machine": "tcu1", "fault": "flow_loss", "on": True}
            async with session.post(r.url + "/api/demo/faults", json=switch) as answer:
                assert answer.status == 200
                after = {f["name"]: f["active"] for f in (await answer.json())["faults"]["tcu1"]}
            assert after["flow_loss"] is True and "flow_loss" in r.sim.active_faults
            async with session.get(r.url + "/api/machines/tcu1") as answer:
                body = await answer.json()
            assert body["demo"] is True and {f["name"]: f["active"] for f in body["faults"]}["flow_loss"]
            # only JSON from this page: a form from elsewhere cannot send it
            async with session.post(r.url + "/api/demo/faults", data="machine=tcu1") as answer:
                assert answer.status == 415
            async with session.post(
                r.url + "/api/demo/faults", json=switch, headers={"Origin": "http://evil.example"}
            ) as answer:
                assert answer.status == 403
            for bad in ({"machine": "tcu1"}, {"machine": "tcu1", "fault": "flow_loss", "on": "yes"}):
                async with session.post(r.url + "/api/demo/faults", json=bad) as answer:
                    assert answer.status == 400
            async with session.post(
                r.url + "/api/demo/faults", json={"machine": "tcu1", "fault": "melt_down", "on": True}
            ) as answer:
                assert answer.status == 400 and "unknown fault 'melt_down'" in await answer.text()
            async with session.post(r.url + "/api/demo/faults", json={**switch, "on": False}) as answer:
                assert answer.status == 200
            assert r.sim.active_faults == {}
