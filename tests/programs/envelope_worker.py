"""A length-prefixed JSON frame worker answering in DSPex's envelope, for the envelope tests.

Each request ``{"id": ..., "mode": m, ...}`` gets a reply with the same id and this process's
``"pid"``, shaped by `m`:

- ``"fail"``: ``{"success": false, "error": <the request's "error", default "boom">}``;
- ``"fail_bare"``: ``{"success": false}`` (no ``"error"``);
- ``"ok"``: ``{"success": true, "result": "done"}``;
- anything else: ``{"result": "done"}`` (no ``"success"`` key at all).
"""

import json
import os
import struct
import sys


def write(message: dict[str, object]) -> None:
    payload = json.dumps(message).encode()
    data = struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> None:
    stdin = sys.stdin.buffer
    while len(header := stdin.read(4)) == 4:
        msg = json.loads(stdin.read(struct.unpack(">I", header)[0]))
        reply: dict[str, object] = {"id": msg["id"], "pid": os.getpid()}
        mode = msg.get("mode")
        if mode == "fail":
            reply.update(success=False, error=msg.get("error", "boom"))
        elif mode == "fail_bare":
            reply.update(success=False)
        elif mode == "ok":
            reply.update(success=True, result="done")
        else:
            reply["result"] = "done"
        write(reply)


if __name__ == "__main__":
    main()
