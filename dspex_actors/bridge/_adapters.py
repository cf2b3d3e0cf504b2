"""DSPex's adapter API, its three test layers, and service detection.

An adapter is what application code calls: `create_program`, `execute_program`,
`list_programs`, `delete_program`, `get_program_info`, `health_check`, `get_stats`,
`configure_lm`. Three implementations, one per test layer (unit tests with no process, tests
against a scripted worker process, and full integration with DSPy):

- layer 1, ``mock_adapter``: `MockAdapter`, in this process, no worker and no DSPy
  (`MockBridge`'s deterministic outputs; `inject_error` scripts a failure);
- layer 2, ``bridge_mock``: `BridgeAdapter` over a `SessionPool` whose workers are the mock
  worker program (``python -m dspex_actors.bridge.worker --backend mock``): the real protocol,
  real processes, scripted delays, errors and crashes;
- layer 3, ``full_integration``: `BridgeAdapter` over a `SessionPool` of real DSPy workers.

`adapter_for_layer` starts the right one. `detect_bridge` is DSPex's service detection for
the bridge: a running `SessionPool` (registered as ``"session_pool"``) first, else a
single `Bridge` (``"bridge"``), by local name then in a `Registry`.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .._errors import InvalidOption
from .._naming._registry import Registry
from .._naming._service import detect_service
from ._bridge import ANONYMOUS
from ._mock import MockBridge, MockScript
from ._protocol import CommandError
from ._session_pool import SessionPool
from ._single import Bridge

__all__ = [
    "LAYERS",
    "Adapter",
    "BridgeAdapter",
    "BridgeClient",
    "MockAdapter",
    "adapter_for_layer",
    "detect_bridge",
]

LAYERS = {"layer_1": "mock_adapter", "layer_2": "bridge_mock", "layer_3": "full_integration"}
"""The test layers and DSPex's ``TEST_MODE`` name of each."""

_ids = itertools.count(1)


class BridgeClient(Protocol):
    """What an adapter drives: a `SessionPool` or a `Bridge`."""

    def execute_in_session(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]: ...

    def execute_anonymous(
        self, command: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]: ...


