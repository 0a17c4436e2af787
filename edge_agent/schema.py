"""The InfluxDB schema the agent writes, as data: measurements, their tags and fields (docs/schema.md explains it).

Dashboards and tests check their queries against this module, and the pipeline takes its
field lists from here, so a renamed field breaks a test instead of a dashboard. The equipment
features' measurements come from their modules (features/registry.py), the raw-value
measurements from the built-in profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.features.registry import publications
from edge_agent.profiles import BUILTIN_PROFILES_DIR, load_profile
from edge_agent.sinks.registry import SINKS

#: Tags on every line (besides `signal` where noted).
HIERARCHY_TAGS = ("site", "area", "line", "machine")

#: Measurements of raw values: one per equipment kind of the built-in profiles (the profile's `measurement`).
EQUIPMENT_MEASUREMENTS = tuple(
    dict.fromkeys(load_profile(p).measurement for p in sorted(BUILTIN_PROFILES_DIR.glob("*.toml")))
)

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

#: The pipeline's own device-level indicator (signal `cycle`); the equipment features' are in their modules.
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
    *(f"outbox_{name}" for name in SINKS),  # records waiting in each sink's outbox
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
    out["cycle"] = Measurement("cycle", per_signal, CYCLE_FIELDS, "cycle state per machine (signal=cycle)")
    out["alarm"] = Measurement(
        "alarm", (*per_signal, "rule"), ALARM_FIELDS, "alarm start (active=1) and clear (active=0) events"
    )
    out["agent_status"] = Measurement("agent_status", HIERARCHY_TAGS, AGENT_STATUS_FIELDS, "agent health")
    # one measurement per feature family; a family's pseudo-signals share it (mold: heat_removal, maintenance)
    families: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
    for p in publications():
        if p.family in out:
            # e.g. `furnace`: the furnaces' raw values; their indicators would mix with them
            raise RuntimeError(
                f"features: pseudo-signal {p.signal!r} would be written to {p.family!r}, which holds "
                f"{out[p.family].about}; give its Publication a family of its own"
            )
        families.setdefault(p.family, []).append((p.signal, p.about, p.fields))
    for family, pubs in families.items():
        fields = tuple(dict.fromkeys(f for _, _, fs in pubs for f in fs))
        about = " and ".join(f"{about} (signal={signal})" for signal, about, _ in pubs)
        out[family] = Measurement(family, per_signal, fields, about)
    return out
