"""README.md's five-minute tutorial, pasted as written: its shell blocks are read from the README at test time.

Step 1 (the demo) and step 2 (the MQTT watch) run until stopped, each in a terminal of its own;
steps 3 to 5 run in one bash session, as pasted into a third terminal, in a temporary folder laid
out like a checkout (`.venv/bin` is this test's venv, `config/` a copy, `scripts/` the real one).
The test passes when the watch of step 2 shows the messages of the agent started in step 5.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.config import load_config

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: The ports the tutorial's commands name.
PORTS = (18830, 5020, 4840)
#: Steps whose block runs until Ctrl-C, each in its own terminal; the later steps share one.
OWN_TERMINAL = {1: "demo", 2: "watch"}
#: The topic level of the agent started in step 5 (default site, area and line, the die-casting cell).
OWN_AGENT = "/plant1/area1/line1/dcm1/"
DEADLINE_S = 240.0

pytestmark = pytest.mark.slow

#: Stand-in for `mosquitto_sub -h HOST -p PORT -t FILTER -v` when mosquitto-clients is not installed.
MOSQUITTO_SUB = """#!{python}
import argparse, sys
import paho.mqtt.client as mqtt
p = argparse.ArgumentParser(add_help=False)
p.add_argument("-h", dest="host"); p.add_argument("-p", dest="port", type=int)
p.add_argument("-t", dest="topics", action="append"); p.add_argument("-v", action="store_true")
a = p.parse_args()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_connect = lambda c, u, f, rc, pr: [c.subscribe(t, 1) for t in a.topics]
def show(c, u, m):
    payload = m.payload.decode(errors="replace")
    print(f"{{m.topic}} {{payload}}" if a.v else payload, flush=True)
c.on_message = show
c.connect(a.host, a.port)
c.loop_forever()
"""


def tutorial_blocks() -> dict[int, list[str]]:
    """Step number -> the ```sh blocks of that step, in README order."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Five-minute tutorial")
    section = text[start : text.index("\n## ", start + 1)]
    blocks: dict[int, list[str]] = {}
    step = 0
    for match in re.finditer(r"(?ms)^\*\*(\d+)\. |^```sh\n(.*?)^```", section):
        if match.group(1):
            step = int(match.group(1))
        else:
            blocks.setdefault(step, []).append(match.group(2))
    return blocks


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        # as the servers bind: a connection of a previous run in TIME-WAIT does not hold the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder the tutorial's relative paths work in, without touching the real checkout."""
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent, target_is_directory=True)
    (venv / "pyvenv.cfg").symlink_to(Path(sys.prefix) / "pyvenv.cfg")
    (venv / ".installed-demo").touch()  # scripts/bootstrap.sh: this venv is installed, no pip
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    tools = tmp_path / "tools"
    tools.mkdir()
    if shutil.which("mosquitto_sub") is None:
        stand_in = tools / "mosquitto_sub"
        stand_in.write_text(MOSQUITTO_SUB.format(python=sys.executable), encoding="utf-8")
        stand_in.chmod(0o755)
    return tmp_path


class Terminal:
    """One bash running a script in its own process group, its output in a file."""

    def __init__(self, name: str, script: str, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        """Everything the terminal showed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, first: signal.Signals = signal.SIGTERM) -> None:
        """Signal the whole group (background jobs included), give it 10 s, then kill what is left."""
        for sig in (first, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break  # nothing of the group is left
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.proc.wait(10)
        self._out.close()


def _wait_for(what: str, check: Callable[[], bool], terminals: list[Terminal]) -> None:
    """Poll `check()` until true or the deadline; a terminal that ended early fails the test at once."""
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        for t in terminals:
            if t.proc.poll() is not None:
                pytest.fail(f"{t.name} ended (exit {t.proc.returncode}) before {what}:\n{t.text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {t.name}\n{t.text()[-3000:]}" for t in terminals)
            pytest.fail(f"no {what} within {DEADLINE_S:g} s:\n{logs}")
        time.sleep(0.5)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """The terminals opened by the test, stopped at the end as a user would (Ctrl-C for the demo)."""
    opened: list[Terminal] = []
    yield opened
    for t in reversed(opened):
        t.stop(signal.SIGINT if t.name == "demo" else signal.SIGTERM)


def test_the_tutorial_as_written(checkout: Path, terminals: list[Terminal]) -> None:
    blocks = tutorial_blocks()
    assert sorted(blocks) == [1, 2, 3, 4, 5], "the tutorial's steps changed: update OWN_TERMINAL"
    busy = [p for p in PORTS if _port_busy(p)]
    if busy:
        pytest.skip(f"the tutorial's ports {busy} are in use on this machine")
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {
        **os.environ,
        "PATH": f"{checkout / 'tools'}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,  # scripts/bootstrap.sh checks the Python it would build a venv with
    }
    env.pop("EDGE_AGENT_VENV", None)

    (demo_block,) = blocks[1]
    terminals.append(Terminal("demo", demo_block, checkout, env))
    _wait_for("demo broker on 18830", lambda: _listening(18830), terminals)
    (watch_block,) = blocks[2]
    watch = Terminal("watch", watch_block, checkout, env)
    terminals.append(watch)
    _wait_for("demo message in step 2's watch", lambda: "demo/uns/" in watch.text(), terminals)

    session = "\n".join(b for step, bs in sorted(blocks.items()) if step not in OWN_TERMINAL for b in bs)
    shell = Terminal("session", session, checkout, env)
    terminals.append(shell)
    _wait_for("message of step 5's agent in step 2's watch", lambda: OWN_AGENT in watch.text(), terminals[:2])

    # step 3 wrote both skeletons although the simulators were started in the background just before
    skeleton = (checkout / "dc-1.toml").read_text(encoding="utf-8")
    assert 'protocol = "modbus"' in skeleton and 'protocol = "opcua"' in skeleton, shell.text()[-3000:]
    assert "as float32:" in skeleton
    out = shell.text()
    assert "Traceback" not in out and "Errno" not in out, out[-3000:]
    # step 4's read: the die-casting cell's values, good
    assert re.search(r'(?m)^\{"device":"dcm1","tag":"melt_temp","value":[0-9.]+,.*"quality":"GOOD"', out), out
    config = load_config(checkout / "my-agent.toml")
    assert config.sinks.mqtt is not None and config.sinks.mqtt.topic_prefix == "demo/uns"
    assert (checkout / "var" / "outbox").is_dir()
