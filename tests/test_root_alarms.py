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

import pytest
import pytest_asyncio

from edge_agent.simulators.forging import ForgingSimulator
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
        return self.fault


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
