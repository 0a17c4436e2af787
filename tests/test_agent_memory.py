"""The agent's glibc malloc settings: at most two arenas, however many threads allocate."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# five threads allocate at once; malloc_info then lists one <heap> element per arena in use
PROBE = """
import ctypes, ctypes.util, sys, threading
from edge_agent.agent import limit_malloc_arenas
if sys.argv[1] == "limit":
    limit_malloc_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
barrier = threading.Barrier(6)
def work():
    held = [libc.malloc(1000) for _ in range(200)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(5)]
for t in threads:
    t.start()
barrier.wait()
fp = ctypes.c_void_p(libc.fopen(sys.argv[2].encode(), b"w"))
libc.malloc_info(0, fp)
libc.fclose(fp)
barrier.wait()
for t in threads:
    t.join()
print(open(sys.argv[2]).read().count("<heap nr="))
"""


def _arenas(mode: str, tmp_path: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(tmp_path / f"{mode}.xml")],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env, check=True,
    )  # fmt: skip
    return int(done.stdout)


@pytest.mark.skipif(
    not ctypes.util.find_library("c")
    or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_info"),
    reason="glibc only",
)
def test_agent_caps_malloc_arenas_at_two(tmp_path: Path) -> None:
    assert _arenas("default", tmp_path) > 2  # glibc's own default: an arena per allocating thread
    assert _arenas("limit", tmp_path) == 2
