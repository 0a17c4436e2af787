"""The equipment-feature seam: profile tables, schema, pipeline and dashboards are built from features/registry.py.

The worked example of docs/architecture.md ("How to add an equipment feature") runs here as a
real new feature module in a fresh interpreter: registered before the agent's modules load, it is
accepted in a profile, published by the pipeline with its alarm, listed in the schema and drawn
by the dashboard generator, with no other file changed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from edge_agent import schema
from edge_agent.config_model import Model, describe
from edge_agent.features.base import AlarmCondition, Feature, FeatureResult, Publication, Signal
from edge_agent.features.registry import FEATURES, check_features
from edge_agent.pipeline import PSEUDO_SIGNALS, pseudo_family
from edge_agent.profiles import Profile

REPO = Path(__file__).resolve().parent.parent

PLATING = '''
"""Plating bath current density (`[plating]` of a profile)."""

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from edge_agent.config_model import Model
from edge_agent.features.base import (
    AlarmCondition, Condition, DeviceBatch, DeviceContext, Feature, FeatureResult, Publication, Signal, value_of,
)


class PlatingSpec(Model):
    """Which signal is the rectifier current and how large the plated area is."""

    current: Signal
    """Rectifier current, A."""
    area_dm2: float = Field(gt=0)
    """Plated area per load, dm²."""
    max_density: float = Field(gt=0)
    """Largest current density before the deposit burns, A/dm²."""


class Plating(Feature[PlatingSpec, list]):
    """Current density of a plating bath on the `bath` pseudo-signal, and the burning alarm."""

    table = "plating"
    spec_model = PlatingSpec
    about = "Plating bath current density."
    publishes = (Publication("bath", "plating_bath", ("current_density",), "plating current density"),)
    alarms = (AlarmCondition("burning", "bath", "warning", "current density {value:.1f} A/dm² above {limit:.1f}"),)

    def build(self, members: Sequence[tuple[PlatingSpec, DeviceContext]]) -> list:
        return [(spec, ctx.rows) for spec, ctx in members]

    def update(self, state: list, slot: int, batch: DeviceBatch) -> FeatureResult:
        spec, rows = state[slot]
        density = value_of(batch, rows, spec.current) / spec.area_dm2
        burning = Condition(density > spec.max_density, density, spec.max_density, bool(np.isfinite(density)))
        return FeatureResult({"bath": {"current_density": density}}, {"burning": burning})


FEATURE = Plating()
'''

PROFILE = """
description = "Plating line: rectifier current"
measurement = "plating_line"
alarm_delay_s = 2.0

[plating]
current = "rectifier_current"
area_dm2 = 40.0
max_density = 5.0

[[signals]]
name = "rectifier_current"
unit = "A"
"""

CONFIG = """
[[devices]]
name = "bath-1"
protocol = "modbus"
profile = "plating_line"
endpoint = "modbus-tcp://127.0.0.1:5020"
[[devices.tags]]
name = "rectifier_current"
address = 0
"""

RUN = """
import importlib.util, json, sys
from pathlib import Path
import numpy as np

here = Path(sys.argv[1])
sys.path.insert(0, str(here))
# the registry line: in the product it is one entry of MODULES in edge_agent/features/registry.py
from edge_agent.features import registry
registry.FEATURES["plating"] = __import__("plating").FEATURE
registry.check_features(registry.FEATURES)

from edge_agent import schema
from edge_agent.config import parse_config, profile_dirs
from edge_agent.pipeline import IndicatorPipeline
from edge_agent.profiles import find_profile
from edge_agent.types import Readings

config = parse_config((here / "agent.toml").read_text(), "agent.toml", here)
pipeline = IndicatorPipeline(config, profile_dirs(config, here))
row = pipeline.rows_of("bath-1")["rectifier_current"]
records, alarms = [], []
for k, amps in enumerate([160.0] * 3 + [240.0] * 4):  # 4 A/dm², then 6 A/dm² for 4 s
    t = 1_790_000_000_000_000_000 + k * 1_000_000_000
    out = pipeline.process("bath-1", Readings.of([row], t, [amps]), t)
    records += [(b.family, pipeline.table.tags[int(b.signal[0])], {f: float(v[0]) for f, v in b.values.items()})
                for _, b in out.kpi if b.family != "spc"]
    alarms += [(k, a.rule, a.state, a.severity, a.message, pipeline.table.tags[a.signal]) for _, a in out.alarms]

