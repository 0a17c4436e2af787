"""The source layout keeps one import root: drivers/ and simulators/ are imported as edge_agent.drivers and
edge_agent.simulators, never under their generic top-level names (which would load every module twice)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = re.compile(r"^\s*(from|import)\s+(drivers|simulators|config)\b", re.MULTILINE)


def test_no_module_imports_the_generic_top_level_names() -> None:
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [f for f in files if TOP_LEVEL.search((REPO / f).read_text(encoding="utf-8"))]
    assert offenders == []
    assert len(files) > 100  # the listing worked


def test_the_symlinks_lead_to_the_source_folders() -> None:
    for link, target in (("drivers", "drivers"), ("simulators", "simulators"), ("builtin", "config")):
        path = REPO / "edge_agent" / link
        assert path.is_symlink(), f"edge_agent/{link} must be a symlink to {target}/"
        assert path.resolve() == (REPO / target).resolve()