class Adapter:
    """DSPex's adapter API, over whatever `_execute` sends commands to.

    `session_id` None: anonymous calls (DSPex's global programs). A program config is DSPex's:
    ``{"id"?, "signature": {"inputs": [...], "outputs": [...]}, "program_type"?}``, keys of
    any string-like type; an id is made up (``pool_<n>_<µs>``) when it has none.
    """

    layer = "layer_1"

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id

    def create_program(self, config: Mapping[str, Any]) -> str:
        """Create a program; return its id."""
        args = _convert(config)
        args.setdefault("id", f"pool_{next(_ids)}_{time.time_ns() // 1000}")
        result = self._execute("create_program", args)
        return str(result.get("program_id", args["id"]))

    def execute_program(
        self,
        program_id: str,
        inputs: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run a program; return its outputs."""
        args: dict[str, Any] = {"program_id": program_id, "inputs": dict(inputs)}
        if options:
            args["options"] = dict(options)
        outputs: dict[str, Any] = self._execute("execute_program", args)["outputs"]
        return outputs

    def list_programs(self) -> list[str]:
        """The ids of the programs (of this adapter's session)."""
        return [str(p["id"]) for p in self._execute("list_programs", {})["programs"]]

    def delete_program(self, program_id: str) -> None:
        self._execute("delete_program", {"program_id": program_id})

    def get_program_info(self, program_id: str) -> dict[str, Any]:
        return self._execute("get_program_info", {"program_id": program_id})

    def health_check(self) -> bool:
        """True if a worker answers ``ping`` with status ``"ok"``."""
        try:
            return bool(self._execute("ping", {}, anonymous=True).get("status") == "ok")
        except Exception:
            return False

    def get_stats(self) -> dict[str, Any]:
        """The adapter's kind and layer, and the worker's own stats."""
        return {
            "adapter_type": type(self).__name__,
            "layer": self.layer,
            "worker": self._execute("get_stats", {}, anonymous=True),
        }

    def configure_lm(self, config: Mapping[str, Any]) -> bool:
        """Configure the LM (of this adapter's session); True when configured."""
        result = self._execute("configure_lm", _convert(config))
        return bool(result.get("status") == "configured")

    def _execute(
        self, command: str, args: dict[str, Any], *, anonymous: bool = False
    ) -> dict[str, Any]:
        raise NotImplementedError


class MockAdapter(Adapter):
    """Layer 1: the bridge's commands in this process (`MockBridge`), no worker, no DSPy.

    Args:
        session_id: as `Adapter`.
        script: how the mock misbehaves (`MockScript`).
    """

    layer = "layer_1"

    def __init__(self, session_id: str | None = None, script: MockScript | None = None) -> None:
        super().__init__(session_id)
        self.bridge = MockBridge(mode="pool-worker", worker_id="mock", script=script)
        self._errors: dict[str, list[str]] = {}

    def inject_error(self, command: str, message: str) -> None:
        """Make the next `command` fail with `message` (a `CommandError`)."""
        self._errors.setdefault(command, []).append(message)

    def reset(self) -> None:
        """Forget every program, LM and injected error."""
        self.bridge = MockBridge(mode="pool-worker", worker_id="mock", script=self.bridge.script)
        self._errors.clear()

    def _execute(
        self, command: str, args: dict[str, Any], *, anonymous: bool = False
    ) -> dict[str, Any]:
        session = ANONYMOUS if anonymous or self.session_id is None else self.session_id
        args = {**args, "session_id": session}
        queued = self._errors.get(command)
        if queued:
            raise CommandError(command, queued.pop(0), "mock", self.session_id)
        reply = self.bridge.respond({"id": 1, "command": command, "args": args})
        assert reply is not None
        if not reply["success"]:
            raise CommandError(command, str(reply["error"]), "mock", self.session_id)
        result: dict[str, Any] = reply["result"]
        return result


class BridgeAdapter(Adapter):
    """Layers 2 and 3: commands through a `SessionPool` or a `Bridge`.

    Args:
        client: the pool or bridge.
        session_id: as `Adapter`.
        layer: ``"layer_2"`` (mock workers) or ``"layer_3"`` (DSPy workers).
        owned: stop `client` on `close` (set by `adapter_for_layer`, which started it).
    """

    def __init__(
        self,
        client: BridgeClient,
        session_id: str | None = None,
        *,
        layer: str = "layer_3",
        owned: bool = False,
    ) -> None:
        super().__init__(session_id)
        if layer not in LAYERS:
            raise InvalidOption("layer", layer, f"one of {', '.join(LAYERS)}")
        self.client = client
        self.layer = layer
        self._owned = owned

    def session(self, session_id: str) -> BridgeAdapter:
        """An adapter for another session over the same client (DSPex's
        ``session_adapter``)."""
        return BridgeAdapter(self.client, session_id, layer=self.layer)

    def close(self) -> None:
        """Stop the client if this adapter started it."""
        if self._owned:
            self._owned = False
            self.client.stop()  # type: ignore[attr-defined]

    def __enter__(self) -> BridgeAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(
        self, command: str, args: dict[str, Any], *, anonymous: bool = False
    ) -> dict[str, Any]:
        if anonymous or self.session_id is None:
            return self.client.execute_anonymous(command, args)
        return self.client.execute_in_session(self.session_id, command, args)


def adapter_for_layer(
    layer: str,
    *,
    session_id: str | None = None,
    script: MockScript | None = None,
    **options: Any,
) -> Adapter:
    """The adapter of a test layer (``"layer_1"``, ``"layer_2"``, ``"layer_3"``, or DSPex's
    mode names ``"mock_adapter"``, ``"bridge_mock"``, ``"full_integration"``).

    Layers 2 and 3 start a `SessionPool` (`options` are its `start` options; default
    ``pool_size=2`` and no registered name) that the adapter stops on `close`. `script` sets
    the mock's misbehaviour (layers 1 and 2).
    """
    names = {mode: layer for layer, mode in LAYERS.items()}
    layer = names.get(layer, layer)
    if layer not in LAYERS:
        raise InvalidOption("layer", layer, f"one of {', '.join([*LAYERS, *names])}")
    if layer == "layer_1":
        return MockAdapter(session_id, script)
    options.setdefault("pool_size", 2)
    options.setdefault("name", None)
    if layer == "layer_2":
        options.setdefault("worker_argv", _mock_argv(script or MockScript()))
    pool = SessionPool.start(**options)
    return BridgeAdapter(pool, session_id, layer=layer, owned=True)


def _mock_argv(script: MockScript) -> list[str]:
    argv = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]
    argv += ["--delay", str(script.delay), "--error-rate", str(script.error_rate)]
    argv += ["--seed", str(script.seed)]
    for command in sorted(script.fail):
        argv += ["--fail", command]
    if script.crash_after is not None:
        argv += ["--crash-after", str(script.crash_after)]
    return argv


def detect_bridge(
    *, registry: Registry | None = None, names: Sequence[str] = ("session_pool", "bridge")
) -> SessionPool | Bridge:
    """The running bridge service: a `SessionPool` or a single `Bridge`, found as
    `detect_service` finds services (each name locally, then in `registry`).

    Raises:
        ServiceUnavailable: none is running (the message names each candidate and why).
    """
    service = detect_service(list(names), registry=registry)
    ref = service.ref
    if issubclass(ref.actor_class, Bridge._actor_class):
        return Bridge.from_ref(ref)
    return SessionPool.from_ref(ref)


def _convert(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config with string keys all the way down (DSPex's ``convert_config``)."""
    if not isinstance(config, Mapping):
        raise InvalidOption("config", config, "a mapping")
    return {str(k): _convert(v) if isinstance(v, Mapping) else v for k, v in config.items()}
