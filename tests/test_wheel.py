"""The wheel as users install it: built from the checkout, installed into a fresh venv outside it, run from a
temporary folder with copies of the shipped configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command with a clean environment (no PYTHONPATH, so nothing of the checkout leaks in)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _package_files() -> set[str]:
    """The package's files as git sees them, reached through the symlinks in edge_agent/ as the wheel holds them."""
    links = {
        "edge_agent/drivers/": "drivers/",
        "edge_agent/simulators/": "simulators/",
        "edge_agent/builtin/": "config/",
    }
    out = set()
    for name in _sources():
        for inside, source in links.items():
            if name.startswith(source):
                out.add(inside + name.removeprefix(source))
        if name.startswith("edge_agent/"):
            out.add(name)
    return out


def _sources() -> list[str]:
    """The checkout's files as git sees them (tracked, plus new ones not ignored): no build/ left by an earlier build."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and os.path.lexists(REPO / name)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from a copy of the checkout's sources (symlinks kept as symlinks)."""
    tree = tmp_path_factory.mktemp("sources")
    for name in _sources():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target, follow_symlinks=False)
    dist = tmp_path_factory.mktemp("dist")
    done = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(tree)], dist, 300
    )
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("edge_agent-*.whl")
    return built


@pytest.fixture(scope="module")
def bin_dir(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with only the wheel (and its dependencies) installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = _run([*pip, str(wheel)], env_dir, 600)
    assert done.returncode == 0, done.stderr
    return env_dir / "bin"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A temporary folder holding copies of the shipped configs, far from the checkout."""
    for name in ("die-casting.toml", "mold-tcu.toml", "furnace.toml", "imm.toml"):
        shutil.copy(REPO / "config" / name, tmp_path / name)
    yield tmp_path


def test_the_wheel_has_one_import_root_and_ships_profiles_and_configs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/", 1)[0] for n in names if not n.startswith("edge_agent-")}
    assert roots == {"edge_agent"}
    shipped = {n for n in names if n.endswith(".toml")}
    for profile in ("injection_molding", "die_casting", "mold_tcu", "furnace"):
        assert f"edge_agent/builtin/profiles/{profile}.toml" in shipped
    for kind in ("imm", "die-casting", "mold-tcu", "furnace"):
        assert f"edge_agent/builtin/{kind}.toml" in shipped
    # exactly the package's modules, the symlinked folders followed: nothing stale, nothing left out
    checkout = {name for name in _package_files() if name.endswith(".py")}
    assert {n for n in names if n.endswith(".py")} == checkout
    assert "edge_agent/drivers/modbus/connection.py" in names
    assert "edge_agent/simulators/die_casting.py" in names
    # the web page's assets: the agent serves them from the package, a plant has no internet
    for asset in ("index.html", "app.js", "app.css", "favicon.svg"):
        assert f"edge_agent/web/static/{asset}" in names


def test_check_config_on_copied_configs(bin_dir: Path, workdir: Path) -> None:
    for name in ("die-casting.toml", "mold-tcu.toml", "furnace.toml", "imm.toml"):
        done = _run([str(bin_dir / "edge-agent"), "check-config", name], workdir)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr


def test_simulate_and_read_die_casting(bin_dir: Path, workdir: Path) -> None:
    port = free_port()
    config = workdir / "die-casting.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("modbus-tcp://127.0.0.1:5020", f"modbus-tcp://127.0.0.1:{port}"), "utf-8")
    assert f":{port}" in config.read_text(encoding="utf-8")
    sim = subprocess.Popen(
        [str(bin_dir / "edge-agent"), "simulate", "die-casting", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        done = _run([str(bin_dir / "edge-agent"), "read", "-c", config.name], workdir)
    finally:
        sim.terminate()
        sim.wait(10)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) >= 10
    assert all(line["quality"] == "GOOD" for line in lines), lines
    values = {line["tag"]: line["value"] for line in lines}
    tags = [tag["name"] for tag in tomllib.loads(text)["devices"][0]["tags"]]
    assert list(values) == tags
    assert 600 < values["melt_temp"] < 750, values  # the simulator's aluminium melt, in °C


def test_demo_runs_from_the_wheel(bin_dir: Path, tmp_path: Path) -> None:
    done = _run([str(bin_dir / "edge-agent"), "demo", "--plain", "--duration", "20"], tmp_path, 180)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("demo stopped: ")
    records = int(last.removeprefix("demo stopped: ").split()[0])
    assert records > 50, done.stdout
    assert list(tmp_path.iterdir()) == []
