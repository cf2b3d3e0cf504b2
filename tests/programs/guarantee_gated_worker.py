"""A length-prefixed JSON frame worker whose answer to its pool's ping a test can hold back.

Run as ``guarantee_gated_worker.py DIR``. Each request gets a reply with the same id and this
process's ``"pid"``:

- ``{"op": "ping"}`` (the pool's ``ping=``): if the file ``DIR/hold`` exists when the ping
  arrives, the worker creates ``DIR/held.<pid>`` and waits for SIGUSR1 (the test's release)
  before it answers ``{"pong": true}``; otherwise it answers at once. The test thus knows the
  process exists and is inside its start's handshake, and decides when that start completes.
- anything else, ``{"x": n}``: ``{"x": n, "result": 10 * n}``.

It exits on EOF on stdin. SIGUSR1 is blocked from the first line on, so a release is never
lost and never kills it.
"""

import json
import os
import signal
import struct
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def write(message: dict[str, object]) -> None:
    payload = json.dumps(message).encode()
    data = struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> None:
    gate = sys.argv[1]
    stdin = sys.stdin.buffer
    while len(header := stdin.read(4)) == 4:
        msg = json.loads(stdin.read(struct.unpack(">I", header)[0]))
        reply: dict[str, object] = {"id": msg["id"], "pid": os.getpid()}
        if msg.get("op") == "ping":
            if os.path.exists(os.path.join(gate, "hold")):
                with open(os.path.join(gate, f"held.{os.getpid()}"), "w"):
                    pass
                signal.sigwait({signal.SIGUSR1})
            reply["pong"] = True
        else:
            x = msg.get("x") or 0
            reply.update(x=x, result=10 * x)
        write(reply)


if __name__ == "__main__":
    main()
