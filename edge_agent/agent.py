"""The agent: drivers -> pollers -> indicator pipeline -> per-sink outboxes -> delivery; lifecycle and `run`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import orjson

from edge_agent.config import Config, ConfigError, config_warnings, load_config, profile_dirs
from edge_agent.config_model import DeviceBase
from edge_agent.drivers.base import Driver, Subscribing, TagGroup
from edge_agent.drivers.registry import make_driver
from edge_agent.log_config import add_log_level_option, apply_levels, setup_logging, split_cli_levels
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import OutboxError
from edge_agent.pipeline import IndicatorPipeline
from edge_agent.records import AgentStatus, Output, Record, Source
from edge_agent.scheduler import DevicePoller
from edge_agent.sinks.delivery import SinkConfigError
from edge_agent.types import BAD_THRESHOLD, Readings

if TYPE_CHECKING:
    from edge_agent.sink_set import SinkSet

log = logging.getLogger(__name__)


def _sink_set(config: Config, pipeline: IndicatorPipeline, metrics: AgentMetrics) -> SinkSet:
    # imported here so `run --once` and the commissioning paths never load paho or aiohttp
    from edge_agent.sink_set import SinkSet

    return SinkSet(config, pipeline.table, metrics)


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc only; elsewhere nothing happens).

    Every poll allocates and frees message bodies and arrays; glibc keeps the freed pages of its
    arenas, so a long-running agent's resident size creeps towards its worst burst (a backlog after
    an outage, say). `malloc_trim(0)` costs well under a millisecond at the status interval.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the agent starts its threads (glibc only).

    glibc gives each new thread an arena of its own, up to 8 per core; the outbox, sink and
    executor threads each then keep their own freed pages. With two arenas the agent at 100
    devices x 100 tags at 10 Hz holds 134 MB instead of 150 MB, at no measurable CPU cost: the
    threads take turns on the GIL anyway. The MALLOC_ARENA_MAX environment variable still wins.
    """
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, arenas)


