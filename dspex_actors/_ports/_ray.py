"""The Ray backend of `ProcessPool`: each worker a Ray actor, driven through a `RayPort`.

With ``backend="ray"``, a pool's workers are Ray actors placed by Ray anywhere in the cluster;
the pool actor, its supervision and any session store stay in this process (the driver). A
`RayPort` stands in for the worker's `Port`: the same ownership, the same request ids and
replies, the same exit events, so `PortWorker`, `ProcessPool` and `SessionPool` drive it
unchanged.

- **One actor per worker** (`RayWorker`), created with ``max_restarts=0`` and
  ``max_task_retries=0``: a dead worker is replaced by the pool (a new actor), never restarted
  by Ray behind its back. A `target` worker runs the target in the actor's own process; an
  `argv` worker runs the program as a child of the actor's process (a local `Port` there) and
  relays its frames. A request and its reply are one actor call: the request's payload in,
  the reply's payload out, encoded by the pool's codec exactly as a local worker's.
- **Death is an event.** Each actor runs one call that never returns (`RayWorker.watch`, in
  a concurrency group of its own): when the actor dies (killed, its process SIGKILLed, its node
  lost), Ray fails that call, and the port reports its exit as a local port does (a
  `PortExited` to an actor owner, `PortClosed` to a caller). An `argv` worker's call returns
  the program's exit status when the program exits. Nothing polls.
- **Kill and close** are ``ray.kill(actor, no_restart=True)``; closing an `argv` worker first
  closes its program gracefully (EOF, SIGTERM, SIGKILL, as `Port.close`).

Ray is imported here only, and only when a Ray-backed pool is checked or started: importing
dspex_actors never imports Ray.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .. import _telemetry
from .._aio import in_thread
from .._checks import remaining
from .._errors import CallTimeout, InvalidOption, PortClosed, ProtocolError
from .._logging import area_logger, log_event
from ._framing import HEADER_SIZE, RAW_CODEC, Codec, check_size
from ._launch import pickle_setup
from ._port import Owner, Port, StartThread, _ids
from ._worker import answer, codec_named, decoded, reply_payload

__all__ = [
    "RESERVED_OPTIONS",
    "RayPort",
    "RayWorker",
    "check_ray_spec",
    "ensure_ray",
    "open_ray_port",
]

_log = area_logger("ray")

RESERVED_OPTIONS = frozenset(
    {
        "max_restarts",
        "max_task_retries",
        "max_concurrency",
        "max_pending_calls",
        "concurrency_groups",
        "allow_out_of_order_execution",
        "lifetime",
        "name",
        "namespace",
        "get_if_exists",
    }
)
"""Actor options the pool sets itself, refused in ``ray_options``: the pool replaces dead
workers (Ray must not restart or retry them), runs each worker's calls in order beside its
death watch (which a pending-calls limit would starve), and owns its actors (a named or
detached actor would outlive the pool)."""

_ACTOR_OPTIONS = {"max_restarts": 0, "max_task_retries": 0}
_EXIT_GRACE = 5.0  # seconds a failed call waits for the actor's end to be reported


def ray_module() -> Any:
    """Ray, imported now.

    Raises:
        InvalidOption: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise InvalidOption(
            "backend", "ray", "used with Ray installed (pip install 'dspex-actors[ray]')"
        ) from exc
    return ray


@functools.cache
def _actor_class() -> Any:
    ray = ray_module()
    return ray.remote(concurrency_groups={"watch": 1}, **_ACTOR_OPTIONS)(RayWorker)


@functools.cache
def _strategy_types() -> tuple[type, ...]:
    """Ray's scheduling strategy classes (those this Ray version has)."""
    from ray.util import scheduling_strategies

    names = (
        "PlacementGroupSchedulingStrategy",
        "NodeAffinitySchedulingStrategy",
        "NodeLabelSchedulingStrategy",
    )
    return tuple(
        getattr(scheduling_strategies, n) for n in names if hasattr(scheduling_strategies, n)
    )


