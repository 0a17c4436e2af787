"""The web page from the command line: `[web]` in check-config, `run --web HOST:PORT`, `demo --web` and `--fault-after`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from edge_agent.simulators.mold_tcu import MoldTcuSimulator
from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )  # type: ignore[call-overload]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return orjson.loads(answer.read())  # type: ignore[no-any-return]


def test_check_config_refuses_a_page_open_to_other_machines_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "open.toml").write_text('[web]\nenabled = true\nhost = "0.0.0.0"\n', encoding="utf-8")
    done = _cli("check-config", "open.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        'open.toml: web: listening on 0.0.0.0 lets other machines in: set `token = "${EDGE_AGENT_WEB_TOKEN}"` '
        "(and export it), or listen on 127.0.0.1"
    )
    (tmp_path / "token.toml").write_text(
        '[web]\nenabled = true\nhost = "0.0.0.0"\ntoken = "${EDGE_AGENT_WEB_TOKEN}"\n', encoding="utf-8"
    )
    done = _cli(
        "check-config", "token.toml", cwd=tmp_path, env={**os.environ, "EDGE_AGENT_WEB_TOKEN": "t0k3n"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "t0k3n" not in done.stdout + done.stderr


def test_run_with_web_serves_the_page_and_refuses_an_open_bind(tmp_path: Path) -> None:
    config = tmp_path / "tcu.toml"
    sim_port, web_port = free_port(), free_port()
    config.write_text(
        MoldTcuSimulator.config_file_text(f"modbus-tcp://127.0.0.1:{sim_port}"), encoding="utf-8"
    )
    done = _cli("run", "-c", str(config), "--web", f"0.0.0.0:{web_port}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"edge-agent run: --web 0.0.0.0:{web_port}: listening on 0.0.0.0 lets other machines in: set "
        '`token = "${EDGE_AGENT_WEB_TOKEN}"` (and export it), or listen on 127.0.0.1'
    ]
    sim = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "simulate", "mold-tcu", "--port", str(sim_port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "-c", str(config), "--web", f"127.0.0.1:{web_port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(sim_port)
        wait_for_port(web_port, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            (machine,) = _get(f"http://127.0.0.1:{web_port}/api/overview")["machines"]
            if machine["state"] == "online" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert machine["name"] == "tcu1" and machine["state"] == "online"
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as page:
            assert b'<script src="/static/app.js" defer></script>' in page.read()
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=30)
    finally:
        for proc in (agent, sim):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert agent.returncode == 0, err
    assert f"web page on http://127.0.0.1:{web_port}/" in err


def test_demo_serves_its_page_and_switches_the_faults_on_after_the_delay(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--plain", "--duration", "12", "--web", f"127.0.0.1:{port}",
         "--fault", "imm:short_shot", "--fault-after", "5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        began = time.monotonic()
        faults = {
            f["name"]: f["active"] for f in _get(f"http://127.0.0.1:{port}/api/demo")["faults"]["imm-1"]
        }
        assert faults["short_shot"] is False  # the baseline runs without it
        while time.monotonic() - began < 9 and not faults["short_shot"]:
            time.sleep(0.3)
            faults = {
                f["name"]: f["active"] for f in _get(f"http://127.0.0.1:{port}/api/demo")["faults"]["imm-1"]
            }
        assert faults["short_shot"] is True
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    assert f" · web http://127.0.0.1:{port}/ · " in out.splitlines()[0]
    assert "fault short_shot of imm switched on after 5 s" in err
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        raise AssertionError("the page still answers after the demo stopped")
    except urllib.error.URLError:
        pass
