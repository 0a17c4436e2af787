"""Every fault of DOMAIN-ROOT.md's fault -> detector tables raises the alarm of its detector, after the baseline.

Each machine runs as its simulator behind its real server, read by the agent's real driver with
the shipped config and profile; the simulator's clock is stepped by hand (tests/root_rig.py), so
each fault is injected once the control limits are set and the number of cycles (strokes, welds,
spots) or simulated seconds its detector needed is counted and bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from edge_agent.simulators.forging import ForgingSimulator
from edge_agent.simulators.plating import PlatingLineSimulator, tanks_toml
from edge_agent.simulators.welding_arc import ArcWeldingSimulator
from edge_agent.simulators.welding_spot import SpotWeldingSimulator
from tests.root_rig import Rig

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One row of a fault -> detector table: the fault, its parameters, and the alarm that must follow."""

    fault: str
    signal: str
    rules: frozenset[str]
    within: int
    """Cycles (or steps) after the injection by which the alarm must have started."""
    params: tuple[tuple[str, float], ...] = ()
    direction: int = 0
    """+1 (-1): the alarm's value must be above (below) its limit, the side the fault drives it to."""

    def __str__(self) -> str:
        return f"{self.fault}-{self.signal}"


# --------------------------------------------------------------------------- forging (DOMAIN-ROOT.md §1)

#: One press stroke per step (20 strokes per minute).
STROKE_S = 3.0
#: Strokes before any fault: phase I of the charts (baseline_samples = 50) and the pre-whitener.
FORGING_BASELINE = 60

