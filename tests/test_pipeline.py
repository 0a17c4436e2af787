"""The indicator pipeline on a die-casting profile: per-cycle latching, raw-value spec alarms, timestamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.config import load_config, profile_dirs
from edge_agent.pipeline import IndicatorPipeline
from edge_agent.types import Readings

REPO = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000_000_000_000
SHOT_NS = 60_000_000_000


def _pipeline() -> tuple[IndicatorPipeline, dict[str, int], list[str]]:
    config = load_config(REPO / "config" / "die-casting.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = dict(pipeline.rows_of("dcm1"))
    tags = [t.name for t in config.devices[0].tags]
    return pipeline, rows, tags


def _shot(
    rows: dict[str, int], tags: list[str], k: int, biscuit: float, rng: np.random.Generator
) -> Readings:
    values = {name: float(rng.normal(10, 1)) for name in tags}
    values.update(shot_counter=k, machine_state=3, biscuit_length=biscuit, intensification_pressure=750.0)
    return Readings.of([rows[n] for n in tags], T0 + k * SHOT_NS, [values[n] for n in tags])


def test_spec_alarm_is_judged_on_raw_values_even_when_the_drift_is_in_the_baseline() -> None:
    pipeline, rows, tags = _pipeline()
    rng = np.random.default_rng(1)
    alarms = []
    for k in range(1, 120):
        biscuit = 27.5 - 0.1 * k + rng.normal(0, 0.3)  # dosing drifting from the first shot on
        out = pipeline.process("dcm1", _shot(rows, tags, k, biscuit, rng), T0 + k * SHOT_NS)
        alarms += [(k, a) for _, a in out.alarms if pipeline.table.tags[a.signal] == "biscuit_length"]
    spec = [(k, a) for k, a in alarms if a.rule == "spec"]
    # LSL 20 mm (profile): crossed around shot 75; the whitened charts could not see a drift they baselined
    assert spec and spec[0][1].state == "start" and 70 <= spec[0][0] <= 80
    assert spec[0][1].message == "below the LSL" and spec[0][1].limit == 20.0
    assert spec[0][1].value < 20.0


def test_per_cycle_values_are_latched_once_per_shot_and_kpi_stamps_rise() -> None:
    pipeline, rows, tags = _pipeline()
    rng = np.random.default_rng(2)
    stamps = []
    for poll in range(40):
        k = 1 + poll // 4  # four polls per shot: the counter moves every fourth poll
        out = pipeline.process("dcm1", _shot(rows, tags, k, 27.5, rng), T0 + poll * SHOT_NS // 4)
        stamps += [b.t_ns for _, b in out.kpi if b.family == "spc"]
    n = pipeline.spc.snapshot([rows["biscuit_length"]])["n"][0] + pipeline.whitener.n[rows["biscuit_length"]]
    assert n == 9  # ten shots, the first only sets the counter's baseline
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
