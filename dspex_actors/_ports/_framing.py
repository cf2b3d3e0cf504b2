"""Length-prefixed frames (Erlang ``{:packet, 4}``) and the codecs that fill them.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of payload. This is
what an Erlang port opened with ``{:packet, 4}`` reads and writes, and what DSPex's Python bridge
spoke (``struct.pack(">I", len(data))``). `FrameDecoder` is incremental: feed it whatever a pipe
read returned, take out the complete frames. It never allocates more than `max_frame` bytes for
one frame: a length prefix above `max_frame` raises `ProtocolError` *before* anything is buffered,
so a peer writing garbage (or a hostile length) cannot make us allocate gigabytes.

Codecs turn Python values into payloads and back. `JSON_CODEC` is the default (UTF-8 JSON);
`RAW_CODEC` passes `bytes` through; `PICKLE_CODEC` (dill) is only for `Port.spawn` workers you
started yourself, and only when you ask for it: unpickling runs code, so a port never unpickles
the output of a program it did not create.

When not to use it: for a stream with its own framing (newline-delimited JSON, HTTP) use that
framing; this module only knows 4-byte length prefixes.

Example:
    >>> from dspex_actors._ports._framing import FrameDecoder, encode_frame
    >>> decoder = FrameDecoder(max_frame=1024)
    >>> data = encode_frame(b"hello", max_frame=1024) + encode_frame(b"!", max_frame=1024)
    >>> decoder.feed(data[:3]), decoder.feed(data[3:])
    ([], [b'hello', b'!'])
    >>> decoder.eof()  # nothing left half-read
"""

from __future__ import annotations

import json
import math
import pickletools
import struct
from typing import Any, Protocol, runtime_checkable

import attrs

from .._errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "JSON_CODEC",
    "MAX_PAYLOAD",
    "PICKLE_CODEC",
    "RAW_CODEC",
    "Codec",
    "FrameDecoder",
    "JsonCodec",
    "PickleCodec",
    "RawCodec",
    "check_size",
    "encode_frame",
    "pickled_envelope_id",
]

