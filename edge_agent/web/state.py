"""What the web page shows, kept from the agent's own output: last values, control charts, figures, alarms.

The state subscribes to `Agent.on_output` (the path the demo's terminal view reads) and keeps every
batch by reference until the next `flush`, which runs a few times a second or before an answer:
the agent's hot path pays one list append per batch, and the arrays are updated once per flush
with a few numpy operations over all the batches together. Views (`overview`, `machine`, `alarms`,
`sinks`) are plain dicts ready for JSON; they carry no secret (no config value beyond names,
units, limits and host:port of endpoints).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from edge_agent.core.spc import Rule
from edge_agent.features.registry import publications
from edge_agent.records import AgentStatus, AlarmEvent, IndicatorBatch, Output
from edge_agent.types import BAD_THRESHOLD, Quality, Readings

#: Indicators that set control limits from a baseline: their signals get a control chart.
CHART_INDICATORS = frozenset({"imr", "xbar_r", "xbar_s"})

#: Rule bits each profile indicator judges: a chart marks a point only for the rules its signal uses.
_RULES_OF_INDICATOR = {
    "imr": Rule.WE1 | Rule.N1 | Rule.MR_HIGH,
    "xbar_r": Rule.XBAR_R | Rule.R_OUT,
    "xbar_s": Rule.XBAR_S | Rule.S_OUT,
    "rules": Rule(sum(1 << b for b in range(12))),
    "ewma": Rule.EWMA_HIGH | Rule.EWMA_LOW,
    "cusum": Rule.CUSUM_POS | Rule.CUSUM_NEG,
}
_SPEC_RULES = Rule.ABOVE_USL | Rule.BELOW_LSL

#: The device-level pseudo-signals the pipeline adds to every device: its cycle state and the features' rows.
PSEUDO_SIGNALS = frozenset({"cycle", *(p.signal for p in publications())})

#: The SPC fields a page shows per signal (family `spc`), kept per signal row.
SPC_SHOWN = ("cl", "ucl", "lcl", "cpk", "ppk", "mean", "sd", "n")

#: Device-level figures on the overview, per pseudo-signal: (field, label, unit); units "%" are ratios 0..1.
HEADLINES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "oee": (("oee", "OEE", "%"), ("availability", "Availability", "%"), ("performance", "Performance", "%"),
            ("quality", "Quality", "%")),
    "uniformity": (("spread", "Spread", "°C"), ("soak_s", "Soak", "s"), ("overshoot_c", "Overshoot", "°C")),
    "heat_removal": (("heat_kw", "Heat removal", "kW"), ("delta_t", "ΔT", "K"), ("flow", "Flow", "L/min")),
}  # fmt: skip

#: Pseudo-signals whose fields stay on the machine page: a new feature's first fields show on its card.
_NOT_HEADLINES = frozenset({"cycle", "maintenance"})

#: Titles and field units of the equipment panels of a machine page (other pseudo-signals show as they are).
PANELS: dict[str, tuple[str, dict[str, str]]] = {
    "oee": ("OEE (ISO 22400)", {"availability": "%", "performance": "%", "quality": "%", "oee": "%",
                                "apt_s": "s", "pq": "parts", "gq": "parts"}),
    "uniformity": ("Furnace: soak and uniformity", {"spread": "°C", "soak_s": "s", "ramp_c_per_min": "°C/min",
                   "overshoot_c": "°C", "time_to_temp_s": "s", "tolerance_c": "°C", "quench_delay_s": "s"}),
    "heat_removal": ("Mould heat removal", {"heat_kw": "kW", "delta_t": "K", "flow": "L/min"}),
    "maintenance": ("Mould maintenance", {"pct_used": "%"}),
    "cycle": ("Cycle", {}),
}  # fmt: skip

#: Readable names of the equipment fields (others show their name with spaces).
LABELS = {
    "oee": "OEE", "availability": "Availability", "performance": "Performance", "quality": "Quality",
    "apt_s": "Production time", "pq": "Parts", "gq": "Good parts", "spread": "Spread",
    "all_in_band": "All in band", "soak_s": "Soak", "ramp_c_per_min": "Ramp", "overshoot_c": "Overshoot",
    "time_to_temp_s": "Time to temp.", "tolerance_c": "Tolerance", "valid_sensors": "Valid sensors",
    "quench_delay_s": "Quench delay", "heat_kw": "Heat removal", "delta_t": "ΔT", "flow": "Flow",
    "shots_used": "Shots used", "shots_to_next": "Shots to service", "pct_used": "Life used", "status": "Status",
    "stopped": "Stopped",
}  # fmt: skip

#: A device whose last good value is older than this many poll intervals (and this many seconds) is stale.
STALE_POLLS = 5
STALE_MIN_S = 5.0


class AgentLike(Protocol):
    """What the state reads of the agent (edge_agent.agent.Agent); a Protocol so this package imports no agent."""

    on_output: Callable[[str, Output], None] | None

    @property
    def config(self) -> Any:
        """The running config (edge_agent.config.Config)."""

    @property
    def pipeline(self) -> Any:
        """The indicator pipeline: devices, signal table, spec limits."""

    @property
    def drivers(self) -> Mapping[str, object]:
        """Each device's driver (its `connected`)."""

    @property
    def sinks(self) -> Any:
        """The sink set (`depth()`), or None."""

    @property
    def metrics(self) -> Any:
        """The Prometheus metrics (`registry`)."""

    def status(self, state: str) -> AgentStatus:
        """The agent's health figures."""


