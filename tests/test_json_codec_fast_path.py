"""`JSON_CODEC` is exactly the standard library's json, fast path or not.

`JsonCodec.encode`/`decode` call json's C encoder and scanner directly and fall back on
`json.dumps(v, separators=(",", ":"), allow_nan=False)` / `json.loads` for anything unusual.
These properties compare them with json itself: the same bytes and values when json succeeds,
a `ProtocolError` (caused by json's own exception) exactly when json raises, and the same
results again with the C accelerators switched off (`_c_encoder`/`_c_scan` set to None).

White-box: switching the accelerators off needs the framing module's own references to them
(`dspex_actors._ports._framing`); the codec itself is the public `dspex_actors.JSON_CODEC`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dspex_actors import JSON_CODEC, ProtocolError
from dspex_actors._ports import _framing

SETTINGS = settings(max_examples=200, deadline=None)


# --- what json says ---------------------------------------------------------------------------


def json_encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def outcome(fn: Callable[[Any], Any], arg: Any) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, the exception)``."""
    try:
        return True, fn(arg)
    except Exception as exc:
        return False, exc


def same(a: Any, b: Any) -> bool:
    """Structural equality that also tells -0.0 from 0.0, True from 1, and sees NaN == NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check_encode(value: Any) -> None:
    """`JSON_CODEC.encode` agrees with json: same bytes, or ProtocolError from json's error."""
    ok, expected = outcome(json_encode, value)
    if ok:
        assert JSON_CODEC.encode(value) == expected
        return
    with pytest.raises(ProtocolError) as info:
        JSON_CODEC.encode(value)
    cause = info.value.__cause__
    assert type(cause) is type(expected)
    assert str(cause) == str(expected)  # json's own words, not the fast path's


def check_decode(payload: bytes) -> None:
    """`JSON_CODEC.decode` agrees with `json.loads`: same value, or ProtocolError."""
    ok, expected = outcome(json.loads, payload)
    if ok:
        assert same(JSON_CODEC.decode(payload), expected), payload
        return
    assert isinstance(expected, ValueError | RecursionError), expected  # what json raises
    with pytest.raises(ProtocolError) as info:
        JSON_CODEC.decode(payload)
    assert type(info.value.__cause__) is type(expected)


# --- strategies -----------------------------------------------------------------------------

# Every code point, lone surrogates included (hypothesis leaves category Cs out by default).
any_char = st.characters(exclude_categories=[])
tricky_text = st.sampled_from(
    ["", "\x00", "\x1f", '"', "\\", "/", "\u2028", "\ud800", "\udfff", "\U0001f600", "é"]
)
texts = st.text(any_char, max_size=12) | tricky_text
big_ints = st.integers(min_value=-(10**60), max_value=10**60) | st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**4299, -(10**4299)]
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 0.0, 5e-324, 1.7976931348623157e308, 1e16, 0.1]
)
scalars = st.none() | st.booleans() | st.integers() | big_ints | finite_floats | texts
keys = texts | st.integers() | finite_floats | st.booleans() | st.none()

json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


class Opaque:
    """Not JSON serialisable."""


def circular_list(items: list[Any]) -> list[Any]:
    items.append(items)
    return items


def circular_dict(items: dict[str, Any]) -> dict[str, Any]:
    items["self"] = items
    return items


bad_leaves = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        {1, 2},
        frozenset(),
        b"bytes",
        bytearray(b"x"),
        Opaque(),
        1j,
        Decimal("1.5"),
        {(1, 2): "tuple key"},
        {Opaque(): "object key"},
        {float("nan"): "nan key"},
        {float("inf"): "inf key"},
    ]
)
# Values that are JSON except somewhere (maybe deep inside), plus cycles. Small scalars only:
# the fast path walks a cycle about a thousand times before it gives up (see the cycle tests).
small_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=4)
non_json_values = st.recursive(
    bad_leaves | small_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.lists(children, max_size=3).map(circular_list)
        | st.dictionaries(st.text(max_size=3), children, max_size=3).map(circular_dict)
    ),
    max_leaves=12,
)


