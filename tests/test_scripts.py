"""The set-up scripts' refusals: a missing Debian package without root, an old Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _bash_as_nobody(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run bash with scripts/bootstrap.sh sourced, as an unprivileged user."""
    cmd = ["bash", "-c", f"source {REPO}/scripts/bootstrap.sh; {script}"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop privileges")
        cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_missing_package_without_root_names_the_package_and_the_command() -> None:
    done = _bash_as_nobody("_apt_install mosquitto victoria-metrics; echo not-reached")
    assert done.returncode == 1
    assert "not-reached" not in done.stdout
    assert "missing Debian package(s): mosquitto victoria-metrics" in done.stderr
    assert "sudo apt-get install -y mosquitto victoria-metrics" in done.stderr


def test_too_old_python_is_refused_with_the_way_out() -> None:
    # not pytest's tmp_path: it is private to the user running pytest, and the script runs as nobody
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-fake-python-"))
    folder.chmod(0o755)
    fake = folder / "python3.9"
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo "Python 3.9.2";; *) exit 1;; esac\n')
    fake.chmod(0o755)
    done = _bash_as_nobody("ensure_python; echo not-reached", env={"PYTHON": str(fake)})
    assert done.returncode == 1
    assert "not-reached" not in done.stdout
    shutil.rmtree(folder)
    assert "Python 3.9.2 is too old; Python 3.11 or newer is needed (set PYTHON=...)" in done.stderr