class Agent:
    """One agent process: every configured device polled on its own task, every sink fed through its outbox."""

    def __init__(
        self,
        config: Config,
        config_dir: Path,
        *,
        metrics: AgentMetrics | None = None,
        sinks: bool = True,
        on_output: Callable[[str, Output], None] | None = None,
    ) -> None:
        self.config = config
        self.config_dir = config_dir
        self.metrics = metrics or AgentMetrics()
        self.pipeline = IndicatorPipeline(config, profile_dirs(config, config_dir))
        self.sinks = _sink_set(config, self.pipeline, self.metrics) if sinks else None
        self.on_output = on_output
        self.drivers: dict[str, Driver] = {}
        self.metrics.watch_drivers(self.drivers)
        self.pollers: dict[str, DevicePoller] = {}
        self._connect_tasks: dict[str, asyncio.Task[None]] = {}
        """The pending connect (then start polling) task of each device; a finished task removes itself."""
        self._status_task: asyncio.Task[None] | None = None
        self._devices = {d.name: d for d in config.devices if d.enabled}
        self._queued: list[tuple[str, Readings]] = []
        self._holding = False  # a sink swap is under way: queued batches wait for it
        self.dropped_batches = 0
        """Batches dropped because their device left the config before they were processed."""
        self._dropped_from: set[str] = set()
        self.started_ns = time.time_ns()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the sinks, then connect and start polling every device (a dead device delays no other)."""
        if self.sinks is not None:
            await self.sinks.start(self.status("online"))
        for name, device in self._devices.items():
            self._start_device(name, self._make_driver(self.pipeline, name, device))
        self._status_task = asyncio.create_task(self._report_status(), name="agent-status")
        # config models, profiles and the signal table live as long as the agent: keeping them out of
        # the collector's generations saves walking ~10^5 objects in every full collection
        gc.collect()
        gc.freeze()

    def _make_driver(self, pipeline: IndicatorPipeline, name: str, device: DeviceBase) -> Driver:
        rows = pipeline.rows_of(name)
        return make_driver(device, rows, self.config_dir, on_readings=functools.partial(self._handle, name))

    def _start_device(self, name: str, driver: Driver) -> None:
        self.drivers[name] = driver
        poller = DevicePoller(driver, self._on_poll)
        self.pollers[name] = poller
        task = asyncio.create_task(self._connect_then_poll(name, driver, poller), name=f"connect:{name}")
        self._connect_tasks[name] = task
        task.add_done_callback(functools.partial(self._forget_connect, name))

    def _forget_connect(self, name: str, task: asyncio.Task[None]) -> None:
        # a reload may already have started a newer connect for the same name: leave that one
        if self._connect_tasks.get(name) is task:
            del self._connect_tasks[name]

    async def _stop_device(self, name: str) -> None:
        # The connect task goes first: left running, it would start the poller of a closed driver
        # once its connect returned (an orphan that polls the old config for ever).
        task = self._connect_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pollers.pop(name).stop()
        await self.drivers.pop(name).close()

    async def _swap_sinks(self, new: Config, pipeline: IndicatorPipeline) -> None:
        """Close the sinks and open the new config's; if those cannot start, open the old ones again and raise.

        Old and new share the outbox files (one process may hold them at a time), so the old set
        closes first. Batches read meanwhile wait in the queue: a set being closed or opened takes
        no records.
        """
        assert self.sinks is not None
        self._holding = True
        try:
            await self.sinks.stop(0)
            fresh = _sink_set(new, pipeline, self.metrics)
            try:
                await fresh.start(self.status("online"))
            except Exception:
                with contextlib.suppress(Exception):
                    await fresh.stop(0)
                self.sinks = _sink_set(self.config, self.pipeline, self.metrics)
                await self.sinks.start(self.status("online"))
                raise
            self.sinks = fresh
        finally:
            self._holding = False
            if self._queued:
                # new batches only schedule a run when the queue was empty: this one is owed
                asyncio.get_running_loop().call_soon(self.process_queued)

    async def _connect_then_poll(self, name: str, driver: Driver, poller: DevicePoller) -> None:
        try:
            await driver.connect()
        except Exception as exc:
            # refused trust or login: polling would only repeat the refusal, so this device waits for a fix
            log.error("device %s: %s; not polling it until the config is fixed", name, exc)
            return
        poller.start()

    async def stop(self, flush_timeout: float | None = None) -> None:
        """Stop polling, close the devices, flush the outboxes for up to `flush_timeout` seconds."""
        if self._status_task is not None:
            self._status_task.cancel()
        tasks = list(self._connect_tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connect_tasks.clear()
        await asyncio.gather(*(p.stop() for p in self.pollers.values()))
        await asyncio.gather(*(d.close() for d in self.drivers.values()), return_exceptions=True)
        self.process_queued()
        if self.sinks is not None:
            timeout = self.config.agent.shutdown_timeout if flush_timeout is None else flush_timeout
            await self.sinks.stop(timeout, self.status("offline"))

    async def reload(self, new: Config) -> None:
        """Apply a new config: unchanged devices keep their connection and poller, the outboxes stay.

        The new pipeline and drivers are built first: if that raises, nothing has changed and the old
        config runs on.
        """
        # the signal table is append-only, so the rows of the kept devices' drivers stay valid (and
        # rows a failed build appended are never read)
        pipeline = IndicatorPipeline(new, profile_dirs(new, self.config_dir), table=self.pipeline.table)
        old_devices = self._devices
        new_devices = {d.name: d for d in new.devices if d.enabled}
        keep = {n for n, d in new_devices.items() if n in old_devices and old_devices[n] == d}
        started = {n: self._make_driver(pipeline, n, new_devices[n]) for n in new_devices.keys() - keep}
        if self.sinks is not None and new.sinks != self.config.sinks:
            try:
                await self._swap_sinks(new, pipeline)
            except Exception:
                await asyncio.gather(*(d.close() for d in started.values()), return_exceptions=True)
                raise
        self._dropped_from.clear()
        for name in set(old_devices) - keep:
            await self._stop_device(name)
        # what is queued goes through the pipeline it was read for (no await until the swap)
        self.process_queued()
        self.pipeline = pipeline
        self.config = new
        self._devices = new_devices
        for name, driver in started.items():
            self._start_device(name, driver)
        # the old pipeline and config were frozen at start: unfreeze so their cycles can be collected
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info(
            "config reloaded: %d devices kept, %d (re)started, %d removed",
            len(keep),
            len(started),
            len(set(old_devices) - set(new_devices)),
        )

    def status(self, state: str) -> AgentStatus:
        """The agent's health, published on its status topic and as `agent_status` in InfluxDB."""
        stats = [p.stats for p in self.pollers.values()]
        health: dict[str, float | int | str] = {
            "devices": len(self._devices),
            "devices_connected": sum(bool(getattr(d, "connected", False)) for d in self.drivers.values()),
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 1),
            "polls": sum(s.polls for s in stats),
            "values_read": sum(s.values for s in stats),
            "overruns": sum(s.overruns for s in stats),
            "read_errors": sum(s.errors for s in stats),
        }
        if self.sinks is not None:
            for sink, depth in self.sinks.depth().items():
                health[f"outbox_{sink}"] = depth
        return AgentStatus(time.time_ns(), "online" if state == "online" else "offline", health)

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(self.config.agent.status_interval)
            if self.sinks is not None:
                self.sinks.publish_status(self.status("online"))
            release_free_heap()

    @property
    def source(self) -> Source:
        """The agent itself as a source (for its status topic)."""
        s = self.config.site
        return Source(self.config.agent.name, "agent", s.site, s.area, s.line, s.enterprise)

    # ------------------------------------------------------------------ data path
    def _on_poll(self, device: str, group: TagGroup, readings: Readings, latency: float) -> None:
        m = self.metrics
        m.poll_latency.labels(device).observe(latency)
        m.values_read.labels(device).inc(len(readings))
        bad = int((readings.quality >= BAD_THRESHOLD).sum())
        if bad:
            m.bad_values.labels(device).inc(bad)
        self._handle(device, readings)

    def _handle(self, device: str, readings: Readings) -> None:
        """Queue a device's batch; the batches of one turn of the event loop are processed together."""
        self._queued.append((device, readings))
        if len(self._queued) == 1:
            # call_soon runs after every callback already due in this turn, i.e. after the other
            # polls that completed at the same time: the busier the agent, the bigger the batch
            asyncio.get_running_loop().call_soon(self.process_queued)

    def process_queued(self) -> None:
        """Run the queued batches through the pipeline and hand the results to the sinks."""
        if self._holding:
            return  # the sink swap schedules the run when it ends
        batches, self._queued = self._queued, []
        known = self.pipeline.devices
        if any(device not in known for device, _ in batches):
            batches = self._drop_unknown(batches)
        if not batches:
            return
        began = time.perf_counter()
        try:
            outs = self.pipeline.process_many(batches, time.time_ns())
        except Exception:
            # an indicator bug must not cost the values already read: publish them raw
            log.exception(
                "indicator pipeline failed on %d batches; publishing their raw values", len(batches)
            )
            outs = [Output(raw=[(self.pipeline.devices[d].source, r)]) for d, r in batches]
        self.metrics.compute_time.observe(time.perf_counter() - began)
        for (device, _readings), out in zip(batches, outs, strict=True):
            if self.on_output is not None:
                self.on_output(device, out)
            if self.sinks is not None:
                # encoding is one pass per batch per sink; the outbox write happens on the sink's writer thread
                self.sinks.publish(out)

    def _drop_unknown(self, batches: list[tuple[str, Readings]]) -> list[tuple[str, Readings]]:
        # A read that was in flight when its device left the config ends after the reload; the
        # new pipeline has no rows for it, and the device's values are no longer wanted.
        kept = []
        for device, readings in batches:
            if device in self.pipeline.devices:
                kept.append((device, readings))
                continue
            self.dropped_batches += 1
            self.metrics.dropped_batches.inc()
            if device not in self._dropped_from:
                self._dropped_from.add(device)
                log.warning("device %s is no longer configured: dropping its late readings", device)
        return kept


