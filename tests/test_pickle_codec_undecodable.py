"""With `PICKLE_CODEC`, a request or reply that arrives whole but cannot be unpickled where it
lands (a class the reader cannot import, a ``__setstate__`` that raises) fails that one call
with a typed error, and the worker serves on.

The payload is an object that only the process that pickled it can rebuild (`OnlyHere`): sent
as a request, the worker cannot unpickle it; returned by the handler, the caller cannot. Its
id is read from the frame's pickle opcodes (`pickled_envelope_id`), so the stream stays in
step; a frame without a readable id still ends the worker, as any broken stream does.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import dill
import pytest

import dspex_actors as da
from dspex_actors import PICKLE_CODEC, RemoteError, UndecodableReply
from dspex_actors._ports._framing import pickled_envelope_id
from dspex_actors.testing import sync

from support.lifecycle import WAIT, ProcessPools
from support.ports import Ports


def _rebuild_only_in(pid: int) -> OnlyHere:
    if os.getpid() != pid:
        raise LookupError(f"this object can only be rebuilt in process {pid}")
    return OnlyHere()


class OnlyHere:
    """Pickles fine anywhere; unpickles only in the process that pickled it."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _rebuild_only_in, (os.getpid(),)


def _exit_unless_in(pid: int) -> ExitsElsewhere:
    if os.getpid() != pid:
        raise SystemExit("refused to be unpickled here")
    return ExitsElsewhere()


class ExitsElsewhere:
    """Unpickling it anywhere but where it was pickled raises `SystemExit`."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _exit_unless_in, (os.getpid(),)


REBUILT_IN: list[str] = []  # the threads `Big` objects were unpickled in, in this process


def _rebuilt(padding: bytes) -> Big:
    REBUILT_IN.append(threading.current_thread().name)
    return Big(len(padding))


class Big:
    """Pickles to about `size` bytes; unpickling it notes the thread it happens in."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _rebuilt, (b"x" * self.size,)


def handler(request: Any) -> Any:
    """``"only-here"`` returns an `OnlyHere` (its caller cannot unpickle it), ``"exits"`` an
    `ExitsElsewhere`, ``["big", n]`` a `Big` of n bytes; anything else comes back with the
    worker's pid."""
    if request == "only-here":
        return OnlyHere()
    if request == "exits":
        return ExitsElsewhere()
    if isinstance(request, list) and request[0] == "big":
        return Big(request[1])
    return [request, os.getpid()]


# --- reading the id -------------------------------------------------------------------------


def _explode() -> None:
    raise LookupError("unpickled")


