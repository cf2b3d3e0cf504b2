"""Helpers for the bridge worker tests (tests/test_bridge_worker.py).

- `worker_argv(...)`: the command line of a bridge worker (``python -m
  dspex_actors.bridge.worker``).
- `isolated_env(home)`: this process's environment with `home` as HOME and TMPDIR, and none of
  the settings the worker must make for itself.
- `files_under(root)`: every file and folder under `root`, for before/after comparisons.
- `audited_worker_argv(...)`: the same worker, run under an audit hook that lists, when the
  process exits, every file it opened for writing or created (a line ``AUDIT writes=[...]``
  on stderr).
- `open_worker(home)`: a `Port` running a worker with `home` as its cwd, HOME and TMPDIR,
  that has answered DSPex's init ping (the reply is returned too).
- `call(port, command, **args)`: one request through `Port.request` (the port gives it an id);
  the whole reply envelope.
- `definition(inputs, outputs, ...)`: a DSPex signature definition from field names
  (``"name"`` or ``"name: type"``).
- `frames(...)` / `read_frames(fd)`: length-prefixed JSON frames, for feeding the worker's
  frame loop through a pipe.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from dspex_actors import Port
from dspex_actors._ports._framing import FrameDecoder, encode_frame

START_TIMEOUT = 60.0  # a cold worker imports DSPy (about 1 s; far more on a loaded machine)
TIMEOUT = 30.0

# Settings the worker makes itself: a worker started without them must still make no network
# call, so they are left out of the environment it gets.
_WORKER_SETS = ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_OFFLINE_MODE", "DSPY_CACHEDIR")


def worker_argv(worker_id: str = "w1", mode: str = "pool-worker") -> list[str]:
    return [
        sys.executable,
        "-m",
        "dspex_actors.bridge.worker",
        "--mode",
        mode,
        "--worker-id",
        worker_id,
    ]


# Runs the worker module as ``-m`` does, after installing an audit hook (PEP 578) that records
# every file opened for writing and every file-system change, however the code does it.
AUDIT = """
import atexit, os, runpy, sys
writes = []
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.mkdir", "os.rename", "os.link", "os.symlink", "os.truncate", "os.remove",
           "shutil.copyfile", "shutil.rmtree", "sqlite3.connect", "tempfile.mkstemp",
           "tempfile.mkdtemp"}
def audit(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return  # an fd already open (a std stream): not a file made
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITING:
            writes.append(repr(path))
    elif event in CHANGES:
        writes.append(f"{event} {args[0]!r}")
atexit.register(lambda: print(f"AUDIT writes={writes!r}", file=sys.stderr, flush=True))
sys.addaudithook(audit)
runpy.run_module("dspex_actors.bridge.worker", run_name="__main__", alter_sys=True)
"""


def audited_worker_argv(worker_id: str = "w1", mode: str = "pool-worker") -> list[str]:
    return [sys.executable, "-c", AUDIT, *worker_argv(worker_id, mode)[3:]]


def isolated_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _WORKER_SETS}
    env.update(HOME=str(home), TMPDIR=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    return env


def files_under(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Relative path → (is a folder, size, mtime in ns), for everything under `root`."""
    found = {}
    for path in root.rglob("*"):
        stat = path.lstat()
        found[str(path.relative_to(root))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return found


def open_worker(
    home: Path, worker_id: str = "w1", argv: list[str] | None = None, **env: str
) -> tuple[Port, dict[str, Any]]:
    """A worker in `home` (`argv`, default `worker_argv`; `env` added to `isolated_env`),
    after DSPex's init ping (id 0); the port and the ping's reply."""
    port = Port.open(argv or worker_argv(worker_id), cwd=home, env={**isolated_env(home), **env})
    try:
        reply = port.request(
            {
                "id": 0,
                "command": "ping",
                "args": {"initialization": True, "worker_id": worker_id},
            },
            timeout=START_TIMEOUT,
        )
    except BaseException:
        port.close()
        raise
    return port, reply


def call(port: Port, command: str, **args: Any) -> dict[str, Any]:
    reply: dict[str, Any] = port.request({"command": command, "args": args}, timeout=TIMEOUT)
    return reply


def definition(inputs: list[str], outputs: list[str], **extra: Any) -> dict[str, Any]:
    def field(spec: str) -> dict[str, Any]:
        name, _, type_name = spec.partition(":")
        result: dict[str, Any] = {"name": name.strip(), "description": f"the {name.strip()}"}
        if type_name:
            result["type"] = type_name.strip()
        return result

    return {"inputs": [field(s) for s in inputs], "outputs": [field(s) for s in outputs], **extra}


def frames(*messages: Any) -> bytes:
    """`messages` as frames: bytes go as they are, anything else as JSON."""
    return b"".join(
        encode_frame(m if isinstance(m, bytes) else json.dumps(m).encode()) for m in messages
    )


def read_frames(fd: int) -> list[Any]:
    """Every JSON frame readable from `fd` until EOF (its write end must be closed)."""
    decoder = FrameDecoder()
    found: list[Any] = []
    while chunk := os.read(fd, 1 << 16):
        found.extend(json.loads(frame) for frame in decoder.feed(chunk))
    decoder.eof()
    return found
