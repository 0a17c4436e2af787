"""The indicator pipeline on a die-casting profile: per-cycle latching, raw-value spec alarms, timestamps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config, parse_config, profile_dirs
from edge_agent.core.spc import Rule
from edge_agent.pipeline import IndicatorPipeline
from edge_agent.types import Quality, Readings

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


def _two_machines() -> IndicatorPipeline:
    config = load_config(REPO / "config" / "die-casting.toml")
    first = config.devices[0]
    config = config.model_copy(update={"devices": [first, first.model_copy(update={"name": "dcm2"})]})
    return IndicatorPipeline(config, profile_dirs(config, REPO / "config"))


def _alarms(outs: list) -> list:
    return sorted((a.signal, a.rule, a.state, a.t_ns) for out in outs for _, a in out.alarms)


def _same_kpis(outs: list, expected: list) -> bool:
    got = [(src.machine, b) for out in outs for src, b in out.kpi]
    want = [(src.machine, b) for out in expected for src, b in out.kpi]
    return len(got) == len(want) and all(
        (m1, b1.family, b1.t_ns, b1.signal.tolist(), list(b1.values))
        == (m2, b2.family, b2.t_ns, b2.signal.tolist(), list(b2.values))
        # running window sums make the last bit depend on how rows were grouped into updates
        and all(
            np.allclose(b1.values[k], b2.values[k], rtol=1e-12, atol=0, equal_nan=True) for k in b1.values
        )
        for (m1, b1), (m2, b2) in zip(got, want, strict=True)
    )


def test_devices_processed_together_publish_what_they_publish_one_by_one() -> None:
    one_by_one, together = _two_machines(), _two_machines()
    rows = {d: dict(one_by_one.rows_of(d)) for d in ("dcm1", "dcm2")}
    tags = list(rows["dcm1"])[: len(rows["dcm1"]) - 5]  # without the pseudo-signals
    rng = np.random.default_rng(3)
    seq_alarms: list = []
    batch_alarms: list = []
    for k in range(1, 160):
        now = T0 + k * SHOT_NS
        # dcm2 drifts so that SPC, spec and band alarms happen on one machine and not the other
        shots = {
            "dcm1": _shot(rows["dcm1"], tags, k, 27.5 + rng.normal(0, 0.3), rng),
            "dcm2": _shot(rows["dcm2"], tags, k, 27.5 - 0.1 * k + rng.normal(0, 0.3), rng),
        }
        turn = list(shots.items())
        if k % 7 == 0:
            # each device twice in one turn (two scan classes): its events must come out once
            turn = [(d, r.take(np.arange(len(r)) < len(r) // 2)) for d, r in shots.items()]
            turn += [(d, r.take(np.arange(len(r)) >= len(r) // 2)) for d, r in shots.items()]
        seq_out = [one_by_one.process(d, r, now) for d, r in turn]
        batch_out = together.process_many(turn, now)
        seq_alarms += _alarms(seq_out)
        batch_alarms += _alarms(batch_out)
        if k % 7:
            # with a device twice in one turn, the KPIs of its first batch already include the
            # second one (the engines update once per turn), so only whole turns compare
            assert _same_kpis(batch_out, seq_out), k
    assert len(seq_alarms) >= 3 and {a[1] for a in seq_alarms} >= {"spec", "chart"}
    assert sorted(batch_alarms) == sorted(seq_alarms)


def _tcu_band_alarms(supply: np.ndarray, setpoint: np.ndarray) -> list[tuple[int, str]]:
    """(poll, state) of the supply_temp band alarms of a TCU polled once a second."""
    config = load_config(REPO / "config" / "mold-tcu.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("tcu1")
    seen = []
    for k, (x, sp) in enumerate(zip(supply, setpoint, strict=True)):
        t = T0 + k * 1_000_000_000
        out = pipeline.process("tcu1", Readings.of([rows["supply_temp"], rows["setpoint"]], t, [x, sp]), t)
        seen += [(k, a.state) for _, a in out.alarms if a.rule == "band"]
    return seen


def test_band_alarm_arms_once_the_setpoint_is_reached_and_again_after_a_setpoint_step() -> None:
    # cold start: 20 -> 80 °C in 60 s; 40 s in band; a 10 K drop for 30 s; back; then a step to
    # 90 °C approached in 40 s; then a second drop
    first = [np.linspace(20, 80, 60), np.full(40, 80.0), np.full(30, 70.0), np.full(30, 80.0)]
    supply = np.concatenate([*first, np.linspace(80, 90, 40), np.full(30, 90.0), np.full(30, 84.0)])
    setpoint = np.concatenate([np.full(160, 80.0), np.full(100, 90.0)])
    alarms = _tcu_band_alarms(supply, setpoint)
    # approaching a setpoint raises nothing; each excursion once in band raises after the 5 s delay
    assert alarms == [(105, "start"), (135, "clear"), (235, "start")]


def _oee_run(first_poll_s: float, polls: int) -> list[dict[str, float]]:
    """OEE of a die-casting cell shooting exactly every ideal cycle (55 s), polled every 5 s."""
    pipeline, rows, _tags = _pipeline()
    seen = []
    for i in range(polls):
        t_s = first_poll_s + 5.0 * i
        shots = int(t_s // 55.0)  # the counter steps at every whole ideal cycle
        t = T0 + int(t_s * 1e9)
        names = ["machine_state", "shot_counter", "good_parts"]
        out = pipeline.process("dcm1", Readings.of([rows[n] for n in names], t, [3.0, shots, shots]), t)
        seen += [{k: float(v[0]) for k, v in b.values.items()} for _, b in out.kpi if b.family == "oee"]
    return seen


def test_oee_started_mid_cycle_counts_whole_cycles_only() -> None:
    # the agent starts 50 s into a cycle: its first part came after 5 s of observed production
    seen = _oee_run(first_poll_s=50.0, polls=60)
    perf = np.array([s["performance"] for s in seen])
    pq = np.array([s["pq"] for s in seen])
    known = np.isfinite(perf)
    assert known.sum() > 20
    # between parts the running time grows and performance sags; it never exceeds the ideal rate,
    # and each part brings it back to exactly 1 (every part matched with a whole cycle of its own)
    assert (perf[known] <= 1.0 + 1e-12).all()
    after_part = np.flatnonzero(np.diff(pq) > 0) + 1
    assert after_part.size == 5 and np.allclose(perf[after_part], 1.0)
    assert pq.max() == 5  # the polls (50-345 s) see 6 shots; the first only starts the period


async def test_a_failing_pipeline_still_publishes_the_raw_values(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(REPO / "config" / "die-casting.toml")
    got: list = []
    agent = Agent(config, REPO / "config", sinks=False, on_output=lambda d, o: got.append((d, o)))
    rows = agent.pipeline.rows_of("dcm1")
    readings = Readings.of([rows["shot_counter"], rows["machine_state"]], T0, [7.0, 3.0])

    def broken(*_args: object) -> None:
        raise ZeroDivisionError("an indicator bug")

    monkeypatch.setattr(agent.pipeline, "process_many", broken)
    agent._handle("dcm1", readings)
    agent._handle("dcm1", readings)
    await asyncio.sleep(0)  # the turn's batches are processed together, on the next turn
    assert [d for d, _ in got] == ["dcm1", "dcm1"]
    for _device, out in got:
        assert not out.kpi and not out.alarms
        [(source, raw)] = out.raw
        assert source.machine == "dcm1" and raw.value.tolist() == [7.0, 3.0]
    assert "indicator pipeline failed on 2 batches" in caplog.text


NOTHING_TO_CHART = {
    # pump_hours is not a signal of the mold_tcu profile: the device has rows but no SPC row
    "a tag outside the profile": 'enabled = true\n[[devices.tags]]\nname = "pump_hours"\naddress = 7\n',
    # no device at all is polled: the signal table is empty
    "every device disabled": 'enabled = false\n[[devices.tags]]\nname = "flow"\naddress = 7\n',
}


@pytest.mark.parametrize("case", NOTHING_TO_CHART, ids=list(NOTHING_TO_CHART))
def test_a_config_with_nothing_to_chart_still_builds_a_pipeline(case: str) -> None:
    text = (
        '[[devices]]\nname = "tcu9"\nprotocol = "modbus"\nprofile = "mold_tcu"\n'
        'endpoint = "modbus-tcp://127.0.0.1:1502"\n' + NOTHING_TO_CHART[case]
    )
    config = parse_config(text, "agent.toml", REPO / "config")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    assert int(pipeline.spc_row.sum()) == 0
    if case == "every device disabled":
        assert list(pipeline.devices) == [] and len(pipeline.table) == 0
        return
    row = pipeline.rows_of("tcu9")["pump_hours"]
    out = pipeline.process("tcu9", Readings.of([row], T0, [1234.0]), T0)
    [(source, raw)] = out.raw
    assert source.machine == "tcu9" and raw.value.tolist() == [1234.0]
    assert not out.alarms


S_NS = 1_000_000_000
ZONES = ["zone_1_temp", "zone_2_temp", "zone_3_temp", "zone_4_temp"]


def _furnace_run(bad_from: int, bad: list[int], quality: Quality, polls: int) -> tuple[list, list]:
    """Uniformity records at every poll and alarms of furnace-1 at 860 °C; the `bad` zones read `quality` from `bad_from` on."""
    config = load_config(REPO / "config" / "furnace.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("furnace-1")
    names = [*ZONES, "temp_setpoint"]
    uni, alarms = [], []
    for k in range(polls):
        t = T0 + k * S_NS
        q = [int(quality) if k >= bad_from and i in bad else 0 for i in range(5)]
        # the setpoint is sent once: a quiet subscription keeps its last value
        sent = names if k == 0 else ZONES
        values = [860.0, 861.0, 859.0, 860.5, 860.0][: len(sent)]
        out = pipeline.process(
            "furnace-1", Readings.of([rows[n] for n in sent], t, values, q[: len(sent)]), t
        )
        uni += [
            {f: float(v[0]) for f, v in b.values.items()}
            for _, b in out.kpi
            if b.family == "furnace_uniformity"
        ]
        alarms += [(k, a.rule, a.state) for _, a in out.alarms]
    return uni, alarms


def test_a_failed_thermocouple_is_invalid_and_stops_the_soak() -> None:
    uni, alarms = _furnace_run(bad_from=300, bad=[2], quality=Quality.BAD_SENSOR_FAILURE, polls=600)
    assert uni[299]["valid_sensors"] == 4 and uni[299]["soak_s"] == 299.0
    assert uni[599]["valid_sensors"] == 3 and uni[599]["all_in_band"] == 0.0
    assert uni[599]["soak_s"] == 299.0
    # after the 5 s alarm delay: the furnace at temperature has a zone it cannot see
    assert sorted(alarms) == [(305, "tc_invalid", "start"), (305, "uniformity", "start")]


def test_a_disconnected_furnace_is_unknown_not_soaking_and_its_alarms_hold() -> None:
    uni, alarms = _furnace_run(
        bad_from=300, bad=[0, 1, 2, 3, 4], quality=Quality.BAD_NOT_CONNECTED, polls=900
    )
    assert uni[899]["valid_sensors"] == 0 and uni[899]["soak_s"] == 299.0
    assert np.isnan(uni[899]["spread"])
    assert alarms == []  # no data decides nothing: not four burnt-out thermocouples


def test_a_disconnected_tcu_publishes_no_heat_removal_and_keeps_its_alarm() -> None:
    config = load_config(REPO / "config" / "mold-tcu.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("tcu1")
    names = ["supply_temp", "return_temp", "flow", "setpoint"]
    heat, alarms = [], []
    for k in range(120):
        t = T0 + k * S_NS
        q = int(Quality.BAD_NOT_CONNECTED) if k >= 60 else 0
        # return 9 K above supply: poor heat removal, alarmed before the TCU goes away
        out = pipeline.process(
            "tcu1", Readings.of([rows[n] for n in names], t, [60.0, 69.0, 20.0, 60.0], q), t
        )
        heat += [float(b.values["heat_kw"][0]) for _, b in out.kpi if "heat_kw" in b.values]
        alarms += [(k, a.rule, a.state) for _, a in out.alarms if a.rule == "heat_removal"]
    assert heat[59] > 0 and np.isnan(heat[60]) and np.isnan(heat[119])
    assert alarms == [(5, "heat_removal", "start")]


def test_the_last_reading_of_a_row_in_a_batch_decides_its_last_value() -> None:
    config = load_config(REPO / "config" / "mold-tcu.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("tcu1")
    flow, supply = rows["flow"], rows["supply_temp"]
    bad, unsure = int(Quality.BAD_NOT_CONNECTED), int(Quality.UNCERTAIN_LAST_USABLE)
    pipeline.process("tcu1", Readings.of([flow, flow, supply], T0, [20.0, 21.0, 60.0], [0, bad, 0]), T0)
    assert np.isnan(pipeline.last_value[flow]) and pipeline.last_value[supply] == 60.0
    pipeline.process("tcu1", Readings.of([flow, flow], T0 + S_NS, [20.0, 22.0], [bad, unsure]), T0 + S_NS)
    assert pipeline.last_value[flow] == 22.0  # uncertain is usable
    assert pipeline.last_value[supply] == 60.0  # not in the batch: a quiet subscription keeps its value


def test_per_cycle_values_without_the_cycle_counter_are_not_charted_per_poll() -> None:
    # check-config refuses this device (tests/cases/per_cycle_without_counter); a config built
    # in code reaches the pipeline anyway and must not chart the same shot's value at every poll
    config = load_config(REPO / "config" / "die-casting.toml")
    first = config.devices[0]
    tags = [t for t in first.tags if t.name != "shot_counter"]
    config = config.model_copy(update={"devices": [first.model_copy(update={"tags": tags})]})
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("dcm1")
    r = rows["biscuit_length"]
    alarms = []
    for k in range(600):
        t = T0 + k * S_NS
        biscuit = 27.5 + 0.1 * (k // 60)  # the register holds the last shot's value for 60 polls
        out = pipeline.process("dcm1", Readings.of([rows["machine_state"], r], t, [3.0, biscuit]), t)
        alarms += [a for _, a in out.alarms if a.signal == r]
    assert pipeline.spc.snapshot([r])["n"][0] + pipeline.whitener.n[r] == 0
    assert alarms == []
    assert pipeline.last_value[r] == pytest.approx(28.4)  # still published as a raw value


def test_an_imr_signal_alarms_on_a_point_beyond_its_i_chart_limits_but_not_on_run_rules() -> None:
    pipeline, rows, tags = _pipeline()
    r = rows["switchover_position"]  # die_casting profile: imr and capability, no rules
    rng = np.random.default_rng(5)
    starts, beyond, run_rule_only = [], [], []
    for k in range(1, 200):
        readings = _shot(rows, tags, k, 27.5, rng)
        # in control, then a 1σ shift (run rules: 8 in a row, 4 of 5 beyond 1σ), then a drift
        shift = 1.0 if 100 < k <= 140 else 1.0 + 0.25 * (k - 140) if k > 140 else 0.0
        readings.value[readings.signal == r] = 400.0 + rng.normal(0, 1.0) + shift
        out = pipeline.process("dcm1", readings, T0 + k * SHOT_NS)
        starts += [
            (k, a) for _, a in out.alarms if a.signal == r and a.rule == "rules" and a.state == "start"
        ]
        mask = int(pipeline.spc.snapshot([r])["rule_mask"][0])
        if mask & int(Rule.WE1):
            beyond.append(k)
        elif mask & 0xFFF:
            run_rule_only.append(k)
    assert run_rule_only and beyond and min(run_rule_only) < min(beyond)
    assert starts and {k for k, _ in starts} <= set(beyond) and starts[0][0] == min(beyond)
    first = starts[0][1]
    assert first.message == "rules alarm (WE1+N1)" and first.value > first.limit


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{ lsl = 50.0 }", (50.0, np.nan)),
        ("{ usl = 60.0 }", (np.nan, 60.0)),
        ("{ lsl = 20.0, usl = 40.0 }", (20.0, 40.0)),
    ],
)
def test_a_device_limits_entry_replaces_both_profile_limits(
    entry: str, expected: tuple[float, float]
) -> None:
    # die_casting profile: fill_time 15-45 ms; merged field by field, lsl 50 with usl 45 broke construction
    text = (
        '[[devices]]\nname = "dcm9"\nprotocol = "modbus"\nprofile = "die_casting"\n'
        'endpoint = "modbus-tcp://127.0.0.1:5020"\n'
        f"limits.fill_time = {entry}\n"
        'tags = [{ name = "shot_counter", address = 0 }, { name = "fill_time", address = 1 }]\n'
    )
    config = parse_config(text, "agent.toml", REPO / "config")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    r = pipeline.rows_of("dcm9")["fill_time"]
    np.testing.assert_array_equal([pipeline.spec_lsl[r], pipeline.spec_usl[r]], expected)


def test_a_furnace_with_some_of_its_profiles_thermocouples_is_monitored_on_those(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load_config(REPO / "config" / "furnace.toml")
    first = config.devices[0]
    tags = [t for t in first.tags if t.name != "zone_4_temp"]
    config = config.model_copy(update={"devices": [first.model_copy(update={"tags": tags})]})
    with caplog.at_level("WARNING", logger="edge_agent.pipeline"):
        pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("furnace-1")
    names = [*ZONES[:3], "temp_setpoint"]
    uni, alarms = [], []
    for k in range(300):
        t = T0 + k * S_NS
        zone_1 = 880.0 if k >= 200 else 860.0  # a zone heater runs away once the furnace soaks
        out = pipeline.process(
            "furnace-1", Readings.of([rows[n] for n in names], t, [zone_1, 861.0, 859.0, 860.0]), t
        )
        uni += [
            {f: float(v[0]) for f, v in b.values.items()}
            for _, b in out.kpi
            if b.family == "furnace_uniformity"
        ]
        alarms += [(k, a.rule, a.state) for _, a in out.alarms]
    assert uni[199]["valid_sensors"] == 3 and uni[199]["spread"] == 2.0 and uni[199]["soak_s"] == 199.0
    assert uni[299]["all_in_band"] == 0.0 and uni[299]["soak_s"] == 199.0 and uni[299]["overshoot_c"] == 20.0
    assert sorted(alarms) == [(205, "overshoot", "start"), (205, "uniformity", "start")]
    assert [r.getMessage() for r in caplog.records] == [
        "furnace-1: furnace monitoring on 3 of the profile's 4 sensors; not configured: zone_4_temp"
    ]


def _oee_of(tags: list[str], polls: int, bad_from: int | None = None) -> dict[str, float]:
    """The last OEE record of a die-casting cell with only `tags`, shooting every 55 s and polled every 5 s; BAD_NOT_CONNECTED from poll `bad_from` on."""
    text = '[[devices]]\nname = "dcm9"\nprotocol = "modbus"\nprofile = "die_casting"\nendpoint = "modbus-tcp://127.0.0.1:5020"\n'
    text += "".join(f'[[devices.tags]]\nname = "{n}"\naddress = {i}\n' for i, n in enumerate(tags))
    config = parse_config(text, "agent.toml", REPO / "config")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("dcm9")
    last: dict[str, float] = {}
    for k in range(polls):
        t = T0 + k * 5 * S_NS
        shots = k * 5 // 55
        values = {"machine_state": 3.0, "shot_counter": shots, "good_parts": shots}
        q = int(Quality.BAD_NOT_CONNECTED) if bad_from is not None and k >= bad_from else 0
        out = pipeline.process(
            "dcm9", Readings.of([rows[n] for n in tags], t, [values[n] for n in tags], q), t
        )
        last = next(
            ({f: float(v[0]) for f, v in b.values.items()} for _, b in out.kpi if b.family == "oee"), last
        )
    return last


NAN = float("nan")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        # 40 min: 43 shots seen, the first starts the period; 42 parts in 2340 s of production
        (["machine_state", "shot_counter", "good_parts"], (1.0, 0.987, 1.0, 0.987, 2340.0, 42.0, 42.0)),
        # no state: nothing is known of availability, so neither of performance
        (["shot_counter", "good_parts"], (NAN, NAN, 1.0, NAN, NAN, 43.0, 43.0)),
        (["machine_state", "shot_counter"], (1.0, 0.987, NAN, NAN, 2340.0, 42.0, NAN)),
        (["machine_state", "good_parts"], (1.0, NAN, NAN, NAN, 2395.0, NAN, 43.0)),
    ],
    ids=["all inputs", "no state", "no good counter", "no parts counter"],
)
def test_oee_is_no_data_not_zero_for_an_input_that_is_not_configured(
    tags: list[str], expected: tuple[float, ...]
) -> None:
    got = _oee_of(tags, polls=480)
    fields = ("availability", "performance", "quality", "oee", "apt_s", "pq", "gq")
    np.testing.assert_allclose([got[f] for f in fields], expected, atol=5e-4)


def test_oee_leaves_the_time_a_machine_was_disconnected_out_of_availability() -> None:
    # 20 min producing, then 20 min disconnected: unknown, not 20 min of lost availability
    got = _oee_of(["machine_state", "shot_counter", "good_parts"], polls=480, bad_from=240)
    # the period starts after the first part (at 55 s); the last good poll (1195 s) opens a producing interval
    assert got["availability"] == 1.0 and got["apt_s"] == 1145.0
    assert got["pq"] == 20.0 and got["quality"] == 1.0


def _imm_oee(mode: float, status: float | None) -> dict[str, float]:
    """The OEE record of imm-1 (config/imm.toml) after an hour in `mode` with `status` (None: not sent), a part every 30 s."""
    config = load_config(REPO / "config" / "imm.toml")
    pipeline = IndicatorPipeline(config, profile_dirs(config, REPO / "config"))
    rows = pipeline.rows_of("imm-1")
    names = ["machine_mode", "job_cycle_counter", "job_parts_counter", "job_good_parts_counter"]
    names += [] if status is None else ["production_status"]
    last: dict[str, float] = {}
    for k in range(0, 3600, 2):
        t = T0 + k * S_NS
        n = k // 30
        values = [mode, n, n, n] + ([] if status is None else [status])
        out = pipeline.process("imm-1", Readings.of([rows[x] for x in names], t, values), t)
        last = next(
            ({f: float(v[0]) for f, v in b.values.items()} for _, b in out.kpi if b.family == "oee"), last
        )
    return last


def test_imm_production_time_needs_automatic_mode_and_production_status() -> None:
    # DOMAIN.md §5: APT = time in AUTOMATIC with PRODUCTION (MachineMode 1, ProductionStatus 4)
    producing = _imm_oee(mode=1.0, status=4.0)
    # the period starts after the first part (30 s); the last poll is at 3598 s
    assert producing["availability"] == 1.0 and producing["apt_s"] == 3568.0 and producing["pq"] == 118.0
    start_up = _imm_oee(mode=1.0, status=2.0)  # AUTOMATIC but START_UP: its parts are not production
    assert start_up["availability"] == 0.0 and start_up["apt_s"] == 0.0 and start_up["pq"] == 119.0
    # without the status the production time is unknown, unless the mode alone says not producing
    assert np.isnan(_imm_oee(mode=1.0, status=None)["availability"])
    assert _imm_oee(mode=3.0, status=None)["availability"] == 0.0  # MANUAL


def test_cpk_and_window_statistics_of_a_drifting_per_cycle_signal_are_those_of_its_raw_values() -> None:
    # the charts see the pre-whitened series, which mutes a drift by sqrt((1-phi)/(1+phi)); Cpk and
    # the window statistics must describe the values the machine produced
    pipeline, rows, tags = _pipeline()
    r = rows["intensification_pressure"]  # per cycle, capability, LSL 600 / USL 900 bar
    window = pipeline.spc.window[r]
    rng = np.random.default_rng(9)
    phi, a, raw, published = 0.6, 0.0, [], {}
    for k in range(1, 241):
        a = phi * a + rng.normal(0, 8.0)  # AR(1) shot to shot, as real per-cycle values are
        value = 750.0 + a + (1.0 * (k - 120) if k > 120 else 0.0)  # check-ring wear from shot 120
        readings = _shot(rows, tags, k, 27.5, rng)
        readings.value[readings.signal == r] = value
        raw.append(value)
        out = pipeline.process("dcm1", readings, T0 + k * SHOT_NS)
        for _, b in out.kpi:
            if b.family == "spc" and r in b.signal:
                i = int(np.flatnonzero(b.signal == r)[0])
                published = {key: float(v[i]) for key, v in b.values.items()}
    assert pipeline.whitener.phi[r] > 0.3  # the charts did see a whitened series
    x = np.array(raw[1:])  # the first shot only sets the counter's baseline
    mu, within, overall = x.mean(), np.abs(np.diff(x)).mean() / 1.128, x.std(ddof=1)
    expected = {
        "cp": 300.0 / (6 * within),
        "cpk": min(900.0 - mu, mu - 600.0) / (3 * within),
        "pp": 300.0 / (6 * overall),
        "ppk": min(900.0 - mu, mu - 600.0) / (3 * overall),
        "mean": x[-window:].mean(),
        "sd": x[-window:].std(ddof=1),
        "min": x[-window:].min(),
        "max": x[-window:].max(),
    }
    for key, want in expected.items():
        assert published[key] == pytest.approx(want, rel=1e-9), key
    assert published["x"] == raw[-1]
