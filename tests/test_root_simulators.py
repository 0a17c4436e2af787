"""The forging, welding and plating simulators: every tag GOOD through the real drivers, and every fault of
DOMAIN-ROOT.md's fault -> detector tables changes the signal the table names (the detectors come later).

Faults are checked on the process models (simulated time advanced by hand, seeded), the wire on
running servers on free ports; trace-level effects are measured with edge_agent.core.traces.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Client, ua

from edge_agent import cli
from edge_agent.commissioning import read_devices
from edge_agent.config import load_config, parse_config
from edge_agent.core import traces as T
from edge_agent.core.traces import TraceReason
from edge_agent.simulators import forging, plating, welding_arc, welding_spot
from edge_agent.simulators.forging import CHANNELS, CRANK_ANGLE, ForgingSimulator
from edge_agent.simulators.modbus_server import ModbusMachine
from edge_agent.simulators.plating import PlatingLineSimulator
from edge_agent.simulators.welding_arc import ArcWeldingSimulator
from edge_agent.simulators.welding_spot import SpotWeldingSimulator

REPO = Path(__file__).resolve().parent.parent
MODBUS = (ArcWeldingSimulator, SpotWeldingSimulator, PlatingLineSimulator)


# --------------------------------------------------------------------------- over the wire


async def read_all(text: str, tmp_path: Path) -> list[dict[str, Any]]:
    """`edge-agent read` of a device config: every record, each device must have answered.

    Records of the plating line's tank devices are named as the simulator's fields (`plating-ni1`'s
    `current` is `ni1_current`).
    """
    (tmp_path / "agent.toml").write_text(text, encoding="utf-8")
    config = parse_config(text, base_dir=tmp_path)
    records = []
    for result in await read_devices(config, tmp_path):
        assert result.error is None, result.error
        records += [{**r, "tag": field_name(result.device, r["tag"])} for r in result.records]
    return records


def field_name(device: str, tag: str) -> str:
    """The simulator field behind a device's tag: the station prefix for a plating tank."""
    if device.startswith(f"{PlatingLineSimulator.DEFAULT_NAME}-"):
        return f"{device.rsplit('-', 1)[1]}_{tag}"
    return tag


