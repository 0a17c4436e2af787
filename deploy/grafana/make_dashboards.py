"""Write the Grafana dashboards of the compose stack (one per equipment kind and an overview) from the profiles.

Run from the repository root after changing a profile or this script, and commit the output with it:
    .venv/bin/python deploy/grafana/make_dashboards.py          # writes deploy/grafana/dashboards/*.json
    .venv/bin/python deploy/grafana/make_dashboards.py --check  # exit 1 if the committed JSON is stale

One dashboard per profile in config/profiles (titled with the first clause of the profile's description);
its sections are those of the equipment features the profile configures, in the order of
edge_agent/features/registry.py. A feature has a tailored section in SECTIONS (and a panel in the
overview in OVERVIEW) or, without one, a generic section: one time series of every field of each
of its pseudo-signals. Measurement and field names are written out literally in the Flux text,
and tests/test_deploy.py checks them against edge_agent/schema.py, so a renamed field fails a test
instead of leaving an empty panel.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from edge_agent.core.constants import AMS2750_TOLERANCE_C  # noqa: E402
from edge_agent.features.base import Feature  # noqa: E402
from edge_agent.features.registry import FEATURES  # noqa: E402
from edge_agent.profiles import Profile, ProfileSignal, load_profile  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
PROFILES_DIR = ROOT / "config" / "profiles"

#: uid of the datasource in provisioning/datasources/influxdb.yml
DATASOURCE = {"type": "influxdb", "uid": "influxdb-edge"}
#: the bucket the agent writes (deploy/agent.toml [sinks.influx]); a hidden constant variable, so one edit moves every query
BUCKET = "process"
#: One dashboard per built-in profile.
KINDS = tuple(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
SCHEMA_VERSION = 39

# Grafana unit ids of the profiles' units; anything else is shown with its own text as a suffix
UNITS = {
    "°C": "celsius",
    "bar": "pressurebar",
    "ms": "ms",
    "s": "s",
    "mm": "lengthmm",
    "m/s": "velocityms",
    "L/min": "flowlpm",
    "kW": "kwatt",
}
GROUP_TITLES = {"°C": "Temperatures", "%C": "Carbon potential", "L/min": "Flow"}

RED, YELLOW, GREEN, BLUE = "red", "yellow", "green", "blue"


def unit_id(unit: str) -> str:
    """The Grafana unit of a profile unit."""
    return UNITS.get(unit, f"suffix: {unit}" if unit else "none")


# --------------------------------------------------------------------------- Flux


def _or(column: str, values: Sequence[str]) -> str:
    return " or ".join(f'r.{column} == "{v}"' for v in values)


def flux(
    measurement: str,
    fields: Sequence[str],
    *,
    signals: Sequence[str] = (),
    machine: bool = True,
    start: str = "v.timeRangeStart",
    tail: Iterable[str] = (),
) -> str:
    """A Flux query of one measurement's fields, for the selected site (and machine), then `tail` steps."""
    where = 'r.site == "${site}" and r.machine == "${machine}"' if machine else 'r.site == "${site}"'
    lines = [
        'from(bucket: "${bucket}")',
        f"  |> range(start: {start}, stop: v.timeRangeStop)",
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")',
        f"  |> filter(fn: (r) => {where})",
    ]
    if len(signals) == 1:
        lines.append(f'  |> filter(fn: (r) => r.signal == "{signals[0]}")')
    elif signals:
        quoted = ", ".join(f'"{s}"' for s in signals)
        lines.append(f"  |> filter(fn: (r) => contains(value: r.signal, set: [{quoted}]))")
    lines.append(f"  |> filter(fn: (r) => {_or('_field', fields)})")
    lines += [f"  |> {step}" for step in tail]
    return "\n".join(lines)


# one series per signal (or field); Grafana names a series after its `_field` and labels it with the tags kept
def _per(column: str, fn: str = "mean") -> list[str]:
    return [
        f"aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)",
        f'keep(columns: ["_time", "_value", "{column}"])',
    ]


