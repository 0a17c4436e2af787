"""`edge-agent demo`: simulated machines (`--machines`, default one of each kind), the agent, an MQTT broker and a live terminal view."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge_agent.config import parse_config
from edge_agent.log_config import setup_logging, split_cli_levels
from edge_agent.profiles import Profile
from edge_agent.records import Output

log = logging.getLogger(__name__)

#: Device-level figures shown per machine: (indicator family, field, label, format).
HEADLINES = [
    ("oee", "oee", "OEE", "{:.0%}"),
    ("oee", "availability", "avail", "{:.0%}"),
    ("furnace_uniformity", "spread", "spread °C", "{:.1f}"),
    ("furnace_uniformity", "soak_s", "soak s", "{:.0f}"),
    ("furnace_uniformity", "overshoot_c", "overshoot °C", "{:.1f}"),
    ("mold", "heat_kw", "heat kW", "{:.1f}"),
    ("mold", "delta_t", "ΔT K", "{:.2f}"),
    ("forging_stroke", "capacity_pct", "load %", "{:.0f}"),
    ("forging_stroke", "left_right", "L/R", "{:+.2f}"),
    ("arc_weld", "heat_input", "Q kJ/mm", "{:.3f}"),
    ("arc_weld", "in_window_pct", "WPS %", "{:.0f}"),
    ("spot_weld", "electrode_life", "tip life", "{:.0f}"),
    ("spot_weld", "expulsion_rate", "expulsion", "{:.0%}"),
    ("plating_tank", "current_density", "A/dm²", "{:.2f}"),
    ("plating_load", "thickness_um", "µm/load", "{:.1f}"),
]

#: Seconds each page of machines stays on the live view when they do not all fit.
PAGE_S = 5.0
#: Recent alarm lines under the live view.
EVENT_LINES = 5

#: Indicators that set control limits from a baseline (phase I).
CHARTS = {"imr", "xbar_r", "xbar_s"}


@dataclass
class MachineView:
    """What the live view knows of one machine."""

    name: str
    kind: str
    signals: list[str]
    values: dict[str, float] = field(default_factory=dict)
    spc: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)
    polls: int = 0
    last_ns: int = 0
    baseline: int = 50
    charted: set[str] = field(default_factory=set)
    """Signals with control limits (the ones that show `baseline n/N` until the limits are set)."""
    per_cycle: set[str] = field(default_factory=set)
    """Signals sampled once per machine cycle."""
    counter: str | None = None
    """The machine's cycle counter signal, if it works in cycles."""
    cycles: int = 0
    """Cycles counted since the demo started (counter increments seen in the raw values)."""
    _last_count: float | None = None

    def count_cycles(self, counter: float) -> None:
        """Count the cycles the counter advanced since its previous value (a reset restarts from it)."""
        if self._last_count is not None and counter > self._last_count:
            self.cycles += int(counter - self._last_count)
        self._last_count = counter

    def baseline_progress(self, name: str, spc: dict[str, float]) -> int:
        """Samples towards the control limits so far: cycles seen for per-cycle signals, else the chart's count."""
        if name in self.per_cycle and self.counter is not None:
            # the pre-whitener holds per-cycle samples back until its estimate is complete, so the
            # chart reports nothing during phase I; the cycle counter shows how far it has got
            return min(self.cycles, self.baseline)
        return min(int(spc.get("n", 0)), self.baseline)


