"""A deterministic, network-free DSPy LM: every output field filled from the inputs.

`offline_lm()` returns a real `dspy.LM` whose engine (DSPy's ``complete(Request) -> Response``
protocol) never leaves the process. It reads what the adapter asks for straight from the
prompt, the way a model would:

- the input and output field names and their types, from the system message's
  ``Your input fields are:`` / ``Your output fields are:`` lists (``1. `name` (type): desc``);
- the input values, from the last user message's ``[[ ## name ## ]]`` blocks;
- the reply format: ChatAdapter markers, or a JSON object for the JSONAdapter (and for the
  ChatAdapter's JSON fallback).

and answers every output field, the extra ones a module adds included (ChainOfThought's
``reasoning``, ReAct's ``next_tool_name``...). A value depends only on the field's name, its
type and the input values (a SHA-256 digest of them), so the same inputs give the same outputs
in every process, on every run. Typed fields get a value of their type: ``int``, ``float``,
``bool``, ``Literal[...]`` (its first option), ``list[...]``, ``dict[...]``, ``tuple[...]``,
``Optional``/unions (their first non-None member); anything else gets a string naming the
field and quoting the inputs. ReAct's ``next_tool_args`` is ``{}``: the tool it picks (the
first option, which is ``finish`` when the agent has no tools) takes no arguments.

It is what the bridge worker runs programs with until (or unless) ``configure_lm`` names a
real model, so a pool can be exercised end to end with no API key and no network.

When not to use it: to test what a program *means*; its answers are placeholders. For scripted
answers use DSPy's own ``dspy.utils.DummyLM``.

Example:
    >>> import dspy
    >>> from dspex_actors.bridge._offline_lm import offline_lm
    >>> with dspy.context(lm=offline_lm()):
    ...     prediction = dspy.Predict("question -> answer, confidence: float")(question="2+2?")
    >>> prediction.answer
    '[offline 97159ad8] answer for question=2+2?'
    >>> prediction.confidence
    15.8
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import dspy  # type: ignore[import-untyped]  # DSPy ships no type information
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events  # type: ignore[import-untyped]

__all__ = ["MODEL", "OfflineEngine", "offline_lm"]

MODEL = "offline/deterministic"
"""The model name of `offline_lm()` (what ``lm.model`` and a program's history report)."""

# ``1. `name` (type): description`` in the adapter's field lists.
_FIELD_LINE = re.compile(r"^\d+\.\s+`([^`]+)`\s+\((.*?)\):", re.MULTILINE)
# ``[[ ## name ## ]]``: a field's marker in the ChatAdapter's messages.
_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_SUMMARY_CHARS = 60  # characters of each input quoted in a string output


class OfflineEngine:
    """A DSPy engine answering every request from its prompt alone (see the module docs).

    Stateless: one engine may serve any number of LMs, threads and programs.
    """

    def complete(self, request: Any) -> Any:
        """The reply to `request` (a ``dspy.lm15.Request``), as a ``dspy.lm15.Response``."""
        system = _system_text(request)
        user = next((m.text or "" for m in reversed(request.messages) if m.role == "user"), "")
        input_fields = _fields(_section(system, "Your input fields are:", "Your output fields"))
        output_fields = _fields(
            _section(system, "Your output fields are:", "All interactions will be")
        )
        inputs = _input_values(user, {name for name, _ in input_fields})
        values = {name: _value(name, type_text, inputs) for name, type_text in output_fields}
        if "Respond with a JSON object" in user or "Outputs will be a JSON object" in system:
            text = json.dumps(values, ensure_ascii=False)
        else:
            blocks = [
                f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
                for name, value in values.items()
            ]
            text = "\n\n".join([*blocks, "[[ ## completed ## ]]"])
        return Response(
            id=None,
            model=MODEL,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=0, output_tokens=0, total_tokens=0),
        )

    def stream(self, request: Any) -> Iterator[Any]:
        """`complete`'s reply as stream events (for streaming callers)."""
        result: Iterator[Any] = response_to_events(self.complete(request))
        return result

    def close(self) -> None:
        """Nothing to release."""


def offline_lm() -> Any:
    """A new ``dspy.LM`` served by `OfflineEngine`.

    ``cache=False``: DSPy's response cache (whose disk half lives under ``~/.dspy_cache``) is
    never touched, so running programs writes no file.
    """
    return dspy.LM(MODEL, engine=OfflineEngine(), cache=False)