async def run_once(config: Config, config_dir: Path) -> tuple[list[Record], list[str]]:
    """Poll every device once, compute, and return the records it would publish plus the devices that failed."""
    outputs: list[tuple[str, Output]] = []
    agent = Agent(config, config_dir, sinks=False, on_output=lambda d, o: outputs.append((d, o)))
    failed: list[str] = []

    async def one(name: str, device: DeviceBase) -> None:
        # no callback: a notification arriving meanwhile would add a second, partial record of the device
        driver = make_driver(device, agent.pipeline.rows_of(name), config_dir, on_readings=None)
        try:
            await asyncio.wait_for(driver.connect(), timeout=30)
            batches = [await driver.read(g) for g in driver.groups()]
            if isinstance(driver, Subscribing):
                # the agent gets these by notification; one Read gives their current values, as `read` shows
                batches.append(await driver.read_subscribed())
        except Exception as exc:
            failed.append(f"device {name} ({device.endpoint}): {exc}")
            return
        finally:
            await driver.close()
        readings = Readings.concat(batches)
        if len(readings) and bool((readings.quality >= BAD_THRESHOLD).all()):
            failed.append(
                f"device {name} ({device.endpoint}): no value read (quality {int(readings.quality[0]):#x})"
            )
        agent._handle(name, readings)

    await asyncio.gather(*(one(n, d) for n, d in agent._devices.items()))
    agent.process_queued()
    from edge_agent.sink_set import preview

    return preview(config, agent.pipeline.table, [out for _device, out in outputs]), failed