def _variants(value: Any) -> Iterator[bytes]:
    text = json.dumps(value)
    yield text.encode()
    yield text.encode("utf-8-sig")
    yield text.encode("utf-16-le")
    yield text.encode("utf-16")
    yield text.encode("utf-32-be")
    yield text.encode("utf-32")
    yield (" \n" + text + "\t ").encode()
    yield (text + " x").encode()
    yield text.encode()[:-1]
    yield json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


payloads = (
    st.binary(max_size=40)
    | st.tuples(json_values, st.integers(min_value=0, max_value=9)).map(
        lambda vi: list(_variants(vi[0]))[vi[1]]
    )
    | st.sampled_from(
        [
            b"",
            b"NaN",
            b"-Infinity",
            b"[NaN,Infinity]",
            b" 1 ",
            b"1 2",
            b"1\x00",
            b"\x001",
            b"[1]\x00\x00",
            b"\xef\xbb\xbf[1]",
            b'"\xed\xa0\x80"',
            b'"\\ud800"',
            b'"\\ud83d\\ude00"',
            b'{"a":1,"a":2}',
            b"-0",
            b"-0.0",
            b"1e400",
            b"0" * 5000,
            b"1" * 5000,
            b"[" * 100_000,
            b'"\x01"',
            b"{1:2}",
            b"[1,]",
            b"tru",
            b"\xff\xfe1\x00",
            b"\xfe\xff\x001",
        ]
    )
)


# --- the fast path agrees with json ------------------------------------------------------------


def test_the_c_fast_path_is_in_use_on_this_python() -> None:
    """Without the C accelerators the properties below would only test json itself."""
    assert _framing._c_encoder is not None
    assert _framing._c_scan is not None


@SETTINGS
@given(json_values)
@example(-0.0)
@example({2: "int", 1.5: "float", True: "bool", None: "null", "s": "str"})
@example(["\ud800", "\U0001f600", "\x00"])
@example(10**400)
def test_json_values_encode_to_json_s_bytes_and_decode_back_as_json_loads_does(
    value: Any,
) -> None:
    """`encode` == json.dumps(compact, allow_nan=False).encode(); decode == json.loads."""
    encoded = JSON_CODEC.encode(value)
    assert encoded == json_encode(value)
    assert same(JSON_CODEC.decode(encoded), json.loads(encoded))


@SETTINGS
@given(non_json_values)
@example(float("nan"))
@example(circular_list([]))
@example({(1, 2): 3})
@example(Opaque())
@example([[[[[b"deep"]]]]])
def test_values_json_refuses_are_a_protocol_error_exactly_when_json_raises(
    value: Any,
) -> None:
    """NaN, inf, sets, bytes, tuple keys, objects, cycles: ProtocolError iff json raises,
    and the cause is json's own exception (same type and message)."""
    check_encode(value)


@SETTINGS
@given(payloads)
def test_any_payload_decodes_as_json_loads_does_or_is_a_protocol_error(
    payload: bytes,
) -> None:
    """Arbitrary bytes (and JSON in other encodings, with BOMs, padded, truncated)."""
    check_decode(payload)


def test_a_payload_nested_too_deep_is_a_protocol_error() -> None:
    """json.loads raises RecursionError: ProtocolError, not RecursionError."""
    with pytest.raises(ProtocolError, match="invalid JSON"):
        JSON_CODEC.decode(b"[" * 100_000 + b"]" * 100_000)


def test_the_json_codec_turns_a_too_deeply_nested_value_into_protocol_error() -> None:
    """`Codec.decode`/`encode` raise `ProtocolError` for what they cannot handle; a peer
    writing ``[[[[...`` (or a caller passing a deeply nested value) must not leak
    `RecursionError`."""
    with pytest.raises(ProtocolError):
        JSON_CODEC.decode(b"[" * 100_000)
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ProtocolError):
        JSON_CODEC.encode(nested)