def check_ray_spec(spec: Any) -> None:
    """Refuse the options of a Ray-backed pool's `PortSpec` that it cannot honour, before
    anything starts.

    Raises:
        InvalidOption: Ray is not installed; `ray_options` is not a mapping, sets an option
            the pool sets itself (`RESERVED_OPTIONS`) or one Ray refuses; `start_method` or
            `max_memory` is set (Ray starts the workers, which may run on other machines).
    """
    options = spec.ray_options
    if options is not None and not (
        isinstance(options, Mapping) and all(isinstance(key, str) for key in options)
    ):
        raise InvalidOption("ray_options", options, "a dict of Ray actor options")
    if spec.start_method is not None:
        raise InvalidOption("start_method", spec.start_method, "None with backend='ray'")
    if spec.max_memory is not None:
        raise InvalidOption(
            "max_memory", spec.max_memory, "None with backend='ray' (workers may be remote)"
        )
    reserved = sorted(RESERVED_OPTIONS.intersection(options or ()))
    if reserved:
        raise InvalidOption("ray_options", options, f"free of {reserved} (the pool sets them)")
    strategy = (options or {}).get("scheduling_strategy")
    if strategy is not None and not (
        strategy in ("DEFAULT", "SPREAD") or isinstance(strategy, _strategy_types())
    ):
        # Ray checks it only when an actor is made: each start would fail, again and again.
        raise InvalidOption(
            "ray_options",
            options,
            "a scheduling_strategy of 'DEFAULT', 'SPREAD' or a ray.util.scheduling_strategies "
            "instance",
        )
    try:
        _actor_class().options(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise InvalidOption("ray_options", options, f"options Ray accepts ({exc})") from exc


def ensure_ray() -> None:
    """Connect to Ray if nobody has: ``ray.init()`` (a local instance, or the cluster that
    ``RAY_ADDRESS`` names), with a WARNING record ``ray_init``.

    Raises:
        InvalidOption: Ray is not initialised and this is not the main thread: Ray ties its
            local processes to the thread that starts them, so it must be started by the
            main thread (call ``ray.init(...)`` there before starting the pool).
    """
    ray = ray_module()
    if ray.is_initialized():
        return
    if threading.current_thread() is not threading.main_thread():
        raise InvalidOption(
            "backend",
            "ray",
            "used once ray.init() has run, when the pool starts outside the main thread",
        )
    log_event(
        _log,
        "WARNING",
        "ray_init",
        "Ray is not initialised: calling ray.init() (call ray.init(address=...) before "
        "starting the pool to choose the cluster)",
    )
    ray.init()


def open_ray_port(
    spec: Any,
    owner: Owner,
    on_start: Callable[[Port], None] | None,
    setup: bytes | None,
    argv: Sequence[str] | None,
) -> RayPort:
    """Create one worker's actor and return its port once the actor runs (`PortSpec.open`
    for ``backend="ray"``).

    Raises:
        CallTimeout: the actor was not running within `spec.init_timeout` (Ray could not
            place it, e.g. for lack of the resources `ray_options` asks for; it is killed).
        PortClosed: the actor died while starting (its program could not start, ...).
        RuntimeError: Ray is not initialised (any more).
    """
    ray = ray_module()
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised (ray.shutdown() was called?)")
    program = spec.argv is not None
    if program:
        init: tuple[Any, ...] = (
            None,
            list(spec.argv if argv is None else argv),
            None if spec.env is None else dict(spec.env),
            spec.cwd,
            spec.max_frame,
        )
    else:
        if setup is None:
            assert spec.target is not None
            setup = pickle_setup(spec.target, spec.args, spec.codec, spec.max_frame)
        init = (setup, None, None, None, spec.max_frame)
    options = {**(spec.ray_options or {}), **_ACTOR_OPTIONS}
    actor = _actor_class().options(**options).remote(*init)
    port = RayPort(
        actor,
        name=spec.name,
        codec=spec.codec,
        max_frame=spec.max_frame,
        owner=owner,
        enveloped=not program,
    )
    try:
        if on_start is not None:
            on_start(port)
        pid = ray.get(actor.started.remote(), timeout=spec.init_timeout)
    except BaseException as exc:
        port.kill()
        port._opened(0)  # its end is reported (the kill) like any port's
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise CallTimeout(str(port), "start", spec.init_timeout) from None
        if isinstance(exc, ray.exceptions.RayError):
            raise PortClosed(port, f"its actor failed to start: {exc}") from None
        raise
    port._opened(pid)
    return port


@attrs.define
class _ActorProcess:
    pid: int = 0  # the actor's process id, known once it runs


class RayPort(Port):
    """A `Port` whose process is a Ray actor (`RayWorker`): what a pool needs of a port,
    over actor calls. Made by `open_ray_port`.

    Each frame sent to a `target` worker is one actor call, whose result is the reply; the
    calls are kept in order until their replies are received. An `argv` worker's actor
    relays frames to and from its program (a request and its reply in one call). `os_pid`
    is the actor's process id, on whichever node runs it.
    """

    def __init__(
        self,
        actor: Any,
        *,
        name: str,
        codec: Codec,
        max_frame: int,
        owner: Owner,
        enveloped: bool,
    ) -> None:
        # What Port's own methods use (ownership, request ids, replies, the exit); no pipes.
        self.id = next(_ids)
        self._actor = actor
        self._child = _ActorProcess()  # type: ignore[assignment]  # only its pid is used
        self._name = name
        self._codec = codec
        self._max_frame = max_frame
        self._owner = owner
        self._on_exit = None
        self._enveloped = enveloped
        self._on_reaped = None  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closing = False
        self._exit = None
        self._exited = threading.Event()
        self._request_ids = itertools.count(1)
        self._reply_pending = False
        self._stderr_tail = collections.deque()
        self._opened_at = time.monotonic()
        # Replies asked for and not yet received, oldest first (the actor answers in order).
        self._inflight: collections.deque[Any] = collections.deque()
        self._unread = False  # a program wrote more frames than were asked for
        self._killed = False
        self._ended = False
        # Queued now, so the actor's death is seen whenever it comes; watched by `_opened`.
        self._watch_ref = actor.watch.options(concurrency_group="watch").remote()

    def _opened(self, pid: int) -> None:
        """The actor runs (or failed to start): emit the opening, then watch for its end."""
        self._child.pid = pid
        if _telemetry.active:
            _telemetry.emit(_telemetry.PORT_OPENED, {"count": 1}, self._telemetry_metadata())
        self._watch_ref.future().add_done_callback(self._watched)

    # -- talking to it --

    def _write(
        self,
        data: bytes,
        timeout: float | None,
        late: StartThread | None = None,
        handoff: StartThread | None = None,
    ) -> None:
        # `send` and `ping`: a target worker answers every frame (an actor call each); a
        # program's frame is written, and its frames read by `recv`. An actor call is never
        # half sent, and never waits: nothing is ever late or handed off.
        method = self._actor.request if self._enveloped else self._actor.write
        self._submit(method, data[HEADER_SIZE:], reply=self._enveloped)

    def _write_request(
        self,
        payload: bytes,
        timeout: float | None,
        handoff: StartThread | None = None,
    ) -> None:
        check_size(len(payload), self._max_frame)
        self._submit(self._actor.request, payload, reply=True)

    def _submit(self, method: Any, payload: bytes, *, reply: bool) -> None:
        with self._lock:
            if self._exit is not None or self._closing:
                raise PortClosed(self, "process exited" if self._exit else "closed")
        if not ray_module().is_initialized():
            # Ray was shut down: its actors went with it (and a call now would start a new
            # local Ray instance behind the user's back).
            self._end(None)
            raise PortClosed(self, "Ray is shut down")
        try:
            ref = method.remote(payload)
        except Exception as exc:  # the actor cannot be reached: treat it as gone
            self.kill()
            self._end(None)
            raise PortClosed(self, f"its actor is unreachable: {_first_line(exc)}") from None
        if reply:
            self._inflight.append(ref)

    def _next_reply(self) -> Any:
        """The oldest reply asked for, or (a program's port) a read of its next frame; None
        if a target worker was asked nothing."""
        with self._recv_lock:
            if self._inflight:
                return self._inflight.popleft()
        if self._enveloped:
            return None
        return self._actor.read.remote()

    def _recv_frame(self, deadline: float | None, timeout: float | None) -> bytes:
        ref = self._next_reply()
        if ref is None:  # nothing will come: wait for the exit, as a local port would
            if self._exited.wait(remaining(deadline)):
                raise PortClosed(self, f"process exited with status {self.exit_status}")
            raise CallTimeout(str(self), "recv", timeout)
        ray = ray_module()
        try:
            outcome = ray.get(ref, timeout=remaining(deadline))
        except ray.exceptions.GetTimeoutError:
            self._inflight.appendleft(ref)  # still to come: nobody else may take it
            raise CallTimeout(str(self), "recv", timeout) from None
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        if outcome[0] == "closed":
            self._exited.wait(_EXIT_GRACE)  # its status comes with the actor's watch
        return self._outcome(outcome)

    async def _aawait_reply(self, request_id: Any, deadline: float | None) -> Any:
        """`_await_reply`, awaited: the loop awaits the actor call's result (no thread
        waits)."""
        ref = self._next_reply()
        if ref is None:
            return await in_thread(self._await_reply, request_id, deadline)
        ray = ray_module()
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(ref.future()), remaining(deadline))
        except TimeoutError:
            self._inflight.appendleft(ref)
            self._reply_pending = True
            raise CallTimeout(str(self), "recv", None) from None
        except ray.exceptions.RayError as exc:
            raise await in_thread(self._lost, exc) from None  # it may wait for the watch
        if outcome[0] == "closed":
            await in_thread(self._exited.wait, _EXIT_GRACE)
        return await self._areply_of(self._outcome(outcome), request_id)

    def _outcome(self, outcome: tuple[str, Any]) -> bytes:
        """A `RayWorker` call's ``(kind, data)``: the reply's payload, or the error raised."""
        kind, data = outcome
        if kind == "ok":
            return data  # type: ignore[no-any-return]
        if kind == "unread":
            self._unread = True
            return data  # type: ignore[no-any-return]
        if kind == "protocol":
            raise ProtocolError(data)
        raise PortClosed(self, data)  # "closed": the program exited

    def _lost(self, exc: Exception) -> PortClosed:
        """An actor call failed: the actor died (or cannot be reached: its state is
        unknown, so it is killed), or the call itself raised (a broken stream)."""
        ray = ray_module()
        if not isinstance(exc, ray.exceptions.ActorDiedError):
            self.kill()
        if isinstance(exc, ray.exceptions.RayActorError):
            self._end(self._status_of(exc))
        else:
            self._exited.wait(_EXIT_GRACE)  # killed above: the watch reports it
        return PortClosed(self, f"its actor is gone: {_first_line(exc)}")

    def _has_unread(self, *, pipe: bool) -> bool:
        return bool(self._inflight) or self._unread

    # -- the end --

    def _watched(self, future: Any) -> None:
        """The actor's watch call ended (in a Ray thread): the actor died, or an `argv`
        worker's program exited (the call's result is its status)."""
        try:
            status = future.result()
        except BaseException as exc:
            status = self._status_of(exc)
        self._end(status)

    def _status_of(self, exc: BaseException) -> int | None:
        """The exit status a dead actor's error tells: ``-9`` if it was killed (by us, or
        anyone's ``ray.kill``), else None (unknown: a crash, a lost node, a signal)."""
        if self._killed or "ray.kill" in str(exc):
            return -signal.SIGKILL
        return None

    def _end(self, status: int | None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._finish(status)

    def _close_stdin(self, timeout: float | None = None) -> None:
        pass  # no pipes

    def _wake_readers(self) -> None:
        pass  # a recv waits on the actor call, which fails when the actor dies

    def kill(self) -> None:
        """``ray.kill`` the actor now (no restart). The exit arrives as an event."""
        with self._lock:
            if self._killed:
                return
            self._killed = True
        ray = ray_module()
        try:
            if not ray.is_initialized():
                raise RuntimeError("Ray is shut down")
            ray.kill(self._actor, no_restart=True)
        except Exception as exc:  # Ray is shut down: the actor went with it, and no watch
            log_event(  # will report its end: it ends here
                _log,
                "DEBUG",
                "ray_kill_failed",
                "ray.kill of {port} failed",
                port=str(self),
                exc=exc,
            )
            self._end(None)

    def _signal_group(self, sig: signal.Signals) -> None:
        self.kill()  # an actor has no gentler signal

    def _close_begin(self, timeout: float | None) -> None:
        with self._lock:
            self._closing = True
            program = not self._enveloped and self._exit is None
        if program:  # EOF, SIGTERM, SIGKILL to the program; the watch reports its exit
            self._actor.close_program.remote(timeout)
        else:
            self.kill()

    def _close_end(self) -> None:
        self.kill()  # a program's actor outlives its program otherwise
        self._inflight.clear()

    def __repr__(self) -> str:
        return f"#RayPort<{self.id}:{self._name}:{self._child.pid}>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the actor ---------------------------------------------------------------------------------


class RayWorker:
    """One worker's Ray actor (runs in the actor's process, anywhere in the cluster).

    A `target` worker answers each request frame with `answer` (as a local worker's frame
    loop does); an `argv` worker runs its program as a local `Port` of this process (killed
    with it) and relays frames. Every call returns ``(kind, data)``: ``"ok"`` or
    ``"unread"`` (the program wrote more frames) with a reply's payload, ``"closed"`` (the
    program exited) or ``"protocol"`` (its stream broke) with a message.
    """

    def __init__(
        self,
        setup: bytes | None,
        argv: list[str] | None,
        env: dict[str, str] | None,
        cwd: str | None,
        max_frame: int,
    ) -> None:
        self._max_frame = max_frame
        self._program: Port | None = None
        if argv is None:
            import dill

            self._handler, self._args, codec_name, _ = dill.loads(setup)
            self._codec = codec_named(codec_name)
        else:
            self._program = Port.open(argv, env=env, cwd=cwd, max_frame=max_frame, codec=RAW_CODEC)

    def started(self) -> int:
        """The actor runs: its process id."""
        return os.getpid()

    def request(self, payload: bytes) -> tuple[str, Any]:
        """One frame in, its reply out."""
        if self._program is None:
            reply = answer(decoded(self._codec, payload), self._handler, self._args)
            return "ok", reply_payload(self._codec, reply, self._max_frame)
        return self._relay(payload)

    def write(self, payload: bytes) -> tuple[str, Any]:
        """Write one frame to the program."""
        return self._relay(payload, read=False)

    def read(self) -> tuple[str, Any]:
        """The program's next frame."""
        return self._relay(None)

    def _relay(self, payload: bytes | None, *, read: bool = True) -> tuple[str, Any]:
        program = self._program
        assert program is not None
        program._reclaim(threading.current_thread())  # Ray's call threads take turns
        try:
            if payload is not None:
                program.send(payload, None)
            if not read:
                return "ok", b""
            frame = program.recv(None)
        except PortClosed as exc:
            return "closed", str(exc)
        except ProtocolError as exc:
            return "protocol", str(exc)
        return ("unread" if program._has_unread(pipe=True) else "ok"), frame

    def watch(self) -> int | None:
        """Return the program's exit status when it exits; a target worker's never returns
        (the call fails when the actor dies)."""
        if self._program is None:
            threading.Event().wait()
        else:
            return self._program.wait_exit(None)
        return None  # pragma: no cover

    def close_program(self, timeout: float | None) -> None:
        """Close the program gracefully (`Port.close`)."""
        if self._program is not None:
            self._program.close(timeout)