#: Exit code of `run` stopped at once by a second SIGINT/SIGTERM: 128 + the signal's number, as a shell
#: reports a process that signal ended (130 for Ctrl-C, 143 for SIGTERM).
FORCED_EXIT_BASE = 128


def exit_now(signum: int, unsent: int | None, where: str = "the outbox") -> NoReturn:
    """End the process at once (a second stop signal), saying what the outbox keeps; exit code 128 + signum.

    Nothing more is sent or waited for. What was stored is committed (each write is one SQLite
    transaction), so exiting without closing the outbox loses none of it.
    """
    name = signal.Signals(signum).name
    kept = "what is not sent yet" if unsent is None else f"the {unsent} records not sent yet"
    log.warning(
        "%s again: stopping now without waiting for delivery; %s keeps %s and sends them at the next start",
        name,
        where,
        kept,
    )
    logging.shutdown()
    os._exit(FORCED_EXIT_BASE + signum)


def _listen_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


async def serve(
    config_path: Path, config: Config, cli_levels: tuple[str | None, dict[str, str]] = (None, {})
) -> int:
    """Run the agent until SIGTERM/SIGINT (a second one exits at once); SIGHUP reloads the config.

    `cli_levels` are the `--log-level` choices, which win over the config's at start and after a reload.
    """
    config_dir = config_path.parent
    metrics = AgentMetrics()
    if config.agent.metrics_port is not None:
        host = config.agent.metrics_host
        try:
            port = metrics.serve(config.agent.metrics_port, host)
        except OSError as exc:
            log.error(
                "cannot start: the metrics endpoint cannot listen on %s port %d: %s; "
                "change agent.metrics_port or agent.metrics_host",
                host,
                config.agent.metrics_port,
                exc.strerror or exc,
            )
            return 2
        log.info("metrics on %s", _listen_url(host, port))
    agent = Agent(config, config_dir, metrics=metrics)
    page = None
    if config.web.enabled:
        from edge_agent.web.server import WebServer

        page = WebServer(agent, config.web)
        try:
            log.info("web page on %s", await page.start())
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror or exc)
            return 2
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(signum: int) -> None:
        if not stop.is_set():
            stop.set()
            return
        unsent = sum(agent.sinks.depth().values()) if agent.sinks is not None else None
        exit_now(signum, unsent)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    try:
        await agent.start()
    except (OutboxError, SinkConfigError) as exc:
        # the sinks come first at start: nothing has been read yet, so nothing is lost by stopping here
        log.error("cannot start: %s", exc)
        if page is not None:
            await page.stop()
        return 2
    log.info("agent %s running: %s", config.agent.name, config.summary())
    while not stop.is_set():
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if reload.is_set() and not stop.is_set():
            reload.clear()
            await _reload(agent, config_path, cli_levels)
    log.info(
        "stopping: flushing outboxes for up to %.0f s (Ctrl-C or SIGTERM again stops at once; "
        "what is not sent stays in the outbox)",
        agent.config.agent.shutdown_timeout,
    )
    if page is not None:
        await page.stop()
    await agent.stop()
    return 0