def test_an_int_with_more_digits_than_python_prints_is_a_protocol_error() -> None:
    """Over `sys.get_int_max_str_digits()` json raises ValueError: so do we, nested too.

    (Kept out of the hypothesis strategies: hypothesis cannot print such an int.)
    """
    for value in (10**5000, [1, {"a": -(10**5000)}]):
        check_encode(value)
        with pytest.raises(ProtocolError, match="Exceeds the limit"):
            JSON_CODEC.encode(value)
    assert JSON_CODEC.encode(10**4299) == json_encode(10**4299)  # 4300 digits: allowed


def test_a_circular_value_is_reported_in_json_s_words() -> None:
    """The fast path has no cycle check (it hits RecursionError); the error still says
    what json.dumps says."""
    with pytest.raises(ProtocolError, match="Circular reference detected"):
        JSON_CODEC.encode(circular_list([1]))


# --- the fallback without the C accelerators ---------------------------------------------------


@pytest.fixture
def no_fast_path() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_framing, "_c_encoder", None)
        mp.setattr(_framing, "_c_scan", None)
        yield


@SETTINGS
@given(values=json_values | non_json_values, payload=payloads)
def test_without_the_c_accelerators_results_and_errors_are_the_same(
    values: Any, payload: bytes
) -> None:
    """`_c_encoder`/`_c_scan` set to None: every result and error is the fast path's."""
    fast_encoded = outcome(JSON_CODEC.encode, values)
    fast_decoded = outcome(JSON_CODEC.decode, payload)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_framing, "_c_encoder", None)
        mp.setattr(_framing, "_c_scan", None)
        slow_encoded = outcome(JSON_CODEC.encode, values)
        slow_decoded = outcome(JSON_CODEC.decode, payload)
        check_encode(values)
        check_decode(payload)
    for fast, slow in ((fast_encoded, slow_encoded), (fast_decoded, slow_decoded)):
        assert fast[0] == slow[0]
        if fast[0]:
            assert same(fast[1], slow[1])
        else:
            assert type(fast[1]) is type(slow[1]) is ProtocolError
            assert str(fast[1]) == str(slow[1])


def test_the_fallback_is_really_taken_when_the_accelerators_are_off(
    no_fast_path: None,
) -> None:
    """With both set to None the codec still works (it does not call None)."""
    assert _framing._c_encoder is None
    assert _framing._c_scan is None
    assert JSON_CODEC.encode({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'
    assert JSON_CODEC.decode(b'{"a":[1,2.5,null]}') == {"a": [1, 2.5, None]}
    with pytest.raises(ProtocolError):
        JSON_CODEC.encode(float("nan"))
    with pytest.raises(ProtocolError):
        JSON_CODEC.decode(b"{")


# --- the error messages are json's ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("-inf"), {1, 2}, b"x", {(1,): 1}, Opaque(), 10**5000],
    ids=["nan", "-inf", "set", "bytes", "tuple-key", "object", "huge-int"],
)
def test_encode_errors_name_the_type_and_carry_json_s_message(value: Any) -> None:
    """ "cannot encode <type> as JSON: <json's message>", caused by json's exception; a dict
    key that JSON refuses is named as such, with its own type."""
    ok, expected = outcome(json_encode, value)
    assert not ok
    with pytest.raises(ProtocolError) as info:
        JSON_CODEC.encode(value)
    culprit = "tuple (a dict key)" if isinstance(value, dict) else type(value).__name__
    assert str(info.value) == f"cannot encode {culprit} as JSON: {expected}"


# --- a cycle costs what it costs json -------------------------------------------------------------


class CountingDict(dict[str, Any]):
    """A dict that counts how often an encoder asks for its items."""

    calls = 0

    def items(self) -> Any:
        type(self).calls += 1
        return super().items()


def test_a_circular_value_is_refused_without_walking_the_cycle_over_and_over() -> None:
    """json.dumps looks at each container of a cycle once before refusing it."""
    CountingDict.calls = 0
    cycle = CountingDict()
    cycle["self"] = cycle
    ok, _ = outcome(json_encode, cycle)
    assert not ok
    json_calls = CountingDict.calls
    assert json_calls == 1
    CountingDict.calls = 0
    with pytest.raises(ProtocolError, match="Circular reference detected"):
        JSON_CODEC.encode(cycle)
    assert CountingDict.calls <= 2 * json_calls  # the fast path may try once, then json
