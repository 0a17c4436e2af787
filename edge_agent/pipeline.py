"""Binds equipment profiles to the indicator core: Readings in, raw values, indicators and alarm events out.

The pipeline owns the signal table and one instance of each engine for all devices,
so a poll costs a handful of array operations whatever the number of signals. The
only Python loops are per device (its equipment features, KPI timers), never per value.
Equipment features (OEE, furnace, mould) are the modules of features/registry.py: the
pipeline builds each for its devices and, per device batch, publishes what its update returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.config import Config
from edge_agent.config_model import DeviceBase
from edge_agent.core._batch import last_occurrences
from edge_agent.core.alarms import AlarmEvents, AlarmTracker, band_conditions
from edge_agent.core.autocorr import Prewhitener
from edge_agent.core.cycles import CycleLatch
from edge_agent.core.spc import ALARM_KIND_NAMES, Rule, RuleHits, SpcEngine, SpcParams
from edge_agent.features.base import DeviceBatch, DeviceContext, Feature
from edge_agent.features.registry import FEATURES, alarm_conditions, publications
from edge_agent.profiles import Profile, find_profile
from edge_agent.records import AlarmEvent, IndicatorBatch, Output, Source
from edge_agent.schema import SPC_FIELDS
from edge_agent.types import Readings, SignalTable

log = logging.getLogger(__name__)

# Which profile indicators allow each SPC alarm kind (ALARM_KIND_NAMES: rules, chart, ewma, cusum, spec).
_KIND_NEEDS = {
    "rules": {"rules"},
    "chart": {"imr", "xbar_r", "xbar_s"},
    "ewma": {"ewma"},
    "cusum": {"cusum"},
}
#: The pipeline's own device-level pseudo-signal: whether the machine's cycles stopped (from the cycle latch).
CYCLE_SIGNAL = "cycle"
#: Device-level pseudo-signals, one row each per device: the cycle state, then every feature's in registry order.
PSEUDO_SIGNALS = (CYCLE_SIGNAL, *(p.signal for p in publications()))
if len(set(PSEUDO_SIGNALS)) < len(PSEUDO_SIGNALS):
    raise RuntimeError(
        f"features/registry.py: a feature claims the pipeline's pseudo-signal {CYCLE_SIGNAL!r}"
    )
#: The InfluxDB measurement (indicator family) of each pseudo-signal.
_FAMILY = {CYCLE_SIGNAL: "cycle", **{p.signal: p.family for p in publications()}}
#: Device-level alarm conditions of every feature; kind 100 + i is condition i (one tracker channel each per device).
_CONDITIONS = alarm_conditions()
_CONDITION_INDEX = {c.rule: i for i, c in enumerate(_CONDITIONS)}
_DEVICE_KIND = 100
#: A per-cycle alarm clears only after its condition stayed away this many nominal cycles.
CLEAR_AFTER_CYCLES = 5
#: The engine's beyond-3σ bits, filed under its `rules` kind with the run rules.
_BEYOND_3SIGMA = int(Rule.WE1 | Rule.N1)
_RULES_KIND = next(k for k, name in ALARM_KIND_NAMES.items() if name == "rules")
_SPC_INDICATORS = {"rolling", "imr", "xbar_r", "xbar_s", "capability", "rules", "ewma", "cusum"}
_RULE_NAMES = [(int(r.value), str(r.name)) for r in Rule]
#: Snapshot fields describing the values themselves (window statistics, capability): for a
#: pre-whitened signal they come from its raw values, not from the series its charts see.
_RAW_STAT_KEYS = (
    "window_n", "mean", "sd", "min", "max", "reason_window",
    "cap_n", "cap_mean", "sigma_within", "sigma_overall", "cp", "cpk", "pp", "ppk", "reason_capability",
)  # fmt: skip


def rule_names(mask: int) -> str:
    """The names of the rule bits set in `mask`, e.g. "WE1+N1"."""
    return "+".join(name for bit, name in _RULE_NAMES if mask & bit) or "none"


@dataclass
class DeviceInfo:
    """What the pipeline knows of one configured device."""

    name: str
    profile: Profile
    source: Source
    rows: dict[str, int]
    index: int
    nominal_cycle_s: float = 0.0
    """Nominal cycle time (device override, else the profile's; 0 for machines without cycles)."""
    kpi_due_ns: int = 0
    features: list[tuple[Feature[Any, Any], Any, int]] = field(default_factory=list)
    """(feature, its state, the device's slot in it) of each equipment feature of the device's profile."""
    row_array: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """The device's rows (signals and pseudo-signals) as an array, for masks without a loop."""
    band_channels: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """The device's channels of the band-alarm tracker."""
    event_signals: set[str] = field(default_factory=set)
    """Per-cycle signals that arrive as events (one per cycle): fed directly, not latched on the counter."""
    last_stamp: dict[str, int] = field(default_factory=dict)
    """Last timestamp given to each indicator series of the device."""

    def stamp(self, series: str, t_ns: int) -> int:
        """A timestamp for an indicator record, strictly after the series' previous one by >= 1 ms.

        Two records of one series at the same time would overwrite each other in a TSDB (and
        VictoriaMetrics keeps milliseconds): e.g. two cycle events stamped in the same millisecond.
        """
        t = max(t_ns, self.last_stamp.get(series, -(10**18)) + 1_000_000)
        self.last_stamp[series] = t
        return t


@dataclass
class _Staged:
    """One device's batch between its own steps and the engines' shared update."""

    info: DeviceInfo
    readings: Readings
    raw_spc: Readings
    cycle_moved: bool


class IndicatorPipeline:
    """Runs every configured indicator over the devices' batches and turns the results into records."""

    def __init__(self, config: Config, profile_dirs: list[Path], table: SignalTable | None = None) -> None:
        # a reloaded config reuses the table: rows are append-only, so running drivers keep theirs
        self.table = table if table is not None else SignalTable()
        self.devices: dict[str, DeviceInfo] = {}
        site = config.site
        # one parsed copy per profile, shared by its devices: a hundred devices of one kind would
        # otherwise hold a hundred identical profiles (6 MB at 100 tags each)
        profiles: dict[str, Profile] = {}
        for i, dev in enumerate(d for d in config.devices if d.enabled):
            if dev.profile not in profiles:
                profiles[dev.profile] = find_profile(dev.profile, profile_dirs)
            profile = profiles[dev.profile]
            rows = {}
            for name in dev.signal_names():
                ps = profile.signal(name)
                rows[name] = self.table.add(dev.name, name, _unit(dev, name) or (ps.unit if ps else ""))
            # device-level indicators hang on pseudo-signals of their own; every device has a row for
            # each, whether its profile publishes it or not (tests/test_deploy.py checks the set)
            for pseudo in PSEUDO_SIGNALS:
                rows[pseudo] = self.table.add(dev.name, pseudo)
            source = Source(
                machine=dev.name,
                equipment=profile.measurement,
                site=site.site,
                area=dev.area or site.area,
                line=dev.line or site.line,
                enterprise=site.enterprise,
            )
            events = dev.event_signals()
            self.devices[dev.name] = DeviceInfo(
                dev.name,
                profile,
                source,
                rows,
                i,
                nominal_cycle_s=dev.nominal_cycle_s
                or (profile.cycle.nominal_cycle_s if profile.cycle else 0.0),
                event_signals=events,
                row_array=np.array(list(rows.values()), np.int64),
            )
        n = len(self.table)
        self.row_device = np.full(n, -1, np.int64)
        for info in self.devices.values():
            self.row_device[info.row_array] = info.index
        self.last_value = np.full(n, np.nan)
        self.last_t = np.full(n, -1, np.int64)
        self._dirty = np.zeros(n, bool)
        self._build_spc(config, n)
        self._build_cycles(n)
        self._build_band_alarms(n)
        self._build_features(config)

    # ------------------------------------------------------------------ construction
    def _signal_rows(self, want: str) -> tuple[NDArray[np.int64], list[tuple[DeviceInfo, str]]]:
        rows, owners = [], []
        for info in self.devices.values():
            for s in info.profile.signals:
                if s.name in info.rows and _matches(s, want):
                    rows.append(info.rows[s.name])
                    owners.append((info, s.name))
        return np.array(rows, np.int64), owners

    def _build_spc(self, config: Config, n: int) -> None:
        limits = {d.name: d.limits for d in config.devices}
        rows, owners = self._signal_rows("spc")
        self.spc_row = np.zeros(n, bool)
        self.spc_row[rows] = True
        self.alarm_allowed = np.zeros((n, len(ALARM_KIND_NAMES)), bool)
        lsl = np.full(rows.shape, np.nan)
        usl = np.full(rows.shape, np.nan)
        window = np.full(rows.shape, 50)
        phase1 = np.full(rows.shape, 50)
        per_cycle = np.zeros(rows.shape, bool)
        # the engines need at least one row; with no signal at all (every device disabled) the
        # extra row is never fed, but their per-row arrays must have its slot too
        capacity = max(n, 1)
        delay = np.zeros(capacity, np.int64)
        off_delay = np.zeros(capacity, np.int64)
        self.spec_lsl = np.full(n, np.nan)
        self.spec_usl = np.full(n, np.nan)
        # `imr` without `rules`: a point beyond the I-chart limits alarms, the run rules do not; the
        # engine files both under one alarm kind, so the pipeline tracks these rows' 3σ points itself
        self.limits_only_row = np.zeros(capacity, bool)
        for i, (info, name) in enumerate(owners):
            ps = info.profile.signal(name)
            assert ps is not None
            spec = limits.get(info.name, {}).get(name)
            # a device's entry replaces both profile limits: merged one by one, a device LSL above the
            # profile's USL would make a reversed pair, and one limit given means a one-sided spec
            lo, hi = (spec.lsl, spec.usl) if spec else (ps.lsl, ps.usl)
            lsl[i] = np.nan if lo is None else lo
            usl[i] = np.nan if hi is None else hi
            window[i] = info.profile.window
            per_cycle[i] = ps.sampling == "per_cycle"
            phase1[i] = info.profile.baseline_samples
            wanted = set(ps.indicators)
            row = rows[i]
            for kind, kind_name in ALARM_KIND_NAMES.items():
                needs = _KIND_NEEDS.get(kind_name)
                # the engine sees whitened values; specification limits are judged on the raw ones (_spec)
                self.alarm_allowed[row, kind] = bool(wanted & needs) if needs else False
            self.spec_lsl[row], self.spec_usl[row] = lsl[i], usl[i]
            self.limits_only_row[row] = "imr" in wanted and "rules" not in wanted
            if ps.sampling == "continuous":
                delay[row] = int(info.profile.alarm_delay_s * 1e9)
            elif info.nominal_cycle_s:
                # a per-cycle alarm holds for a few cycles, so one in-control sample does not flap it
                off_delay[row] = int(CLEAR_AFTER_CYCLES * info.nominal_cycle_s * 1e9)
        max_window = max(int(window.max()) if window.size else 2, 2)
        self.spc = SpcEngine(
            capacity,
            # the engine configures every row at construction; rows that chart nothing get the
            # largest window in use, so its default (50) cannot exceed a smaller max_window
            SpcParams(window=max_window),
            max_window=max_window,
            alarm_on_delay_ns=delay,
            alarm_off_delay_ns=np.maximum(delay, off_delay),
        )
        if rows.size:
            self.spc.configure(rows, SpcParams(window=window, phase1_n=phase1, lsl=lsl, usl=usl))
        # per-cycle process data are autocorrelated: whiten them before the charts (core/autocorr.py)
        self.whitener = Prewhitener(capacity, rows[per_cycle], phase1[per_cycle])
        # their window statistics and capability describe the raw values: a statistics-only engine
        # fed the raw series, row raw_row[r] for signal row r (-1: the chart engine's own are raw)
        raw = rows[per_cycle]
        self.raw_row = np.full(capacity, -1, np.int64)
        self.raw_row[raw] = np.arange(raw.size)
        self.raw_stats = SpcEngine(max(raw.size, 1), SpcParams(window=max_window), max_window, charts=False)
        if raw.size:
            pc = per_cycle
            self.raw_stats.configure(
                np.arange(raw.size),
                SpcParams(window=window[pc], phase1_n=phase1[pc], lsl=lsl[pc], usl=usl[pc]),
            )
        self.spec_row = np.isfinite(self.spec_lsl) | np.isfinite(self.spec_usl)
        self.spec_alarms = AlarmTracker(capacity, delay, np.maximum(delay, off_delay))
        self.limit_alarms = AlarmTracker(capacity, delay, np.maximum(delay, off_delay))

    def _build_cycles(self, n: int) -> None:
        counters, latched, nominal, modulus, devices = [], [], [], [], []
        # polled per-cycle rows reach SPC only through the latch: without their device's counter
        # (check-config reports it) they would be charted on every poll, the same value many times
        self.polled_per_cycle_row = np.zeros(n, bool)
        for info in self.devices.values():
            per_cycle = [
                info.rows[s.name]
                for s in info.profile.signals
                if s.sampling == "per_cycle" and s.name in info.rows and not self._from_event(info, s.name)
            ]
            self.polled_per_cycle_row[per_cycle] = True
            cyc = info.profile.cycle
            if cyc is None or cyc.counter not in info.rows:
                continue
            counters.append(info.rows[cyc.counter])
            latched.append(per_cycle)
            nominal.append(info.nominal_cycle_s)
            # a UInt64 counter never wraps in practice; int64 cannot hold its modulus anyway
            modulus.append(cyc.rollover if cyc.rollover <= 2**32 else 0)
            devices.append(info)
        self.latched_row = np.zeros(n, bool)
        self.cycle_devices = devices
        if not counters:
            self.latch: CycleLatch | None = None
            return
        k = max(1, max(len(x) for x in latched))
        pad = np.full((len(latched), k), -1, np.int64)
        for i, rows in enumerate(latched):
            pad[i, : len(rows)] = rows
            self.latched_row[rows] = True
        cycle_rows = [d.rows["cycle"] for d in devices]
        self.latch = CycleLatch(n, counters, pad, nominal, modulus, cycle_time_row=cycle_rows)
        self.counter_row = np.zeros(n, bool)
        self.counter_row[counters] = True

    def _from_event(self, info: DeviceInfo, name: str) -> bool:
        return name in info.event_signals

    def _build_band_alarms(self, n: int) -> None:
        rows, setpoints, bands, delays = [], [], [], []
        for info in self.devices.values():
            for s in info.profile.signals:
                if "band" in s.indicators and s.name in info.rows and s.setpoint in info.rows and s.band:
                    rows.append(info.rows[s.name])
                    setpoints.append(info.rows[s.setpoint])
                    bands.append(s.band)
                    delays.append(int(info.profile.alarm_delay_s * 1e9))
        self.band_rows = np.array(rows, np.int64)
        self.band_setpoint = np.array(setpoints, np.int64)
        self.band_width = np.array(bands, np.float64)
        for info in self.devices.values():
            mine = [i for i, r in enumerate(rows) if self.table.devices[r] == info.name]
            info.band_channels = np.array(mine, np.int64)
        self.band_alarms = AlarmTracker(len(rows), np.array(delays, np.int64), np.array(delays, np.int64))
        # a channel is armed once its value has been inside the band around its current setpoint:
        # a cold start or a new setpoint is an approach, not an excursion (state-based alarming)
        self.band_armed = np.zeros(len(rows), bool)
        self.band_armed_sp = np.full(len(rows), np.nan)

    def _build_features(self, config: Config) -> None:
        """One state per equipment feature for the devices whose profile has its table."""
        configured = {d.name: d for d in config.devices}
        for table, feature in FEATURES.items():
            members = []
            for info in self.devices.values():
                spec = getattr(info.profile, table, None)
                if spec is not None:
                    ctx = DeviceContext(info.name, configured[info.name], info.rows, info.nominal_cycle_s)
                    members.append((info, spec, ctx))
            if not members:
                continue
            state = feature.build([(spec, ctx) for _, spec, ctx in members])
            for slot, (info, _, _) in enumerate(members):
                info.features.append((feature, state, slot))
        # device-level alarms: one channel per (device, condition)
        k = len(_CONDITIONS)
        delay = np.repeat([int(d.profile.alarm_delay_s * 1e9) for d in self.devices.values()], k)
        self.device_alarms = AlarmTracker(len(self.devices) * k, delay, delay)

    # ------------------------------------------------------------------ run time
    def rows_of(self, device: str) -> Mapping[str, int]:
        """The signal rows of a device, by signal name."""
        return self.devices[device].rows

    def process(self, device: str, readings: Readings, now_ns: int) -> Output:
        """Feed one batch of one device through every indicator; return what to publish."""
        return self.process_many([(device, readings)], now_ns)[0]

    def process_many(self, batches: Sequence[tuple[str, Readings]], now_ns: int) -> list[Output]:
        """Feed the batches of several devices through every indicator, one output per batch, in order.

        The engines update once for all of them: at 100 devices of 100 tags each, one update per
        device costs more in per-call overhead than in arithmetic.
        """
        staged = [self._stage(self.devices[device], readings) for device, readings in batches]
        raw_spc = Readings.concat([s.raw_spc for s in staged])
        spec_events = self._spec(raw_spc)
        spc_events = AlarmEvents.empty()
        spc_in = self.whitener.transform(raw_spc)
        to_raw = self.raw_row[raw_spc.signal] >= 0
        if to_raw.any():
            r = raw_spc.take(to_raw)
            self.raw_stats.update(
                Readings(self.raw_row[r.signal].astype(np.int32), r.t_ns, r.value, r.quality)
            )
        if len(spc_in):
            update = self.spc.update(spc_in)
            self._dirty[spc_in.signal] = True
            ev = update.events
            if len(ev):
                spc_events = _take(ev, self.alarm_allowed[ev.row, ev.kind])
            beyond = self._beyond_limits(spc_in, update.hits)
            if len(beyond):
                spc_events = AlarmEvents.concat([spc_events, beyond])
        if len(staged) == 1:
            return [self._finish(staged[0], spc_events, spec_events, now_ns)]
        # each device's events go with its first batch here (two scan classes of one device can
        # both be in), so no event is published twice
        spc_dev = self.row_device[spc_events.row]
        spec_dev = self.row_device[spec_events.row]
        none = AlarmEvents.empty()
        outs, seen = [], set()
        for st in staged:
            mine = st.info.index
            first = mine not in seen
            seen.add(mine)
            spc_d = _take(spc_events, spc_dev == mine) if first and len(spc_events) else none
            spec_d = _take(spec_events, spec_dev == mine) if first and len(spec_events) else none
            outs.append(self._finish(st, spc_d, spec_d, now_ns))
        return outs

    def _stage(self, info: DeviceInfo, readings: Readings) -> _Staged:
        """Last values, the cycle latch, and what the device sends on to SPC."""
        sig = readings.signal.astype(np.int64)
        # a row's last reading in the batch decides its last value: a bad one (disconnected, failed
        # sensor) makes it unknown, so device-level indicators stop using the value from before
        last = last_occurrences(sig)
        rows_now = sig[last]
        self.last_value[rows_now] = np.where(readings.good[last], readings.value[last], np.nan)
        self.last_t[sig] = readings.t_ns
        # SPC: continuous and event-fed signals directly, polled per-cycle signals through the latch
        direct = readings.take(self.spc_row[sig] & ~self.polled_per_cycle_row[sig])
        latched = Readings.empty()
        cycle_moved = False
        if self.latch is not None and (self.counter_row[sig].any() or self.latched_row[sig].any()):
            batch = self.latch.update(readings)
            latched = batch.readings
            cycle_moved = bool((batch.events.cycles > 0).any())
            if len(latched):
                # a cycle's latched value does not bring back a row whose newest reading is bad
                keep = ~np.isin(latched.signal, rows_now[~readings.good[last]])
                self.last_value[latched.signal[keep]] = latched.value[keep]
        return _Staged(info, readings, Readings.concat([direct, latched]), cycle_moved)

    def _finish(self, st: _Staged, spc_events: AlarmEvents, spec_events: AlarmEvents, now_ns: int) -> Output:
        """Band, device-level indicators, alarm records and KPIs of one device, after the engines ran."""
        info, readings = st.info, st.readings
        out = Output()
        if len(readings):
            out.raw.append((info.source, readings))
        t_batch = int(readings.t_ns.max()) if len(readings) else now_ns
        band_events = self._band(info, t_batch)
        device_events = self._device_indicators(info, readings, now_ns, out)
        self._alarm_records(info, spc_events, band_events, device_events, spec_events, out)
        if st.cycle_moved or now_ns >= info.kpi_due_ns:
            self._kpi(info, now_ns, out)
            info.kpi_due_ns = now_ns + int(info.profile.kpi_interval_s * 1e9)
        return out

    def _beyond_limits(self, r: Readings, hits: RuleHits) -> AlarmEvents:
        """I-chart alarms (a point beyond CL ± 3σ, as the engine judged it) of the signals with `imr` but not `rules`."""
        sig = r.signal.astype(np.int64)
        use = self.limits_only_row[sig] & r.good
        if not use.any():
            return AlarmEvents.empty()
        rows, t, x = sig[use], r.t_ns[use], r.value[use]
        hit = ((hits.mask & _BEYOND_3SIGMA) != 0) & self.limits_only_row[hits.row]
        raised = np.zeros(rows.shape, bool)
        if hit.any():
            # the engine reports hits per sample without their position in the batch: a sample is
            # known by its row, time and value
            mine = _sample_keys(rows, t, x)
            raised = np.isin(mine, _sample_keys(hits.row[hit], hits.t_ns[hit], hits.value[hit]))
        ev = self.limit_alarms.update(rows, t, raised, None, x)
        if not len(ev):
            return ev
        snap = self.spc.snapshot(ev.row)  # O(window) per row, for the rare transitions only
        cl, sigma = snap["cl"], snap["sigma"]
        limit = cl + np.copysign(3.0 * sigma, ev.value - cl)
        mask = np.where(ev.start, _BEYOND_3SIGMA, 0).astype(np.uint32)
        kind = np.full(len(ev), _RULES_KIND, np.int16)
        return AlarmEvents(ev.row, kind, ev.t_ns, ev.start, ev.value, limit, mask)

    def _spec(self, r: Readings) -> AlarmEvents:
        """Specification limits on the raw values (one per cycle for per-cycle signals)."""
        sig = r.signal.astype(np.int64)
        use = self.spec_row[sig] & r.good
        if not use.any():
            return AlarmEvents.empty()
        rows, value = sig[use], r.value[use]
        lo, hi = self.spec_lsl[rows], self.spec_usl[rows]
        raised, cleared = band_conditions(value, lo, hi)
        limit = np.where(value > hi, hi, lo)
        return self.spec_alarms.update(rows, r.t_ns[use], raised, cleared, value, limit)

    def _band(self, info: DeviceInfo, t_ns: int) -> AlarmEvents:
        # judged on the last values at every batch of the device, not only when a banded signal
        # arrives: a subscribed zone that drops and then holds still sends nothing more, and its
        # persistence delay must still run out
        ch = info.band_channels
        if ch.size == 0:
            return AlarmEvents.empty()
        rows = self.band_rows[ch]
        value = self.last_value[rows]
        sp = self.last_value[self.band_setpoint[ch]]
        known = np.isfinite(value) & np.isfinite(sp)
        if not known.any():
            return AlarmEvents.empty()
        ch, rows, value, sp = ch[known], rows[known], value[known], sp[known]
        width = self.band_width[ch]
        # a setpoint step of more than a tenth of the band (not the jitter of a float) disarms
        moved = ~(np.abs(sp - self.band_armed_sp[ch]) <= 0.1 * width)
        self.band_armed[ch[moved]] = False
        self.band_armed_sp[ch[moved]] = sp[moved]
        self.band_armed[ch] |= np.abs(value - sp) <= width
        raised, cleared = band_conditions(value, sp - width, sp + width, deadband=0.1 * width)
        raised &= self.band_armed[ch]
        limit = np.where(value >= sp, sp + width, sp - width)
        ev = self.band_alarms.update(ch, t_ns, raised, cleared, value, limit)
        return AlarmEvents(self.band_rows[ev.row], ev.kind, ev.t_ns, ev.start, ev.value, ev.limit, ev.mask)

    def _device_indicators(
        self, info: DeviceInfo, readings: Readings, now_ns: int, out: Output
    ) -> AlarmEvents:
        t = int(readings.t_ns.max()) if len(readings) else now_ns
        values: dict[str, dict[str, float]] = {}
        conditions = {}
        if info.features:
            batch = DeviceBatch(t, self.last_value, readings)
            for feature, state, slot in info.features:
                result = feature.update(state, slot, batch)
                values.update(result.fields)
                conditions.update(result.conditions)
        if self.latch is not None and info in self.cycle_devices:
            di = self.cycle_devices.index(info)
            values[CYCLE_SIGNAL] = {"stopped": float(self.latch.stopped(t)[di])}
        for pseudo, fields in values.items():
            row = np.array([info.rows[pseudo]], np.int32)
            out.kpi.append(
                (
                    info.source,
                    IndicatorBatch(
                        info.stamp(pseudo, t),
                        row,
                        {k: np.array([v]) for k, v in fields.items()},
                        family=_FAMILY[pseudo],
                    ),
                )
            )
        if not conditions:
            return AlarmEvents.empty()
        # an unknown condition neither raises nor clears
        index = np.array([_CONDITION_INDEX[c] for c in conditions], np.int64)
        judged = np.array([c.known for c in conditions.values()])
        raised = np.array([c.raised for c in conditions.values()]) & judged
        cleared = ~raised & judged
        ev = self.device_alarms.update(
            info.index * len(_CONDITIONS) + index,
            t,
            raised,
            cleared,
            [c.value for c in conditions.values()],
            [c.limit for c in conditions.values()],
        )
        kind = ev.row % len(_CONDITIONS)
        rows = np.array([info.rows[_CONDITIONS[k].signal] for k in kind], np.int64)
        return AlarmEvents(
            rows, (_DEVICE_KIND + kind).astype(np.int16), ev.t_ns, ev.start, ev.value, ev.limit, ev.mask
        )

    def _alarm_records(
        self,
        info: DeviceInfo,
        spc: AlarmEvents,
        band: AlarmEvents,
        device: AlarmEvents,
        spec: AlarmEvents,
        out: Output,
    ) -> None:
        for ev, origin in ((spc, "spc"), (band, "band"), (device, "device"), (spec, "spec")):
            for i in range(len(ev)):
                # alarms are rare (start and clear only), so one object per event is cheap
                kind = int(ev.kind[i])
                severity = "alarm" if origin == "spec" else "warning"
                if origin == "spc":
                    rule = ALARM_KIND_NAMES[kind]
                    detail = rule_names(int(ev.mask[i]))
                    message = f"{rule} alarm ({detail})" if ev.start[i] else f"{rule} alarm cleared"
                elif origin == "band":
                    rule, message = "band", "outside the band around the setpoint"
                elif origin == "spec":
                    below = ev.value[i] < ev.limit[i]
                    rule, message = "spec", "below the LSL" if below else "above the USL"
                else:
                    cond = _CONDITIONS[kind - _DEVICE_KIND]
                    rule, severity = cond.rule, cond.severity
                    message = cond.message.format(value=float(ev.value[i]), limit=float(ev.limit[i]))
                out.alarms.append(
                    (
                        info.source,
                        AlarmEvent(
                            int(ev.t_ns[i]),
                            int(ev.row[i]),
                            rule,
                            "start" if ev.start[i] else "clear",
                            float(ev.value[i]),
                            float(ev.limit[i]),
                            severity=severity,
                            message=message if ev.start[i] else f"{rule} cleared",
                        ),
                    )
                )

    def _kpi(self, info: DeviceInfo, now_ns: int, out: Output) -> None:
        rows = info.row_array[self._dirty[info.row_array]]
        if rows.size == 0:
            return
        self._dirty[rows] = False
        snap = self.spc.snapshot(rows)
        raw = self.raw_row[rows]
        if (raw >= 0).any():
            mine = raw >= 0
            from_raw = self.raw_stats.snapshot(raw[mine])
            for key in _RAW_STAT_KEYS:
                snap[key][mine] = from_raw[key]
        snap["x"] = self.last_value[rows]
        t = int(self.last_t[rows].max())
        out.kpi.append(
            (
                info.source,
                IndicatorBatch(
                    info.stamp("spc", t if t > 0 else now_ns),
                    rows.astype(np.int32),
                    {k: np.asarray(snap[k], np.float64) for k in SPC_FIELDS},
                    family="spc",
                ),
            )
        )

    def rebaseline(self, device: str) -> None:
        """Re-estimate the control limits of a device's signals from the next samples (phase I again)."""
        info = self.devices[device]
        rows = info.row_array[self.spc_row[info.row_array]]
        if rows.size:
            self.spc.rebaseline(rows)
            self.whitener.reset(rows)
            raw = self.raw_row[rows]
            self.raw_stats.rebaseline(raw[raw >= 0])


def pseudo_family(pseudo: str) -> str:
    """The InfluxDB measurement (indicator family) of a device-level pseudo-signal."""
    return _FAMILY.get(pseudo, pseudo)


def _matches(signal: object, want: str) -> bool:
    indicators = set(getattr(signal, "indicators", []))
    return bool(indicators & _SPC_INDICATORS) if want == "spc" else want in indicators


def _unit(device: DeviceBase, name: str) -> str:
    return device.units().get(name, "")


def _sample_keys(
    row: NDArray[np.integer], t_ns: NDArray[np.int64], value: NDArray[np.float64]
) -> NDArray[np.void]:
    """One comparable key per sample: its row, time and value bits."""
    cols = [row.astype(np.int64), t_ns.astype(np.int64), value.astype(np.float64).view(np.int64)]
    return np.ascontiguousarray(np.column_stack(cols)).view(np.dtype((np.void, 24))).ravel()


def _take(ev: AlarmEvents, keep: NDArray[np.bool_]) -> AlarmEvents:
    return AlarmEvents(
        ev.row[keep],
        ev.kind[keep],
        ev.t_ns[keep],
        ev.start[keep],
        ev.value[keep],
        ev.limit[keep],
        ev.mask[keep],
    )
