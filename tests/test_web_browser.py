"""The live web page in a real browser: Playwright driving Debian's chromium against the demo's simulators.

One stack for the module (four simulated machines on free ports, the agent, a real Mosquitto as
its sink, the web page with the demo's fault switches) runs in a thread of its own with its own
event loop; the tests drive the browser with Playwright's sync API. The demo's profiles are used
as shipped except for a shorter baseline (12 cycles instead of 50), so the control limits are set
within seconds. Set EDGE_AGENT_WEB_SCREENSHOTS=docs to write the screenshots of docs/web.md.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright import sync_api as playwright_sync

from edge_agent.agent import Agent
from edge_agent.config import BUILTIN_PROFILES_DIR, parse_config
from edge_agent.demo import demo_config
from edge_agent.simulators.plant import FIRST_LINE, MACHINES, Plant
from edge_agent.web.config import WebConfig
from edge_agent.web.demo_controls import PlantControls
from edge_agent.web.server import WebServer
from tests.services import Mosquitto, require_binary

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Simulated seconds per wall second: the IMM cycles every 0.5 s, the die-casting cell every 1 s.
SPEED = 60.0
BASELINE = 12
IMM_CYCLE_MS = MACHINES["imm"][1] * 1000 / SPEED  # type: ignore[operator]
MACHINE_NAMES = [MACHINES[key][0] for key in FIRST_LINE]  # what Plant() runs
PAGES = ["/", "/machines/imm-1", "/machines/furnace-1", "/alarms", "/sinks"]
SCREENSHOTS = os.environ.get("EDGE_AGENT_WEB_SCREENSHOTS")


class Stack(threading.Thread):
    """Plant, agent and web page in their own event loop; `call` runs a coroutine there."""

    def __init__(self, workdir: Path, mqtt_url: str) -> None:
        super().__init__(name="web-stack", daemon=True)
        self.workdir = workdir
        self.mqtt_url = mqtt_url
        self.loop = asyncio.new_event_loop()
        self.ready: Future[str] = Future()
        self.plant = Plant(speed=SPEED)
        self.agent: Agent | None = None
        self._done: asyncio.Event | None = None

    def run(self) -> None:
        """The thread: start everything, wait for stop(), stop everything."""
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise

    async def _main(self) -> None:
        self._done = asyncio.Event()
        profiles = self.workdir / "profiles"
        profiles.mkdir()
        for name in ("injection_molding", "die_casting"):
            text = (BUILTIN_PROFILES_DIR / f"{name}.toml").read_text(encoding="utf-8")
            (profiles / f"{name}.toml").write_text(f"baseline_samples = {BASELINE}\n{text}", encoding="utf-8")
        await self.plant.start()
        text = demo_config(
            self.plant.devices_toml(poll_interval=0.1), self.mqtt_url, "5", None, self.workdir / "outbox"
        )
        config = parse_config(text, str(self.workdir / "agent.toml"), self.workdir)
        self.agent = Agent(config, self.workdir)
        controls = PlantControls(self.plant, {device: key for key, (device, _c) in MACHINES.items()})
        web = WebServer(self.agent, WebConfig(enabled=True, port=0, update_interval=0.25), demo=controls)
        await self.agent.start()
        try:
            self.ready.set_result(await web.start())
            await self._done.wait()
        finally:
            await web.stop()
            await self.agent.stop(flush_timeout=1.0)
            await self.plant.stop()

    def call(self, make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 30.0) -> Any:
        """Run `make()` in the stack's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def stop(self) -> None:
        """End the thread (stops the page, the agent and the plant)."""
        if self._done is not None:
            self.loop.call_soon_threadsafe(self._done.set)
        self.join(30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """The running demo stack and its page's URL."""
    workdir = tmp_path_factory.mktemp("web")
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    running = Stack(workdir, broker.url)
    running.start()
    try:
        url = running.ready.result(60)
        yield running, url.rstrip("/")
    finally:
        running.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (which cannot download a browser here)."""
    require_binary(CHROMIUM, "chromium")
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; the test fails on any console error or uncaught exception (a CSP violation is one)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    yield tab
    context.close()
    assert errors == []


def _api(stack: tuple[Stack, str], path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(stack[1] + path, timeout=10) as answer:
        return orjson.loads(answer.read())


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        # the desktop page whole, the phone as its screen shows it
        page.screenshot(path=str(Path(SCREENSHOTS) / f"web-{name}.png"), full_page=not name.endswith("-390"))


def test_the_overview_lists_every_machine_online(stack: tuple[Stack, str], page: Any) -> None:
    page.goto(stack[1] + "/")
    page.wait_for_function(
        "() => document.querySelectorAll('#machines article.machine .pill.online').length === 4"
    )
    names = page.locator("#machines article.machine .title a").all_inner_texts()
    assert names == MACHINE_NAMES
    for name in MACHINE_NAMES:
        card = page.locator(f"article[aria-label='Machine {name}']")
        assert card.locator(".pill").inner_text() == "online"
        assert card.locator("dd").first.inner_text() in ("just now", "1 s ago", "2 s ago")
        assert card.locator("dd").nth(1).inner_text() == "0.100 s"
    oee = page.locator("article[aria-label='Machine dcm1'] .figure").first
    # OEE needs some production time first
    page.wait_for_function(
        "() => parseFloat((document.querySelector(\"article[aria-label='Machine dcm1'] .figure .v\") || {}).textContent) > 0"
    )
    assert oee.locator(".k").inner_text().lower() == "oee"
    assert 0 < float(oee.locator(".v").inner_text().split("%")[0]) <= 100
    assert page.locator("#live").inner_text() == "live"


def test_values_change_on_screen(stack: tuple[Stack, str], page: Any) -> None:
    page.goto(stack[1] + "/machines/dcm1")
    cell = page.locator("tr[data-key='shot_counter'] td").first
    page.wait_for_function(
        "() => (document.querySelector(\"tr[data-key='shot_counter'] td\")?.textContent ?? '–') !== '–'"
    )
    first = int(cell.inner_text())
    # a shot every simulated minute: one a second at this speed
    page.wait_for_function(
        f"() => Number(document.querySelector(\"tr[data-key='shot_counter'] td\")?.textContent) > {first}",
        timeout=15_000,
    )
    api = _api(stack, "/api/machines/dcm1")
    shown = {s["name"]: s for s in api["signals"]}
    assert shown["shot_counter"]["value"] > first
    assert shown["melt_temp"]["unit"] == "°C" and shown["melt_temp"]["quality"] == "GOOD"


def test_a_control_chart_draws_its_points_and_limits(stack: tuple[Stack, str], page: Any) -> None:
    page.goto(stack[1] + "/machines/imm-1")
    chart = page.locator("#chart-cushion")
    # the limits come after the baseline's cycles (the pre-whitener holds them back until then)
    page.wait_for_function(
        "() => document.querySelectorAll('#chart-cushion svg line.ctl').length === 2"
        " && document.querySelectorAll('#chart-cushion svg circle.pt').length >= 3",
        timeout=BASELINE * IMM_CYCLE_MS * 3 + 10_000,
    )
    api = next(c for c in _api(stack, "/api/machines/imm-1")["charts"] if c["signal"] == "cushion")
    assert api["lsl"] == 2.0 and api["usl"] == 8.0  # the profile's spec limits
    assert api["lcl"] < api["cl"] < api["ucl"]
    labels = chart.locator("svg text.lbl").all_text_contents()
    assert {label.split()[0] for label in labels} == {"UCL", "CL", "LCL", "USL", "LSL"}
    assert "USL 8" in labels and "LSL 2" in labels
    # the limits are fixed once the baseline is done: the drawn ones are the agent's
    assert f"UCL {api['ucl']:.2f}" in labels and f"LCL {api['lcl']:.2f}" in labels
    y = {
        cls: float(chart.locator(f"svg line.{cls}").first.get_attribute("y1") or "nan")
        for cls in ("cl", "spec")
    }
    ys = sorted(
        float(v or "nan")
        for v in chart.locator("svg line.ctl").evaluate_all("ls => ls.map(l => l.getAttribute('y1'))")
    )
    # SVG y grows downwards: USL above UCL above CL above LCL
    assert y["spec"] < ys[0] < y["cl"] < ys[1]
    points = chart.locator("svg circle.pt").count()
    assert points >= 3
    line = chart.locator("svg polyline.series").get_attribute("points") or ""
    assert len(line.split()) == points
    assert "points" in (chart.locator("svg").get_attribute("aria-label") or "")


def test_a_fault_switched_on_from_the_page_raises_its_alarm(stack: tuple[Stack, str], page: Any) -> None:
    running, url = stack
    page.goto(url + "/machines/imm-1")
    page.locator("#demo-faults summary").click()
    button = page.locator("#demo-faults button.fault[data-key='short_shot']")
    assert button.get_attribute("aria-pressed") == "false"
    switched_ms = time.time() * 1000
    button.click()
    try:
        page.wait_for_function(
            "() => document.querySelector(\"#demo-faults button[data-key='short_shot']\")?.getAttribute('aria-pressed') === 'true'"
        )
        assert running.plant.machines["imm"].faults.get("short_shot") is not None
        page.goto(url + "/alarms")
        row = (
            page.locator("#active-alarms tr", has_text="cushion")
            .filter(has_text="imm-1")
            .filter(has_text="spec")
        )
        row.first.wait_for(timeout=10_000)
        assert "below the LSL" in row.first.inner_text()
        alarm = next(
            a
            for a in _api(stack, "/api/alarms")["active"]
            if (a["machine"], a["signal"], a["rule"]) == ("imm-1", "cushion", "spec")
        )
        assert alarm["severity"] == "alarm" and alarm["value"] < alarm["limit"] == 2.0
        # a short shot's cushion is below the LSL on the first cycle after the switch: allow three
        cycles = (alarm["start_ms"] - switched_ms) / IMM_CYCLE_MS
        assert -0.5 < cycles <= 3, cycles
        assert page.locator("#alarm-badge").is_visible()
    finally:
        running.call(lambda: _set_fault(running, "imm", "short_shot", False))
    # and off again from the page: the switch shows it
    page.goto(url + "/machines/imm-1")
    page.locator("#demo-faults summary").click()
    page.wait_for_function(
        "() => document.querySelector(\"#demo-faults button[data-key='short_shot']\")?.getAttribute('aria-pressed') === 'false'"
    )


async def _set_fault(stack: Stack, machine: str, fault: str, on: bool) -> None:
    stack.plant.set_fault(machine, fault, on)


def test_a_disconnected_simulator_shows_offline_and_comes_back(stack: tuple[Stack, str], page: Any) -> None:
    running, url = stack
    page.goto(url + "/")
    pill = page.locator("article[aria-label='Machine furnace-1'] .pill")
    page.wait_for_function("() => document.querySelectorAll('#machines .pill.online').length === 4")
    furnace = running.plant.machines["furnace"]
    running.call(furnace.stop_server)
    try:
        page.wait_for_function(
            "() => document.querySelector(\"article[aria-label='Machine furnace-1'] .pill\")?.textContent === 'offline'",
            timeout=20_000,
        )
        assert (
            page.locator("article[aria-label='Machine furnace-1']").get_attribute("class")
            == "card machine offline"
        )
        assert page.locator("#machines .pill.online").count() == 3
    finally:
        running.call(furnace.resume_server)
    page.wait_for_function(
        "() => document.querySelector(\"article[aria-label='Machine furnace-1'] .pill\")?.textContent === 'online'",
        timeout=30_000,
    )
    assert pill.inner_text() == "online"


@pytest.mark.parametrize("width", [390, 1280])
def test_the_pages_are_usable_on_a_phone_and_a_desktop(
    stack: tuple[Stack, str], page: Any, width: int
) -> None:
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 900})
    for path in PAGES:
        page.goto(stack[1] + path)
        page.wait_for_function(
            "() => document.querySelector('main h1') !== null && document.querySelector('#live')?.textContent === 'live'"
        )
        page.wait_for_timeout(400)
        # nothing wider than the screen: wide tables scroll inside their own box
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
        for link in page.locator("header a").all():
            box = link.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, path
            assert box["height"] >= 24, path  # a finger can hit it
        assert page.locator("main h1").is_visible()
        name = path.strip("/").replace("machines/", "") or "overview"
        _shot(page, f"{name}-{width}")


def test_keyboard_navigation_reaches_every_link(stack: tuple[Stack, str], page: Any) -> None:
    for path in PAGES:
        page.goto(stack[1] + path)
        page.wait_for_function("() => document.querySelector('#live')?.textContent === 'live'")
        page.wait_for_timeout(300)
        hrefs = set(page.locator("a[href]:visible").evaluate_all("as => as.map(a => a.getAttribute('href'))"))
        focusable = page.locator("a[href]:visible, button:visible, summary:visible").count()
        reached: set[str] = set()
        for _ in range(focusable + 2):
            page.keyboard.press("Tab")
            href = page.evaluate("document.activeElement && document.activeElement.getAttribute('href')")
            if href:
                reached.add(href)
        assert hrefs <= reached, (path, hrefs - reached)
        # the first Tab lands on the skip link, which moves focus to the content
        page.keyboard.press("Home")


def test_the_page_loads_nothing_from_outside(stack: tuple[Stack, str], page: Any) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    for path in PAGES:
        page.goto(stack[1] + path)
        page.wait_for_function("() => document.querySelector('#live')?.textContent === 'live'")
    assert asked and all(u.startswith(stack[1] + "/") for u in asked), asked
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