# Bounds: a one-stroke fault (double blank, missing billet, cold billet, off-centre part) is outside its
# limit on the stroke it happens; the alarm delay of the device-level alarms (5 s) adds two strokes. The
# drifts run 10x faster than the DOMAIN-ROOT.md rates so a test sees them: die wear +0.03 % per stroke
# against a 0.7 % peak sd (EWMA/CUSUM of a 1-sigma shift: ~10 samples once it is there, ~25 strokes to
# get there), shut height -0.05 deg per stroke against a 0.15 deg peak-angle sd.
FORGING_ROWS = [
    Row("double_blank", "peak_force", frozenset({"spec"}), 1, direction=1),
    Row("missing_billet", "peak_force", frozenset({"spec"}), 1, direction=-1),
    Row("die_wear", "peak_force", frozenset({"ewma", "cusum"}), 60, (("pct_per_1000", 30.0),), 1),
    # the signature widens with the wear (the force signature read as a 720-point OPC UA array): RMS off
    # the reference (the median of the first 20 strokes) passes 8 % in the loading window
    Row("die_wear", "stroke", frozenset({"signature"}), 60, (("pct_per_1000", 100.0),), 1),
    Row("off_centre_load", "stroke", frozenset({"eccentric_load"}), 3, direction=1),
    Row("cold_billet", "billet_temp", frozenset({"spec"}), 1, direction=-1),
    Row("shut_height_drift", "peak_angle", frozenset({"ewma", "rules"}), 60, (("deg_per_100", -5.0),), -1),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def press() -> AsyncIterator[ForgingSimulator]:
    """One press server for the module; its clock barely moves on its own (the rig steps it)."""
    sim = ForgingSimulator(speed=1e-9, seed=5)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("row", FORGING_ROWS, ids=str)
async def test_forging_fault_raises_its_alarm(press: ForgingSimulator, row: Row, tmp_path: Path) -> None:
    rig = await Rig.open(press, press.device_config(), tmp_path, STROKE_S)
    try:
        await rig.step(FORGING_BASELINE)
        await rig.in_control(row.signal, row.rules)
        press.set_fault(row.fault, True, **dict(row.params))
        strokes = await rig.until(row.signal, row.rules, row.within, direction=row.direction)
        print(f"{row.fault}: {sorted(row.rules)} on {row.signal} after {strokes} stroke(s)")
    finally:
        for name in list(press.faults):
            press.set_fault(name, False)
        await rig.close()


# --------------------------------------------------------------------------- plating (DOMAIN-ROOT.md §3)


@dataclass(frozen=True)
class TankRow:
    """A plating fault on one station: the tank device read, the step (poll) size, baseline and bound in steps."""

    row: Row
    station: str
    step_s: float
    baseline: int = 60

    def __str__(self) -> str:
        return f"{self.row.fault}@{self.station}"


# Bounds (simulated time = steps × step_s; a load is 20 min of plating and 1 min out, 30 + 1 for anodizing):
# a fault that acts while the rectifier is off waits up to the load gap (60 s). The drifts run faster
# than the simulator's defaults where those take hours (passivation 0.05 Ω/h).
PLATING_ROWS = [
    # R = U/I +0.05 Ω/h on 0.037 Ω: the EWMA passes +15 % after ~7 min of plating
    TankRow(
        Row("anode_passivation", "tank", frozenset({"resistance"}), 300, (("ohm_per_h", 0.05),)), "ni1", 2.0
    ),
    # +0.015 Ω on ni2: U/I +40 % at once, the EWMA passes 15 % within 5 samples (after the gap at worst)
    TankRow(Row("rack_contact", "tank", frozenset({"resistance"}), 45), "ni2", 2.0),
    # +0.3 pH/h against the probes' ±0.02, read every 10 s: one sigma in 4 min, the EWMA a few minutes later
    # (its limits come from 100 readings: the baseline is 17 min)
    TankRow(Row("ph_drift", "ph", frozenset({"ewma"}), 450, direction=1), "ni1", 2.0, baseline=550),
    # the bath cools from 55 °C at ~10 K/h: below 50 °C in ~30 min (the window + the 2 s delay)
    TankRow(Row("heater_failure", "bath_temp", frozenset({"spec"}), 250, direction=-1), "ni1", 10.0),
    # the rectifier's ~2 kW warm the anodizing bath ~3.5 K/h from 21 °C: above 27 °C in ~2 h
    TankRow(Row("chiller_failure", "bath_temp", frozenset({"spec"}), 900, direction=1), "anod", 10.0),
    # doses every 50 Ah stop: overdue at 60 Ah since the last, up to 110 Ah (~45 min) after the fault
    TankRow(Row("brightener_depletion", "tank", frozenset({"dose_overdue"}), 300), "ni1", 10.0),
    # 1.4x the recipe's current: 5.6 A/dm² outside 3.5-4.5 once the current is steady
    TankRow(Row("wrong_recipe", "tank", frozenset({"current_density"}), 15), "ni1", 10.0),
    # dwell 0.6x: the next complete load has ~9 µm against 12 (at most two loads, 42 min)
    TankRow(Row("short_dwell", "tank_load", frozenset({"thickness"}), 300), "ni1", 10.0, baseline=300),
    # the current spikes 2x for 5 s: the burning alarm after its 2 s delay, once the rectifier is on
    TankRow(Row("anodize_burning", "tank", frozenset({"current_spike"}), 90), "anod", 1.0),
    # 0 A read at full voltage: open circuit (and current density no data) after its 2 s delay
    TankRow(Row("current_sensor_failure", "tank", frozenset({"open_circuit"}), 90), "ni1", 1.0),
]


@pytest.mark.parametrize("tank", PLATING_ROWS, ids=str)
async def test_plating_fault_raises_its_alarm(tank: TankRow, tmp_path: Path) -> None:
    row = tank.row
    sim = PlatingLineSimulator(speed=0, seed=8)
    sim.advance(300.0)  # into the first load
    await sim.start()
    config = tanks_toml("plating", sim.endpoint, stations=[tank.station])
    rig = await Rig.open(sim, config, tmp_path, tank.step_s)
    try:
        await rig.step(tank.baseline)
        await rig.in_control(row.signal, row.rules)
        params = dict(row.params)
        if row.fault not in ("chiller_failure", "anodize_burning"):
            params["station"] = tank.station  # type: ignore[assignment]
        sim.set_fault(row.fault, True, **params)
        steps = await rig.until(row.signal, row.rules, row.within, direction=row.direction)
        print(f"{tank}: {sorted(row.rules)} on {row.signal} after {steps * tank.step_s:g} s")
    finally:
        await rig.close()
        await sim.stop()


async def test_a_healthy_plating_line_raises_nothing_and_reports_its_loads(tmp_path: Path) -> None:
    """Two hours of the three tanks without a fault: no alarm, and each load's charge and deposit as the recipe makes them."""
    sim = PlatingLineSimulator(speed=0, seed=8)
    sim.advance(300.0)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, 4.0)
    try:
        await rig.step(1800)
    finally:
        await rig.close()
        await sim.stop()
    # the pH EWMA judges ~600 readings per tank in two hours: its in-control run length (~370 readings)
    # allows a false alarm or two; nothing else may start
    started = [(a.device, a.signal, a.rule) for a in rig.starts()]
    assert [a for a in started if a[1:] != ("ph", "ewma")] == []
    assert len(started) <= 2
    loads = {d: [f for dev, s, f in rig.records if dev == d and s == "tank_load"] for d in rig.drivers}
    # the load in the tank when the agent started is not published (it saw only part of it)
    assert [len(v) for v in loads.values()] == [5, 5, 3]
    for device, records in loads.items():
        for f in records:
            assert f["reason"] == 0 and f["skipped"] == 0
            if device.endswith("anod"):
                # 1.5 A/dm² for 30 min with a 60 s ramp: 0.328 µm per A·min/dm² (720 rule) -> ~14.5 µm
                assert f["current_density"] == pytest.approx(1.48, abs=0.03)
                assert f["thickness_um"] == pytest.approx(14.5, abs=0.4)
                assert f["voltage_slope"] > 0.1  # V/min: the film grows at constant current
            else:
                # 4 A/dm² for 20 min (30 s ramp), Ni 0.205 µm per A·min/dm² at 95 %: ~15.4 µm
                assert f["current_density"] == pytest.approx(3.95, abs=0.05)
                assert f["thickness_um"] == pytest.approx(15.4, abs=0.3)
                assert abs(f["voltage_slope"]) < 0.005
    tank = [f for dev, s, f in rig.records if dev == "plating-ni1" and s == "tank"]
    plating = [f for f in tank if f["reason"] == 0]
    idle = [f for f in tank if f["reason"] != 0]
    assert {f["reason"] for f in idle} == {5.0}  # NO_CURRENT between loads, j is NaN, not 0
    assert all(np.isnan(f["current_density"]) for f in idle)
    assert np.nanmedian([f["current_density"] for f in plating]) == pytest.approx(4.0, abs=0.05)


