"""The DSPex bridge: DSPex's session pool of DSPy workers, done right.

- `SessionPool`: a `ProcessPool` of bridge workers speaking DSPex's protocol, with sessions
  kept by the pool (a worker's crash loses nothing), worker affinity, and DSPex's errors as
  typed exceptions (`CommandError`, `CommandTimeout`, ...).
- `Bridge`: DSPex's single-bridge mode: one worker, many commands in flight, matched by id.
- Adapters (DSPex's API: `create_program`, `execute_program`, ...) for its three test
  layers: `MockAdapter` (in this process), `BridgeAdapter` over mock workers or DSPy workers
  (`adapter_for_layer`), and `detect_bridge`, DSPex's service detection for the bridge.
- `worker`: the worker program (``python -m dspex_actors.bridge.worker --mode pool-worker
  --worker-id ID``), serving DSPex's command set with real DSPy programs, and an offline
  deterministic LM when none is configured.

Importing this package does not import DSPy: only the workers do.
"""

from ._adapters import (
    LAYERS,
    Adapter,
    BridgeAdapter,
    MockAdapter,
    adapter_for_layer,
    detect_bridge,
)
from ._mock import MockScript
from ._protocol import CommandError, CommandTimeout
from ._session_pool import BridgeWorker, SessionPool, SessionPoolStatus, SessionSpec
from ._single import Bridge, BridgeStatus
from ._store import ANONYMOUS, SessionStats, SessionStore

__all__ = [
    "ANONYMOUS",
    "LAYERS",
    "Adapter",
    "BridgeAdapter",
    "MockAdapter",
    "MockScript",
    "adapter_for_layer",
    "detect_bridge",
    "Bridge",
    "BridgeStatus",
    "BridgeWorker",
    "CommandError",
    "CommandTimeout",
    "SessionPool",
    "SessionPoolStatus",
    "SessionSpec",
    "SessionStats",
    "SessionStore",
]