@pytest.mark.parametrize("cls", MODBUS, ids=lambda c: c.KIND)
async def test_modbus_simulator_reads_good_through_the_driver(
    cls: type[ModbusMachine], tmp_path: Path
) -> None:
    sim = cls(speed=0, seed=3)
    await sim.start()
    try:
        sim.advance(3600)
        records = await read_all(sim.device_config(), tmp_path)
    finally:
        await sim.stop()
    assert sorted(r["tag"] for r in records) == sorted(f.name for f in cls.FIELDS)
    assert all(r["quality"] == "GOOD" for r in records), [r for r in records if r["quality"] != "GOOD"]
    want = sim.values()
    for r in records:
        assert r["value"] == pytest.approx(want[r["tag"]], rel=1e-6, abs=1e-9), r["tag"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def press() -> AsyncIterator[ForgingSimulator]:
    """One press for the wire tests (an OPC UA server takes seconds to start): 200 strokes per wall minute."""
    sim = ForgingSimulator(speed=10.0, seed=3)
    sim.advance(10.0)  # strokes before the server starts, so the first read has values
    await sim.start()
    yield sim
    await sim.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_forging_press_reads_good_and_latches_each_stroke(
    press: ForgingSimulator, tmp_path: Path
) -> None:
    sim = press
    records = await read_all(sim.device_config(), tmp_path)
    async with Client(sim.endpoint) as client:
        ns = await client.get_namespace_index(forging.SIM_URI)
        base = "Press_1.Monitoring.Ram"
        nodes = [
            client.get_node(ua.NodeId(f"{base}.{n}", ns))
            for n in ("ForceSignature", "CrankAngle", "CycleCount")
        ]
        signature, angle, count = await client.read_values(nodes)
        assert await nodes[0].read_value_rank() == 1 and await nodes[0].read_array_dimensions() == [720]
    # the force signature is a trace (`points`): it reaches the features, `read` shows the values
    tags = [
        t["name"]
        for t in load_config(REPO / "config" / "forging.toml").devices[0].model_dump()["tags"]
        if t["points"] is None
    ]
    assert [r["tag"] for r in records] == tags
    assert all(r["quality"] == "GOOD" for r in records), records
    v = {r["tag"]: r["value"] for r in records}
    stroke = next(s for s in sim.history if s.count == v["stroke_count"])
    # the values read with a stroke count are that stroke's (written before the counter)
    assert v["peak_force"] == pytest.approx(stroke.peak_kn, abs=1e-3)
    assert v["force_left_front"] + v["force_right_front"] + v["force_left_back"] + v["force_right_back"] == (
        pytest.approx(stroke.peak_kn, abs=0.01)
    )
    assert 1150.0 < v["billet_temp"] < 1250.0 and 5500.0 < v["peak_force"] < 7500.0
    assert v["strokes_per_minute"] == 20.0
    # the force signature is an OPC UA array of 720 points over the crank angle
    assert len(signature) == len(angle) == 720 and angle[:3] == [0.0, 0.5, 1.0]
    by_count = next(s for s in sim.history if s.count == count)
    assert max(signature) == pytest.approx(by_count.peak_kn, abs=1e-3)


@pytest.mark.asyncio(loop_scope="module")
async def test_forging_fires_a_cyclic_event_per_stroke(press: ForgingSimulator) -> None:
    sim = press
    got: list[tuple[int, float]] = []

    class Handler:
        def event_notification(self, event: Any) -> None:
            fields = event.get_event_props_as_fields_dict()
            got.append(
                (int(fields["CycleCount"].Value), float(fields["CurrentProcessValue/AnalogSignal"].Value))
            )

    async with Client(sim.endpoint) as client:
        mf = await client.get_namespace_index(forging.MF_URI)
        etype = client.get_node(ua.NodeId(forging.CYCLIC_EVENT_ID, mf))
        sub = await client.create_subscription(100, Handler())
        await sub.subscribe_events(client.nodes.server, etype)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if len(got) >= 5:
                break
    assert len(got) >= 5
    counts = [c for c, _ in got]
    assert counts == list(range(counts[0], counts[0] + len(counts)))  # one event per stroke, none skipped
    peaks = {s.count: s.peak_kn for s in sim.history}
    assert all(p == pytest.approx(peaks[c], abs=1e-3) for c, p in got)


# --------------------------------------------------------------------------- shipped files and command line


@pytest.mark.parametrize("cls", MODBUS, ids=lambda c: c.KIND)
def test_shipped_modbus_config_is_the_simulator_map(cls: type[ModbusMachine]) -> None:
    path = REPO / "config" / f"{cls.KIND}.toml"
    assert path.read_text(encoding="utf-8") == cls.config_file_text(
        f"modbus-tcp://127.0.0.1:{cls.DEFAULT_PORT}"
    )
    config = load_config(path)
    # the register map's fields, and the trace blocks as `points` tags
    tags = [field_name(d.name, t.name) for d in config.devices for t in d.tags if t.points is None]
    assert sorted(tags) == sorted(f.name for f in cls.FIELDS)


def test_shipped_forging_config_checks_against_its_profile() -> None:
    config = load_config(REPO / "config" / "forging.toml")
    (device,) = config.devices
    assert device.profile == "forging" and device.endpoint.endswith(
        f":{ForgingSimulator.default_port}/forging"
    )


@pytest.mark.parametrize(
    ("kind", "module", "faults"),
    [
        ("forging", forging, ForgingSimulator.FAULTS),
        ("welding-arc", welding_arc, ArcWeldingSimulator.known_faults()),
        ("welding-spot", welding_spot, SpotWeldingSimulator.known_faults()),
        ("plating", plating, PlatingLineSimulator.known_faults()),
    ],
)
def test_simulate_lists_every_fault_with_what_it_does(
    kind: str, module: ModuleType, faults: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.SIMULATORS[kind] == module.__name__
    with pytest.raises(SystemExit):
        cli.main(["simulate", kind, "--help"])
    text = capsys.readouterr().out
    for name in faults:
        (described,) = re.findall(rf"(?m)^  {name}: (\S.*)$", text)
        assert len(described.split()) >= 3, name


def test_unknown_faults_and_stations_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown forging fault 'flood'"):
        ForgingSimulator(faults=["flood"])
    with pytest.raises(ValueError, match="unknown fault 'flood' for the welding-arc simulator"):
        ArcWeldingSimulator(faults=["flood"])
    with pytest.raises(ValueError, match="station must be one of ni1, ni2, anod, got 'ni9'"):
        PlatingLineSimulator(faults=["heater_failure:station=ni9"])


# --------------------------------------------------------------------------- forging faults


def strokes(sim: ForgingSimulator, n: int) -> list[forging.Stroke]:
    """Run n strokes of the model and return them."""
    start = sim.strokes
    sim.advance(n * 60.0 / sim.spm + 1e-6)
    return [s for s in sim.history if s.count > start][:n]


def peaks(run: list[forging.Stroke]) -> np.ndarray:
    """Peak force of each stroke."""
    return np.array([s.peak_kn for s in run])


def baseline_press(seed: int = 5) -> tuple[ForgingSimulator, list[forging.Stroke]]:
    """A healthy press and its first 100 strokes."""
    sim = ForgingSimulator(speed=1.0, seed=seed)
    return sim, strokes(sim, 100)


def test_double_blank_and_missing_billet_are_single_strokes_off_the_limits() -> None:
    sim, base = baseline_press()
    nominal = float(np.median(peaks(base)))
    sim.set_fault("double_blank")
    blank, after = strokes(sim, 1)[0], strokes(sim, 5)
    assert blank.peak_kn > 1.2 * nominal and "double_blank" not in sim.faults
    assert peaks(after).max() < 1.05 * nominal
    sim.set_fault("missing_billet", strokes=2)
    missing = strokes(sim, 3)
    assert peaks(missing)[:2].max() < 0.5 * nominal and peaks(missing)[2] > 0.9 * nominal


def test_die_wear_creeps_the_peak_up_and_widens_the_signature() -> None:
    sim, base = baseline_press()
    reference = T.reference_curve(np.array([s.signature for s in base]))
    sim.set_fault("die_wear", pct_per_1000=3.0)
    worn = strokes(sim, 1500)[-100:]
    assert peaks(worn).mean() > 1.035 * peaks(base).mean()  # +4.5 % after 1500 strokes
    windows = [(140.0, 175.0)]
    before = T.signature_deviation(np.array([s.signature for s in base]), reference, CRANK_ANGLE, windows)
    after = T.signature_deviation(np.array([s.signature for s in worn]), reference, CRANK_ANGLE, windows)
    assert np.median(after.rms) > 3 * np.median(before.rms)  # the loading flank widens
    sim.set_fault("die_wear", on=False)  # a die change
    assert peaks(strokes(sim, 50)).mean() < 1.01 * peaks(base).mean()


def test_off_centre_load_steps_the_balance_and_the_centre_of_load() -> None:
    sim, base = baseline_press()
    x = [c[1] for c in CHANNELS]
    y = [c[2] for c in CHANNELS]
    before = T.load_balance(np.array([s.channels_kn for s in base]), x, y)
    sim.set_fault("off_centre_load", shift=0.15)
    after = T.load_balance(np.array([s.channels_kn for s in strokes(sim, 50)]), x, y)
    assert np.median(before.left_right) == pytest.approx(-0.02, abs=0.01)
    assert np.median(after.left_right) == pytest.approx(-0.17, abs=0.01)  # the load moved right
    assert np.median(after.x_c) - np.median(before.x_c) == pytest.approx(120.0, abs=10.0)  # mm


def test_cold_billet_lowers_the_billet_temperature_and_raises_the_peak() -> None:
    sim, base = baseline_press()
    sim.set_fault("cold_billet", drop_c=80)
    cold = strokes(sim, 100)
    t_base = np.array([s.billet_c for s in base])
    t_cold = np.array([s.billet_c for s in cold])
    assert t_cold.mean() == pytest.approx(t_base.mean() - 80.0, abs=4.0) and t_cold.max() < 1150.0
    assert peaks(cold).mean() / peaks(base).mean() == pytest.approx(1.12, abs=0.02)


def test_shut_height_drift_moves_the_peak_angle() -> None:
    sim, base = baseline_press()
    sim.set_fault("shut_height_drift", deg_per_100=-0.5)
    drifted = strokes(sim, 600)[-50:]
    angles_base = T.stroke_indicators(
        np.array([s.signature for s in base]), CRANK_ANGLE, forging.RATED_KN
    ).peak_angle
    angles = T.stroke_indicators(
        np.array([s.signature for s in drifted]), CRANK_ANGLE, forging.RATED_KN
    ).peak_angle
    assert np.median(angles) - np.median(angles_base) == pytest.approx(-2.9, abs=0.6)  # -0.5° per 100 strokes
    signature_shift = T.signature_deviation(
        np.array([s.signature for s in drifted]), T.reference_curve(np.array([s.signature for s in base])),
        CRANK_ANGLE, [(160.0, 200.0)],
    ).peak_shift  # fmt: skip
    assert np.median(signature_shift) == pytest.approx(-2.9, abs=0.6)


# --------------------------------------------------------------------------- arc welding faults


def welds(sim: ArcWeldingSimulator, n: int) -> list[dict[str, float]]:
    """Run n welds and return each one's latched values (with its trace's indicators)."""
    out = []
    for _ in range(n):
        count = sim.values().get("weld_counter", 0)
        while sim.values().get("weld_counter", 0) == count:
            sim.advance(1.0)
        i, u = sim.trace()
        ind = T.arc_indicators(u[None, :], i[None, :], 1e-4)
        row = dict(sim.values())
        row.update(
            {
                f"trace_{k}": float(getattr(ind, k)[0])
                for k in ("short_period_cv", "voltage_cv", "power", "current_mean")
            }
        )
        row["trace_reason"] = int(ind.reason[0])
        out.append(row)
    return out


def mean(rows: list[dict[str, float]], key: str) -> float:
    """Mean of one value over rows."""
    return float(np.mean([r[key] for r in rows]))


def test_arc_welds_sit_in_the_wps_window_and_their_traces_are_short_circuit_transfer() -> None:
    rows = welds(ArcWeldingSimulator(speed=0, seed=2), 20)
    for key, lo, hi in (
        ("weld_current_mean", 130.0, 140.0),
        ("weld_voltage_mean", 19.5, 21.0),
        ("weld_travel_speed", 500.0, 600.0),
        ("weld_gas_flow_mean", 10.0, 15.0),
    ):
        assert all(lo <= r[key] <= hi for r in rows), key
    assert all(r["trace_reason"] == TraceReason.OK for r in rows)
    assert mean(rows, "trace_current_mean") == pytest.approx(mean(rows, "weld_current_mean"), rel=0.01)
    # the source's arc energy is Σu·i·Δt: below Ū·Ī·t, since the shorts carry the current at low voltage
    energy = np.array([r["weld_arc_energy"] for r in rows])
    ui_t = np.array([r["weld_current_mean"] * r["weld_voltage_mean"] * r["weld_arc_time"] for r in rows])
    assert ((energy < ui_t) & (energy > 0.8 * ui_t)).all()


def test_worn_contact_tip_lowers_wire_feed_and_current_and_makes_the_voltage_noisy() -> None:
    sim = ArcWeldingSimulator(speed=0, seed=2)
    base = welds(sim, 5)
    sim.set_fault("worn_contact_tip")
    worn = welds(sim, 5)
    assert mean(worn, "weld_wire_feed_mean") < 0.9 * mean(base, "weld_wire_feed_mean")
    assert mean(worn, "weld_current_mean") < 130.0 <= min(r["weld_current_mean"] for r in base)
    assert mean(worn, "trace_voltage_cv") > 1.05 * mean(base, "trace_voltage_cv")
    sim.advance(15.0)  # past the 10 s to the next seam
    assert sim.values()["motor_current"] > 1.3 * 1.2  # the drive pulls harder


def test_gas_loss_and_wrong_travel_speed() -> None:
    sim = ArcWeldingSimulator(speed=0, seed=2)
    base = welds(sim, 3)
    sim.set_fault("gas_loss")
    gasless = welds(sim, 3)
    assert mean(gasless, "weld_gas_flow_mean") < 5.0 < 10.0 <= mean(base, "weld_gas_flow_mean")
    sim.set_fault("gas_loss", on=False)
    sim.set_fault("wrong_travel_speed", factor=0.7)
    slow = welds(sim, 3)

    def heat_input(rows: list[dict[str, float]]) -> float:
        power = np.array([r["weld_arc_energy"] / r["weld_arc_time"] for r in rows])
        speed = np.array([r["weld_travel_speed"] for r in rows])
        return float(np.mean(T.heat_input_kj_per_mm(power, speed, T.ARC_EFFICIENCY["MAG"])))

    assert heat_input(base) == pytest.approx(0.23, abs=0.02)
    assert heat_input(slow) / heat_input(base) == pytest.approx(1 / 0.7, rel=0.05)  # Q steps up


def test_unstable_transfer_raises_the_short_circuit_period_cv() -> None:
    sim = ArcWeldingSimulator(speed=0, seed=2)
    base = welds(sim, 10)
    sim.set_fault("unstable_transfer")
    unstable = welds(sim, 10)
    assert np.median([r["trace_short_period_cv"] for r in unstable]) > 2 * np.median(
        [r["trace_short_period_cv"] for r in base]
    )
    assert sum(r["weld_arc_breaks"] for r in unstable) > 0 == sum(r["weld_arc_breaks"] for r in base)


def test_no_arc_gives_a_weld_with_no_data_not_a_number() -> None:
    sim = ArcWeldingSimulator(speed=0, seed=2, faults=["no_arc"])
    (row,) = welds(sim, 1)
    assert row["trace_reason"] == TraceReason.NO_CURRENT and np.isnan(row["trace_power"])
    assert row["weld_arc_time"] == 0.0 and row["weld_current_mean"] == 0.0


# --------------------------------------------------------------------------- spot welding faults


def spots(sim: SpotWeldingSimulator, n: int) -> list[dict[str, Any]]:
    """Run n spots; each one's latched values and its trace's indicators (current in A for the core)."""
    out = []
    for _ in range(n):
        count = sim.values()["spot_counter"]
        while sim.values()["spot_counter"] == count:
            sim.advance(1.0)
        i, u = sim.trace()
        ind = T.spot_weld_indicators(u[None, :], i[None, :] * 1000.0, 0.001, min_current=1000.0)
        row = dict(sim.values())
        row.update({k: float(getattr(ind, k)[0]) for k in ("energy", "r_beta", "expulsion_drop")})
        row["trace_expulsion"] = bool(ind.expulsion[0])
        out.append(row)
    return out


def test_spot_welds_in_the_iso_window_and_the_trace_agrees_with_the_controller() -> None:
    rows = spots(SpotWeldingSimulator(speed=0, seed=4), 30)
    assert all(8.0 <= r["weld_current"] <= 12.0 and 2.5 <= r["electrode_force"] <= 3.2 for r in rows)
    assert all(r["energy"] == pytest.approx(r["spot_energy"], rel=1e-4) for r in rows)
    assert not any(r["trace_expulsion"] or r["expulsion"] for r in rows)
    assert all(140e-6 < r["r_beta"] < 200e-6 for r in rows)


def test_expulsion_drops_the_resistance_and_sinks_the_electrodes() -> None:
    sim = SpotWeldingSimulator(speed=0, seed=4)
    base = spots(sim, 10)
    sim.set_fault("expulsion")
    expelled = spots(sim, 10)
    assert all(r["trace_expulsion"] and r["expulsion"] for r in expelled)  # the trace step detector sees it
    assert mean(expelled, "electrode_displacement") > mean(base, "electrode_displacement") + 0.05


def test_tip_mushrooming_passes_the_dress_interval_and_lowers_r_beta_and_energy() -> None:
    sim = SpotWeldingSimulator(speed=0, seed=4)
    fresh = spots(sim, 10)
    spots(sim, 185)
    sim.set_fault("tip_mushrooming")
    spots(sim, 100)
    mushroomed = spots(sim, 10)
    assert (
        min(r["spots_since_dress"] for r in mushroomed) > mushroomed[0]["dress_interval"]
    )  # the counter rule
    assert mushroomed[-1]["tip_dress_counter"] == fresh[-1]["tip_dress_counter"]  # no dress happened
    assert mean(mushroomed, "r_beta") < 0.8 * mean(fresh, "r_beta")
    assert mean(mushroomed, "dynamic_resistance") < 0.8 * mean(fresh, "dynamic_resistance")
    # the stepper raises the current, yet the energy per spot still falls
    assert mean(mushroomed, "spot_energy") < 0.95 * mean(fresh, "spot_energy")


def test_shunting_lowers_resistance_and_energy() -> None:
    sim = SpotWeldingSimulator(speed=0, seed=4)
    base = spots(sim, 10)
    sim.set_fault("shunting")
    shunted = spots(sim, 10)
    assert mean(shunted, "r_beta") / mean(base, "r_beta") == pytest.approx(0.7, abs=0.05)
    assert mean(shunted, "spot_energy") / mean(base, "spot_energy") == pytest.approx(0.7, abs=0.05)


# --------------------------------------------------------------------------- plating faults


def run(sim: PlatingLineSimulator, seconds: int, keys: list[str]) -> dict[str, np.ndarray]:
    """Advance second by second and record the given values."""
    out: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(seconds):
        sim.advance(1.0)
        v = sim.values()
        for k in keys:
            out[k].append(v[k])
    return {k: np.array(x) for k, x in out.items()}


def line(seed: int = 6) -> PlatingLineSimulator:
    """The line an hour after start, its first loads done."""
    sim = PlatingLineSimulator(speed=0, seed=seed)
    sim.advance(3600)  # past the first loads
    return sim


def test_plating_line_runs_its_recipes() -> None:
    sim = line()
    rec = run(sim, 2 * 3600, ["ni1_current", "ni1_load_area", "ni1_voltage", "ni1_ampere_hours", "anod_current",
                              "anod_load_area", "anod_voltage", "anod_bath_temp", "ni1_bath_temp", "ni1_ph"])  # fmt: skip
    on = rec["ni1_current"] > 0.95 * rec["ni1_current"].max()
    j, reason = T.current_density(rec["ni1_current"][on], rec["ni1_load_area"][on], rec["ni1_voltage"][on])
    assert (reason == TraceReason.OK).all() and np.median(j) == pytest.approx(4.0, rel=0.02)
    assert (np.diff(rec["ni1_ampere_hours"]) >= 0).all()
    assert rec["ni1_ampere_hours"][-1] - rec["ni1_ampere_hours"][0] == pytest.approx(
        float(T.ampere_hours(rec["ni1_current"][None, :], np.arange(2 * 3600.0))[0][0]), rel=0.01
    )
    anod = rec["anod_current"] > 0.95 * rec["anod_current"].max()
    assert np.median(rec["anod_current"][anod] / rec["anod_load_area"][anod]) == pytest.approx(1.5, rel=0.02)
    assert rec["anod_voltage"][anod].min() > 11.0 and rec["anod_voltage"].max() < 19.0  # type II, 12-20 V
    assert rec["anod_bath_temp"].min() > 16.0 and rec["anod_bath_temp"].max() < 27.0
    assert rec["ni1_bath_temp"].min() > 50.0 and rec["ni1_bath_temp"].max() < 60.0
    assert rec["ni1_ph"].min() > 3.8 and rec["ni1_ph"].max() < 4.5


def steady_slope(sim: PlatingLineSimulator, prefix: str, seconds: int = 900) -> float:
    """dU/dt at constant current over the next `seconds` of one station, in V per hour."""
    rec = run(sim, seconds, [f"{prefix}_current", f"{prefix}_voltage"])
    out = T.voltage_rise(np.arange(float(seconds)), rec[f"{prefix}_voltage"], rec[f"{prefix}_current"])
    assert out.reason[0] == TraceReason.OK
    return float(out.slope[0]) * 3600.0  # V per hour


def test_anode_passivation_raises_the_voltage_at_constant_current() -> None:
    sim = line()
    run(sim, 1200 - int(sim.stations["ni1"].in_tank_s) + 60 + 60, [])  # the start of a load, past its ramp
    healthy = steady_slope(sim, "ni1")
    sim.set_fault("anode_passivation", ohm_per_h=0.01)
    run(sim, 1200 - int(sim.stations["ni1"].in_tank_s) + 60 + 60, [])
    passivating = steady_slope(sim, "ni1")
    assert abs(healthy) < 0.3 and passivating == pytest.approx(1.6, abs=0.4)  # 0.01 Ω/h at ~160 A


def test_rack_contact_raises_one_stations_voltage_then_limits_its_current() -> None:
    sim = line()
    sim.set_fault("rack_contact", ohm=0.015)
    rec = run(sim, 1800, ["ni1_voltage", "ni2_voltage", "ni1_current", "ni2_current"])
    both = (rec["ni1_current"] > 150) & (rec["ni2_current"] > 150)
    assert np.median(rec["ni2_voltage"][both] - rec["ni1_voltage"][both]) == pytest.approx(2.4, abs=0.4)
    sim.set_fault("rack_contact", ohm=0.1)
    rec = run(sim, 1800, ["ni2_voltage", "ni2_current", "ni2_current_setpoint"])
    on = rec["ni2_current_setpoint"] > 0
    assert rec["ni2_voltage"][on].max() <= 12.2 and np.median(rec["ni2_current"][on]) < 0.6 * np.median(
        rec["ni2_current_setpoint"][on]
    )


def test_ph_drift_trends_the_ph_up() -> None:
    sim = line()
    sim.set_fault("ph_drift", per_h=0.3)
    ph = run(sim, 3600, ["ni1_ph"])["ni1_ph"]
    assert ph[-1] - ph[0] == pytest.approx(0.3, abs=0.05) and ph[-1] > 4.45
    assert np.polyfit(np.arange(3600.0), ph, 1)[0] > 0


def test_heater_and_chiller_failures_take_the_baths_out_of_their_bands() -> None:
    sim = line()
    sim.set_fault("heater_failure")
    sim.set_fault("chiller_failure")
    rec = run(sim, 2 * 3600, ["ni1_bath_temp", "ni2_bath_temp", "anod_bath_temp", "ni1_heater_output"])
    assert rec["ni1_bath_temp"][-1] < 50.0 and rec["ni2_bath_temp"].min() > 50.0
    assert rec["anod_bath_temp"][-1] > 27.0
    assert rec["ni1_heater_output"].max() == 0.0


def test_brightener_depletion_stops_the_doses_while_the_ampere_hours_grow() -> None:
    sim = line()
    sim.set_fault("brightener_depletion")
    rec = run(sim, 3600, ["ni1_brightener_doses", "ni1_ampere_hours", "ni2_brightener_doses"])
    assert rec["ni1_brightener_doses"][-1] == rec["ni1_brightener_doses"][0]
    assert rec["ni1_ampere_hours"][-1] - rec["ni1_ampere_hours"][0] > 2 * plating.DOSE_EVERY_AH
    assert rec["ni2_brightener_doses"][-1] > rec["ni2_brightener_doses"][0]


def load_totals(sim: PlatingLineSimulator, prefix: str, seconds: int) -> tuple[float, float, float]:
    """(median current density while plating, longest dwell seen, Ah per load) over `seconds`."""
    rec = run(sim, seconds, [f"{prefix}_current", f"{prefix}_load_area", f"{prefix}_dwell_time",
                             f"{prefix}_ampere_hours", f"{prefix}_load_counter"])  # fmt: skip
    on = rec[f"{prefix}_current"] > 0.9 * rec[f"{prefix}_current"].max()
    j = float(np.median(rec[f"{prefix}_current"][on] / rec[f"{prefix}_load_area"][on]))
    loads = rec[f"{prefix}_load_counter"][-1] - rec[f"{prefix}_load_counter"][0]
    ah = rec[f"{prefix}_ampere_hours"][-1] - rec[f"{prefix}_ampere_hours"][0]
    return j, float(rec[f"{prefix}_dwell_time"][on].max()), ah / max(loads, 1)


def test_wrong_recipe_and_short_dwell_change_current_density_and_charge() -> None:
    sim = line()
    j0, dwell0, ah0 = load_totals(sim, "ni1", 5 * 1260)
    sim.set_fault("wrong_recipe", factor=1.4)
    j1, _, _ = load_totals(sim, "ni1", 2 * 1260)
    sim.set_fault("wrong_recipe", on=False)
    sim.set_fault("short_dwell", factor=0.6)
    _, dwell2, ah2 = load_totals(sim, "ni1", 6 * 780)
    assert j0 == pytest.approx(4.0, rel=0.02) and j1 == pytest.approx(5.6, rel=0.03)
    assert dwell2 < 0.65 * dwell0 and ah2 == pytest.approx(0.6 * ah0, rel=0.1)
    # predicted thickness per load falls with the charge (Faraday, bright nickel at 95 %)
    assert T.faraday_thickness_um(ah2, 40.0, 0.95, "Ni") < 0.7 * T.faraday_thickness_um(ah0, 40.0, 0.95, "Ni")


def test_anodize_burning_spikes_the_current_and_collapses_the_voltage() -> None:
    sim = line()
    while not (sim.values()["anod_current"] > 0.95 * sim.stations["anod"].setpoint_a > 0):
        sim.advance(1.0)
    before = run(sim, 30, ["anod_current", "anod_voltage"])
    sim.set_fault("anodize_burning")
    burning = run(sim, 5, ["anod_current", "anod_voltage"])
    after = run(sim, 5, ["anod_current"])
    assert burning["anod_current"].max() > 1.8 * np.median(before["anod_current"])
    assert burning["anod_voltage"].min() < 0.7 * np.median(before["anod_voltage"])
    assert "anodize_burning" not in sim.active_faults and after["anod_current"].max() < 1.1 * np.median(
        before["anod_current"]
    )


def test_a_failed_current_shunt_reads_0_a_at_full_voltage_and_is_no_data() -> None:
    sim = line()
    sim.set_fault("current_sensor_failure")
    rec = run(sim, 600, ["ni1_current", "ni1_voltage", "ni1_load_area"])
    up = rec["ni1_voltage"] > 3.0
    assert up.any() and (rec["ni1_current"] == 0.0).all()
    j, reason = T.current_density(rec["ni1_current"][up], rec["ni1_load_area"][up], rec["ni1_voltage"][up])
    assert (reason == TraceReason.OPEN_CIRCUIT).all() and np.isnan(j).all()
