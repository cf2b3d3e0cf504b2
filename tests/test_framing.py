"""Length-prefixed frames and the codecs: the wire format, the decoder's bounds, bad input.

White-box: `encode_frame`, `FrameDecoder` and `HEADER_SIZE` (`dspex_actors._ports._framing`)
are the framing layer under every port, with no public API of their own; testing them
directly pins every chunking and every bad length, which a port over a real pipe cannot.
The codecs are public (`dspex_actors.JSON_CODEC`, ...).
"""

from __future__ import annotations

import itertools
import struct
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex_actors import JSON_CODEC, PICKLE_CODEC, RAW_CODEC, ProtocolError
from dspex_actors._ports._framing import HEADER_SIZE, FrameDecoder, encode_frame


def test_a_frame_is_a_4_byte_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_the_decoder_reassembles_frames_split_across_chunks_byte_by_byte() -> None:
    stream = encode_frame(b"hello") + encode_frame(b"") + encode_frame(b"world!")
    decoder = FrameDecoder(max_frame=64)
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
    assert frames == [b"hello", b"", b"world!"]
    assert decoder.buffered == 0
    decoder.eof()


def test_a_length_prefix_over_max_frame_raises_before_buffering_the_payload() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError, match="exceeds max_frame"):
        decoder.feed(struct.pack(">I", 11))
    assert decoder.buffered == 0
    # The stream is out of sync for good: the decoder stays broken.
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(b"ok"))


def test_a_frame_of_exactly_max_frame_bytes_is_accepted_both_ways() -> None:
    payload = b"x" * 10
    assert FrameDecoder(max_frame=10).feed(encode_frame(payload, max_frame=10)) == [payload]
    with pytest.raises(ProtocolError, match="exceeds max_frame"):
        encode_frame(payload + b"x", max_frame=10)


class _HugePayload:
    """Claims 4 GiB without holding them: only its length is ever looked at."""

    def __len__(self) -> int:
        return 2**32

    def __radd__(self, other: bytes) -> bytes:
        raise AssertionError("a 4 GiB payload must be refused before it is concatenated")


def test_a_payload_over_4_gib_is_a_protocol_error_not_a_struct_error() -> None:
    """Even when `max_frame` would allow it, the prefix holds at most 2**32 - 1."""
    payload = cast(bytes, _HugePayload())
    with pytest.raises(ProtocolError, match="4-byte"):
        encode_frame(payload, max_frame=2**40)
    with pytest.raises(ProtocolError, match="max_frame"):
        encode_frame(payload)  # the default max_frame refuses it first


def test_a_truncated_frame_at_end_of_stream_is_a_protocol_error() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(struct.pack(">I", 10) + b"abc") == []
    with pytest.raises(ProtocolError, match="truncated frame"):
        decoder.eof()
    half_header = FrameDecoder(max_frame=100)
    half_header.feed(b"\x00\x00")
    with pytest.raises(ProtocolError, match="truncated frame"):
        half_header.eof()


def test_garbage_bytes_read_as_a_huge_length_are_rejected() -> None:
    with pytest.raises(ProtocolError, match="exceeds max_frame"):
        FrameDecoder(max_frame=1024).feed(b"garbage! not a frame")


def test_invalid_json_and_invalid_utf8_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="invalid JSON"):
        JSON_CODEC.decode(b"{not json")
    with pytest.raises(ProtocolError, match="invalid JSON"):
        JSON_CODEC.decode(b"\xff\xfe")
    with pytest.raises(ProtocolError, match="cannot encode"):
        JSON_CODEC.encode({"x": object()})
    with pytest.raises(ProtocolError, match="cannot encode"):
        JSON_CODEC.encode(float("nan"))


def test_codecs_round_trip_their_values() -> None:
    value = {"id": 1, "args": [1, "two", None, True, 2.5]}
    assert JSON_CODEC.decode(JSON_CODEC.encode(value)) == value
    assert RAW_CODEC.decode(RAW_CODEC.encode(b"\x00\xff")) == b"\x00\xff"
    fn = PICKLE_CODEC.decode(PICKLE_CODEC.encode(lambda x: x + 1))
    assert fn(1) == 2