# --------------------------------------------------------------------------- welding (DOMAIN-ROOT.md §2)

#: Arc welding: a 2 s poll (the WPS window counts the polls with the arc on); a weld every 37.3 s.
ARC_STEP_S = 2.0
WELD_S = 37.3
#: Welds before any fault: phase I of the per-weld charts (baseline_samples = 50) and the pre-whitener.
ARC_BASELINE_WELDS = 60

# Bounds in welds: the weld in progress when the fault starts is partly faulty, the next one wholly.
ARC_ROWS = [
    # wire feed and current -12 %: the live current leaves the WPS window for the whole weld
    Row("worn_contact_tip", "weld", frozenset({"wps_window"}), 2),
    # 4 L/min of gas against the 10-15 window of the weld's mean flow
    Row("gas_loss", "weld_gas_flow_mean", frozenset({"spec"}), 2, direction=-1),
    # travel at 0.7x: Q = 0.23 -> 0.33 kJ/mm, above the 0.28 of the WPS
    Row("wrong_travel_speed", "weld", frozenset({"heat_input"}), 2, direction=1),
    # short-circuit period CV 0.15 -> 0.5 in the weld's 10 kHz trace (read as a 500-point register block):
    # its EWMA (lambda 0.3) passes 0.3 on the second unstable weld
    Row("unstable_transfer", "weld", frozenset({"arc_stability"}), 4, direction=1),
    # no arc: a weld with 0 A has no heat input (reason NO_CURRENT) and raises no_arc
    Row("no_arc", "weld", frozenset({"no_arc"}), 2),
]


@pytest.mark.parametrize("row", ARC_ROWS, ids=str)
async def test_arc_welding_fault_raises_its_alarm(row: Row, tmp_path: Path) -> None:
    sim = ArcWeldingSimulator(speed=0, seed=12)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, ARC_STEP_S)
    try:
        await rig.step(round(ARC_BASELINE_WELDS * WELD_S / ARC_STEP_S))
        await rig.in_control(row.signal, row.rules)
        sim.set_fault(row.fault, True, **dict(row.params))
        within = round(row.within * WELD_S / ARC_STEP_S) + 1
        steps = await rig.until(row.signal, row.rules, within, direction=row.direction)
        print(
            f"{row.fault}: {sorted(row.rules)} on {row.signal} after {steps * ARC_STEP_S / WELD_S:.1f} weld(s)"
        )
    finally:
        await rig.close()
        await sim.stop()


#: Spot welding: one spot per 3 s step.
SPOT_S = 3.0
#: Spots before any fault: the tip-age references are learned over a whole dress interval (200 spots).
SPOT_BASELINE = 230

SPOT_ROWS = [
    # the dresser skips: the counter rule fires on the first spot past the interval (at most a whole
    # interval after the fault, depending on where the tips are in theirs)
    Row("tip_mushrooming", "spot", frozenset({"dress_overdue"}), 202),
    # every spot expels: 3 of the last 20 spots pass the 10 % rate
    Row("expulsion", "spot", frozenset({"expulsion_rate"}), 3),
    # the current finds another path: energy and resistance 70 % of the tip age's reference
    Row("shunting", "spot", frozenset({"weak_spot"}), 2),
]


@pytest.mark.parametrize("row", SPOT_ROWS, ids=str)
async def test_spot_welding_fault_raises_its_alarm(row: Row, tmp_path: Path) -> None:
    sim = SpotWeldingSimulator(speed=0, seed=12)
    await sim.start()
    rig = await Rig.open(sim, sim.device_config(), tmp_path, SPOT_S)
    try:
        await rig.step(SPOT_BASELINE)
        await rig.in_control(row.signal, row.rules)
        sim.set_fault(row.fault, True, **dict(row.params))
        spots = await rig.until(row.signal, row.rules, row.within, direction=row.direction)
        print(f"{row.fault}: {sorted(row.rules)} on {row.signal} after {spots} spot(s)")
    finally:
        await rig.close()
        await sim.stop()
