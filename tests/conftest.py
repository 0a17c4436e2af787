"""Shared fixtures: a real Mosquitto broker and a real VictoriaMetrics (InfluxDB v2 write API) per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, VictoriaMetrics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto broker on a free loopback port for the whole session."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics single node on a free loopback port for the whole session."""
    vm = VictoriaMetrics(tmp_path_factory.mktemp("victoria"))
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()