def test_the_raw_codec_refuses_non_bytes_and_pickle_refuses_garbage() -> None:
    with pytest.raises(ProtocolError, match="raw codec sends bytes"):
        RAW_CODEC.encode("text")
    with pytest.raises(ProtocolError, match="cannot unpickle"):
        PICKLE_CODEC.decode(b"not a pickle")


def test_a_negative_or_non_integer_max_frame_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        FrameDecoder(max_frame=-1)
    with pytest.raises(ValueError, match="max_frame"):
        FrameDecoder(max_frame=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(min_value=1, max_value=32))
def test_any_sequence_of_frames_survives_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(p, max_frame=64) for p in payloads)
    decoder = FrameDecoder(max_frame=64)
    frames: list[bytes] = []
    for i in range(0, len(stream), chunk):
        frames += decoder.feed(stream[i : i + chunk])
    decoder.eof()
    assert frames == payloads


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_fuzzed_bytes_never_hang_or_crash_and_memory_stays_bounded(
    chunks: list[bytes],
) -> None:
    """Arbitrary input: only frames or ProtocolError come out, and the buffer never exceeds
    max_frame + header + one chunk (no allocation driven by a hostile length prefix)."""
    max_frame = 128
    decoder = FrameDecoder(max_frame=max_frame)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert len(frame) <= max_frame
            assert decoder.buffered <= max_frame + HEADER_SIZE + len(chunk)
        decoder.eof()
    except ProtocolError:
        pass


def _reference_frames(stream: bytes, max_frame: int) -> tuple[list[bytes], bool]:
    """The frames of a whole stream, decoded the slow obvious way, and whether it breaks."""
    frames: list[bytes] = []
    pos = 0
    while len(stream) - pos >= HEADER_SIZE:
        (size,) = struct.unpack_from(">I", stream, pos)
        if size > max_frame:
            return frames, True
        if len(stream) - pos - HEADER_SIZE < size:
            break
        frames.append(stream[pos + HEADER_SIZE : pos + HEADER_SIZE + size])
        pos += HEADER_SIZE + size
    return frames, False


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=12),
    st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    st.booleans(),
)
def test_chunks_cut_at_frame_boundaries_decode_as_the_whole_stream_does(
    payloads: list[bytes], cuts: list[int], at_boundaries: bool
) -> None:
    """A chunk that is exactly one frame takes the decoder's shortcut: it must give what the
    general path gives, for every cut (at frame boundaries, inside headers or payloads) and
    for frames over max_frame (which the shortcut must refuse too)."""
    max_frame = 24  # some payloads (up to 40 bytes) exceed it
    stream = b"".join(encode_frame(p) for p in payloads)
    points = set(cuts)
    if at_boundaries:  # every frame its own chunk: the shortcut's case
        offset = 0
        for p in payloads:
            offset += HEADER_SIZE + len(p)
            points.add(offset)
    bounds = sorted({0, len(stream), *(c for c in points if c < len(stream))})
    decoder = FrameDecoder(max_frame=max_frame)
    frames: list[bytes] = []
    broke = False
    try:
        for start, end in itertools.pairwise(bounds):
            frames += decoder.feed(stream[start:end])
    except ProtocolError:
        broke = True
    expected, expect_broken = _reference_frames(stream, max_frame)
    assert broke == expect_broken
    if broke:  # the chunk that broke the stream loses the frames it completed: a prefix
        assert frames == expected[: len(frames)]
    else:
        assert frames == expected
        decoder.eof()  # every frame completed: nothing left over


def test_the_one_frame_shortcut_keeps_max_frame_and_pending_state() -> None:
    """A whole frame over max_frame is refused; a chunk after a lone header is its payload,
    even when it looks like a frame of its own."""
    with pytest.raises(ProtocolError, match="exceeds max_frame"):
        FrameDecoder(max_frame=4).feed(encode_frame(b"12345"))
    decoder = FrameDecoder(max_frame=64)
    assert decoder.feed(struct.pack(">I", 6)) == []  # a header alone: 6 payload bytes pending
    looks_like_a_frame = encode_frame(b"ab")  # 6 bytes: \x00\x00\x00\x02ab
    assert decoder.feed(looks_like_a_frame) == [looks_like_a_frame]
    assert decoder.feed(encode_frame(b"next")) == [b"next"]
    decoder.eof()
