"""The command line as a user meets it: `-c` everywhere, defaults in --help, `--log-level` and the config's levels."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.cli import build_parser
from edge_agent.log_config import LEVELS
from edge_agent.simulators.imm import ImmSimulator

REPO = Path(__file__).resolve().parent.parent
LEVEL_LIST = ", ".join(LEVELS)


def _cli(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_config_takes_the_file_by_c_like_run_and_read(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[agent]\nname = "a1"\n', encoding="utf-8")
    (tmp_path / "b.toml").write_text('[agent]\nname = "b1"\n', encoding="utf-8")
    for args in (["-c", "a.toml"], ["--config", "a.toml"], ["a.toml"]):
        done = _cli("check-config", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("OK a.toml: 0 devices"), args
    both = _cli("check-config", "-c", "a.toml", "b.toml", cwd=tmp_path)
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.splitlines()[-1] == (
        "edge-agent check-config: error: two config files given (-c a.toml and b.toml); give one"
    )
    none = _cli("check-config", cwd=tmp_path)
    assert none.returncode == 2
    assert none.stderr.splitlines()[-1] == (
        "edge-agent check-config: error: give the config file: edge-agent check-config -c FILE"
    )


def _options_with_defaults(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings
        and not (a.default is None or a.default is False or a.default == [] or a.default == argparse.SUPPRESS)
        and a.help != argparse.SUPPRESS
    ]


def test_help_shows_every_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in subparsers.choices.items():
        text = re.sub(r"\s+", " ", sub.format_help())
        for action in _options_with_defaults(sub):
            checked += 1
            # argparse's "(default: X)", or the option's own words for it ("default 10", "default: a free one")
            shown = f"default: {action.default}" in text or "default" in (action.help or "")
            assert shown, f"edge-agent {name} --help does not show {action.option_strings[0]}'s default"
    assert checked >= 3  # demo --speed and --broker-port, read --wait, ...
    # and through the real command: what a user types
    done = _cli("demo", "--help")
    assert done.returncode == 0
    help_text = re.sub(r"\s+", " ", done.stdout)
    assert "simulated time per wall-clock second (default: 20.0)" in help_text
    assert "--log-level [LOGGER=]LEVEL" in help_text and "(default: WARNING)" in help_text
    run_help = re.sub(r"\s+", " ", _cli("run", "--help").stdout)
    assert "(default: the config's agent.log_level, INFO)" in run_help


def test_an_unknown_log_level_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('[agent]\nname = "a1"\n', encoding="utf-8")
    for command in (["run", "-c", "agent.toml"], ["demo"], ["read", "-c", "agent.toml"], ["simulate", "imm"]):
        done = _cli(*command, "--log-level", "verbose", cwd=tmp_path)
        assert done.returncode == 2, command
        assert done.stderr.splitlines()[-1].endswith(
            f"argument --log-level: unknown log level 'verbose'; use one of {LEVEL_LIST} (any case), "
            "or LOGGER=LEVEL for one logger"
        ), done.stderr
    (tmp_path / "bad.toml").write_text(
        '[agent]\nlog_level = "verbose"\n[agent.log_levels]\nasyncua = "loud"\n', encoding="utf-8"
    )
    done = _cli("check-config", "-c", "bad.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[:2] == [
        f"bad.toml: agent.log_level: unknown log level; use one of {LEVEL_LIST} (got 'verbose')",
        f"bad.toml: agent.log_levels.asyncua: unknown log level; use one of {LEVEL_LIST} (got 'loud')",
    ]


@pytest.fixture
async def imm() -> AsyncIterator[ImmSimulator]:
    """The IMM simulator (OPC UA) on a free port: asyncua logs on both sides of its connections."""
    sim = ImmSimulator(speed=20.0, cycle_s=2.0, seed=11)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def _run_once(cfg: Path, *args: str) -> tuple[int, list[str]]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent.cli", "run", "-c", str(cfg), "--once", *args,
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), err.decode().splitlines()


def _levels_by_logger(lines: list[str]) -> set[tuple[str, str]]:
    """(level, top-level logger) of every text log line."""
    found = set()
    for line in lines:
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): ", line)
        if m:
            found.add((m.group(1), m.group(2).split(".")[0]))
    return found


async def test_log_levels_from_the_config_and_the_command_line(imm: ImmSimulator, tmp_path: Path) -> None:
    device = imm.device_config(name="imm-1")
    cfg = tmp_path / "agent.toml"
    # the agent's own lines at WARNING, but asyncua's INFO lines (every service call) wanted
    cfg.write_text(
        '[agent]\nlog_level = "warning"\n[agent.log_levels]\nasyncua = "INFO"\n\n'
        + device[device.index("[[devices]]") :],
        encoding="utf-8",
    )
    code, lines = await _run_once(cfg)
    assert code == 0, "\n".join(lines)
    seen = _levels_by_logger(lines)
    assert ("INFO", "asyncua") in seen
    assert {level for level, logger in seen if logger != "asyncua"} <= {"WARNING", "ERROR"}, seen
    # --log-level DEBUG wins over the config's level; the config's asyncua = "INFO" still holds
    code, lines = await _run_once(cfg, "--log-level", "DEBUG")
    assert code == 0
    seen = _levels_by_logger(lines)
    assert ("DEBUG", "asyncio") in seen  # the root logger at DEBUG: asyncio's own debug line
    assert ("INFO", "asyncua") in seen and ("DEBUG", "asyncua") not in seen
    # LOGGER=LEVEL on the command line for one logger
    code, lines = await _run_once(cfg, "--log-level", "asyncua=debug", "--log-level", "ERROR")
    assert code == 0
    seen = _levels_by_logger(lines)
    assert ("DEBUG", "asyncua") in seen
    assert {logger for level, logger in seen if level in ("DEBUG", "INFO")} == {"asyncua"}, seen


def _simulate_log(tmp_path: Path, *args: str) -> list[str]:
    """The stderr lines of `edge-agent simulate ARGS` from its start until it listens (then it is stopped)."""
    import time

    from tests.services import free_port, wait_for_port

    port = free_port()
    log = tmp_path / f"simulate-{port}.log"
    # a file, not a pipe: asyncua at INFO writes more than a pipe holds before the server listens
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "simulate", *args, "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
        try:
            wait_for_port(port, timeout=30)
            time.sleep(0.3)
            proc.terminate()  # not SIGINT: a shell's background job (CI) starts with SIGINT ignored
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return log.read_text(encoding="utf-8").splitlines()


def test_simulate_takes_the_log_level_before_or_after_the_machine(tmp_path: Path) -> None:
    quiet = _levels_by_logger(_simulate_log(tmp_path, "imm"))
    assert ("INFO", "asyncua") not in quiet and ("INFO", "edge_agent") in quiet
    # asyncua's INFO lines (every node it loads) when asked for, and only the simulator's warnings
    loud = _levels_by_logger(
        _simulate_log(tmp_path, "imm", "--log-level", "asyncua=INFO", "--log-level", "WARNING")
    )
    assert ("INFO", "asyncua") in loud and ("INFO", "edge_agent") not in loud
    before = _levels_by_logger(_simulate_log(tmp_path, "--log-level", "ERROR", "imm"))
    assert not {level for level, _logger in before} & {"DEBUG", "INFO", "WARNING"}


async def test_read_shows_the_protocol_library_lines_only_when_asked(
    imm: ImmSimulator, tmp_path: Path
) -> None:
    import asyncio

    device = imm.device_config(name="imm-1")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(device[device.index("[[devices]]") :], encoding="utf-8")
    seen = []
    for extra in ([], ["--log-level", "asyncua=INFO"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "read", "-c", str(cfg), *extra,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b'"tag":"barrel_zone_1"' in out
        seen.append(_levels_by_logger(err.decode().splitlines()))
    assert ("INFO", "asyncua") not in seen[0]  # read silences them: each failing device gets one line
    assert ("INFO", "asyncua") in seen[1]