def rule_names(mask: int) -> str:
    """The Rule bits of `mask` as names, e.g. "WE1+N1"."""
    return "+".join(str(r.name) for r in Rule if mask & r)


def endpoint_address(endpoint: str) -> str:
    """`scheme://host:port` of an endpoint, without user info or path (nothing of a credential)."""
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}" if parts.scheme else f"{host}{port}"


def quality_name(code: int) -> str:
    """GOOD, BAD_NOT_CONNECTED, ... of a quality byte; unknown codes as hex."""
    try:
        return Quality(code).name
    except ValueError:
        return f"0x{code:02x}"


def _headlines(figures: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """A machine's figures for its overview card: HEADLINES' picks, and the first fields of a feature without."""
    out = []
    for pseudo, fields in figures.items():
        if pseudo in _NOT_HEADLINES:
            continue
        units = PANELS.get(pseudo, ("", {}))[1]
        shown = HEADLINES.get(pseudo) or tuple(
            (key, LABELS.get(key, key.replace("_", " ").capitalize()), units.get(key, ""))
            for key in list(fields)[:3]
        )
        out += [
            {"key": f"{pseudo}.{key}", "label": label, "unit": unit, "value": _finite(fields[key])}
            for key, label, unit in shown
            if key in fields
        ]
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _ms(t_ns: int | float) -> int | None:
    return int(t_ns) // 1_000_000 if t_ns > 0 else None


class ChartRing:
    """The last `size` points of one control chart: time, value, limits and rule hits, oldest overwritten."""

    FIELDS = ("t_ns", "x", "cl", "ucl", "lcl", "mask")

    def __init__(self, size: int) -> None:
        self.size = size
        self.t_ns = np.zeros(size, np.int64)
        self.x = np.full(size, np.nan)
        self.cl = np.full(size, np.nan)
        self.ucl = np.full(size, np.nan)
        self.lcl = np.full(size, np.nan)
        self.mask = np.zeros(size, np.uint32)
        self.head = 0
        self.count = 0

    def add(self, t_ns: int, x: float, cl: float, ucl: float, lcl: float, mask: int) -> None:
        """Append one point."""
        i = self.head
        self.t_ns[i], self.x[i], self.cl[i], self.ucl[i], self.lcl[i], self.mask[i] = (
            t_ns,
            x,
            cl,
            ucl,
            lcl,
            mask,
        )
        self.head = (i + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def order(self) -> NDArray[np.int64]:
        """Indexes of the kept points, oldest first."""
        return (np.arange(self.count) + (self.head - self.count)) % self.size


@dataclass
class AlarmRow:
    """One alarm from its start to its clear, as the alarms page lists it."""

    machine: str
    signal: str
    rule: str
    severity: str
    message: str
    value: float
    limit: float
    unit: str
    start_ms: int | None
    clear_ms: int | None = None

    def view(self) -> dict[str, Any]:
        """The row as JSON."""
        return {
            "machine": self.machine,
            "signal": self.signal,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "value": _finite(self.value),
            "limit": _finite(self.limit),
            "unit": self.unit,
            "start_ms": self.start_ms,
            "clear_ms": self.clear_ms,
        }


@dataclass
class _Machine:
    """What the state knows of one device besides its rows' arrays."""

    name: str
    rows: dict[str, int]
    """Signal name -> row, the device's own signals (pseudo-signals left out), in config order."""
    pseudo: dict[str, int]
    charted: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Charted signal -> (its row, the rule bits it is judged by)."""
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    """Pseudo-signal -> its latest fields (OEE, furnace, mould, cycle)."""
    batches: int = 0
    rate: float = math.nan
    """Batches per second (polls and subscription bursts), measured over the last few seconds."""
    rate_mark: tuple[float, int] = (0.0, 0)


class LiveState:
    """The web page's view of one agent, fed by its `on_output` and read by the server."""

    def __init__(
        self,
        agent: AgentLike,
        chart_points: int = 100,
        recent_alarms: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.chart_points = chart_points
        self.clock = clock
        self._pending: list[tuple[str, Output]] = []
        self._pipeline: object = None
        self.machines: dict[str, _Machine] = {}
        self.charts: dict[int, ChartRing] = {}
        self.active: dict[tuple[str, str, str], AlarmRow] = {}
        self.recent: deque[AlarmRow] = deque(maxlen=recent_alarms)
        self._n = 0
        self.value = np.empty(0)
        self.quality = np.empty(0, np.uint8)
        self.t_ns = np.empty(0, np.int64)
        self.good_t_ns = np.empty(0, np.int64)
        self.spc: dict[str, NDArray[np.float64]] = {}
        self._grow()
        self._bind()

    # ------------------------------------------------------------------ feeding
    def attach(self) -> None:
        """Subscribe to the agent's output, after whatever already listens to it (the demo's terminal view)."""
        previous = self.agent.on_output
        if previous is None:
            self.agent.on_output = self.feed
        else:

            def both(device: str, out: Output) -> None:
                previous(device, out)
                self.feed(device, out)

            self.agent.on_output = both

    def feed(self, device: str, out: Output) -> None:
        """Take one batch of the agent's output (called on the agent's hot path: one append)."""
        self._pending.append((device, out))

    def flush(self) -> None:
        """Apply the batches taken since the last flush."""
        if self.agent.pipeline is not self._pipeline:
            self._bind()
        pending, self._pending = self._pending, []
        if not pending:
            return
        self._grow()
        raws: list[Readings] = []
        for device, out in pending:
            machine = self.machines.get(device)
            if machine is None:
                continue  # a device that left the config with a reload
            machine.batches += len(out.raw)
            raws.extend(r for _src, r in out.raw)
            for _src, batch in out.kpi:
                self._kpi(machine, batch)
            for _src, event in out.alarms:
                self._alarm(device, event)
        if raws:
            self._raw(Readings.concat(raws))

    def _grow(self) -> None:
        n = len(self.agent.pipeline.table)
        if n <= self._n:
            return
        extra = n - self._n
        self.value = np.concatenate([self.value, np.full(extra, np.nan)])
        self.quality = np.concatenate(
            [self.quality, np.full(extra, Quality.BAD_WAITING_FOR_INITIAL, np.uint8)]
        )
        self.t_ns = np.concatenate([self.t_ns, np.zeros(extra, np.int64)])
        self.good_t_ns = np.concatenate([self.good_t_ns, np.zeros(extra, np.int64)])
        for key in (*SPC_SHOWN, "x"):
            self.spc[key] = np.concatenate([self.spc.get(key, np.empty(0)), np.full(extra, np.nan)])
        self._n = n

    def _bind(self) -> None:
        """Learn the devices, their rows and charted signals from the agent's pipeline (at start and after a reload)."""
        pipeline = self.agent.pipeline
        self._pipeline = pipeline
        old = self.machines
        self.machines = {}
        for name, info in pipeline.devices.items():
            signals = {s.name: s for s in info.profile.signals}
            own = {s: r for s, r in info.rows.items() if s not in PSEUDO_SIGNALS}
            machine = _Machine(name, own, {s: r for s, r in info.rows.items() if s in PSEUDO_SIGNALS})
            for sig, row in own.items():
                ps = signals.get(sig)
                indicators = set(ps.indicators) if ps is not None else set()
                if indicators & CHART_INDICATORS:
                    bits = _SPEC_RULES
                    for ind in indicators:
                        bits |= _RULES_OF_INDICATOR.get(ind, Rule(0))
                    machine.charted[sig] = (row, int(bits))
                    if row not in self.charts:
                        self.charts[row] = ChartRing(self.chart_points)
            if name in old:
                machine.figures = old[name].figures
                machine.batches = old[name].batches
            self.machines[name] = machine

    def _raw(self, r: Readings) -> None:
        # the last reading of a row in the flush wins; fancy assignment keeps the last of repeated indexes
        # only by implementation, so order explicitly: a stable sort by row, then the last of each run
        sig = r.signal.astype(np.int64)
        order = np.argsort(sig, kind="stable")
        s = sig[order]
        last = order[np.r_[s[1:] != s[:-1], True]] if s.size else order
        rows = sig[last]
        self.value[rows] = r.value[last]
        self.quality[rows] = r.quality[last]
        self.t_ns[rows] = r.t_ns[last]
        good = r.quality < BAD_THRESHOLD
        if good.any():
            g = np.flatnonzero(good)
            np.maximum.at(self.good_t_ns, sig[g], r.t_ns[g])

    def _kpi(self, machine: _Machine, batch: IndicatorBatch) -> None:
        rows = batch.signal.astype(np.int64)
        if batch.family != "spc":
            if rows.size == 1:
                pseudo = self.agent.pipeline.table.tags[int(rows[0])]
                machine.figures[pseudo] = {k: float(v[0]) for k, v in batch.values.items()}
            return
        values = batch.values
        for key in (*SPC_SHOWN, "x"):
            column = values.get(key)
            if column is not None:
                self.spc[key][rows] = column
        if not self.charts:
            return
        for i, row in enumerate(rows.tolist()):
            ring = self.charts.get(row)
            if ring is None:
                continue
            x = float(values["x"][i])
            if not math.isfinite(x):
                continue  # a bad reading is no point on a chart
            mask = values.get("rule_mask")
            ring.add(
                batch.t_ns,
                x,
                float(values["cl"][i]),
                float(values["ucl"][i]),
                float(values["lcl"][i]),
                int(mask[i]) if mask is not None and math.isfinite(mask[i]) else 0,
            )

    def _alarm(self, device: str, event: AlarmEvent) -> None:
        table = self.agent.pipeline.table
        signal = table.tags[event.signal]
        key = (device, signal, event.rule)
        t_ms = _ms(event.t_ns)
        if event.state == "start":
            row = AlarmRow(
                device,
                signal,
                event.rule,
                event.severity,
                event.message,
                event.value,
                event.limit,
                table.units[event.signal],
                t_ms,
            )
            self.active[key] = row
            self.recent.appendleft(row)
            return
        cleared = self.active.pop(key, None)
        if cleared is not None:
            row = cleared
        else:
            # started before this page's state did (or before a reload): the clear alone is known
            row = AlarmRow(device, signal, event.rule, event.severity, "", event.value, event.limit,
                           table.units[event.signal], None)  # fmt: skip
            self.recent.appendleft(row)
        row.clear_ms = t_ms

    # ------------------------------------------------------------------ views
    def _rates(self) -> None:
        now = self.clock()
        for m in self.machines.values():
            t0, n0 = m.rate_mark
            if t0 == 0.0:
                m.rate_mark = (now, m.batches)
            elif now - t0 >= 2.0:
                m.rate = (m.batches - n0) / (now - t0)
                m.rate_mark = (now, m.batches)

    def _device_configs(self) -> dict[str, Any]:
        return {d.name: d for d in self.agent.config.devices if d.enabled}

    def _machine_head(self, m: _Machine, device: Any, now_ns: int) -> dict[str, Any]:
        info = self.agent.pipeline.devices[m.name]
        rows = np.fromiter(m.rows.values(), np.int64, len(m.rows))
        last_good = int(self.good_t_ns[rows].max()) if rows.size else 0
        connected = bool(getattr(self.agent.drivers.get(m.name), "connected", False))
        interval = float(device.poll_interval)
        stale_after_ns = max(STALE_POLLS * interval, STALE_MIN_S) * 1e9
        if not connected:
            state = "offline"
        elif last_good == 0 or now_ns - last_good > stale_after_ns:
            state = "stale"
        else:
            state = "online"
        active = sum(1 for key in self.active if key[0] == m.name)
        return {
            "name": m.name,
            "profile": device.profile,
            "kind": info.profile.measurement,
            "about": info.profile.description.split(":")[0].split(" (")[0],
            "protocol": device.protocol,
            "endpoint": endpoint_address(device.endpoint),
            "connected": connected,
            "state": state,
            "last_good_ms": _ms(last_good),
            "poll_interval_s": interval,
            "updates_per_s": _finite(m.rate),
            "signals": len(m.rows),
            "charts": len(m.charted),
            "active_alarms": active,
        }

    def overview(self) -> dict[str, Any]:
        """Every machine with its state, last good read, poll rate, active alarms and headline figures."""
        self.flush()
        self._rates()
        now_ns = time.time_ns()
        devices = self._device_configs()
        machines = []
        for m in self.machines.values():
            device = devices.get(m.name)
            if device is None:
                continue
            head = self._machine_head(m, device, now_ns)
            head["figures"] = _headlines(m.figures)
            machines.append(head)
        return {"agent": self._agent(now_ns), "machines": machines}

    def machine(self, name: str) -> dict[str, Any] | None:
        """One machine: every signal, the control charts, the equipment panels, its active alarms; None if unknown."""
        self.flush()
        self._rates()
        m = self.machines.get(name)
        device = self._device_configs().get(name)
        if m is None or device is None:
            return None
        now_ns = time.time_ns()
        head = self._machine_head(m, device, now_ns)
        pipeline = self.agent.pipeline
        table = pipeline.table
        info = pipeline.devices[name]
        signals = []
        for sig, row in m.rows.items():
            q = int(self.quality[row])
            entry: dict[str, Any] = {
                "name": sig,
                "unit": table.units[row],
                "value": _finite(self.value[row]),
                "quality": quality_name(q),
                "good": q < Quality.UNCERTAIN,
                "t_ms": _ms(int(self.t_ns[row])),
                "charted": sig in m.charted,
            }
            for key in ("cl", "ucl", "lcl", "cpk"):
                entry[key] = _finite(self.spc[key][row])
            signals.append(entry)
        charts = [self._chart(sig, row, bits, table.units[row], info.profile.baseline_samples)
                  for sig, (row, bits) in m.charted.items()]  # fmt: skip
        panels = []
        for pseudo, fields in m.figures.items():
            title, units = PANELS.get(pseudo, (pseudo.replace("_", " ").capitalize(), {}))
            panels.append(
                {
                    "key": pseudo,
                    "title": title,
                    "fields": [
                        {
                            "name": k,
                            "label": LABELS.get(k, k.replace("_", " ").capitalize()),
                            "unit": units.get(k, ""),
                            "value": _finite(v),
                        }
                        for k, v in fields.items()
                    ],
                }
            )
        alarms = [row.view() for key, row in self.active.items() if key[0] == name]
        return {
            "agent": self._agent(now_ns),
            "machine": head,
            "signals": signals,
            "charts": charts,
            "panels": panels,
            "alarms": alarms,
        }

    def _chart(self, signal: str, row: int, bits: int, unit: str, baseline: int) -> dict[str, Any]:
        pipeline = self.agent.pipeline
        ring = self.charts.get(row)
        points: list[list[Any]] = []
        cl = ucl = lcl = math.nan
        if ring is not None and ring.count:
            idx = ring.order()
            masks = ring.mask[idx] & np.uint32(bits)
            for t, x, mask in zip(ring.t_ns[idx].tolist(), ring.x[idx].tolist(), masks.tolist(), strict=True):
                points.append([t // 1_000_000, x, rule_names(mask) if mask else None])
            last = idx[-1]
            cl, ucl, lcl = float(ring.cl[last]), float(ring.ucl[last]), float(ring.lcl[last])
        return {
            "signal": signal,
            "unit": unit,
            "points": points,
            "cl": _finite(cl),
            "ucl": _finite(ucl),
            "lcl": _finite(lcl),
            "lsl": _finite(pipeline.spec_lsl[row]) if row < len(pipeline.spec_lsl) else None,
            "usl": _finite(pipeline.spec_usl[row]) if row < len(pipeline.spec_usl) else None,
            "cpk": _finite(self.spc["cpk"][row]),
            "baseline": baseline,
            "value": _finite(self.value[row]),
        }

    def alarms(self) -> dict[str, Any]:
        """Active alarms, newest first, and the recent ones with their start and clear times."""
        self.flush()
        active = sorted(self.active.values(), key=lambda r: r.start_ms or 0, reverse=True)
        return {
            "agent": self._agent(time.time_ns()),
            "active": [r.view() for r in active],
            "recent": [r.view() for r in self.recent],
        }

    def sinks(self) -> dict[str, Any]:
        """Each sink's connection, outbox depth and delivery counters, and the agent's health figures."""
        self.flush()
        depth = self.agent.sinks.depth() if self.agent.sinks is not None else {}
        registry = self.agent.metrics.registry

        def sample(name: str, sink: str) -> float | None:
            value = registry.get_sample_value(name, {"sink": sink})
            return None if value is None else _finite(value)

        sinks = [
            {
                "name": sink,
                "connected": sample("edge_agent_sink_connected", sink),
                "outbox_records": records,
                "outbox_bytes": sample("edge_agent_outbox_bytes", sink),
                "sent": sample("edge_agent_sink_records_sent_total", sink),
                "dropped": sample("edge_agent_sink_records_dropped_total", sink),
                "retries": sample("edge_agent_sink_retries_total", sink),
            }
            for sink, records in depth.items()
        ]
        return {"agent": self._agent(time.time_ns()), "sinks": sinks}

    def _agent(self, now_ns: int) -> dict[str, Any]:
        status = self.agent.status("online")
        health = {k: v for k, v in status.health.items() if isinstance(v, int | float)}
        return {
            "name": self.agent.config.agent.name,
            "now_ms": now_ns // 1_000_000,
            "health": health,
            "active_alarms": len(self.active),
            "machines": len(self.machines),
        }

    def machine_names(self) -> Iterable[str]:
        """The machines a page can be asked for."""
        return self.machines.keys()