def _log_tasks() -> None:
    """SIGUSR1: log every task of the agent with where it waits (for a stuck agent in the field)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = " <- ".join(
            f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames
        )
        log.warning("task %s: %s", task.get_name(), where or "(not started)")


async def _reload(
    agent: Agent, config_path: Path, cli_levels: tuple[str | None, dict[str, str]] = (None, {})
) -> None:
    try:
        new = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload refused, keeping the running config: %s: %s", exc.source, problem)
        return
    old = agent.config.agent
    try:
        await agent.reload(new)
    except Exception as exc:
        # a SIGHUP must never end the agent: leaving serve() here would skip the shutdown flush
        log.error(
            "reload of %s failed, keeping the running config: %s: %s", config_path, type(exc).__name__, exc
        )
        return
    if (new.agent.log_level, new.agent.log_levels) != (old.log_level, old.log_levels):
        _apply_log_levels(new, cli_levels, forget=old.log_levels)


def _apply_log_levels(
    config: Config, cli_levels: tuple[str | None, dict[str, str]], forget: Mapping[str, str] | None = None
) -> None:
    """The config's log levels with the command line's on top; loggers only in `forget` go back to their parent's."""
    level, loggers = cli_levels
    chosen = {**config.agent.log_levels, **loggers}
    for name in (forget or {}).keys() - chosen.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    apply_levels(level or config.agent.log_level, chosen)


def run_command(args: argparse.Namespace) -> int:
    """`edge-agent run -c FILE [--once]`."""
    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "web", None):
        from edge_agent.web.config import with_listen

        try:
            config = config.model_copy(update={"web": with_listen(config.web, args.web)})
        except ValueError as exc:
            print(f"edge-agent run: {exc}", file=sys.stderr)
            return 2
    cli_levels = split_cli_levels(getattr(args, "log_level", None))
    setup_logging(fmt=config.agent.log_format)
    _apply_log_levels(config, cli_levels)
    limit_malloc_arenas()
    for warning in config_warnings(config, path.resolve().parent):
        log.warning("%s: %s", path, warning)  # once at start; a reload does not repeat them
    if args.once:
        records, failed = asyncio.run(run_once(config, path.resolve().parent))
        write = sys.stdout.buffer.write
        for record in records:
            write(orjson.dumps({"topic": record.key, "payload": orjson.Fragment(record.payload)}) + b"\n")
        sys.stdout.flush()
        for reason in failed:
            print(reason, file=sys.stderr)
        return 1 if failed else 0
    return asyncio.run(serve(path.resolve(), config, cli_levels))


def main(argv: Sequence[str] | None = None) -> int:
    """Module entry point (same as `edge-agent run`)."""
    parser = argparse.ArgumentParser(prog="edge-agent run")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--once", action="store_true")
    add_log_level_option(parser, "the config's agent.log_level, INFO")
    return run_command(parser.parse_args(argv))