class DemoView:
    """Collects the agent's output per machine and renders it as a rich table (or plain lines)."""

    def __init__(self, profiles: dict[str, Profile], names: list[str]) -> None:
        self.machines: dict[str, MachineView] = {}
        for name, profile in profiles.items():
            # the characteristics with limits first, then the other monitored signals
            ranked = sorted(
                (s for s in profile.signals if s.indicators),
                key=lambda s: not ({"capability", "band"} & set(s.indicators)),
            )
            self.machines[name] = MachineView(
                name,
                profile.kind,
                [s.name for s in ranked[:4]],
                baseline=profile.baseline_samples,
                charted={s.name for s in profile.signals if CHARTS & set(s.indicators)},
                per_cycle={s.name for s in profile.signals if s.sampling == "per_cycle"},
                counter=profile.cycle.counter if profile.cycle else None,
            )
        self.names = names
        self.events: deque[str] = deque(maxlen=8)
        self._unprinted: list[str] = []  # alarm events the plain view has not printed yet
        self.alarm_count = 0
        self.records = 0

    def update(self, device: str, out: Output) -> None:
        """Take one batch of the agent's output."""
        view = self.machines[device]
        for _src, readings in out.raw:
            view.polls += 1
            view.last_ns = int(readings.t_ns.max())
            names = [self.names[i] for i in readings.signal.tolist()]
            for name, value in zip(names, readings.value.tolist(), strict=True):
                if name in view.signals and np.isfinite(value):
                    view.values[name] = value
                if name == view.counter and np.isfinite(value):
                    view.count_cycles(value)
        for _src, batch in out.kpi:
            self.records += 1
            if batch.family == "spc":
                for i, row in enumerate(batch.signal.tolist()):
                    name = self.names[row]
                    if name in view.signals:
                        view.spc[name] = {k: float(v[i]) for k, v in batch.values.items()}
                        view.values[name] = float(batch.values["x"][i])
            else:
                for family, key, label, _fmt in HEADLINES:
                    if batch.family == family and key in batch.values:
                        view.figures[label] = float(batch.values[key][0])
        for _src, alarm in out.alarms:
            signal_name = self.names[alarm.signal]
            key = f"{signal_name}:{alarm.rule}"
            stamp = time.strftime("%H:%M:%S", time.localtime(alarm.t_ns / 1e9))
            if alarm.state == "start":
                self.alarm_count += 1
                view.active[key] = alarm.message
                line = f"{stamp} {device} {signal_name} {alarm.rule}: {alarm.message}"
            else:
                view.active.pop(key, None)
                line = f"{stamp} {device} {signal_name} {alarm.rule} cleared"
            self.events.appendleft(line)
            self._unprinted.append(line)

    def render(self, title: str, height: int = 24) -> Group:
        """The live view, made for an 80x24 terminal: one line per machine, then the latest alarms.

        A machine's line shows its headline signal (the first of its shown signals in alarm, else the
        first): value, CL (or the baseline's progress) and Cpk, two of its figures, its active alarms.
        Machines that do not fit the height scroll: a page at a time, the next every PAGE_S seconds.
        """
        table = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
            padding=(0, 1, 0, 0), expand=True,
        )  # fmt: skip
        # fixed widths for the numbers (never cut: "5..." tells nobody anything); names give way with an
        # ellipsis, the figures take what is left: 61 columns + figures fit 80
        table.add_column("machine", no_wrap=True, overflow="ellipsis", width=10)
        table.add_column("signal", no_wrap=True, overflow="ellipsis", width=14)
        table.add_column("value", justify="right", no_wrap=True, width=9)
        table.add_column("CL", justify="right", no_wrap=True, width=10)
        table.add_column("Cpk", justify="right", no_wrap=True, width=5)
        table.add_column("figures", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("alarms", justify="right", no_wrap=True, width=6)
        events = list(self.events)[:EVENT_LINES] or ["no alarms yet"]
        # title, column header and its rule; the alarms panel with its border; Live's last line
        rows = max(1, height - 3 - (len(events) + 2) - 1)
        machines = list(self.machines.values())
        shown = machines
        if len(machines) > rows:
            rows -= 1  # the caption that says which page this is
            pages = -(-len(machines) // rows)
            page = int(time.monotonic() // PAGE_S) % pages
            shown = machines[page * rows : (page + 1) * rows]
            first = page * rows + 1
            table.caption = (
                f"machines {first}-{first + len(shown) - 1} of {len(machines)}, next page every {PAGE_S:g} s"
            )
            table.caption_justify = "left"
        for view in shown:
            alarmed = {key.split(":", 1)[0] for key in view.active}
            name = next((s for s in view.signals if s in alarmed), view.signals[0] if view.signals else "-")
            spc = view.spc.get(name, {})
            cl = _fmt(spc.get("cl"))
            if cl == "–" and name in view.charted:
                # phase I: the limits are being estimated from the first samples
                cl = f"[dim]base {view.baseline_progress(name, spc)}/{view.baseline}[/dim]"
            figures = " ".join(
                f"{label} {fmt.format(view.figures[label])}"
                for _f, _k, label, fmt in HEADLINES
                if label in view.figures and np.isfinite(view.figures[label])
            )
            table.add_row(
                view.name,
                name,
                _fmt(view.values.get(name)),
                cl,
                _fmt(spc.get("cpk"), "{:.2f}"),
                figures,
                f"[red]{len(view.active)}[/red]" if view.active else "[green]ok[/green]",
            )
        lines = Text("\n".join(events), no_wrap=True, overflow="ellipsis")  # one line each: the height holds
        return Group(table, Panel(lines, title="recent alarms", title_align="left"))

    def plain(self) -> str:
        """A few lines for a terminal without a live view (or a log)."""
        lines = []
        for view in self.machines.values():
            vals = ", ".join(f"{k}={_fmt(v)}" for k, v in view.values.items())
            figs = ", ".join(f"{k}={_fmt(v)}" for k, v in view.figures.items())
            lines.append(
                f"{view.name}: polls={view.polls} {vals} | {figs} | active alarms={len(view.active)}"
            )
        lines += [f"  alarm {line}" for line in self._unprinted]
        self._unprinted.clear()
        return "\n".join(lines)


def _fmt(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return fmt.format(value)


def _parse_faults(specs: Sequence[str]) -> dict[str, list[str]]:
    from edge_agent.simulators.plant import MACHINES

    faults: dict[str, list[str]] = {}
    for spec in specs:
        machine, _, fault = spec.partition(":")
        if machine not in MACHINES or not fault:
            raise ValueError(
                f"--fault {spec!r}: write MACHINE:FAULT with MACHINE one of {', '.join(MACHINES)}"
            )
        faults.setdefault(machine, []).append(fault)
    return faults


#: The environment variable the demo's InfluxDB token is read from (and that its agent.toml names).
INFLUX_TOKEN_ENV = "INFLUX_TOKEN"


def demo_config(
    devices_toml: str,
    mqtt_url: str,
    mqtt_protocol: str,
    influx_url: str | None,
    outbox: Path,
    *,
    influx_org: str = "shopfloor",
    influx_bucket: str = "process",
    influx_token: bool = False,
) -> str:
    """The agent config of the demo: the plant's devices, MQTT, optional InfluxDB, an outbox in a temp dir.

    With `influx_token` the InfluxDB section takes its token from $INFLUX_TOKEN (the file never holds it).
    """
    influx = ""
    if influx_url:
        token = f'token = "${{{INFLUX_TOKEN_ENV}}}"\n' if influx_token else ""
        influx = (
            f"\n[sinks.influx]\nurl = {_toml_str(influx_url)}\norg = {_toml_str(influx_org)}\n"
            f"bucket = {_toml_str(influx_bucket)}\n{token}"
        )
    return (
        '[agent]\nname = "demo-agent"\n\n'
        '[site]\nenterprise = "demo"\nsite = "plant1"\narea = "shopfloor"\nline = "cell1"\n\n'
        f'[sinks.mqtt]\nurl = "{mqtt_url}"\nprotocol = "{mqtt_protocol}"\ntopic_prefix = "demo/uns"\n'
        f"{influx}\n"
        f'[outbox]\ndir = "{outbox}"\nsync = "normal"\n\n' + devices_toml
    )


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


class DemoStartError(Exception):
    """The demo cannot start for a reason the user can fix; the message says how."""


def _influx_answer(body: str) -> str:
    """The `message` of an InfluxDB error body (JSON), else the body's first line."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else (body.strip().splitlines() or [""])[0][:200]


async def check_influx(url: str, org: str, bucket: str, token: str | None, timeout_s: float = 5.0) -> None:
    """Write nothing to InfluxDB to learn whether it takes the token, org and bucket; DemoStartError saying which option to fix.

    InfluxDB 2 checks the token (401), the org and bucket (404) and the write permission (403)
    before it reads the body, then answers 400 "writing requires points" to an empty one; servers
    without authentication (InfluxDB 1.8, VictoriaMetrics) answer 204.
    """
    import aiohttp

    headers = {"Authorization": f"Token {token}"} if token else {}
    params = {"org": org, "bucket": bucket, "precision": "ns"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(
                f"{url.rstrip('/')}/api/v2/write", params=params, data=b"", headers=headers
            ) as answer,
        ):
            status, body = answer.status, await answer.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise DemoStartError(
            f"--influx-url {url}: no answer ({exc or type(exc).__name__}); start InfluxDB there "
            "or pass the --influx-url it listens on"
        ) from None
    said = f"{status} {_influx_answer(body)}".strip()
    target = f"bucket {bucket!r} of organization {org!r}"
    if status == 401 and not token:
        raise DemoStartError(
            f"InfluxDB {url} wants a token ({said}): set {INFLUX_TOKEN_ENV} (or pass --influx-token) "
            f"to a token that may write to {target}"
        )
    if status in (401, 403):
        raise DemoStartError(
            f"InfluxDB {url} refused the token ({said}): give one that may write to {target} "
            f"in {INFLUX_TOKEN_ENV} or --influx-token"
        )
    if status == 404:
        lowered = said.lower()
        if "organization" in lowered or "bucket" in lowered:
            fix = "pass --influx-org and --influx-bucket naming ones that exist there"
        else:
            fix = "it serves no /api/v2/write (InfluxDB 1.8 and later do): check --influx-url"
        raise DemoStartError(f"InfluxDB {url} has no {target} ({said}); {fix}")
    if status >= 300 and status != 400:
        raise DemoStartError(
            f"InfluxDB {url} answered {said} to a test write; check it is up and --influx-url"
        )


class DemoLogWording(logging.Filter):
    """Words the agent's log lines for a demo: its options instead of config keys, and where an unsent backlog goes.

    The agent's lines name `sinks.influx.token` and friends, and promise delivery "at the next start";
    the demo's user has no config file of their own, and its outbox lives in a temporary folder.
    """

    OPTIONS = (
        (
            "check sinks.influx.token and its environment variable",
            f"pass --influx-token or set {INFLUX_TOKEN_ENV}",
        ),
        ("check sinks.influx.org and sinks.influx.bucket", "check --influx-org and --influx-bucket"),
        ("sinks.influx.url", "--influx-url"),
        ("sinks.mqtt.url", "--mqtt-url"),
    )

    def __init__(self, workdir: Path, keep: bool) -> None:
        super().__init__()
        if keep:
            self.backlog = (
                f"{{}} records were not delivered before the demo stopped; they stay in {workdir / 'outbox'} "
                f"and `edge-agent run -c {workdir / 'agent.toml'}` would send them"
            )
        else:
            self.backlog = (
                "{} records were not delivered before the demo stopped; they are deleted with the demo's "
                "temporary folder (demo --keep keeps them)"
            )

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in the demo's terms (always passes it on)."""
        if "at the next start" in str(record.msg) and isinstance(record.args, tuple) and record.args:
            record.msg, record.args = self.backlog.format(record.args[0]), ()
            return True
        text = record.getMessage()
        changed = text
        for key, option in self.OPTIONS:
            changed = changed.replace(key, option)
        if changed != text:
            record.msg, record.args = changed, ()
        return True


async def _embedded_broker(port: int = 0) -> tuple[object, str]:
    """An amqtt broker on loopback (MQTT 3.1.1), on `port` or a free one."""
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    from edge_agent.simulators.opcua_server import free_port

    chosen = port or free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{chosen}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    # amqtt logs the failed bind with its traceback before raising; the one line below says it all
    broker_log = logging.getLogger("amqtt.broker")
    level = broker_log.level
    broker_log.setLevel(logging.CRITICAL)
    try:
        await broker.start()
    except BrokerError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            reason = "the port is already in use"
        else:
            reason = str(cause or exc)
        if port:
            raise DemoStartError(
                f"--broker-port {port}: the embedded MQTT broker cannot listen on 127.0.0.1:{port}, "
                f"{reason}; pass another --broker-port, or leave it out to use a free port"
            ) from exc
        raise DemoStartError(f"the embedded MQTT broker cannot start: {reason}") from exc
    finally:
        broker_log.setLevel(level)
    return broker, f"mqtt://127.0.0.1:{chosen}"


async def run_demo(args: argparse.Namespace) -> int:
    """Start everything, show the view until Ctrl-C or --duration, stop everything."""
    faults = _parse_faults(args.fault)
    influx_token = args.influx_token or os.environ.get(INFLUX_TOKEN_ENV) or None
    if args.influx_url:
        # before anything starts: a missing token or a wrong bucket is one line, not a retry loop
        await check_influx(args.influx_url, args.influx_org, args.influx_bucket, influx_token)
    if args.influx_token:
        os.environ[INFLUX_TOKEN_ENV] = args.influx_token  # the demo's agent.toml names the variable
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    keep = bool(args.keep)
    wording = DemoLogWording(workdir, keep)
    for handler in logging.getLogger().handlers:
        handler.addFilter(wording)
    try:
        async with contextlib.AsyncExitStack() as stack:
            view = await _run_plant(args, faults, workdir, stack)
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(wording)
        if keep:
            print(f"demo files kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"demo stopped: {view.records} indicator records, {view.alarm_count} alarms", flush=True)
    return 0


async def _run_plant(
    args: argparse.Namespace,
    faults: dict[str, list[str]],
    workdir: Path,
    stack: contextlib.AsyncExitStack,
) -> DemoView:
    from edge_agent.agent import Agent
    from edge_agent.simulators.plant import Plant, parse_machines

    mqtt_url, protocol = args.mqtt_url, "5"
    if mqtt_url is None:
        # the broker first: a taken --broker-port fails before the plant has started
        broker, mqtt_url = await _embedded_broker(args.broker_port)
        stack.push_async_callback(broker.shutdown)  # type: ignore[attr-defined]
        protocol = "3.1.1"  # amqtt speaks MQTT 3.1.1
    fault_after = getattr(args, "fault_after", None)
    kinds = parse_machines(getattr(args, "machines", None))
    plant = Plant(speed=args.speed, faults={} if fault_after else faults, kinds=kinds)
    stack.push_async_callback(plant.stop)
    await plant.start()
    text = demo_config(
        plant.devices_toml(),
        mqtt_url,
        protocol,
        args.influx_url,
        workdir / "outbox",
        influx_org=args.influx_org,
        influx_bucket=args.influx_bucket,
        influx_token=bool(args.influx_url and (args.influx_token or os.environ.get(INFLUX_TOKEN_ENV))),
    )
    (workdir / "agent.toml").write_text(text, encoding="utf-8")
    config = parse_config(text, str(workdir / "agent.toml"), workdir)
    agent = Agent(config, workdir)
    view = DemoView({n: d.profile for n, d in agent.pipeline.devices.items()}, agent.pipeline.table.tags)
    agent.on_output = view.update
    from edge_agent.web.demo_controls import faults_after, start_demo_page

    page = await start_demo_page(agent, plant, getattr(args, "web", None))  # listens after the view
    stack.push_async_callback(page.stop)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(signum: int) -> None:
        if not stop.is_set():
            stop.set()
            return
        _exit_now(
            signum, sum(agent.sinks.depth().values()) if agent.sinks is not None else 0, workdir, args.keep
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    console = Console(stderr=False)
    header = (
        f"edge-agent demo · MQTT {mqtt_url} (topics demo/uns/#) · web {page.url}"
        + (f" · InfluxDB {args.influx_url}" if args.influx_url else "")
        + f" · speed x{args.speed:g} · config {workdir / 'agent.toml'} · Ctrl-C stops"
    )
    await agent.start()
    stack.push_async_callback(agent.stop, flush_timeout=5.0)
    if fault_after and faults:
        later = asyncio.create_task(faults_after(plant, faults, fault_after))
        stack.callback(later.cancel)
    deadline = time.monotonic() + args.duration if args.duration else None
    if args.plain or not console.is_terminal:
        print(header, flush=True)
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(5.0, _left(deadline)))
            print(view.plain(), flush=True)
    else:
        console.print(header)  # once, whole; the live view's title stays one line
        title = f"edge-agent demo · web {page.url} · Ctrl-C stops"
        # log lines go through Live's stderr, above the view: written past it, they tear the view apart
        handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
        with Live(view.render(title, console.height), console=console, refresh_per_second=4) as live:
            for handler in handlers:
                handler.setStream(sys.stderr)
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(0.5, _left(deadline)))
                live.update(view.render(title, console.height))
        for handler in handlers:
            handler.setStream(sys.stderr)
    return view


def _exit_now(signum: int, unsent: int, workdir: Path, keep: bool) -> NoReturn:
    """A second Ctrl-C: remove the demo's folder (unless --keep) and end the process now, with 128 + signum."""
    name = signal.Signals(signum).name
    log.warning(
        "%s again: stopping now without waiting for delivery; %s",
        name,
        DemoLogWording(workdir, keep).backlog.format(unsent),
    )
    if keep:
        print(f"demo files kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    logging.shutdown()
    os._exit(128 + signum)


def _left(deadline: float | None) -> float:
    return 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())


def demo_command(args: argparse.Namespace) -> int:
    """`edge-agent demo`."""
    level, loggers = split_cli_levels(getattr(args, "log_level", None))
    setup_logging(level or "WARNING", loggers)
    try:
        return asyncio.run(run_demo(args))
    except (ValueError, DemoStartError) as exc:
        print(f"edge-agent demo: {exc}", file=sys.stderr)
        return 2
