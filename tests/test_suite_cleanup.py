"""The suite's own clean-up: no process a test started outlives it, orphans included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _descendants, _kill_descendants

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc")


def _alive(pid: int) -> bool:
    """Running, neither gone nor a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_child_and_an_orphaned_grandchild_are_killed() -> None:
    child = subprocess.Popen(["sleep", "300"])
    # The shell starts a sleep in the background and exits: the sleep loses its parent
    # and is adopted by this process, which pytest_configure made a subreaper.
    shell = subprocess.run(
        ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    orphan = int(shell.stdout)
    assert {child.pid, orphan} <= set(_descendants(os.getpid()))

    _kill_descendants()

    deadline = time.monotonic() + 60
    while (_alive(child.pid) or _alive(orphan)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child.pid) and not _alive(orphan)
    # Both were reaped: neither is left as a zombie either.
    assert not Path(f"/proc/{child.pid}").exists() and not Path(f"/proc/{orphan}").exists()