class Explodes:
    """Unpickling it raises, anywhere."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _explode, ()


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("request_id", [0, 7, 300, 70_000, 2**40, -1])
def test_the_id_of_a_pickled_envelope_is_read_without_unpickling(
    request_id: int, protocol: int
) -> None:
    payload = dill.dumps([request_id, Explodes()], protocol=protocol)
    with pytest.raises(LookupError):
        dill.loads(payload)
    assert pickled_envelope_id(payload) == request_id  # nothing in it was rebuilt


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not a pickle",
        dill.dumps([1, 2])[:6],  # cut before the id
        dill.dumps((5, "a tuple")),
        dill.dumps({"id": 5}),
        dill.dumps(["a string id", 1]),
        dill.dumps([True, 1]),
        dill.dumps(5),
        dill.dumps([[7, 1], 2]),  # an integer at the head of a list inside
        dill.dumps([7]),  # one item: no envelope
        dill.dumps(([7], 1)),
    ],
    ids=[
        "empty",
        "garbage",
        "truncated",
        "tuple",
        "dict",
        "str_id",
        "bool_id",
        "bare_int",
        "nested_list",
        "one_item",
        "tuple_of_list",
    ],
)
def test_a_payload_that_is_not_an_envelope_has_no_id(payload: bytes) -> None:
    assert pickled_envelope_id(payload) is None


# --- a port -----------------------------------------------------------------------------------


def test_a_request_the_worker_cannot_unpickle_fails_alone_and_the_port_serves_on(
    ports: Ports,
) -> None:
    port = ports.spawn(handler, codec=PICKLE_CODEC)
    _, pid = port.request("before", timeout=WAIT)
    with pytest.raises(RemoteError) as err:
        port.request(OnlyHere(), timeout=WAIT)
    assert err.value.kind == "ProtocolError"
    assert "LookupError: this object can only be rebuilt in process" in err.value.message
    assert port.request("after", timeout=WAIT) == ["after", pid]


def test_a_reply_the_caller_cannot_unpickle_fails_alone_and_the_port_serves_on(
    ports: Ports,
) -> None:
    port = ports.spawn(handler, codec=PICKLE_CODEC)
    _, pid = port.request("before", timeout=WAIT)
    with pytest.raises(UndecodableReply, match="can only be rebuilt in process") as err:
        port.request("only-here", timeout=WAIT)
    assert isinstance(err.value, da.ProtocolError)
    assert port.request("after", timeout=WAIT) == ["after", pid]


def test_a_frame_without_a_readable_id_still_ends_the_worker(ports: Ports) -> None:
    """The stream cannot be trusted: the worker exits rather than guess."""
    port = ports.spawn(handler, codec=PICKLE_CODEC)
    port.send(["not an int id", OnlyHere()])  # an envelope as no port sends one
    with pytest.raises(da.PortClosed):
        port.request("after", timeout=WAIT)
    assert port.exit_status == 1


# --- a pool -----------------------------------------------------------------------------------


def test_a_process_pool_keeps_its_worker_and_counts_an_error_checkin(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=handler, pool_size=1, codec=PICKLE_CODEC, retries=2)
    _, pid = pool.call("before", timeout=WAIT)
    with pytest.raises(RemoteError, match="can only be rebuilt"):
        pool.call(OnlyHere(), timeout=WAIT)
    with pytest.raises(UndecodableReply):
        pool.call("only-here", timeout=WAIT)
    assert pool.call("after", timeout=WAIT) == ["after", pid]  # the same worker
    sync(pool.actor_ref)
    [stats] = pool.worker_stats()
    assert (stats.successful_checkins, stats.error_checkins) == (2, 2)  # none retried
    assert pool.status().workers_removed == 0


def test_acall_keeps_the_worker_too(process_pools: ProcessPools) -> None:
    pool = process_pools.start(target=handler, pool_size=1, codec=PICKLE_CODEC)

    async def scenario() -> tuple[Any, Any, Exception, Exception]:
        before = await pool.acall("before", timeout=WAIT)
        with pytest.raises(RemoteError) as request_error:
            await pool.acall(OnlyHere(), timeout=WAIT)
        with pytest.raises(UndecodableReply) as reply_error:
            await pool.acall("only-here", timeout=WAIT)
        after = await pool.acall("after", timeout=WAIT)
        return before, after, request_error.value, reply_error.value

    before, after, request_error, reply_error = asyncio.run(asyncio.wait_for(scenario(), WAIT * 2))
    assert after == ["after", before[1]]
    assert "can only be rebuilt" in str(request_error)
    assert "can only be rebuilt" in str(reply_error)
    sync(pool.actor_ref)
    assert pool.status().workers_removed == 0


# --- unpickling that raises SystemExit, and large replies awaited -----------------------------


def test_unpickling_that_raises_system_exit_fails_the_call_alone(ports: Ports) -> None:
    """`SystemExit` from a pickle's own code is no reason for either process to exit."""
    port = ports.spawn(handler, codec=PICKLE_CODEC)
    _, pid = port.request("before", timeout=WAIT)
    with pytest.raises(RemoteError, match="refused to be unpickled here"):
        port.request(ExitsElsewhere(), timeout=WAIT)
    with pytest.raises(UndecodableReply, match="refused to be unpickled here"):
        port.request("exits", timeout=WAIT)
    assert port.request("after", timeout=WAIT) == ["after", pid]


def test_an_awaited_large_reply_is_decoded_off_the_event_loop(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=handler, pool_size=1, codec=PICKLE_CODEC)
    REBUILT_IN.clear()

    async def scenario() -> tuple[Any, Any]:
        small = await pool.acall(["big", 1000], timeout=WAIT)
        large = await pool.acall(["big", 4 << 20], timeout=WAIT)
        return small, large

    small, large = asyncio.run(asyncio.wait_for(scenario(), WAIT * 2))
    assert (small.size, large.size) == (1000, 4 << 20)
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs in this thread
    rebuilt_in = list(REBUILT_IN)
    assert rebuilt_in == [loop_thread, "dspex-aio-call"]
