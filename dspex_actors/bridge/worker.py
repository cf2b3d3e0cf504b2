"""The DSPex bridge worker program: DSPex's command set on real DSPy, over length-prefixed frames.

Run it as DSPex ran ``priv/python/dspy_bridge.py``::

    python -m dspex_actors.bridge.worker --mode pool-worker --worker-id worker_1

It reads requests ``{"id", "command", "args"}`` as 4-byte big-endian length-prefixed UTF-8
JSON frames on stdin and answers each on stdout in DSPex's envelope (``{"id", "success",
"result" | "error", "timestamp"}``); the commands are `DSPyBridge`'s (see
`dspex_actors.bridge._commands`). stdout carries frames only: whatever anything prints or logs
goes to stderr. How it ends:

- EOF on stdin (the port closed; also a frame cut off by the EOF): exit status 0.
- A ``shutdown`` that succeeded: its reply is written, then the worker exits with status 0
  (requests that came in the same read, behind it, get no reply). DSPex's script only
  acknowledged it and waited for EOF.
- SIGTERM or SIGINT: exit status 0, at once, from the moment `main` runs (while Python
  imports the package before it, about a tenth of a second, the signal's default action
  applies: killed by SIGTERM, `KeyboardInterrupt` for SIGINT).
- stdout closed under it (``BrokenPipeError``): exit status 0; nobody is listening.
- A frame that is not JSON, or a message without an ``id`` or a ``command``: no reply, a line
  on stderr, and the worker keeps serving. (DSPex's script exited on an undecodable frame; the
  stream is still in sync after one, so a worker that stays is as safe and keeps the
  sessions it holds. The caller's request times out either way.)
- A length prefix above ``--max-frame`` (16 MiB by default): the stream is out of sync, so
  the worker exits with status 1.

With ``--backend mock`` it serves the same commands without DSPy (`MockBridge`: made-up
deterministic outputs) and misbehaves as told (``--delay``, ``--fail COMMAND``,
``--error-rate``/``--seed``, ``--crash-after N``, or a ``"_mock"`` argument in one request):
DSPex's protocol-level test layer, as a real process.

It writes no file: every LM it makes has DSPy's cache off, and nothing else writes. Importing
DSPy takes about 0.7 s, well inside DSPex's 5 s init-ping timeout; LiteLLM (3 to 4 s more) is
never imported unless a configured model needs it at call time.

`handle_request` serves the same bridge as a `ProcessPool` target, in workers forked from a
fork server that has `PRELOAD` imported. This module itself imports neither DSPy nor the
commands, so a pool's parent process can refer to `handle_request` for free.

Example:
    >>> import sys
    >>> from dspex_actors import Port
    >>> port = Port.open([sys.executable, "-m", "dspex_actors.bridge.worker",
    ...                   "--mode", "pool-worker", "--worker-id", "w1"])
    >>> reply = port.request({"id": 0, "command": "ping",
    ...                       "args": {"initialization": True}}, timeout=60)
    >>> reply["success"], reply["result"]["worker_id"]
    (True, 'w1')
    >>> port.close()
"""

from ._worker_program import PRELOAD, handle_request, main

__all__ = ["PRELOAD", "handle_request", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