# one table of (column, last value) rows: a stat or bar gauge shows each row, titled by `column`
def _last_per(column: str) -> list[str]:
    return ["last()", f'keep(columns: ["{column}", "_value"])', "group()", f'sort(columns: ["{column}"])']


def tag_values(tag: str, predicate: str) -> str:
    """A template-variable query: the values of one tag among the series that match `predicate`."""
    return (
        'import "influxdata/influxdb/schema"\n'
        f'schema.tagValues(bucket: "${{bucket}}", tag: "{tag}", predicate: (r) => {predicate}, start: -30d)'
    )


# --------------------------------------------------------------------------- panels


class Layout:
    """Places panels left to right on Grafana's 24-column grid and hands out panel ids."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> dict[str, Any]:
        """Put a panel on the grid at the next free place of the current band."""
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"id": self._id(), "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}, **panel}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)
        return panel

    def row(self, title: str, collapsed: list[dict[str, Any]] | None = None) -> None:
        """Start a row; a collapsed row holds its panels inside (laid out below it when opened)."""
        self.y += self.row_h
        self.x, self.row_h = 0, 0
        row: dict[str, Any] = {
            "id": self._id(),
            "type": "row",
            "title": title,
            "collapsed": collapsed is not None,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        }
        self.panels.append(row)
        self.y += 1
        if collapsed is not None:
            inner = Layout()
            inner.next_id, inner.y = self.next_id, self.y
            for panel, w, h in collapsed:
                inner.add(panel, w, h)
            self.next_id = inner.next_id
            row["panels"] = inner.panels


def _target(query: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "query": query}


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def _override(name: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


def _color(color: str) -> dict[str, Any]:
    return {"mode": "fixed", "fixedColor": color}


DASHED = {"fill": "dash", "dash": [10, 10]}


def timeseries(
    title: str,
    query: str,
    *,
    label: str | None = None,
    dashed_query: str | None = None,
    unit: str = "none",
    description: str = "",
    overrides: Sequence[dict[str, Any]] = (),
    points: bool = False,
    thresholds: dict[str, Any] | None = None,
    decimals: int | None = None,
) -> dict[str, Any]:
    """A time-series panel; `label` names series by that tag, `dashed_query` adds dashed series (setpoints)."""
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 0,
        "showPoints": "always" if points else "never",
        "pointSize": 4,
        "spanNulls": False,
    }
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if label is not None:
        defaults["displayName"] = f"${{__field.labels.{label}}}"
    targets = [_target(query)]
    overrides = list(overrides)
    if dashed_query is not None:
        targets.append(_target(dashed_query, "B"))
        match = {"matcher": {"id": "byFrameRefID", "options": "B"}}
        overrides.append({**match, "properties": [{"id": "custom.lineStyle", "value": DASHED}]})
    if thresholds is not None:
        defaults["thresholds"] = thresholds
        custom["thresholdsStyle"] = {"mode": "line+area" if len(thresholds["steps"]) > 1 else "off"}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def stat(
    title: str,
    query: str,
    *,
    unit: str = "none",
    description: str = "",
    thresholds: dict[str, Any] | None = None,
    mappings: Sequence[dict[str, Any]] = (),
    decimals: int | None = None,
    min_max: tuple[float, float] | None = None,
    kind: str = "stat",
    rows: bool = False,
) -> dict[str, Any]:
    """A stat, gauge or bar-gauge panel: the last value of each series, or with `rows` every row of a table."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": thresholds or _thresholds((BLUE, None)),
        "mappings": list(mappings),
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_max is not None:
        defaults["min"], defaults["max"] = min_max
    options: dict[str, Any] = {
        "reduceOptions": {"calcs": [] if rows else ["lastNotNull"], "fields": "", "values": rows},
        "orientation": "auto",
    }
    if kind == "stat":
        options.update(colorMode="value", graphMode="none", textMode="auto", justifyMode="auto")
    elif kind == "bargauge":
        options.update(displayMode="gradient", orientation="horizontal", showUnfilled=True)
    else:
        options.update(showThresholdMarkers=True, showThresholdLabels=False)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(query)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def table(
    title: str, query: str, *, description: str = "", overrides: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """A table panel."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(query)],
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": list(overrides)},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    }


def _value_map(mapping: dict[int, tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "value",
        "options": {
            str(k): {"text": text, "color": color, "index": i}
            for i, (k, (text, color)) in enumerate(mapping.items())
        },
    }


# --------------------------------------------------------------------------- dashboard sections

CPK_THRESHOLDS = _thresholds((RED, None), (YELLOW, 1.0), (GREEN, 1.33))


def live_values(lay: Layout, profile: Profile) -> None:
    """Raw `value` of the continuous signals grouped by unit, and the last counters and states."""
    lay.row("Live values")
    continuous = [s for s in profile.signals if s.sampling == "continuous"]
    by_unit: dict[str, list[ProfileSignal]] = {}
    for s in continuous:
        by_unit.setdefault(s.unit, []).append(s)
    setpoints = {s.setpoint for s in profile.signals if s.setpoint}
    # a feature's `setpoint` key (a furnace's temperature setpoint) is drawn as one too
    setpoints |= {
        name
        for feature, spec in profile.features()
        for where, name in feature.references(spec)
        if where.endswith(".setpoint")
    }
    for unit, signals in by_unit.items():
        measured = [s.name for s in signals if s.name not in setpoints]
        targets = [s.name for s in signals if s.name in setpoints]
        if not measured:  # a unit with setpoints only: plain lines
            measured, targets = targets, []
        q = flux(profile.measurement, ["value"], signals=measured, tail=_per("signal"))
        # setpoints in a query of their own, drawn dashed, so a zone and its setpoint read as a pair
        q_sp = flux(profile.measurement, ["value"], signals=targets, tail=_per("signal")) if targets else None
        title = GROUP_TITLES.get(unit, unit or "Values")
        panel = timeseries(
            title,
            q,
            label="signal",
            dashed_query=q_sp,
            unit=unit_id(unit),
            description="raw values; setpoints dashed",
        )
        lay.add(panel, 12, 8)
    discrete = [s.name for s in profile.signals if s.sampling in ("counter", "state")]
    if discrete:
        q = flux(profile.measurement, ["value"], signals=discrete, tail=_last_per("signal"))
        lay.add(
            stat("Counters and states", q, rows=True, description="last value of each", decimals=0), 12, 8
        )


def spc_charts(lay: Layout, profile: Profile) -> None:
    """Individuals chart (x with cl, ucl, lcl) per charted signal, Cpk and a capability table."""
    charted = [s for s in profile.signals if "imr" in s.indicators]
    if not charted:
        return
    lay.row("SPC: individuals charts (x, centre line, control limits)")
    for s in charted:
        q = flux("spc", ["x", "cl", "ucl", "lcl"], signals=[s.name], tail=_per("_field", "last"))
        limits = [_override(f, {"color": _color(RED), "custom.lineStyle": DASHED}) for f in ("ucl", "lcl")]
        limits.append(_override("cl", {"color": _color(GREEN)}))
        limits.append(_override("x", {"color": _color(BLUE), "custom.showPoints": "always"}))
        lay.add(
            timeseries(
                f"{s.name} ({s.unit})" if s.unit else s.name,
                q,
                unit=unit_id(s.unit),
                overrides=limits,
                description=f"per cycle value of {s.name} (pre-whitened limits from phase I)",
            ),
            12,
            8,
        )
    capable = [s.name for s in profile.signals if "capability" in s.indicators]
    if capable:
        q = flux("spc", ["cpk"], signals=capable, tail=_last_per("signal"))
        lay.add(
            stat(
                "Cpk",
                q,
                kind="bargauge",
                rows=True,
                thresholds=CPK_THRESHOLDS,
                decimals=2,
                min_max=(0.0, 2.5),
                description="process capability against the spec limits: red < 1.0, yellow < 1.33",
            ),
            12,
            8,
        )
        q = flux(
            "spc",
            ["cp", "cpk", "pp", "ppk", "n"],
            signals=capable,
            tail=[
                "last()",
                'keep(columns: ["signal", "_field", "_value"])',
                "group()",
                'pivot(rowKey: ["signal"], columnKey: ["_field"], valueColumn: "_value")',
            ],
        )
        lay.add(
            table("Capability", q, description="short-term (cp, cpk) and overall (pp, ppk) capability"), 12, 8
        )
    ewma = [s.name for s in charted if "ewma" in s.indicators]
    cusum = [s.name for s in charted if "cusum" in s.indicators]
    inner: list[tuple[dict[str, Any], int, int]] = []
    for name in ewma:
        q = flux("spc", ["ewma", "ewma_ucl", "ewma_lcl"], signals=[name], tail=_per("_field", "last"))
        lims = [
            _override(f, {"color": _color(RED), "custom.lineStyle": DASHED}) for f in ("ewma_ucl", "ewma_lcl")
        ]
        inner.append((timeseries(f"EWMA {name}", q, overrides=lims), 12, 7))
    for name in cusum:
        q = flux("spc", ["cusum_pos", "cusum_neg", "cusum_h"], signals=[name], tail=_per("_field", "last"))
        lims = [_override("cusum_h", {"color": _color(RED), "custom.lineStyle": DASHED})]
        inner.append((timeseries(f"CUSUM {name}", q, overrides=lims), 12, 7))
    if inner:
        lay.row("SPC: EWMA and CUSUM", collapsed=inner)


#: A dashboard section of one equipment feature: (layout, profile, the feature's table in the profile).
Section = Callable[[Layout, Profile, Any], None]


def oee(lay: Layout, profile: Profile, spec: Any) -> None:
    """OEE and its factors (signal `oee` of measurement `oee`), and whether the machine is stopped."""
    lay.row("OEE")
    factors = ("oee", "availability", "performance", "quality")
    pct = _thresholds((RED, None), (YELLOW, 0.6), (GREEN, 0.85))
    for f in factors:
        q = flux("oee", [f], signals=["oee"], tail=["last()", 'keep(columns: ["_value"])'])
        lay.add(
            stat(
                f.upper() if f == "oee" else f.capitalize(), q, unit="percentunit", thresholds=pct, decimals=1
            ),
            6,
            5,
        )
    q = flux("oee", list(factors), signals=["oee"], tail=_per("_field", "last"))
    lay.add(timeseries("OEE over time", q, unit="percentunit", description="current OEE period"), 16, 8)
    if profile.cycle is not None:
        q = flux("cycle", ["stopped"], signals=["cycle"], tail=["last()", 'keep(columns: ["_value"])'])
        state = _value_map({0: ("running", GREEN), 1: ("stopped", RED)})
        lay.add(stat("Cycle", q, mappings=[state], description="no cycle for two nominal cycle times"), 8, 8)


def furnace(lay: Layout, profile: Profile, spec: Any) -> None:
    """Zone temperatures vs setpoint, uniformity spread vs tolerance, soak timer, overshoot, ramp, quench."""
    lay.row("Furnace: temperature uniformity and soak")
    sensors = [*spec.sensors, "load_temp"] if profile.signal("load_temp") else list(spec.sensors)
    q = flux(profile.measurement, ["value"], signals=sensors, tail=_per("signal"))
    q_sp = flux(profile.measurement, ["value"], signals=[spec.setpoint], tail=_per("signal"))
    panel = timeseries("Zone temperatures vs setpoint", q, label="signal", dashed_query=q_sp, unit="celsius")
    lay.add(panel, 16, 9)
    q = flux(
        "furnace_uniformity", ["spread", "tolerance_c"], signals=["uniformity"], tail=_per("_field", "max")
    )
    tol = [_override("tolerance_c", {"color": _color(RED), "custom.lineStyle": DASHED})]
    lay.add(
        timeseries(
            "Uniformity spread",
            q,
            unit="celsius",
            overrides=tol,
            description="hottest minus coldest valid sensor, against the furnace class tolerance",
        ),
        8,
        9,
    )
    one = ["last()", 'keep(columns: ["_value"])']
    band = _value_map({0: ("out of band", RED), 1: ("all in band", GREEN)})
    lay.add(
        stat("Soak time", flux("furnace_uniformity", ["soak_s"], signals=["uniformity"], tail=one), unit="s"),
        4,
        5,
    )
    lay.add(
        stat(
            "Sensors in band",
            flux("furnace_uniformity", ["all_in_band"], signals=["uniformity"], tail=one),
            mappings=[band],
        ),
        4,
        5,
    )
    # the overshoot alarm limit: the class's uniformity tolerance (AMS 2750)
    over = _thresholds((GREEN, None), (RED, AMS2750_TOLERANCE_C[spec.furnace_class]))
    q = flux("furnace_uniformity", ["overshoot_c"], signals=["uniformity"], tail=one)
    lay.add(stat("Overshoot", q, unit="celsius", thresholds=over, decimals=1), 4, 5)
    q = flux("furnace_uniformity", ["time_to_temp_s"], signals=["uniformity"], tail=one)
    lay.add(stat("Time to temperature", q, unit="s"), 4, 5)
    q = flux("furnace_uniformity", ["valid_sensors"], signals=["uniformity"], tail=one)
    lay.add(
        stat("Valid thermocouples", q, thresholds=_thresholds((RED, None), (GREEN, len(spec.sensors)))), 4, 5
    )
    q = flux("furnace_uniformity", ["quench_delay_s"], signals=["uniformity"], tail=one)
    lay.add(stat("Quench delay", q, unit="s", description="door open to quench start of the last load"), 4, 5)
    q = flux(
        "furnace_uniformity",
        ["soak_s", "ramp_c_per_min", "overshoot_c"],
        signals=["uniformity"],
        tail=_per("_field", "last"),
    )
    lay.add(timeseries("Soak timer, ramp rate, overshoot", q, description="s, °C/min, °C"), 24, 8)


def mould(lay: Layout, profile: Profile, spec: Any) -> None:
    """Heat removed, supply-return ΔT and flow (signal heat_removal), and mould maintenance."""
    lay.row("Mould heat removal and maintenance")
    q = flux("mold", ["heat_kw"], signals=["heat_removal"], tail=_per("_field"))
    lay.add(timeseries("Heat removed", q, unit="kwatt"), 8, 8)
    dt = _thresholds((GREEN, None), (RED, spec.max_delta_t))
    q = flux("mold", ["delta_t"], signals=["heat_removal"], tail=_per("_field"))
    lay.add(
        timeseries(
            "Return - supply ΔT", q, unit="celsius", thresholds=dt, description="alarm above the red line"
        ),
        8,
        8,
    )
    q = flux("mold", ["flow"], signals=["heat_removal"], tail=_per("_field"))
    lay.add(timeseries("Flow", q, unit="flowlpm"), 8, 8)
    one = ["last()", 'keep(columns: ["_value"])']
    q = flux("mold", ["pct_used"], signals=["maintenance"], tail=one)
    used = _thresholds((GREEN, None), (YELLOW, 90.0), (RED, 100.0))
    lay.add(
        stat(
            "Maintenance interval used",
            q,
            kind="gauge",
            unit="percent",
            thresholds=used,
            min_max=(0.0, 100.0),
        ),
        8,
        6,
    )
    q = flux("mold", ["shots_to_next"], signals=["maintenance"], tail=one)
    lay.add(stat("Shots to next maintenance", q, decimals=0), 8, 6)
    status = _value_map(
        {-1: ("no counter", "gray"), 0: ("not due", GREEN), 1: ("warning", YELLOW), 2: ("due", RED)}
    )
    q = flux("mold", ["status"], signals=["maintenance"], tail=one)
    lay.add(stat("Maintenance status", q, mappings=[status]), 8, 6)


def generic_section(feature: Feature[Any, Any]) -> Section:
    """The section of a feature without a tailored one: every field of each of its pseudo-signals over time."""

    def section(lay: Layout, profile: Profile, spec: Any) -> None:
        lay.row(feature.about.rstrip("."))
        for p in feature.publishes:
            q = flux(p.family, list(p.fields), signals=[p.signal], tail=_per("_field", "last"))
            lay.add(timeseries(f"{p.about} ({p.signal})", q, description=", ".join(p.fields)), 12, 8)

    return section


#: Tailored sections by feature (its profile table); a registered feature without one gets generic_section.
SECTIONS: dict[str, Section] = {"oee": oee, "furnace": furnace, "mold": mould}


def features(lay: Layout, profile: Profile) -> None:
    """The sections of the equipment features the profile configures, in registry order."""
    for feature, spec in profile.features():
        SECTIONS.get(feature.table, generic_section(feature))(lay, profile, spec)


ALARM_COLUMNS = '["_time", "machine", "signal", "rule", "active", "severity", "value", "limit", "message"]'


def alarms(lay: Layout, machine: bool = True) -> None:
    """Active alarm count and the alarm start/clear events of the selection."""
    lay.row("Alarms")
    q = flux(
        "alarm",
        ["active"],
        machine=machine,
        start="-30d",  # an alarm raised before the time range is still active
        tail=["last()", "group()", "sum()"],
    )
    lay.add(
        stat(
            "Active alarms",
            q,
            thresholds=_thresholds((GREEN, None), (RED, 1.0)),
            description="last event per signal and rule is a start",
        ),
        6,
        10,
    )
    q = flux(
        "alarm",
        ["active", "value", "limit", "severity", "message"],
        machine=machine,
        tail=[
            'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            "group()",
            f"keep(columns: {ALARM_COLUMNS})",
            'sort(columns: ["_time"], desc: true)',
            "limit(n: 200)",
        ],
    )
    active = _value_map({0: ("cleared", GREEN), 1: ("start", RED)})
    lay.add(
        table(
            "Alarm events",
            q,
            overrides=[
                _override("active", {"mappings": [active], "custom.cellOptions": {"type": "color-text"}})
            ],
        ),
        18,
        10,
    )


# --------------------------------------------------------------------------- dashboards


def _variables(measurement: str, machine: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": "bucket",
            "type": "constant",
            "hide": 2,
            "query": BUCKET,
            "current": {"text": BUCKET, "value": BUCKET},
        },
        _query_var("site", "Site", tag_values("site", f'r._measurement == "{measurement}"')),
    ]
    if machine:
        pred = f'r._measurement == "{measurement}" and r.site == "${{site}}"'
        out.append(_query_var("machine", "Machine", tag_values("machine", pred)))
    return out


def _query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: a new machine shows up without a reload
        "includeAll": False,
        "multi": False,
        "sort": 1,
        "hide": 0,
        "current": {},
        "options": [],
    }


def _dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]], tags: list[str]
) -> dict[str, Any]:
    annotation = {
        "name": "Alarms",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": RED,
        "target": {
            "refId": "Anno",
            "query": flux(
                "alarm",
                ["message"],
                machine=any(v["name"] == "machine" for v in variables),
                tail=[],
            ),
        },
    }
    return {
        "uid": uid,
        "title": title,
        "tags": tags,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                annotation,
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["edge-agent"],
                "asDropdown": True,
                "title": "Edge agent",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": panels,
    }


def profile_title(profile: Profile) -> str:
    """A dashboard title from the profile's description: its first clause, without parentheses."""
    return re.sub(r"\s*\([^)]*\)", "", profile.description.split(":")[0]).strip()


def kind_dashboard(kind: str) -> dict[str, Any]:
    """The dashboard of one equipment kind."""
    profile = load_profile(PROFILES_DIR / f"{kind}.toml")
    lay = Layout()
    live_values(lay, profile)
    spc_charts(lay, profile)
    features(lay, profile)
    alarms(lay)
    title = profile_title(profile)
    return _dashboard(
        f"edge-{kind.replace('_', '-')}",
        f"{title} ({kind})",
        lay.panels,
        _variables(profile.measurement),
        ["edge-agent", kind],
    )


def oee_overview(lay: Layout) -> None:
    """OEE of every machine of the site."""
    q = flux("oee", ["oee"], signals=["oee"], machine=False, tail=_last_per("machine"))
    pct = _thresholds((RED, None), (YELLOW, 0.6), (GREEN, 0.85))
    oee_bars = stat(
        "OEE by machine",
        q,
        kind="bargauge",
        rows=True,
        unit="percentunit",
        thresholds=pct,
        min_max=(0.0, 1.0),
    )
    lay.add(oee_bars, 9, 6)


def furnace_overview(lay: Layout) -> None:
    """Uniformity spread of every furnace of the site."""
    q = flux(
        "furnace_uniformity", ["spread"], signals=["uniformity"], machine=False, tail=_per("machine", "max")
    )
    lay.add(timeseries("Furnace uniformity spread", q, label="machine", unit="celsius"), 12, 8)


def mould_overview(lay: Layout) -> None:
    """Supply-return ΔT of every mould of the site."""
    q = flux("mold", ["delta_t"], signals=["heat_removal"], machine=False, tail=_per("machine"))
    lay.add(timeseries("Mould return - supply ΔT", q, label="machine", unit="celsius"), 12, 8)


#: Site-wide panels by feature, in the overview after the active alarms (registry order).
OVERVIEW: dict[str, Callable[[Layout], None]] = {
    "oee": oee_overview,
    "furnace": furnace_overview,
    "mold": mould_overview,
}


def overview_dashboard() -> dict[str, Any]:
    """One site at a glance: last data and active alarms per machine, each feature's site-wide panel, the latest alarms."""
    lay = Layout()
    lay.row("Site overview")
    # every machine writes `x` of its signals at least every kpi interval: its last one says the data flows
    # (agent_status goes to MQTT only, so the InfluxDB side cannot show agent health)
    q = flux(
        "spc",
        ["x"],
        machine=False,
        start="-30d",
        tail=[
            "last()",
            'group(columns: ["machine"])',
            'sort(columns: ["_time"])',
            'last(column: "_time")',
            'keep(columns: ["machine", "_time"])',
            "group()",
            'sort(columns: ["machine"])',
        ],
    )
    lay.add(table("Last data by machine", q, description="time of the newest indicator line"), 6, 6)
    q = flux(
        "alarm",
        ["active"],
        machine=False,
        start="-30d",
        tail=[
            "last()",
            'group(columns: ["machine"])',
            "sum()",
            'keep(columns: ["machine", "_value"])',
            "group()",
        ],
    )
    red_from_one = _thresholds((GREEN, None), (RED, 1.0))
    lay.add(
        stat("Active alarms by machine", q, kind="bargauge", rows=True, thresholds=red_from_one, decimals=0),
        9,
        6,
    )
    for name in FEATURES:
        if name in OVERVIEW:
            OVERVIEW[name](lay)
    alarms(lay, machine=False)
    return _dashboard(
        "edge-overview",
        "Edge agent overview",
        lay.panels,
        _variables("spc", machine=False),
        ["edge-agent", "overview"],
    )


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    boards = {f"{kind}.json": kind_dashboard(kind) for kind in KINDS}
    boards["overview.json"] = overview_dashboard()
    return {name: json.dumps(board, indent=2, ensure_ascii=False) + "\n" for name, board in boards.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards, or with --check report whether the committed ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
