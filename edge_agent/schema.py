"""The InfluxDB schema the agent writes, as data: measurements, their tags and fields (docs/schema.md explains it).

Dashboards and tests check their queries against this module, and the pipeline takes its
field lists from here, so a renamed field breaks a test instead of a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Tags on every line (besides `signal` where noted).
HIERARCHY_TAGS = ("site", "area", "line", "machine")

#: Measurements of raw values: one per equipment kind (the profile's `measurement`).
EQUIPMENT_MEASUREMENTS = ("injection_molding", "die_casting", "mold_tcu", "furnace")

RAW_FIELDS = ("value", "quality")

#: Per-signal SPC indicators (family `spc`), published every cycle or every kpi interval.
SPC_FIELDS = (
    "x",
    "mean",
    "sd",
    "min",
    "max",
    "cl",
    "ucl",
    "lcl",
    "mr_ucl",
    "ewma",
    "ewma_ucl",
    "ewma_lcl",
    "cusum_pos",
    "cusum_neg",
    "cusum_h",
    "cp",
    "cpk",
    "pp",
    "ppk",
    "rule_mask",
    "n",
    "missing",
)

OEE_FIELDS = ("availability", "performance", "quality", "oee", "apt_s", "pq", "gq")
FURNACE_FIELDS = (
    "spread",
    "all_in_band",
    "soak_s",
    "ramp_c_per_min",
    "overshoot_c",
    "time_to_temp_s",
    "tolerance_c",
    "valid_sensors",
    "quench_delay_s",
)
HEAT_REMOVAL_FIELDS = ("heat_kw", "delta_t", "flow")
MAINTENANCE_FIELDS = ("shots_used", "shots_to_next", "pct_used", "status")
CYCLE_FIELDS = ("stopped",)
ALARM_FIELDS = ("active", "value", "limit", "severity", "message")
AGENT_STATUS_FIELDS = (
    "online",
    "devices",
    "devices_connected",
    "uptime_s",
    "polls",
    "values_read",
    "overruns",
    "read_errors",
    "outbox_mqtt",
    "outbox_influx",
)


@dataclass(frozen=True)
class Measurement:
    """One measurement: its tags and fields, and what it holds."""

    name: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    about: str


def measurements() -> dict[str, Measurement]:
    """Every measurement the agent writes, by name."""
    per_signal = (*HIERARCHY_TAGS, "signal", "unit")
    out = {
        m: Measurement(m, per_signal, RAW_FIELDS, f"raw values of {m.replace('_', ' ')} machines")
        for m in EQUIPMENT_MEASUREMENTS
    }
    out["spc"] = Measurement("spc", per_signal, SPC_FIELDS, "SPC indicators per signal")
    out["oee"] = Measurement("oee", per_signal, OEE_FIELDS, "OEE per machine (signal=oee)")
    out["furnace_uniformity"] = Measurement(
        "furnace_uniformity", per_signal, FURNACE_FIELDS, "furnace uniformity, soak, ramp (signal=uniformity)"
    )
    out["mold"] = Measurement(
        "mold",
        per_signal,
        HEAT_REMOVAL_FIELDS + MAINTENANCE_FIELDS,
        "mould heat removal (signal=heat_removal) and maintenance (signal=maintenance)",
    )
    out["cycle"] = Measurement("cycle", per_signal, CYCLE_FIELDS, "cycle state per machine (signal=cycle)")
    out["alarm"] = Measurement(
        "alarm", (*per_signal, "rule"), ALARM_FIELDS, "alarm start (active=1) and clear (active=0) events"
    )
    out["agent_status"] = Measurement("agent_status", HIERARCHY_TAGS, AGENT_STATUS_FIELDS, "agent health")
    return out