# --- reading the prompt ------------------------------------------------------------------------


def _system_text(request: Any) -> str:
    """The system prompt: ``request.system`` (a string or a sequence of parts), else the
    system messages'."""
    system = request.system
    if isinstance(system, str):
        return system
    if system:
        return "".join(getattr(part, "text", None) or "" for part in system)
    return "\n".join(m.text or "" for m in request.messages if m.role == "system")


def _section(text: str, start: str, stop: str) -> str:
    """The part of `text` between `start` and the next `stop` (empty if `start` is absent)."""
    begin = text.find(start)
    if begin < 0:
        return ""
    begin += len(start)
    end = text.find(stop, begin)
    return text[begin : end if end >= 0 else len(text)]


def _fields(block: str) -> list[tuple[str, str]]:
    """The ``(name, type)`` pairs listed in `block`, in order."""
    return [(m.group(1), m.group(2).strip()) for m in _FIELD_LINE.finditer(block)]


def _input_values(user: str, names: set[str]) -> dict[str, str]:
    """The values of the input fields `names` in the user message's ``[[ ## name ## ]]``
    blocks (the adapter's closing instruction is not part of the last one)."""
    text = user.rsplit("\n\nRespond with", 1)[0]
    parts = _MARKER.split(text)  # ['', name1, body1, name2, body2, ...]
    return {
        parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2) if parts[i] in names
    }


# --- making the values -------------------------------------------------------------------------


def _value(name: str, type_text: str, inputs: dict[str, str]) -> Any:
    """The value of output field `name`, of the type the adapter wrote as `type_text`."""
    seed = json.dumps([name, type_text, inputs], sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(seed.encode()).hexdigest()
    try:
        node = ast.parse(type_text, mode="eval").body
    except SyntaxError:
        node = None
    return _typed(node, name, digest, inputs)


def _typed(node: ast.expr | None, name: str, digest: str, inputs: dict[str, str]) -> Any:
    """A value of the type `node` (a parsed annotation; None: a string)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | Y: X unless None
        left = node.left
        return _typed(node.right if _is_none(left) else left, name, digest, inputs)
    head = _head(node)
    if isinstance(node, ast.Subscript):
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal":
            first = args[0] if args else None
            return first.value if isinstance(first, ast.Constant) else ""
        if head in ("Union", "Optional"):
            members = [a for a in args if not _is_none(a)] or args
            return _typed(members[0], name, digest, inputs)
        if head in ("list", "List", "set", "Set", "frozenset", "Sequence"):
            return [_typed(args[0], name, digest[8:], inputs)]
        if head in ("tuple", "Tuple"):
            items = [a for a in args if not (isinstance(a, ast.Constant) and a.value is ...)]
            return [_typed(a, name, digest[8 * (i + 1) :], inputs) for i, a in enumerate(items)]
        if head in ("dict", "Dict", "Mapping") and len(args) == 2:
            if name == "next_tool_args":
                return {}  # ReAct's: the tool picked (the first, ``finish``) takes none
            key = name if _head(args[0]) == "str" else _typed(args[0], name, digest[8:], inputs)
            value = _typed(args[1], name, digest[16:], inputs)
            return {key if isinstance(key, str) else json.dumps(key): value}
    number = int(digest[:6], 16)
    if head == "int":
        return number % 1000
    if head == "float":
        return round(number % 1000 / 10, 1)
    if head == "bool":
        return number % 2 == 0
    if head in ("NoneType", "None"):
        return None
    if head in ("list", "List", "tuple", "Tuple", "set", "Set"):
        return [f"{name}-{digest[:8]}"]
    if head in ("dict", "Dict"):
        return {"field": name, "digest": digest[:8]}
    summary = "; ".join(f"{k}={v[:_SUMMARY_CHARS]}" for k, v in sorted(inputs.items()))
    return f"[offline {digest[:8]}] {name} for {summary}"


def _head(node: ast.expr | None) -> str | None:
    """The name a type annotation starts with: ``list`` for ``list[str]``, ``Literal`` for
    ``typing.Literal[...]``."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _is_none(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or _head(node) == "NoneType"
