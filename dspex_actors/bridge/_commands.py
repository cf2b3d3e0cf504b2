"""`DSPyBridge`: DSPex's bridge command set, served with real DSPy programs.

The commands, their shapes and where they differ from DSPex's script are
`dspex_actors.bridge._bridge`'s (`BridgeCommands`); this module makes them real: programs are
``dspy.Predict``, ``dspy.ChainOfThought`` or ``dspy.ReAct`` (with no tools) modules over a
signature built with ``dspy.make_signature`` from the definition (field types parsed from a
fixed vocabulary, never evaluated). Each runs under ``dspy.context(lm=...)`` with its session's
LM, else the worker's, else the offline LM of `dspex_actors.bridge._offline_lm`
(deterministic, no network): a worker answers ``execute_program`` without any configuration.
Every LM is created with ``cache=False`` (nothing is ever written to disk) and
``num_retries=0`` (a dead endpoint fails at once).

Importing this module imports DSPy (about 0.7 s); it sets ``LITELLM_LOCAL_MODEL_COST_MAP`` and
``LITELLM_OFFLINE_MODE`` first (unless set), so that no model-metadata lookup ever reaches the
network or starts a thread. It starts no thread and writes no file, so a fork server may
preload it.

Example:
    >>> from dspex_actors.bridge._commands import DSPyBridge
    >>> bridge = DSPyBridge(mode="pool-worker", worker_id="w1")
    >>> reply = bridge.respond({"id": 1, "command": "create_program", "args": {
    ...     "id": "qa", "session_id": "s1", "signature": {
    ...         "inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}}})
    >>> reply["success"], reply["result"]["status"]
    (True, 'created')
    >>> reply = bridge.respond({"id": 2, "command": "execute_program", "args": {
    ...     "program_id": "qa", "session_id": "s1", "inputs": {"question": "2+2?"}}})
    >>> reply["result"]["outputs"]
    {'answer': '[offline 97159ad8] answer for question=2+2?'}
"""

from __future__ import annotations

import os

# Before DSPy (and the LiteLLM it may load later) reads them: use the bundled model-cost map,
# never fetch it (a fetch blocks up to 5 s offline, and LiteLLM retries it in a thread).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import functools
import json
from collections.abc import Mapping
from typing import Any

import dspy  # type: ignore[import-untyped]  # DSPy ships no type information

from ._bridge import (
    ANONYMOUS,
    MODES,
    PROGRAM_TYPES,
    BridgeCommands,
    BridgeError,
    Program,
    Signature,
    parse_fields,
)
from ._offline_lm import offline_lm

__all__ = ["ANONYMOUS", "MODES", "PROGRAM_TYPES", "BridgeError", "DSPyBridge"]


class DSPyBridge(BridgeCommands):
    """DSPex's bridge commands with real DSPy programs (see `BridgeCommands` for the commands
    and `__init__`'s arguments)."""

    dspy_available = True

    def make_lm(self, model: str, options: dict[str, Any]) -> Any:
        # Built, never called: DSPy constructs an LM without any network traffic. No retries
        # (a dead endpoint fails at once instead of after seconds of backoff), no cache
        # (nothing on disk).
        return dspy.LM(model, cache=False, num_retries=0, **options)

    def offline_lm(self) -> Any:
        return offline_lm()

    def make_signature(self, key: str) -> Signature:
        return _signature(key)

    def make_module(self, signature: Signature, program_type: str) -> Any:
        if program_type == "predict":
            return dspy.Predict(signature.cls)
        if program_type == "chain_of_thought":
            return dspy.ChainOfThought(signature.cls)
        return dspy.ReAct(signature.cls, tools=[])

    def run(self, program: Program, values: dict[str, Any], lm: Any) -> Mapping[str, Any]:
        with dspy.context(lm=lm):
            prediction = program.module(**values)
        return {name: prediction[name] for name in prediction.keys()}  # noqa: SIM118


# --- signatures --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _signature(key: str) -> Signature:
    """The signature class for a definition (`key`: its canonical JSON), built once per
    distinct definition and process."""
    sides, instructions, class_name = parse_fields(json.loads(key), dspy.Signature)
    fields: dict[str, tuple[Any, Any]] = {}
    for side, make_field in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
        for _, sanitized, field, kind in sides[side]:
            description = field.get("description") or field.get("desc") or ""
            fields[sanitized] = (kind, make_field(desc=str(description)))
    cls = dspy.make_signature(fields, instructions, signature_name=class_name)
    return Signature(
        cls,
        class_name,
        tuple((name, sanitized) for name, sanitized, *_ in sides["inputs"]),
        tuple((name, sanitized) for name, sanitized, *_ in sides["outputs"]),
    )
