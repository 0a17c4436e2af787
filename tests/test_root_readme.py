"""README.md's steps for forging, welding and plating, pasted as written: each starts its simulator on the
port its shipped config names, reads every tag once with `edge-agent read`, and stops the simulator.

The blocks are read from the README at test time and run by bash in a folder laid out like a checkout
(`.venv/bin` is this test's venv, `config/` a copy), as tests/test_tutorial.py does for the tutorial.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "## Forging, welding and plating"
#: config file -> the port its endpoint names, per step
CONFIGS = ("forging.toml", "welding-arc.toml", "welding-spot.toml", "plating.toml")


def section_blocks() -> list[str]:
    """The ```sh blocks of the README's section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"(?ms)^```sh\n(.*?)^```", section)


def _port(config: str) -> int:
    endpoint = load_config(REPO / "config" / config).devices[0].endpoint
    return int(endpoint.rsplit(":", 1)[1].split("/")[0])


def _busy(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder the README's relative paths work in, without touching the real checkout."""
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(Path(sys.executable).parent, target_is_directory=True)
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def test_the_other_root_processes_as_written(checkout: Path) -> None:
    blocks = section_blocks()
    assert len(blocks) == 3, "the section's steps changed: update this test"
    busy = [p for p in map(_port, CONFIGS) if _busy(p)]
    if busy:
        pytest.skip(f"the shipped configs' ports {busy} are in use on this machine")
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    out = []
    for block in blocks:
        # its own process group: a simulator the block failed to stop is stopped with it
        done = subprocess.run(
            ["bash", "-c", block],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        out += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for config in CONFIGS:
        for device in load_config(REPO / "config" / config).devices:
            tags = [t.name for t in device.tags if t.points is None]
            got = {r["tag"]: r for r in out if r["device"] == device.name}
            assert sorted(got) == sorted(tags), device.name
            assert all(r["quality"] == "GOOD" for r in got.values()), device.name
    # the simulators are gone: their ports are free again
    assert [p for p in map(_port, CONFIGS) if _busy(p)] == []