HEADER_SIZE = 4
"""Bytes in a length prefix (``{:packet, 4}``)."""

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""Largest payload accepted by default, in bytes (16 MiB)."""

MAX_PAYLOAD = 2**32 - 1
"""Largest payload a 4-byte length prefix can carry, in bytes: the ceiling of any `max_frame`."""

_HEADER = struct.Struct(">I")


# --- codecs ------------------------------------------------------------------------------------


@runtime_checkable
class Codec(Protocol):
    """Turns values into frame payloads and back.

    `decode` must raise `ProtocolError` (not `ValueError`, not `UnicodeDecodeError`) for a payload
    it cannot read, so callers handle one error type for every kind of bad input.
    """

    @property
    def name(self) -> str:
        """A short name for logs and `PortInfo` (``"json"``)."""
        ...

    def encode(self, value: Any) -> bytes:
        """The payload for `value`; raise `ProtocolError` if it cannot be encoded."""
        ...

    def decode(self, payload: bytes) -> Any:
        """The value in `payload`; raise `ProtocolError` if it is malformed."""
        ...


@attrs.frozen
class JsonCodec:
    """UTF-8 JSON (the default, and what DSPex's bridge spoke). Safe for untrusted peers.

    Exactly the standard library's `json` (compact separators, ``allow_nan=False``): a value
    `json.dumps` refuses (NaN, a set, a dataclass) is a `ProtocolError`, and a payload decodes
    as `json.loads` decodes it. The hot path calls json's C encoder and scanner directly,
    without the per-call set-up of `json.dumps`/`json.loads` (about four times faster on small
    messages); anything unusual (a circular value, whitespace around a payload, another
    encoding) goes through `json.dumps`/`json.loads` themselves, so errors read the same.
    """

    name: str = "json"

    def encode(self, value: Any) -> bytes:
        if _c_encoder is not None:
            try:
                # A fresh encoder each time: its `markers` dict detects cycles (without it a
                # cycle is walked until RecursionError, building every level's text) and may
                # not be shared between threads.
                encode = _c_encoder({}, _refuse, _c_basestring, None, ":", ",", False, False, False)
                return "".join(encode(value, 0)).encode()
            except (TypeError, ValueError, RecursionError):
                pass  # json.dumps below says what was wrong, in its own words
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            where, culprit = _unencodable(value)
            raise ProtocolError(
                f"cannot encode {type(culprit).__name__}{where} as JSON: {exc}"
            ) from exc

    def decode(self, payload: bytes) -> Any:
        if _c_scan is not None:
            try:
                text = payload.decode()
                value, end = _c_scan(text, 0)
                if end == len(text):
                    return value
            except (UnicodeDecodeError, StopIteration, ValueError, RecursionError, AttributeError):
                pass  # json.loads below decides, with its own error (AttributeError: a str)
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # [[[[... nests too deep
            raise ProtocolError(f"invalid JSON in frame ({len(payload)} bytes): {exc}") from exc


def _unencodable(value: Any) -> tuple[str, Any]:
    """Where in `value` the first thing JSON cannot encode sits, and that thing: ``" at
    items[1]"`` (a path: ``config.limits``, ``items[1]``), ``" (a dict key at config)"``, or
    empty for `value` itself. Follows json.dumps's rules (``allow_nan=False``); a cycle is
    reported where it closes. Only called once an encoding has failed."""
    on_path: set[int] = set()

    def visit(node: Any, path: str) -> tuple[str, Any] | None:
        if node is None or isinstance(node, str | bool):
            return None
        if isinstance(node, int):
            try:
                int.__repr__(node)  # a huge int has more digits than str() may make
            except ValueError:
                return (f" at {path}" if path else ""), node
            return None
        if isinstance(node, float):
            return None if math.isfinite(node) else ((f" at {path}" if path else ""), node)
        if not isinstance(node, dict | list | tuple):
            return (f" at {path}" if path else ""), node
        if id(node) in on_path:
            return (f" at {path}" if path else ""), node
        on_path.add(id(node))
        try:
            if isinstance(node, dict):
                # dict.items, not an override: locating must not run the value's own code.
                for key, item in dict.items(node):
                    if key is not None and not isinstance(key, str | int | float | bool):
                        return (f" (a dict key at {path})" if path else " (a dict key)"), key
                    step = f"{path}.{key}" if path else str(key)
                    found = visit(item, step)
                    if found:
                        return found
            else:
                for index, item in enumerate(node):
                    found = visit(item, f"{path}[{index}]")
                    if found:
                        return found
        finally:
            on_path.discard(id(node))
        return None

    try:
        return visit(value, "") or ("", value)
    except RecursionError:
        return "", value


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_fast_paths() -> tuple[Any, Any, Any]:
    """json's C encoder factory (used compact, ``allow_nan=False``), its string encoder, and a
    C scanner; Nones where there is no C accelerator (json.dumps/json.loads do all the work)."""
    try:
        from json.encoder import (  # type: ignore[attr-defined]  # CPython's C accelerator
            c_make_encoder,
            encode_basestring_ascii,
        )
        from json.scanner import c_make_scanner  # type: ignore[attr-defined]

        if c_make_encoder is None or c_make_scanner is None:
            return None, None, None
        encoder = c_make_encoder(
            {}, _refuse, encode_basestring_ascii, None, ":", ",", False, False, False
        )
        scanner = c_make_scanner(json.JSONDecoder())
    except (ImportError, TypeError):  # another Python's internals: use the public functions
        return None, None, None
    if "".join(encoder([1, "é", None], 0)) != '[1,"\\u00e9",null]':
        return None, None, None  # not the encoder we know: use the public functions
    return c_make_encoder, encode_basestring_ascii, scanner


_c_encoder, _c_basestring, _c_scan = _json_fast_paths()


@attrs.frozen
class RawCodec:
    """No encoding: values are `bytes` (or `bytearray`/`memoryview`) and come back as `bytes`."""

    name: str = "raw"

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise ProtocolError(f"the raw codec sends bytes, got {type(value).__name__}")

    def decode(self, payload: bytes) -> Any:
        return payload


@attrs.frozen
class PickleCodec:
    """dill pickles: any Python value, including closures. Unpickling runs code.

    Only `Port.spawn` accepts it (the child is our own code); `Port.open` refuses it, so the
    output of an external program is never unpickled.
    """

    name: str = "pickle"

    def encode(self, value: Any) -> bytes:
        import dill

        try:
            data: bytes = dill.dumps(value)
        except Exception as exc:
            raise ProtocolError(f"cannot pickle {type(value).__name__}: {exc}") from exc
        return data

    def decode(self, payload: bytes) -> Any:
        import dill

        try:
            return dill.loads(payload)
        except (Exception, SystemExit) as exc:  # a pickle's code may raise SystemExit too
            raise ProtocolError(
                f"cannot unpickle frame ({len(payload)} bytes): {type(exc).__name__}: {exc}"
            ) from exc


# The opcodes that may carry an envelope's integer id (by the id's size and sign).
_INT_OPCODES = frozenset({"BININT1", "BININT2", "BININT", "LONG1", "LONG4", "INT", "LONG"})
# How a pickled list of several items starts, in order: the protocol and a frame (both only
# from protocol 2 and 4 on), the empty list, its memo entry, the mark before its items.
_LIST_HEAD = (
    frozenset({"PROTO"}),
    frozenset({"FRAME"}),
    frozenset({"EMPTY_LIST"}),
    frozenset({"MEMOIZE", "BINPUT", "LONG_BINPUT"}),
    frozenset({"MARK"}),
)
_REQUIRED = (False, False, True, False, True)  # which of those steps every such pickle has


def pickled_envelope_id(payload: bytes) -> int | None:
    """The integer id at the head of a pickled ``[id, ...]`` envelope, read from its opcodes
    without unpickling anything; None if `payload` does not start like one (a list of
    several items whose first is an integer).

    A frame that arrived whole but cannot be unpickled (a class the reader cannot import, a
    ``__setstate__`` that raises) still says which request it belongs to, so the stream stays
    in step: the worker answers that request with an error, and the caller fails that call
    alone."""
    step = 0
    try:
        for opcode, arg, _pos in pickletools.genops(payload):
            name = opcode.name
            while step < len(_LIST_HEAD) and name not in _LIST_HEAD[step]:
                if _REQUIRED[step]:
                    return None
                step += 1
            if step < len(_LIST_HEAD):
                step += 1
                continue
            if name in _INT_OPCODES and isinstance(arg, int) and not isinstance(arg, bool):
                return arg
            return None
    except Exception:  # not a pickle at all: its opcodes cannot even be read
        return None
    return None


JSON_CODEC = JsonCodec()
RAW_CODEC = RawCodec()
PICKLE_CODEC = PickleCodec()


# --- frames ------------------------------------------------------------------------------------


def check_size(size: int, max_frame: int) -> None:
    """Raise `ProtocolError` if a payload of `size` bytes exceeds `max_frame`."""
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds max_frame ({max_frame} bytes)")


def encode_frame(payload: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """`payload` with its 4-byte big-endian length prefix.

    Raises:
        ProtocolError: the payload is longer than `max_frame`, or than the 4-byte prefix can
            say (`MAX_PAYLOAD`, 4 GiB - 1), whatever `max_frame` is (nothing is sent, so the
            stream stays in sync and the port stays usable).
    """
    size = len(payload)
    check_size(size, max_frame)
    if size > MAX_PAYLOAD:
        raise ProtocolError(
            f"frame of {size} bytes does not fit the 4-byte length prefix "
            f"(at most {MAX_PAYLOAD} bytes)"
        )
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Incremental decoder: `feed(chunk)` returns the frames completed by that chunk.

    Memory is bounded by `max_frame` + the header + the largest chunk fed: a length prefix above
    `max_frame` raises `ProtocolError` at once, before the payload is buffered. After any
    `ProtocolError` the decoder is broken (the stream is out of sync) and raises again on every
    call; throw the stream away.

    Args:
        max_frame: the largest payload accepted, in bytes.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not isinstance(max_frame, int) or isinstance(max_frame, bool) or max_frame < 0:
            raise ValueError(f"max_frame must be a non-negative integer, got: {max_frame!r}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None  # payload size of the frame being read, once known
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes read from the stream; return every frame they complete, in order.

        Raises:
            ProtocolError: a length prefix exceeds `max_frame` (or the decoder broke earlier).
        """
        if self._error is not None:
            raise self._error
        if self._need is None and not self._buffer and len(chunk) > HEADER_SIZE:
            # Nothing pending, and the chunk may be exactly one frame (a reply read whole).
            (size,) = _HEADER.unpack_from(chunk)
            if size == len(chunk) - HEADER_SIZE and size <= self.max_frame:
                return [chunk[HEADER_SIZE:]]
        self._buffer += chunk
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while True:
            if self._need is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                (size,) = _HEADER.unpack_from(buf, pos)
                if size > self.max_frame:
                    self._error = ProtocolError(
                        f"incoming frame length {size} exceeds max_frame ({self.max_frame} "
                        f"bytes); header bytes {bytes(buf[pos : pos + HEADER_SIZE])!r}"
                    )
                    self._buffer = bytearray()
                    raise self._error
                pos += HEADER_SIZE
                self._need = size
            if len(buf) - pos < self._need:
                break
            frames.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = None
        del buf[:pos]
        return frames

    def eof(self) -> None:
        """The stream ended: raise `ProtocolError` if a frame was cut off mid-way.

        Raises:
            ProtocolError: bytes of an incomplete header or payload are left over.
        """
        if self._error is not None:
            raise self._error
        if self._need is not None or self._buffer:
            expected = "header" if self._need is None else f"payload of {self._need} bytes"
            raise ProtocolError(
                f"truncated frame at end of stream: {len(self._buffer)} bytes of a {expected}"
            )
