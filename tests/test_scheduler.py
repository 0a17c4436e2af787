"""The poller keeps each scan class on its period, skips overrun slots, and isolates failures."""

from __future__ import annotations

import asyncio

import numpy as np

from edge_agent.drivers.base import TagGroup, scan_groups
from edge_agent.scheduler import DevicePoller, phase_of
from edge_agent.types import Readings


class TimedDriver:
    """A driver whose reads take a set time; stands in for a device's response time, not for a protocol."""

    def __init__(self, groups: list[TagGroup], read_s: dict[float, float]) -> None:
        self.name = "timed"
        self._groups = groups
        self.read_s = read_s
        self.reads: list[tuple[float, float]] = []  # (interval, loop time at start)
        self.fail_next = False

    def groups(self) -> list[TagGroup]:
        return self._groups

    async def connect(self) -> None:
        return None

    async def read(self, group: TagGroup) -> Readings:
        self.reads.append((group.interval_s, asyncio.get_running_loop().time()))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("driver bug")
        await asyncio.sleep(self.read_s.get(group.interval_s, 0.0))
        n = len(group.tags)
        return Readings.of(np.arange(n), 0, np.ones(n))

    async def close(self) -> None:
        return None


def test_scan_groups_by_interval_fastest_first() -> None:
    tags = [("a", None, True), ("b", 0.1, True), ("c", 10.0, True), ("d", None, True), ("e", 0.1, False)]
    assert scan_groups(tags, 1.0) == [
        TagGroup(0.1, ("b",)),
        TagGroup(1.0, ("a", "d")),
        TagGroup(10.0, ("c",)),
    ]


async def test_each_group_keeps_its_period() -> None:
    driver = TimedDriver([TagGroup(0.05, ("fast",)), TagGroup(0.2, ("slow", "slow2"))], {})
    got: list[int] = []
    poller = DevicePoller(driver, lambda _d, _g, r, _l: got.append(len(r)))
    poller.start()
    await asyncio.sleep(1.02)
    await poller.stop()
    fast = [t for iv, t in driver.reads if iv == 0.05]
    slow = [t for iv, t in driver.reads if iv == 0.2]
    assert 19 <= len(fast) <= 22
    assert 5 <= len(slow) <= 6
    assert abs(np.median(np.diff(fast)) - 0.05) < 0.01
    assert poller.stats.overruns == 0
    assert poller.stats.values == sum(got) == len(fast) + 2 * len(slow)


async def test_overrun_is_counted_and_skipped_not_piled_up() -> None:
    # every read takes 0.25 s on a 0.1 s period: slots are skipped, reads never queue up
    driver = TimedDriver([TagGroup(0.1, ("x",))], {0.1: 0.25})
    poller = DevicePoller(driver, lambda *_: None, spread=False)  # slots on the start's grid
    poller.start()
    await asyncio.sleep(1.05)
    await poller.stop()
    starts = np.array([t for _, t in driver.reads])
    assert 3 <= len(starts) <= 4
    # each read starts on a slot boundary after the previous one ended: 0.3 s apart
    assert np.allclose(np.diff(starts), 0.3, atol=0.03)
    assert poller.stats.overruns == poller.stats.polls
    assert poller.stats.skipped == 2 * poller.stats.polls


async def test_a_failing_read_is_counted_and_polling_goes_on() -> None:
    driver = TimedDriver([TagGroup(0.05, ("x",))], {})
    driver.fail_next = True
    poller = DevicePoller(driver, lambda *_: None)
    poller.start()
    await asyncio.sleep(0.3)
    await poller.stop()
    assert poller.stats.errors == 1
    assert poller.stats.polls >= 4


class SwallowingDriver(TimedDriver):
    """Turns a cancellation inside the read into a bad-quality result, as some protocol libraries do."""

    async def read(self, group: TagGroup) -> Readings:
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            return Readings.of(np.arange(len(group.tags)), 0, np.full(len(group.tags), np.nan), 0x87)
        return Readings.of(np.arange(len(group.tags)), 0, np.ones(len(group.tags)))


async def test_stop_ends_a_poller_whose_driver_swallows_the_cancellation() -> None:
    poller = DevicePoller(SwallowingDriver([TagGroup(0.05, ("x",))], {}), lambda *_: None)
    poller.start()
    await asyncio.sleep(0.3)
    await asyncio.wait_for(poller.stop(), timeout=2.0)
    assert poller._task is None


async def test_devices_poll_at_their_own_phase_after_a_first_read_at_start() -> None:
    driver = TimedDriver([TagGroup(0.1, ("x",))], {})
    poller = DevicePoller(driver, lambda *_: None)
    began = asyncio.get_running_loop().time()
    poller.start()
    await asyncio.sleep(0.55)
    await poller.stop()
    starts = np.array([t for _, t in driver.reads]) - began
    phase = phase_of("timed", 0.1)
    assert starts[0] < 0.02  # values at once after a (re)start
    # then on the device's own grid: phase + k x period
    assert np.allclose(starts[1:], phase + 0.1 * np.arange(1, len(starts)), atol=0.02)


def test_phases_spread_devices_over_the_period_on_a_grid_and_stay_put() -> None:
    phases = np.array([phase_of(f"dev{k:03d}", 0.5) for k in range(100)])
    # ten 50 ms steps in a 0.5 s period, each holding some devices and none a crowd
    steps, counts = np.unique(np.round(phases / 0.05).astype(int), return_counts=True)
    assert np.allclose(phases / 0.05, np.round(phases / 0.05))
    assert steps.tolist() == list(range(10)) and counts.min() >= 3 and counts.max() <= 20
    assert phase_of("dev007", 0.5) == phases[7]  # the same name polls at the same phase after a restart
    assert phase_of("dev007", 0.05) == phase_of("dev007", 0.01) == 0.0  # fast classes: no grid to spread on
