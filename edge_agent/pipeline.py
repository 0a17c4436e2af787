"""Binds equipment profiles to the indicator core: Readings in, raw values, indicators and alarm events out.

The pipeline owns the signal table and one instance of each engine for all devices,
so a poll costs a handful of array operations whatever the number of signals. The
only Python loops are per device (furnaces, TCUs, KPI timers), never per value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.config import Config
from edge_agent.config_model import DeviceBase
from edge_agent.core._batch import last_occurrences
from edge_agent.core.alarms import AlarmEvents, AlarmTracker, band_conditions
from edge_agent.core.autocorr import Prewhitener
from edge_agent.core.cycles import CycleLatch
from edge_agent.core.furnace import FurnaceMonitor, ams2750_tolerance
from edge_agent.core.mold import MoldMaintenance, heat_removed_kw
from edge_agent.core.oee import OeeAccumulator
from edge_agent.core.spc import ALARM_KIND_NAMES, Rule, RuleHits, SpcEngine, SpcParams
from edge_agent.profiles import Profile, find_profile
from edge_agent.records import AlarmEvent, IndicatorBatch, Output, Source
from edge_agent.schema import MAINTENANCE_FIELDS, OEE_FIELDS, SPC_FIELDS
from edge_agent.types import Readings, SignalTable

log = logging.getLogger(__name__)

# Which profile indicators allow each SPC alarm kind (ALARM_KIND_NAMES: rules, chart, ewma, cusum, spec).
_KIND_NEEDS = {
    "rules": {"rules"},
    "chart": {"imr", "xbar_r", "xbar_s"},
    "ewma": {"ewma"},
    "cusum": {"cusum"},
}
#: A furnace sensor further than this from its furnace's median reads implausibly (burnout, short).
MAX_SENSOR_DEVIATION_C = 200.0
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
    ideal_cycle_s: float = 0.0
    """Ideal cycle time per part for OEE (device override, else the profile's)."""
    kpi_due_ns: int = 0
    furnace: FurnaceMonitor | None = None
    furnace_rows: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    row_array: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """The device's rows (signals and pseudo-signals) as an array, for masks without a loop."""
    band_channels: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """The device's channels of the band-alarm tracker."""
    event_signals: set[str] = field(default_factory=set)
    """Per-cycle signals that arrive as events (one per cycle): fed directly, not latched on the counter."""
    last_state: dict[str, float] = field(default_factory=dict)
    """Last value of the state signals whose edges matter (door, quench)."""
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
            # device-level indicators (OEE, furnace, mould) hang on pseudo-signals of their own
            for pseudo in ("cycle", "oee", "uniformity", "heat_removal", "maintenance"):
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
                ideal_cycle_s=dev.ideal_cycle_s or (profile.oee.ideal_cycle_s if profile.oee else 0.0),
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
        self._build_device_indicators(n)

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

    def _build_device_indicators(self, n: int) -> None:
        oee_devices = [d for d in self.devices.values() if d.profile.oee is not None]
        self.oee_devices = oee_devices
        self.oee_index = {d.name: i for i, d in enumerate(oee_devices)}
        self.oee = (
            OeeAccumulator(
                len(oee_devices),
                [d.ideal_cycle_s for d in oee_devices],
                stop_gap_s=[2 * d.nominal_cycle_s if d.nominal_cycle_s else np.inf for d in oee_devices],
            )
            if oee_devices
            else None
        )
        mold_devices = [d for d in self.devices.values() if d.profile.mold is not None]
        self.mold_devices = mold_devices
        self.mold_index = {d.name: i for i, d in enumerate(mold_devices)}
        self.maintenance = (
            MoldMaintenance(
                len(mold_devices),
                [d.profile.mold.maintenance_interval for d in mold_devices if d.profile.mold],
            )
            if mold_devices
            else None
        )
        # device-level alarms: one channel per (device, condition)
        self.device_conditions = ["overshoot", "uniformity", "tc_invalid", "heat_removal"]
        self.device_alarms = AlarmTracker(
            len(self.devices) * len(self.device_conditions),
            np.repeat([int(d.profile.alarm_delay_s * 1e9) for d in self.devices.values()], 4),
            np.repeat([int(d.profile.alarm_delay_s * 1e9) for d in self.devices.values()], 4),
        )
        for info in self.devices.values():
            spec = info.profile.furnace
            if spec is None:
                continue
            # the furnace is monitored on the sensors it has: a furnace with one thermocouple fewer
            # than its profile still needs its soak timed and its overshoot seen
            sensors = [s for s in spec.sensors if s in info.rows]
            missing = [s for s in spec.sensors if s not in info.rows]
            if not sensors or spec.setpoint not in info.rows:
                need = [s for s in [spec.setpoint] if s not in info.rows] + (missing if not sensors else [])
                log.warning(
                    "%s: no furnace monitoring: it needs the setpoint and at least one sensor; not configured: %s",
                    info.name,
                    ", ".join(need),
                )
                continue
            if missing:
                log.warning(
                    "%s: furnace monitoring on %d of the profile's %d sensors; not configured: %s",
                    info.name,
                    len(sensors),
                    len(spec.sensors),
                    ", ".join(missing),
                )
            info.furnace = FurnaceMonitor(
                np.zeros(len(sensors), np.int64),
                ams2750_tolerance(spec.furnace_class),
                soak_policy=spec.soak_policy,
                # a burnt-out thermocouple reads upscale or ambient, hundreds of degrees off; a zone whose
                # heater fails drifts tens of degrees: that is a uniformity problem, not an invalid sensor
                max_dev_c=MAX_SENSOR_DEVIATION_C,
            )
            info.furnace_rows = np.array([info.rows[s] for s in sensors], np.int64)

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
        # condition -> (raised, value, limit, known); an unknown condition neither raises nor clears
        conditions: dict[str, tuple[bool, float, float, bool]] = {}
        lv = self.last_value
        if self.oee is not None and info.name in self.oee_index and info.profile.oee:
            spec = info.profile.oee
            m = self.oee_index[info.name]
            producing, known = _producing(info, spec.state, spec.producing_states, lv)
            if spec.production_status is not None:
                # DOMAIN.md §5: an IMM produces in AUTOMATIC *and* PRODUCTION; either one known to be
                # off is enough to know it is not producing
                status, status_known = _producing(info, spec.production_status, spec.producing_statuses, lv)
                known = (known and status_known) or (known and not producing) or (status_known and not status)
                producing = producing and status
            parts = lv[info.rows[spec.parts_counter]] if spec.parts_counter in info.rows else np.nan
            good = lv[info.rows[spec.good_counter]] if spec.good_counter in info.rows else np.nan
            # an unknown state (not configured, not read yet, disconnected) is no data, not "stopped":
            # the accumulator leaves such time out of the availability denominator
            self.oee.update([m], [t], [float(producing) if known else np.nan], [parts], [good])
            res = self.oee.result(t, [m])
            if not np.isfinite(res["pot_s"][0]) or res["pot_s"][0] >= spec.period_s:
                self.oee.roll_period([m], t)  # at the machine's next cycle boundary
            values["oee"] = self._oee_values(m, res)
        if info.furnace is not None and info.profile.furnace:
            spec_f = info.profile.furnace
            temps = lv[info.furnace_rows]
            sp = lv[info.rows[spec_f.setpoint]]
            st = info.furnace.update(t, temps, [sp])
            tol = float(info.furnace.tol[0])
            values["uniformity"] = {
                "spread": float(st.spread[0]),
                "all_in_band": float(st.all_in_band[0]),
                "soak_s": float(st.soak_s[0]),
                "ramp_c_per_min": float(st.ramp_c_per_min[0]),
                "overshoot_c": float(st.overshoot_c[0]),
                "time_to_temp_s": float(st.time_to_temp_s[0]),
                "tolerance_c": tol,
                "valid_sensors": float(st.valid.sum()),
            }
            with np.errstate(all="ignore"):
                # "at temperature": the furnace's median sensor is in band, whatever one zone does
                at_temp = bool(np.abs(np.nanmedian(st.deviation)) <= tol) if st.valid.any() else False
            # with no valid sensor at all (a disconnected furnace) nothing is known about it: its alarms
            # hold; the bad raw values say why
            known = bool(st.valid.any())
            conditions["overshoot"] = (bool(st.overshoot_c[0] > tol), float(st.overshoot_c[0]), tol, known)
            # once the furnace reached temperature, any sensor leaving the band interrupts the soak
            # (a failed zone heater, a burnt-out thermocouple); the spread tells how far apart they are
            conditions["uniformity"] = (
                at_temp and not bool(st.all_in_band[0]),
                float(st.spread[0]),
                tol,
                known,
            )
            n_invalid = float((~st.valid).sum())
            conditions["tc_invalid"] = (n_invalid > 0, n_invalid, 0.0, known)
            self._quench(info, readings, values)
        if info.profile.mold is not None and self.maintenance is not None:
            spec_m = info.profile.mold
            flow = lv[info.rows.get(spec_m.flow, -1)] if spec_m.flow in info.rows else np.nan
            supply = lv[info.rows[spec_m.supply]] if spec_m.supply in info.rows else np.nan
            ret = lv[info.rows[spec_m.return_]] if spec_m.return_ in info.rows else np.nan
            kw, dt = heat_removed_kw(flow, supply, ret)
            values["heat_removal"] = {"heat_kw": float(kw), "delta_t": float(dt), "flow": float(flow)}
            conditions["heat_removal"] = (
                bool(dt > spec_m.max_delta_t),
                float(dt),
                spec_m.max_delta_t,
                bool(np.isfinite(dt)),
            )
            if spec_m.shot_counter and spec_m.shot_counter in info.rows:
                mi = self.mold_index[info.name]
                ms = self.maintenance.update([mi], [lv[info.rows[spec_m.shot_counter]]])
                values["maintenance"] = {k: float(ms[k][0]) for k in MAINTENANCE_FIELDS}
        if self.latch is not None and info in self.cycle_devices:
            di = self.cycle_devices.index(info)
            values["cycle"] = {"stopped": float(self.latch.stopped(t)[di])}
        for pseudo, fields in values.items():
            row = np.array([info.rows[pseudo]], np.int32)
            out.kpi.append(
                (
                    info.source,
                    IndicatorBatch(
                        info.stamp(pseudo, t),
                        row,
                        {k: np.array([v]) for k, v in fields.items()},
                        family=pseudo_family(pseudo),
                    ),
                )
            )
        if not conditions:
            return AlarmEvents.empty()
        names = list(conditions)
        ch = np.array(
            [info.index * len(self.device_conditions) + self.device_conditions.index(c) for c in names],
            np.int64,
        )
        judged = np.array([conditions[c][3] for c in names])
        raised = np.array([conditions[c][0] for c in names]) & judged
        cleared = ~raised & judged
        ev = self.device_alarms.update(
            ch, t, raised, cleared, [conditions[c][1] for c in names], [conditions[c][2] for c in names]
        )
        kind = ev.row % len(self.device_conditions)
        pseudo_row = info.rows["uniformity" if info.furnace is not None else "heat_removal"]
        return AlarmEvents(
            np.full(len(ev), pseudo_row, np.int64),
            (100 + kind).astype(np.int16),
            ev.t_ns,
            ev.start,
            ev.value,
            ev.limit,
            ev.mask,
        )

    def _oee_values(self, m: int, res: Mapping[str, NDArray[np.float64]]) -> dict[str, float]:
        """The published OEE fields of machine m: NaN (no data, not 0) for what its inputs cannot tell."""
        assert self.oee is not None
        v = {k: float(res[k][0]) for k in OEE_FIELDS}
        if not res["pbt_s"][0] > 0:
            v["apt_s"] = np.nan  # the state was never known in this period
        if np.isnan(self.oee.last_parts[m]):
            v.update(performance=np.nan, quality=np.nan, oee=np.nan, pq=np.nan)
        if np.isnan(self.oee.last_good[m]):
            v.update(quality=np.nan, oee=np.nan, gq=np.nan)
        return v

    def _quench(self, info: DeviceInfo, readings: Readings, values: dict[str, dict[str, float]]) -> None:
        assert info.furnace is not None
        for name, action in (("door_open", "door"), ("quench_active", "quench")):
            row = info.rows.get(name)
            if row is None:
                continue
            hit = (readings.signal == row) & readings.good
            if not hit.any():
                continue
            value = float(readings.value[hit][-1])
            t = int(readings.t_ns[hit][-1])
            prev = info.last_state.get(name, 0.0)
            info.last_state[name] = value
            if value >= 0.5 > prev:
                if action == "door":
                    info.furnace.door_open([0], t)
                else:
                    delay = float(info.furnace.quench([0], t)[0])
                    values["uniformity"]["quench_delay_s"] = delay

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
                    rule = self.device_conditions[kind - 100]
                    message = {
                        "overshoot": "temperature overshoot above the furnace class tolerance",
                        "uniformity": "a sensor is outside the class tolerance band while the furnace is at temperature",
                        "tc_invalid": "a thermocouple reads implausibly (burnout or short)",
                        "heat_removal": "return-supply temperature difference too high (flow loss?)",
                    }[rule]
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
                            severity="alarm" if rule in ("spec", "tc_invalid", "overshoot") else "warning",
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
    """The InfluxDB measurement (indicator family) of a device-level indicator."""
    # not "furnace": that is the measurement of the furnaces' raw values (an equipment kind)
    return {"uniformity": "furnace_uniformity", "heat_removal": "mold", "maintenance": "mold"}.get(
        pseudo, pseudo
    )


def _matches(signal: object, want: str) -> bool:
    indicators = set(getattr(signal, "indicators", []))
    return bool(indicators & _SPC_INDICATORS) if want == "spc" else want in indicators


def _producing(
    info: DeviceInfo, signal: str, values: list[int], lv: NDArray[np.float64]
) -> tuple[bool, bool]:
    """Whether a device's state signal is in `values`, and whether it is known (configured and read good)."""
    state = lv[info.rows[signal]] if signal in info.rows else np.nan
    return bool(np.isin(state, values)), bool(np.isfinite(state))


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
