"""Helpers for the port and process-pool tests: tiny child programs and cleanup.

- `py(script)`: the argv running `script` with this interpreter.
- `FRAME_IO`: the start of a child program speaking length-prefixed frames (`read`, `write`);
  `ECHO` echoes every frame, `EXITS` exits with status 3, `STALL` never reads, `READ_TO_EOF`
  exits once stdin is closed; `DETACH_IO` speaks JSON frames and can start a `GRANDCHILD`.
- `Ports`: a list of ports closed at teardown (the `ports` fixture); `open` and `spawn` start
  one and keep it, `append` keeps one started elsewhere.
- `Grandchildren`: detached grandchildren (their own session, so no port's SIGKILL reaches
  them) that a test's workers started, killed at teardown (the `grandchildren` fixture).
- `gone(pid)`: the process has exited (a zombie counts as gone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil

from dspex_actors import Port

FRAME_IO = """
import os, struct, sys, time
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    if len(h) < 4:
        return None
    return r.read(struct.unpack(">I", h)[0])
def write(data):
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
"""

ECHO = (
    FRAME_IO
    + """
while (d := read()) is not None:
    write(d)
"""
)
EXITS = "import sys; sys.exit(3)"
STALL = "import time; time.sleep(30)"  # sleep-ok: a stalled child program that never reads
# Exits as soon as stdin reaches EOF (the graceful step of close()).
READ_TO_EOF = "import sys; sys.stdin.buffer.read()"

GRANDCHILD = "import time; time.sleep(60)"  # sleep-ok: a detached grandchild holding stdout

# The start of a program speaking JSON frames that can start a detached grandchild: prefix it
# with ``f"GRANDCHILD = {GRANDCHILD!r}\n"``.
DETACH_IO = """
import json, os, struct, subprocess, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    return None if len(h) < 4 else json.loads(r.read(struct.unpack(">I", h)[0]))
def write(value):
    data = json.dumps(value).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
def detach():
    # Its own session: outside the port's process group, so the port never signals it. It
    # inherits stdin, stdout and stderr.
    return subprocess.Popen([sys.executable, "-c", GRANDCHILD], start_new_session=True).pid
"""


def py(script: str) -> list[str]:
    """The argv that runs `script` (dedented) with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(script)]


def echo(request: Any) -> Any:
    """A `Port.spawn` handler answering every request with itself."""
    return request


class Ports(list[Port]):
    """Ports a test started; `close()` closes every one (the `ports` fixture does it)."""

    def open(self, script: str, **options: Any) -> Port:
        port = Port.open(py(script), **options)
        self.append(port)
        return port

    def spawn(self, handler: Any, *args: Any, **options: Any) -> Port:
        port = Port.spawn(handler, *args, **options)
        self.append(port)
        return port

    def close(self, timeout: float = 1.0) -> None:
        for port in self:
            port.close(timeout=timeout)


class Grandchildren:
    """Kills the detached grandchildren a test's workers started (they are not our children).

    `pids`: known pids; `markers`: files a worker writes a grandchild's pid into.
    """

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.markers: list[Path] = []

    def kill(self) -> None:
        for marker in self.markers:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.pids.append(int(marker.read_text()))
        for pid in self.pids:
            # Not our child any more (its parent, the worker, has exited): init reaps it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
