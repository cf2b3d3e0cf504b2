"""A length-prefixed JSON frame worker for the resilience tests, told how to misbehave.

Each request ``{"id": ..., "x": n, ...}`` gets the reply
``{"id": ..., "x": n, "result": 10 * n, "pid": <this process>}``, plus:

- ``"progress": true``: a progress frame ``{"id", "x", "progress": 0.5}`` first, written with
  the reply in one ``write`` (so the parent reads both frames in one read);
- ``"stray": path``: after the reply, wait for SIGUSR1, then write a stray frame with the
  same id (while the worker is idle in its pool), and create the file `path`.

Options: ``--stubborn`` ignores SIGTERM and stays alive after EOF on stdin (until SIGKILL).
"""

import json
import os
import signal
import struct
import sys


def write(*messages: dict[str, object]) -> None:
    payloads = [json.dumps(m).encode() for m in messages]
    data = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> None:
    stubborn = "--stubborn" in sys.argv[1:]
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    stdin = sys.stdin.buffer
    while len(header := stdin.read(4)) == 4:
        msg = json.loads(stdin.read(struct.unpack(">I", header)[0]))
        x = msg.get("x")
        reply = {"id": msg["id"], "x": x, "result": (x or 0) * 10, "pid": os.getpid()}
        if msg.get("progress"):
            write({"id": msg["id"], "x": x, "progress": 0.5}, reply)
        else:
            write(reply)
        if msg.get("stray"):
            signal.sigwait({signal.SIGUSR1})
            write({"id": msg["id"], "x": x, "stray": True})
            with open(msg["stray"], "w"):
                pass
    if stubborn:
        while True:  # EOF on stdin is not a reason to exit; only SIGKILL ends it
            signal.pause()


if __name__ == "__main__":
    main()