spec = importlib.util.spec_from_file_location("make_dashboards", sys.argv[2])
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)
lay = generator.Layout()
generator.features(lay, find_profile("plating_line", [here / "profiles"]))
print(json.dumps({
    "records": records,
    "alarms": alarms,
    "schema": list(schema.measurements()["plating_bath"].fields),
    "panels": [p["title"] for p in lay.panels],
    "queries": [t["query"] for p in lay.panels for t in p.get("targets", [])],
}))
"""


def test_a_new_feature_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    (tmp_path / "plating.py").write_text(PLATING, encoding="utf-8")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "plating_line.toml").write_text(PROFILE, encoding="utf-8")
    (tmp_path / "agent.toml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "run.py").write_text(RUN, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(tmp_path),
            str(REPO / "deploy/grafana/make_dashboards.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    densities = [r[2]["current_density"] for r in got["records"] if r[:2] == ["plating_bath", "bath"]]
    assert densities == [4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0]
    # 6 A/dm² from poll 3 on; the profile's 2 s alarm delay runs out at poll 5
    assert got["alarms"] == [
        [5, "burning", "start", "warning", "current density 6.0 A/dm² above 5.0", "bath"]
    ]
    assert got["schema"] == ["current_density"]
    assert got["panels"] == ["Plating bath current density", "plating current density (bath)"]
    assert 'r._measurement == "plating_bath"' in got["queries"][0]
    assert 'r.signal == "bath"' in got["queries"][0]


def test_every_profile_table_comes_from_the_registry() -> None:
    tables = set(Profile.model_fields) - {
        "kind", "description", "measurement", "signals", "cycle",
        "baseline_samples", "window", "alarm_delay_s", "kpi_interval_s",
    }  # fmt: skip
    assert tables == set(FEATURES) >= {"oee", "furnace", "mold"}
    for table, feature in FEATURES.items():
        assert Profile.model_fields[table].annotation == feature.spec_model | None


def test_pseudo_signals_families_and_schema_come_from_the_features() -> None:
    assert PSEUDO_SIGNALS[:5] == ("cycle", "oee", "uniformity", "heat_removal", "maintenance")
    assert PSEUDO_SIGNALS[5:] == tuple(p.signal for f in list(FEATURES.values())[3:] for p in f.publishes)
    measurements = schema.measurements()
    for feature in FEATURES.values():
        for p in feature.publishes:
            assert pseudo_family(p.signal) == p.family
            assert set(p.fields) <= set(measurements[p.family].fields)
            assert f"(signal={p.signal})" in measurements[p.family].about
    assert measurements["mold"].fields == (
        "heat_kw", "delta_t", "flow", "shots_used", "shots_to_next", "pct_used", "status",
    )  # fmt: skip
    assert set(schema.EQUIPMENT_MEASUREMENTS) == {
        *("injection_molding", "die_casting", "mold_tcu", "furnace"),
        *("forging", "welding_arc", "welding_spot", "plating", "anodizing"),
    }


@pytest.mark.parametrize("family", ["furnace", "spc", "alarm"])
def test_a_feature_family_may_not_be_another_measurement(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clash = Publication("bath", family, ("current_density",), "plating current density")
    monkeypatch.setattr(schema, "publications", lambda: [clash])
    with pytest.raises(
        RuntimeError, match=f"pseudo-signal 'bath' would be written to '{family}', which holds"
    ):
        schema.measurements()


def _profile(**tables: Any) -> dict[str, Any]:
    signals = [{"name": n} for n in ("state", "parts", "good", "t1", "t2", "sp", "supply", "ret", "flow")]
    return {"kind": "k", "description": "d", "measurement": "m", "signals": signals, **tables}


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"furnace": {"sensors": ["t1", "t3"], "setpoint": "sp"}},
            "furnace.sensors[1] names 't3', which is not among the profile's signals",
        ),
        (
            {"mold": {"supply": "supply", "return": "retrn", "flow": "flow"}},
            "mold.return names 'retrn', which is not among the profile's signals",
        ),
        (
            {
                "oee": {
                    "state": "state",
                    "producing_states": [1],
                    "production_status": "status",
                    "producing_statuses": [4],
                    "parts_counter": "parts",
                    "good_counter": "good",
                    "ideal_cycle_s": 10.0,
                }
            },
            "oee.production_status names 'status', which is not among the profile's signals",
        ),
        (
            {"furnace": {"sensors": ["t1"], "setpoint": "sp", "class": 2}},
            "furnace.class: unknown key 'class'",
        ),
        ({"furnaces": {}}, "furnaces: unknown key 'furnaces'; did you mean 'furnace'?"),
    ],
    ids=["furnace sensor", "mould return (an alias)", "optional oee signal", "unknown key", "unknown table"],
)
def test_a_feature_table_is_checked_against_the_profiles_signals(
    tables: dict[str, Any], expected: str
) -> None:
    data = _profile(**tables)
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(data)
    assert [describe(e, data, Profile).removeprefix("(top level): ") for e in info.value.errors()] == [
        expected
    ]


class _Spec(Model):
    """A spec for the registry checks."""

    signal: Signal


def _feature(table: str, signals: tuple[str, ...], rules: tuple[tuple[str, str], ...]) -> Feature[Any, Any]:
    class Toy(Feature[_Spec, None]):
        spec_model: ClassVar[type[Model]] = _Spec
        about = "toy"
        publishes = tuple(Publication(s, table, ("x",), "toy") for s in signals)
        alarms = tuple(AlarmCondition(rule, s, "warning", "m") for rule, s in rules)

        def build(self, members: Any) -> None:
            return None

        def update(self, state: None, slot: int, batch: Any) -> FeatureResult:
            return FeatureResult()

    Toy.table = table
    return Toy()


def test_the_registry_refuses_features_that_collide() -> None:
    check_features({"a": _feature("a", ("p",), (("r", "p"),)), "b": _feature("b", ("q",), (("s", "q"),))})
    with pytest.raises(RuntimeError, match="pseudo-signal p is claimed twice"):
        check_features({"a": _feature("a", ("p",), ()), "b": _feature("b", ("p",), ())})
    with pytest.raises(RuntimeError, match="alarm rule r is claimed twice"):
        check_features({"a": _feature("a", ("p",), (("r", "p"),)), "b": _feature("b", ("q",), (("r", "q"),))})
    with pytest.raises(RuntimeError, match="features/a: alarm r is filed under a pseudo-signal"):
        check_features({"a": _feature("a", ("p",), (("r", "q"),))})


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_dashboards", REPO / "deploy/grafana/make_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dashboard_sections_are_those_of_registered_features() -> None:
    generator = _generator()
    # a renamed feature must not silently lose its tailored panels to the generic section
    assert set(generator.SECTIONS) <= set(FEATURES)
    assert set(generator.OVERVIEW) <= set(FEATURES)
    assert tuple(sorted(p.stem for p in (REPO / "config/profiles").glob("*.toml"))) == generator.KINDS


def test_feature_messages_and_severities() -> None:
    # the first three features' rules (later features have their own tests)
    by_rule = {c.rule: c for f in list(FEATURES.values())[:3] for c in f.alarms}
    assert {r: c.severity for r, c in by_rule.items()} == {
        "overshoot": "alarm",
        "uniformity": "warning",
        "tc_invalid": "alarm",
        "heat_removal": "warning",
    }
    assert {r: c.signal for r, c in by_rule.items()} == {
        "overshoot": "uniformity",
        "uniformity": "uniformity",
        "tc_invalid": "uniformity",
        "heat_removal": "heat_removal",
    }
    # a template without placeholders is its own text
    assert all(c.message.format(value=1.0, limit=2.0) == c.message for c in by_rule.values())
