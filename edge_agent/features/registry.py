"""The equipment features the agent knows, one line each: profile tables, pseudo-signals, schema and pipeline come from it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from edge_agent.features.base import AlarmCondition, Feature, Publication

#: Feature modules, each exporting FEATURE (a Feature). Adding a feature is adding its module and a line;
#: the order is the order of the profile tables, the pseudo-signal rows and a device's records.
MODULES = (
    "edge_agent.features.oee",
    "edge_agent.features.furnace",
    "edge_agent.features.mold",
    "edge_agent.features.forging",
    "edge_agent.features.plating",
    "edge_agent.features.welding_arc",
    "edge_agent.features.welding_spot",
)

FEATURES: dict[str, Feature[Any, Any]] = {}
for _module in MODULES:
    _feature: Feature[Any, Any] = importlib.import_module(_module).FEATURE
    if _feature.table in FEATURES:
        raise RuntimeError(
            f"features/registry.py: profile table [{_feature.table}] is claimed by two features"
        )
    FEATURES[_feature.table] = _feature


def publications() -> list[Publication]:
    """Every pseudo-signal of every feature, in registry order."""
    return [p for f in FEATURES.values() for p in f.publishes]


def alarm_conditions() -> list[AlarmCondition]:
    """Every device-level alarm condition of every feature, in registry order."""
    return [c for f in FEATURES.values() for c in f.alarms]


def check_features(features: Mapping[str, Feature[Any, Any]]) -> None:
    """Refuse features that would collide: a pseudo-signal or alarm rule claimed twice, an alarm filed elsewhere."""
    pubs = [p.signal for f in features.values() for p in f.publishes]
    rules = [c.rule for f in features.values() for c in f.alarms]
    for what, names in (("pseudo-signal", pubs), ("alarm rule", rules)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise RuntimeError(f"features/registry.py: {what} {', '.join(twice)} is claimed twice")
    for f in features.values():
        own = set(f.pseudo_signals())
        stray = [c.rule for c in f.alarms if c.signal not in own]
        if stray:
            raise RuntimeError(
                f"features/{f.table}: alarm {', '.join(stray)} is filed under a pseudo-signal "
                "the feature does not publish"
            )


check_features(FEATURES)
