"""`ProcessPool` and `PortWorker`: a `Pool` of OS-process workers that survives SIGKILL.

`PortWorker` is the DSPex ``PoolWorkerV2`` over ports: each worker is a `Port` (an external
program, or a Python callable in a child process). The pool's actor owns every idle port; a
checkout hands the port to the caller with `safe_connect` and the caller talks to
the process directly, in its own thread, so the pool never waits on worker I/O. Every checkout
failure becomes a `Remove` with DSPex's reasons, never an error tuple:

| what failed | `Remove` reason |
|---|---|
| `validate_port`: closed / not ours / not a port | ``("checkout_failed", code)`` |
| `safe_connect`: `ConnectFailed(r)` | ``("connect_failed", r)`` |
| `safe_connect`: `ConnectExited(r)` | ``("connect_exited", r)`` |
| anything else raised while connecting | ``("connect_error", (kind, reason))`` |

(``code`` is ``"port_closed"``, ``"port_not_owned"`` or ``"not_a_port"``; ``r`` is
``"target_dead"``, ``"process_died"`` or the wrapped cause.)

The pool then tries the next idle worker for the same caller, who does not notice. Checkin
takes the port back (``"close"`` removes the worker); a worker whose process dies while idle
is removed through `handle_info` (its `PortExited` reaches the pool, the port's owner) and an
eager pool starts a replacement; `handle_ping` pings idle workers.

`ProcessPool.call(request, timeout)` is one request/response on a leased worker:

- the worker dies mid-request: `WorkerCrashed` (retried up to `retries` times: only for
  idempotent requests); a request that never reached the process (it died before we wrote)
  is retried on another worker whatever `retries` says, since nothing ran;
- the request times out (`CallTimeout`), the reply is malformed or has the wrong id
  (`ProtocolError`): the worker is removed, so no later caller can read a stale reply;
- the handler raised (`RemoteError`): the worker is fine and stays in the pool.

The pool never enters a broken state: each worker has its own pipes, and a dead worker only ever
affects the one call that was using it.

`target` workers are forked by default from a small single-threaded fork server (see
`Port.spawn`'s ``"forkserver"``), which the pool holds for its whole life: forking is safe
there, and a replacement worker is answering a few milliseconds after a death. That server is
the one thing shared, by every forkserver pool and port of the process; if it is killed, its
workers live on (calls in flight complete) and the next worker start runs a new server. Use
``start_method="spawn"`` for workers that share nothing.

When not to use it: for code that needs no process isolation, a thread pool is cheaper; for
per-session state that must survive a crash, see `dspex_actors.bridge.SessionPool`.

Example:
    >>> from dspex_actors import ProcessPool
    >>> pool = ProcessPool.start(target=lambda request: request["n"] * 2, pool_size=2)
    >>> pool.call({"n": 21}, timeout=30)
    42
    >>> pool.stop()
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import signal
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, Self

import attrs
import pykka

from .. import _telemetry
from .._actor import current_actor, monitor
from .._checks import (
    check_clock,
    check_name_option,
    check_options,
    check_timeout,
    deadline_in,
    is_int,
    is_number,
    remaining,
)
from .._child_spec import inline_start
from .._clock import Clock
from .._errors import (
    CallTimeout,
    ConnectError,
    ConnectExited,
    ConnectFailed,
    InvalidOption,
    NoProc,
    NotAPort,
    PortClosed,
    PortNotOwned,
    ProtocolError,
    RemoteError,
    UndecodableReply,
    WorkerCrashed,
    WorkerStartError,
)
from .._logging import area_logger, log_event
from .._pool._contract import From, PoolWorker
from .._pool._handle import Lease, Pool, validate_options
from .._pool._results import Async, Ok, Recycle, Remove, Skip, Stop
from .._reasons import is_normal_exit
from .._threads import KeptThreads
from . import _forkserver
from ._forkserver import ForkServerUnavailable
from ._framing import DEFAULT_MAX_FRAME, JSON_CODEC, Codec, JsonCodec, PickleCodec
from ._handover import hand_over
from ._launch import pickle_setup
from ._port import (
    OPEN_METHODS,
    START_METHODS,
    Owner,
    Port,
    PortExited,
    Prepared,
    calling_owner,
    check_argv,
    check_env,
    check_max_frame,
    close_ports,
)
from ._ray import check_ray_spec, ensure_ray, open_ray_port

__all__ = ["PortCheckout", "PortSpec", "PortWorker", "PortWorkerState", "ProcessPool"]

_log = area_logger("process_pool")

POOL_START_METHOD = "forkserver"
"""The start method of a pool's `target` workers when none is given. Safe although the parent
has threads (the server that forks them has none), and a SIGKILLed worker's replacement answers
within milliseconds instead of waiting for a fresh interpreter (``"spawn"``)."""

_CLOSER = "dspex-pool-close"  # the name of the threads that close removed workers
_UNDELIVERED_RETRIES = 8  # a request that never reached a process is retried this often at most


# --- public types ------------------------------------------------------------------------------


def _argv_tuple(argv: Sequence[str] | None) -> tuple[str, ...] | None:
    if argv is None:
        return None
    check_argv(argv)  # before tuple() would split one string into characters
    return tuple(argv)


BACKENDS = ("local", "ray")
"""Where a pool's workers run: processes of this machine, or Ray actors."""


def _options_copy(options: Any) -> Any:
    return dict(options) if isinstance(options, Mapping) else options  # others: refused


def _args_tuple(args: Any) -> tuple[Any, ...]:
    if isinstance(args, str | bytes):
        raise InvalidOption("args", args, "a sequence of extra arguments, not one string")
    try:
        return tuple(args)
    except TypeError:
        raise InvalidOption("args", args, "a sequence of extra arguments") from None


def _check_ping(ping: Any, codec: Codec) -> None:
    """An `argv` pool's ping: a request its codec can encode, a mapping (its reply carries
    its id); refused now, not at every idle worker's ping."""
    if not isinstance(ping, Mapping):
        raise InvalidOption("ping", ping, "None or a mapping (the request a ping sends)")
    try:
        codec.encode(ping)
    except ProtocolError as exc:
        raise InvalidOption("ping", ping, f"a request the codec can encode ({exc})") from None


def _str_tuple(names: Any) -> Any:
    if names is None:
        return ()
    if isinstance(names, str):
        raise InvalidOption("preload", names, "a list of module names, not one string")
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidOption("preload", names, "a list of module names")
        if not all(part.isidentifier() for part in name.split(".")):
            raise InvalidOption("preload", names, f"absolute module names (not {name!r})")
    return names


@attrs.frozen
class PortSpec:
    """How a `PortWorker` pool starts each worker: the `init_arg` of `Pool.start(PortWorker, ...)`.

    Exactly one of `argv` (an external program, `Port.open`) and `target` (a callable served
    by `Port.spawn`) is given.

    Attributes:
        argv: the program and its arguments.
        target: the callable, called as ``target(request, *args)``.
        args: extra arguments for `target`.
        start_method: ``"forkserver"`` (the default for pools: safe with threads, and a
            replacement worker answers within milliseconds), ``"spawn"`` or ``"fork"`` (not
            for `argv`: a program is exec'd, by the fork server or by this process). A
            forkserver pool holds the fork server for its whole life. None means the
            default; see `method`.
        max_frame: the largest payload either way, in bytes.
        codec: the codec (JSON by default).
        env: the environment for `argv` programs.
        cwd: the working directory for `argv` programs.
        ping: for `argv` programs, a request `handle_ping` sends (the reply must carry its id);
            None: ping checks only that the process is alive. `target` workers always answer
            the framework's own ping.
        close_timeout: seconds a worker gets to exit on EOF when the pool stops or it is
            checked in with ``"close"``, before SIGTERM.
        init_timeout: seconds a new worker has to start and answer its first ping.
        retries: how often `ProcessPool.call` retries a request whose worker died while
            serving it (for idempotent requests only).
        max_tasks: recycle a worker after this many tasks (checkins); None: never.
        max_memory: recycle a worker whose resident memory (RSS, bytes) reached this,
            checked after each task; None: never.
        max_age: recycle a worker this many seconds after its start (checked after each
            task, and when an idle worker is pinged: `ProcessPool.start` pings idle workers
            every quarter of the shortest age a worker may draw unless `worker_idle_timeout`
            says otherwise); None: never.
        recycle_jitter: each worker's limits are drawn between ``(1 - recycle_jitter)`` and
            1 times the configured ones, so that workers started together do not all
            recycle at once.
        clock: the clock a worker's age (`max_age`) is read on: the system clock, or the
            pool's own (`ProcessPool.start` passes its `clock`), so that a `FakeClock` ages
            workers as it drives the pool's idle pings.
        preload: modules the fork server imports once (``"forkserver"`` target workers only),
            so that every worker starts with them loaded.
        backend: ``"local"`` (processes of this machine) or ``"ray"`` (each worker a Ray
            actor, placed by Ray anywhere in the cluster; see `dspex_actors._ports._ray`).
        ray_options: for ``backend="ray"``, the options of each worker's actor
            (``.options(...)``: ``num_cpus``, ``resources``, ``runtime_env``...).
    """

    argv: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    target: Callable[..., Any] | None = None
    args: tuple[Any, ...] = attrs.field(default=(), converter=_args_tuple)
    start_method: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    codec: Codec = JSON_CODEC
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    ping: Any = None
    close_timeout: float = 1.0
    init_timeout: float = 30.0
    retries: int = 0
    max_tasks: int | None = None
    max_memory: int | None = None
    max_age: float | None = None
    recycle_jitter: float = 0.1
    preload: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    backend: str = "local"
    clock: Clock = attrs.field(default=None, converter=check_clock)
    ray_options: Mapping[str, Any] | None = attrs.field(default=None, converter=_options_copy)

    def __attrs_post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidOption("backend", self.backend, f"one of {BACKENDS}")
        if self.backend == "ray":
            check_ray_spec(self)
        elif self.ray_options is not None:
            raise InvalidOption("ray_options", self.ray_options, "None unless backend='ray'")
        if (self.argv is None) == (self.target is None):
            raise InvalidOption("argv", self.argv, "given alone, or target given alone")
        if self.target is not None and not callable(self.target):
            raise InvalidOption("target", self.target, "a callable")
        check_env(self.env)
        if not is_number(self.close_timeout) or not 0 <= self.close_timeout < float("inf"):
            raise InvalidOption("close_timeout", self.close_timeout, "a number of seconds >= 0")
        if self.cwd is not None and not isinstance(self.cwd, str | os.PathLike):
            raise InvalidOption("cwd", self.cwd, "None or a path")
        if self.ping is not None and self.argv is not None:
            _check_ping(self.ping, self.codec)
        if not is_int(self.retries) or self.retries < 0:
            raise InvalidOption("retries", self.retries, "a non-negative integer")
        if not is_number(self.init_timeout) or not 0 < self.init_timeout < float("inf"):
            raise InvalidOption("init_timeout", self.init_timeout, "a positive number of seconds")
        for option in ("max_tasks", "max_memory"):
            value = getattr(self, option)
            if value is not None and (not is_int(value) or value <= 0):
                raise InvalidOption(option, value, "a positive integer or None")
        if self.max_age is not None and (not is_number(self.max_age) or not self.max_age > 0):
            raise InvalidOption("max_age", self.max_age, "a positive number of seconds or None")
        if not is_number(self.recycle_jitter) or not 0 <= self.recycle_jitter < 1:
            raise InvalidOption("recycle_jitter", self.recycle_jitter, "a number in [0, 1)")
        if self.preload and (self.target is None or self.method != "forkserver"):
            raise InvalidOption(
                "preload", self.preload, "empty unless target workers use the fork server"
            )
        # The checks Port.open / Port.spawn make, made here so that a bad option is refused
        # at once instead of failing every worker start forever.
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise InvalidOption("start_method", self.start_method, f"one of {START_METHODS}")
        if self.argv is not None and self.start_method not in OPEN_METHODS:
            raise InvalidOption(
                "start_method", self.start_method, f"None or one of {OPEN_METHODS[1:]} for argv"
            )
        check_max_frame(self.max_frame)
        if self.target is not None and not isinstance(self.codec, JsonCodec | PickleCodec):
            raise InvalidOption("codec", self.codec, "JSON_CODEC or PICKLE_CODEC for target")
        if self.argv is not None and (
            isinstance(self.codec, PickleCodec) or not isinstance(self.codec, Codec)
        ):
            raise InvalidOption("codec", self.codec, "a non-pickle Codec for argv programs")

    @property
    def method(self) -> str:
        """The start method workers use: `start_method`, else ``"forkserver"`` for `target`
        workers and ``"spawn"`` for `argv` programs (started by this process: killing one
        process never takes the others with it); ``"ray"`` for the Ray backend (Ray starts
        them)."""
        if self.backend == "ray":
            return "ray"
        if self.start_method is not None:
            return self.start_method
        return POOL_START_METHOD if self.target is not None else "spawn"

    def open(
        self,
        owner: Owner,
        on_start: Callable[[Port], None] | None = None,
        setup: bytes | None = None,
        argv: Sequence[str] | None = None,
    ) -> Port:
        """Start one worker process, owned by `owner`; `on_start` as in `Port.spawn`; `setup`:
        the target and args already pickled (`pickle_setup`), or None to pickle them now;
        `argv`: this worker's own command line instead of `self.argv` (`argv` workers).

        With ``"forkserver"``, a fork server that cannot start the worker (it could not come
        up, died, or is backing off after dying at its start) does not stop the pool: the
        worker is started the other way instead (``"spawn"``), and the server is tried again
        for the next one.
        """
        if self.backend == "ray":
            return open_ray_port(self, owner, on_start, setup, argv)
        method = self.method
        if method == "forkserver":
            try:
                return self._open(owner, on_start, "forkserver", setup, argv)
            except ForkServerUnavailable as exc:
                log_event(
                    _log,
                    "WARNING",
                    "fork_server_unavailable",
                    "{error}; starting a worker with spawn instead",
                    error=str(exc),
                )
            method = "spawn"
        return self._open(owner, on_start, method, setup, argv)

    def _open(
        self,
        owner: Owner,
        on_start: Callable[[Port], None] | None,
        method: str,
        setup: bytes | None = None,
        argv: Sequence[str] | None = None,
    ) -> Port:
        if self.argv is not None:
            return Port.open(
                list(self.argv if argv is None else argv),
                env=self.env,
                cwd=self.cwd,
                max_frame=self.max_frame,
                codec=self.codec,
                owner=owner,
                start_method=None if method == "spawn" else method,
                timeout=self.init_timeout,
                on_start=on_start,
            )
        assert self.target is not None
        return Port._spawn(
            self.target,
            self.args,
            None if method == "fork" else setup,
            start_method=method,
            max_frame=self.max_frame,
            codec=self.codec,
            owner=owner,
            on_exit=None,
            timeout=self.init_timeout,
            on_start=on_start,
        )

    def start_backend(self) -> None:
        """Make the backend ready, in the thread starting the pool: for ``"ray"``, connect
        to Ray if nobody has (`ensure_ray`)."""
        if self.backend == "ray":
            ensure_ray()

    @property
    def name(self) -> str:
        """What a worker is called in errors: the program, or the handler's name."""
        if self.argv is not None:
            return os.path.basename(self.argv[0])
        return str(getattr(self.target, "__qualname__", None) or repr(self.target))


@attrs.frozen
class PortCheckout:
    """The command of a `PortWorker` checkout: who gets the port, and your own command.

    `ProcessPool.checkout` / `lease` / `call` build it for you (the owner is the calling actor
    or thread).

    Attributes:
        owner: the actor ref or thread the port is handed to.
        command: anything (kept in `PortWorkerState.current_command` while checked out).
    """

    owner: Owner
    command: Any = None


@attrs.define
class PortWorkerState:
    """One worker, as the pool keeps it.

    Attributes:
        port: the worker's port.
        current_command: the command of its current checkout (None while idle; cleared at
            checkin, like DSPex's ``current_session``).
    """

    port: Port
    name: str = ""  # the worker's own name, as `PortWorker.worker_name` made it
    current_command: Any = None
    served: bool = False  # checked in at least once: it did start
    tasks: int = 0  # checkins
    born: float = attrs.field(factory=time.monotonic)  # on `PortSpec.clock`
    # This worker's own recycling limits (the pool's, less a random jitter: `_draw_limits`).
    max_tasks: int | None = None
    max_memory: int | None = None
    max_age: float | None = None


@attrs.define
class _PoolState:
    spec: PortSpec
    live: set[Port] = attrs.field(factory=set)  # every port this pool started and not closed
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    stopped: bool = False  # terminate_pool ran: a worker still starting must close itself
    # Idle workers handed to terminate_worker at stop: terminate_pool closes them all at once.
    closing: list[Port] = attrs.field(factory=list)
    # Removed workers are closed gracefully off the pool's thread, in threads kept from one
    # close to the next; `closes` counts those in flight (terminate_pool waits for them).
    closers: KeptThreads = attrs.field(factory=lambda: KeptThreads(_CLOSER, keep=1))
    closes: int = 0
    # Worker starts in flight; terminate_pool waits for them to let go of what they made.
    starting: int = 0
    settled: threading.Condition = attrs.field(init=False)
    # Drops this pool's reference to the fork server: called by terminate_pool, or when the
    # state is collected (a killed pool runs no terminate_pool). None: not a forkserver pool.
    release_server: Callable[[], Any] | None = None
    # The target and its args, pickled once for every worker ("spawn" and "forkserver").
    setup: bytes | None = None
    # A worker was over `max_memory` after its first task (warned about once).
    memory_warned: bool = False

    def __attrs_post_init__(self) -> None:
        self.settled = threading.Condition(self.lock)


# --- the callbacks -----------------------------------------------------------------------------


class PortWorker(PoolWorker):
    """The `PoolWorker` callbacks over ports (DSPex's ``PoolWorkerV2``, as it was meant to work).

    Start it with ``Pool.start(PortWorker, PortSpec(...), ...)``, or use `ProcessPool`, which
    does and adds `call`. Per-worker counters (checkouts, successful/error checkins,
    last_activity) are the pool's `worker_stats()`.
    """

    def init_pool(self, init_arg: Any) -> Ok | Stop:
        """Check the `PortSpec`. *Runs in*: the pool thread. Returns `Stop` for anything else."""
        if not isinstance(init_arg, PortSpec):
            return Stop(InvalidOption("init_arg", init_arg, "a PortSpec"))
        state = _PoolState(init_arg)
        if init_arg.target is not None and init_arg.method != "fork":
            # Once, not at every worker's start (it is most of a start's work in this
            # process): every worker of the pool serves the same target and args.
            try:
                state.setup = pickle_setup(
                    init_arg.target, init_arg.args, init_arg.codec, init_arg.max_frame
                )
            except (InvalidOption, ProtocolError) as exc:
                return Stop(exc)
        if init_arg.method == "forkserver":
            # Held for the pool's whole life: when its only worker dies, the replacement is
            # forked by the same server instead of waiting for a new one to boot.
            try:
                _forkserver.FORK_SERVER.acquire(init_arg.preload, init_arg.init_timeout)
            except (ImportError, OSError, RuntimeError) as exc:
                return Stop(exc)
            state.release_server = weakref.finalize(
                state, _forkserver.release_from, os.getpid(), init_arg.preload
            )
        me = current_actor()
        if me is not None:
            # A pool killed (no terminate_pool) must not leave its processes running: its
            # exit, whatever the reason, kills what terminate_pool did not close.
            monitor(me, lambda down: _kill_leftovers(state))
        return Ok(state)

    def init_worker(self, pool_state: Any) -> Async:
        """Start one process and wait until it answers, outside the pool's thread (`Async`).

        The worker joins the idle queue only once it has answered a ping (`target` workers;
        `argv` workers when `PortSpec.ping` is set), so no caller ever waits on a process that
        is still booting, and a process that dies while booting costs no caller anything. If
        it cannot start or does not answer within `PortSpec.init_timeout`, it is closed and
        the pool retries.
        """
        pool = current_actor() or threading.current_thread()
        spec: PortSpec = pool_state.spec

        def keep(port: Port) -> None:
            with pool_state.lock:
                if pool_state.stopped:
                    raise RuntimeError("the pool stopped while this worker was starting")
                # terminate_pool kills it if the pool stops while it boots.
                pool_state.live.add(port)

        def start() -> PortWorkerState:
            with pool_state.lock:
                pool_state.starting += 1
            try:
                return start_one()
            finally:
                with pool_state.lock:
                    pool_state.starting -= 1
                    pool_state.settled.notify_all()

        def start_one() -> PortWorkerState:
            name = self.worker_name()
            try:
                # This thread owns it for the ping; it is kept (and killable) from the moment
                # its process exists.
                port = self.open_port(pool_state, name, threading.current_thread(), keep)
            except Exception as exc:
                raise WorkerStartError(spec.name, str(exc), None, []) from exc
            try:
                self.handshake(port, pool_state, name)
                with pool_state.lock:
                    if pool_state.stopped:
                        raise RuntimeError("the pool stopped while this worker was starting")
                    port.connect(pool)
            except BaseException as exc:
                port.kill()
                port.close(spec.close_timeout)
                with pool_state.lock:
                    pool_state.live.discard(port)
                if not isinstance(exc, Exception):
                    raise
                raise WorkerStartError(
                    spec.name, str(exc), port.exit_status, port.stderr_tail()
                ) from exc
            max_tasks, max_memory, max_age = _draw_limits(spec)
            return PortWorkerState(
                port,
                name,
                born=spec.clock.monotonic(),
                max_tasks=max_tasks,
                max_memory=max_memory,
                max_age=max_age,
            )

        return Async(start, pool_state)

    _names = itertools.count(1)

    def worker_name(self) -> str:
        """A new worker's name, unique in this process: ``worker_<n>_<µs>`` (DSPex's form).
        It is `PortWorkerState.name`, and what a subclass's `open_port` may pass on."""
        return f"worker_{next(PortWorker._names)}_{time.time_ns() // 1000}"

    def open_port(
        self, pool_state: Any, name: str, owner: Owner, on_start: Callable[[Port], None]
    ) -> Port:
        """Start the process of the worker `name` (in the worker's start thread, `owner`).

        The default starts every worker alike, from `PortSpec`; a subclass may give each
        its own command line (``pool_state.spec.open(owner, on_start, pool_state.setup,
        argv=[...])``). `on_start` must be passed on: it makes the process killable by the
        pool from the moment it exists."""
        return pool_state.spec.open(owner, on_start, pool_state.setup)  # type: ignore[no-any-return]

    def handshake(self, port: Port, pool_state: Any, name: str) -> None:
        """Check that a new worker answers before it joins the pool; raise if it does not
        (the worker is closed, and the start counts as failed).

        The default pings `target` workers, and `argv` workers with `PortSpec.ping` set;
        a subclass may speak its own protocol's handshake (within `PortSpec.init_timeout`).
        """
        spec: PortSpec = pool_state.spec
        if spec.target is not None:
            port.ping(timeout=spec.init_timeout)
        elif spec.ping is not None:
            port.request(spec.ping, timeout=spec.init_timeout)

    def handle_checkout(
        self, command: Any, from_: From, worker_state: Any, pool_state: Any
    ) -> Ok | Remove | Skip:
        """Hand the port to `command.owner` with `safe_connect`; any failure removes the worker.

        A command that is not a `PortCheckout` is the caller's mistake, not the worker's: it
        is refused with `Skip(InvalidOption)` (the worker stays).
        """
        if not isinstance(command, PortCheckout):
            error = InvalidOption("command", command, "a PortCheckout(owner, command)")
            return Skip(error, pool_state)
        port = worker_state.port
        if isinstance(port, Port) and port._has_unread(pipe=True):
            # It wrote while idle (or kept a frame): its next reader would take it as a reply.
            return Remove(("checkout_failed", "unread_output"), pool_state)
        try:
            hand_over(port, command.owner)  # safe_connect, without building a PortInfo
        except ConnectFailed as exc:
            code = _CHECKOUT_FAILED.get(type(exc.reason))
            if code is not None:  # validate_port's errors: the port was not ours to give
                return Remove(("checkout_failed", code), pool_state)
            return Remove(("connect_failed", exc.reason), pool_state)
        except ConnectExited as exc:
            return Remove(("connect_exited", exc.reason), pool_state)
        except ConnectError as exc:
            return Remove(("connect_error", (exc.kind, exc.reason)), pool_state)
        except Exception as exc:
            return Remove(("connect_error", (type(exc).__name__, exc)), pool_state)
        worker_state.current_command = command.command
        return Ok(port, worker_state, pool_state)

    def handle_checkin(
        self, client_state: Any, from_: From, worker_state: Any, pool_state: Any
    ) -> Ok | Remove:
        """Take the port back; ``"close"``, a dead process, a request that timed out (its
        reply may still come) or output nobody read (a frame more than the replies taken)
        removes the worker: no later caller may ever read a reply that was not its own. A
        worker past one of its recycling limits (`max_tasks`, `max_age`, `max_memory`) is
        retired with `Recycle`: its replacement starts first."""
        port = worker_state.port
        port._reclaim(calling_owner())
        worker_state.current_command = None
        if client_state == "close":
            return Remove("closed", pool_state)
        if port._reply_pending:
            # A request timed out in the lease: its late reply would reach the next caller.
            return Remove("reply_pending", pool_state)
        if port._has_unread(pipe=False):
            return Remove("unread_output", pool_state)
        worker_state.served = True
        if not port._is_open():
            return Remove(("port_exited", port.exit_status), pool_state)
        worker_state.tasks += 1
        limit = worker_state.max_tasks
        if limit is not None and worker_state.tasks >= limit:
            return Remove(Recycle("max_tasks"), pool_state)
        if _too_old(worker_state, pool_state.spec.clock):
            return Remove(Recycle("max_age"), pool_state)
        max_memory = worker_state.max_memory
        if max_memory is not None:
            rss = _rss(port.os_pid)
            if rss is not None and rss >= max_memory:
                if worker_state.tasks == 1 and not pool_state.memory_warned:
                    _warn_memory_limit(pool_state, max_memory, rss)
                return Remove(Recycle(("max_memory", rss)), pool_state)
        return Ok(worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: Any) -> Ok | Remove:
        """An idle worker whose process exited is removed (its `PortExited` reached the pool).

        One that exited by itself before it ever served counts as a failed start (the reason
        is a `WorkerStartError`): the pool backs off before the next, so a program that exits
        at once is not restarted in a storm.
        """
        if isinstance(message, PortExited) and message.port is worker_state.port:
            port = worker_state.port
            status = message.status
            if not worker_state.served and status != -signal.SIGKILL:
                return Remove(
                    WorkerStartError(
                        port._name, "exited before it served anything", status, port.stderr_tail()
                    )
                )
            return Remove(("port_exited", status))
        return Ok(worker_state)

    def handle_ping(self, worker_state: Any, pool_state: Any) -> Ok | Remove:
        """Ping an idle worker; one that does not answer within 1 s is removed, one past its
        `max_age` is recycled."""
        port = worker_state.port
        if port.info() is None:
            return Remove(("port_exited", port.exit_status))
        if _too_old(worker_state, pool_state.spec.clock):
            return Remove(Recycle("max_age"))
        try:
            if pool_state.spec.target is not None:
                port.ping(timeout=1.0)
            elif pool_state.spec.ping is not None:
                port.request(pool_state.spec.ping, timeout=1.0)
        except Exception as exc:
            return Remove(("ping_failed", exc))
        return Ok(worker_state)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Ok:
        """Close the worker's process and reap it, never holding the pool up for long.

        A worker removed after an error (timeout, crash, protocol error, raising lease) is
        killed at once: its state is unknown. One removed on ``"close"``, as overflow or
        recycled gets `close_timeout` seconds to exit on EOF first. Either way it is closed and
        reaped in a thread of its own, so the pool serves on meanwhile. At stop, the idle
        workers are closed together by `terminate_pool`: stopping costs about one
        `close_timeout`, not one per worker.
        """
        port = worker_state.port
        if is_normal_exit(reason):  # the pool is stopping
            with pool_state.lock:
                pool_state.closing.append(port)
            return Ok(pool_state)
        if reason not in ("closed", "overflow") and not isinstance(reason, Recycle):
            port.kill()  # its state is unknown; the close below only reaps it
        with pool_state.lock:
            pool_state.closes += 1
        try:
            pool_state.closers.run(functools.partial(self._close_gracefully, port, pool_state))
        except BaseException:
            # No thread for it (the process may be out of them): close it here, bounded.
            self._close_gracefully(port, pool_state)
        return Ok(pool_state)

    @staticmethod
    def _close_gracefully(port: Port, pool_state: _PoolState) -> None:
        try:
            port.close(pool_state.spec.close_timeout)
        finally:
            with pool_state.lock:
                pool_state.live.discard(port)
                pool_state.closes -= 1
                pool_state.settled.notify_all()

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        """Close every worker at once: idle ones gracefully, checked-out and still-booting
        ones killed first. No worker outlives its pool."""
        with pool_state.lock:
            pool_state.stopped = True
            idle = set(pool_state.closing)
            ports = list(pool_state.live)
        try:
            for port in ports:
                if port not in idle:
                    port.kill()
            close_ports(ports, pool_state.spec.close_timeout)
            # A start in flight finds the pool stopped (or its process killed above) and
            # undoes what it made, and a removed worker's close ends; wait for both, so that
            # no process outlives stop().
            with pool_state.settled:
                pool_state.settled.wait_for(
                    lambda: pool_state.starting == 0 and pool_state.closes == 0,
                    pool_state.spec.close_timeout + _CLOSE_SLACK,
                )
        finally:
            pool_state.closers.close(_THREADS_END, busy=True)  # their closes are over
            if pool_state.release_server is not None:
                pool_state.release_server()  # a finalizer: runs once


def _kill_leftovers(state: _PoolState) -> None:
    """The pool exited: if it ran no `terminate_pool` (it was killed), kill every process it
    still has (idle, lent out, starting) and let go of the fork server. Runs in the exiting
    pool's thread; the kills do not wait (each port's reader reaps its process). Either way, its
    closing threads end once their closes are done."""
    with state.lock:
        stopped, state.stopped = state.stopped, True
        ports = [] if stopped else list(state.live)
    for port in ports:
        port.kill()
    state.closers.close()  # after the kills: a close in flight ends at once
    if not stopped and state.release_server is not None:
        state.release_server()


def _warn_memory_limit(pool_state: _PoolState, max_memory: int, rss: int) -> None:
    """A worker reached its `max_memory` with its first task: the limit is likely below what
    a fresh worker uses, and every worker will be replaced after one task. Said once."""
    pool_state.memory_warned = True
    log_event(
        _log,
        "WARNING",
        "pool_memory_limit_low",
        "{pool}: a worker used {rss} bytes after its first task, over its max_memory of "
        "{limit}: if that is what a fresh worker uses, every worker is recycled after one task",
        pool=pool_state.spec.name,
        rss=rss,
        limit=max_memory,
    )


def _draw_limits(spec: PortSpec) -> tuple[int | None, int | None, float | None]:
    """One worker's own `max_tasks`, `max_memory` and `max_age`: the spec's, each times one
    factor drawn between ``1 - recycle_jitter`` and 1. The task count is rounded up or down
    at random, in proportion (9.3 is 10 three times in ten), so that small limits are spread
    too, and on average by the factor drawn; it is at least 1."""
    factor = 1.0 - spec.recycle_jitter * random.random()
    max_tasks = max_memory = None
    if spec.max_tasks is not None:
        exact = spec.max_tasks * factor
        whole = int(exact)
        max_tasks = max(1, whole + (random.random() < exact - whole))
    if spec.max_memory is not None:
        max_memory = max(1, int(spec.max_memory * factor))
    max_age = None if spec.max_age is None else spec.max_age * factor
    return max_tasks, max_memory, max_age


def _too_old(worker_state: PortWorkerState, clock: Clock) -> bool:
    limit = worker_state.max_age
    return limit is not None and clock.monotonic() - worker_state.born >= limit


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int) -> int | None:
    """Resident memory of process `pid` in bytes (Linux's /proc), or None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


# --- public API --------------------------------------------------------------------------------


class ProcessPool(Pool):
    """A `Pool` of `PortWorker`s with `call`; `checkout`, `lease`, `status`, `stop` as `Pool`.

    `checkout(command, fn)` and `lease(command)` hand `fn` / the lease the worker's `Port`
    (already connected to the calling actor or thread); return ``(result, "ok")`` to keep the
    worker or ``(result, "close")`` to have it removed.
    """

    def __init__(self, actor_ref: pykka.ActorRef[Any]) -> None:
        super().__init__(actor_ref)
        # The pool's PortSpec, read from the actor (not asked for: from_ref on a busy pool
        # must not wait). None if the ref is not a running PortWorker pool.
        actor = actor_ref._actor_weakref()
        state = getattr(actor, "_ps", None)
        self.__spec: PortSpec | None = state.spec if isinstance(state, _PoolState) else None

    @property
    def _spec(self) -> PortSpec:
        spec = self.__spec
        if spec is None:
            raise NoProc(str(self.actor_ref), "call")  # not a running process pool
        return spec

    @classmethod
    def start(  # type: ignore[override]
        cls,
        argv: Sequence[str] | None = None,
        target: Callable[..., Any] | None = None,
        **options: Any,
    ) -> ProcessPool:
        """Start a pool of `pool_size` worker processes; `options` as `options` documents.

        Raises:
            InvalidOption: a bad option; nothing was started.
            StartError: the fork server could not import a `preload` module.
        """
        spec, pool_options = check_options(cls.options, argv, target, **options)
        spec.start_backend()
        pool = Pool.start(PortWorker, spec, **pool_options)
        return cls(pool.actor_ref)

    @staticmethod
    def options(
        argv: Sequence[str] | None = None,
        target: Callable[..., Any] | None = None,
        *,
        pool_size: int,
        args: Sequence[Any] = (),
        lazy: bool = False,
        max_overflow: int = 0,
        spares: int = 0,
        retries: int = 0,
        start_method: str | None = None,
        name: Any = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        codec: Codec = JSON_CODEC,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        ping: Any = None,
        worker_idle_timeout: float | None = None,
        close_timeout: float = 1.0,
        init_timeout: float = 30.0,
        max_tasks: int | None = None,
        max_memory: int | None = None,
        max_age: float | None = None,
        recycle_jitter: float = 0.1,
        preload: Sequence[str] | None = (),
        backend: str = "local",
        ray_options: Mapping[str, Any] | None = None,
        start_backoff: float = 0.05,
        max_start_backoff: float = 5.0,
        clock: Clock | None = None,
    ) -> tuple[PortSpec, dict[str, Any]]:
        """Check the options of `start` (and `child_spec`); return the workers' `PortSpec`
        and the `Pool.start` options.

        Args:
            argv: an external program speaking length-prefixed frames (`Port.open`); or
            target: a callable served in a child process, ``target(request, *args)``
                (`Port.spawn`).
            pool_size: how many workers.
            args: extra arguments for `target`.
            lazy: start workers on first use.
            max_overflow: extra workers allowed above `pool_size` under load.
            spares: started, pinged workers kept ready beyond `pool_size`: a killed or
                recycled worker's place is taken at once (see `Pool.start`).
            retries: how often `call` retries a request whose worker crashed mid-request
                (only for idempotent requests).
            start_method: ``"forkserver"`` (default), ``"spawn"`` or ``"fork"`` for
                `target` workers (see `Port.spawn`); ``"spawn"`` (default) or
                ``"forkserver"`` for `argv` programs (see `Port.open` and `PortSpec`).
            name: register the pool under this local name.
            max_frame: see `PortSpec`.
            codec: see `PortSpec`.
            env: see `PortSpec`.
            cwd: see `PortSpec`.
            ping: see `PortSpec`.
            worker_idle_timeout: ping idle workers on this period (seconds). None, with
                `max_age`: a quarter of the shortest age a worker may draw, so that an idle
                worker is recycled at most that late (see `PortSpec.max_age`).
            close_timeout: see `PortSpec`.
            init_timeout: see `PortSpec`.
            max_tasks: see `PortSpec` (recycling).
            max_memory: see `PortSpec` (recycling).
            max_age: see `PortSpec` (recycling).
            recycle_jitter: see `PortSpec` (recycling).
            preload: see `PortSpec`.
            backend: ``"local"`` or ``"ray"`` (workers as Ray actors); see `PortSpec`.
            ray_options: see `PortSpec`.
            start_backoff: see `Pool.start`.
            max_start_backoff: see `Pool.start`.
            clock: drives idle pings and start backoff, as `Pool.start`'s, and workers'
                ages (`max_age`): a `FakeClock` in tests.

        Raises:
            InvalidOption: a bad option.
        """
        spec = PortSpec(
            argv=argv,
            target=target,
            args=args,
            start_method=start_method,
            max_frame=max_frame,
            codec=codec,
            env=env,
            cwd=cwd,
            ping=ping,
            close_timeout=close_timeout,
            init_timeout=init_timeout,
            retries=retries,
            max_tasks=max_tasks,
            max_memory=max_memory,
            max_age=max_age,
            recycle_jitter=recycle_jitter,
            preload=preload,
            backend=backend,
            ray_options=ray_options,
            clock=clock,
        )
        if worker_idle_timeout is None and spec.max_age is not None:
            # An idle worker's age is checked when it is pinged.
            worker_idle_timeout = spec.max_age * (1 - spec.recycle_jitter) / 4
        pool_options: dict[str, Any] = {
            "pool_size": pool_size,
            "lazy": lazy,
            "max_overflow": max_overflow,
            "worker_idle_timeout": worker_idle_timeout,
            "start_backoff": start_backoff,
            "max_start_backoff": max_start_backoff,
            "spares": spares,
            "clock": spec.clock,
        }
        check_options(validate_options, PortWorker, **pool_options)
        check_name_option(name)
        return spec, {**pool_options, "name": name}

    @classmethod
    def _check_start(cls, *args: Any, **options: Any) -> None:
        check_options(cls.options, *args, **options)

    @classmethod
    def _child_id(cls, *args: Any, **options: Any) -> Any:
        return cls.__name__

    @classmethod
    def from_ref(cls, actor_ref: pykka.ActorRef[Any]) -> Self:
        """Drive a running process pool (e.g. found in `which_children()` or by `whereis`).

        Raises:
            NoProc: `actor_ref` is None (`whereis` found no process by that name: between a
                crash and its restart, say).
            TypeError: `actor_ref` is not the ref of a process pool (a stopped one is
                accepted; calls through it raise `NoProc`).
        """
        handle = super().from_ref(actor_ref)
        if handle.__spec is None:
            raise TypeError(f"expected the ActorRef of a running ProcessPool, got: {actor_ref!r}")
        return handle

    def checkout(
        self,
        command: Any,
        fn: Callable[[From, Any], tuple[Any, Any]],
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Any:
        """`Pool.checkout`; `fn(from_, port)` gets the worker's `Port`, owned by the caller."""
        return super().checkout(
            PortCheckout(calling_owner(), command),
            fn,
            timeout,
            worker=worker,
            affinity=affinity,
        )

    def lease(
        self,
        command: Any,
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Lease:
        """`Pool.lease`; `lease.client_state` is the worker's `Port`, owned by the caller."""
        return super().lease(
            PortCheckout(calling_owner(), command), timeout, worker=worker, affinity=affinity
        )

    async def acheckout(
        self,
        command: Any,
        fn: Callable[[From, Any], Any],
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Any:
        """`Pool.acheckout`; `fn(from_, port)` gets the worker's `Port` (a coroutine function
        may await `port`'s reply without blocking the loop)."""
        return await super().acheckout(
            PortCheckout(calling_owner(), command),
            fn,
            timeout,
            worker=worker,
            affinity=affinity,
        )

    def call(self, request: Any, timeout: float | None = 5.0) -> Any:
        """Send `request` to a worker and return its reply.

        `timeout` covers the wait for a worker and the reply. The reply is the handler's
        return value (`target` pools) or the reply mapping (`argv` pools).

        Raises:
            WorkerCrashed: the worker died mid-request, `retries + 1` times.
            CallTimeout: no reply in time (the worker is removed: it may answer later).
            PoolTimeout: no worker in time (caused by the last start failure, if any).
            ProtocolError: the request cannot be encoded (no worker was involved), or the
                reply was malformed or had the wrong id (the worker is removed).
            RemoteError: the handler raised, or an `argv` program answered in DSPex's
                envelope with ``"success": false`` (its ``"error"`` is the message); the
                worker stays, counted in `error_checkins`.
        """
        check_timeout(timeout)
        deadline = deadline_in(timeout)
        prepared = self._prepare(request)  # a bad request is refused before any worker
        attempts = _Attempts(self._spec.retries)
        if _telemetry.active:
            attempts.observe(self.name)
        with attempts:
            while True:
                try:
                    return self._call_once(prepared, deadline, timeout, attempts)
                except WorkerCrashed as exc:
                    attempts.again(exc)
                except NoProc as exc:
                    attempts.pool_gone(exc)

    async def acall(self, request: Any, timeout: float | None = 5.0) -> Any:
        """Awaitable `call`: waiting for a worker and for its reply does not block the event
        loop (the loop watches the worker's pipe; no thread waits).

        Cancelling the task (or `asyncio.timeout()` / `wait_for` expiring) while the request
        is with a worker kills that worker (the only way to stop work in another process)
        and the pool replaces it: no stale reply ever reaches a later caller. Cancelled while
        waiting for a worker, the request just leaves the queue.

        Raises: as `call`.
        """
        check_timeout(timeout)
        deadline = deadline_in(timeout)
        prepared = self._prepare(request)
        attempts = _Attempts(self._spec.retries)
        if _telemetry.active:
            attempts.observe(self.name)
        with attempts:
            while True:
                try:
                    return await self._acall_once(prepared, deadline, timeout, attempts)
                except WorkerCrashed as exc:
                    attempts.again(exc)
                except NoProc as exc:
                    attempts.pool_gone(exc)

    def _prepare(self, request: Any) -> Prepared:
        """The request, encoded now: what cannot be encoded (or is too large) is the caller's
        mistake, refused with a `ProtocolError` that names the value, and no worker is
        involved."""
        spec = self._spec
        own_id = None
        if spec.argv is not None:
            if not isinstance(request, Mapping):
                raise ProtocolError(
                    f"a request to a program must be a mapping to carry an id, got "
                    f"{type(request).__name__}"
                )
            own_id = request.get("id")
        return Prepared.of(request, spec.codec, spec.max_frame, spec.argv is None, own_id)

    def _call_once(
        self,
        prepared: Prepared,
        deadline: float | None,
        timeout: float | None,
        attempts: _Attempts,
    ) -> Any:
        def use(from_: From, port: Port) -> tuple[Any, Any]:
            if attempts.span is not None:
                attempts.reached(from_, port)
            sent = _send(port, prepared, deadline)
            if isinstance(sent, _Refused):
                return sent, "ok"  # nothing was written: the worker is fine
            try:
                reply = port._await_reply(sent, deadline)
            except (PortClosed, CallTimeout, RemoteError, UndecodableReply) as exc:
                return _failed(port, exc, timeout)
            return self._replied(port, reply)

        return _outcome(self.checkout(None, use, remaining(deadline)))  # an override's too

    async def _acall_once(
        self,
        prepared: Prepared,
        deadline: float | None,
        timeout: float | None,
        attempts: _Attempts,
    ) -> Any:
        async def use(from_: From, port: Port) -> tuple[Any, Any]:
            if attempts.span is not None:
                attempts.reached(from_, port)
            sent = await _asend(port, prepared, deadline)
            if isinstance(sent, _Refused):
                return sent, "ok"
            try:
                reply = await port._aawait_reply(sent, deadline)
            except (PortClosed, CallTimeout, RemoteError, UndecodableReply) as exc:
                return _failed(port, exc, timeout)
            return self._replied(port, reply)

        return _outcome(await self.acheckout(None, use, remaining(deadline)))

    def _replied(self, port: Port, reply: Any) -> tuple[Any, Any]:
        """A reply and its checkin: an `argv` program's DSPex envelope with ``"success":
        false`` is the command failing on a worker that is fine (an error checkin)."""
        program = self._spec.argv is not None
        if program and isinstance(reply, Mapping) and reply.get("success") is False:
            text = reply.get("error")
            message = '"success": false, with no "error"' if text is None else str(text)
            error = RemoteError("error", message, str(port))
            return _Refused(error), ("error", error)
        return reply, "ok"


def _send(port: Port, prepared: Prepared, deadline: float | None) -> Any:
    """Write a request to `port`: its id, or `_Refused` if it could not be encoded."""
    try:
        request_id, _ = port._send_request(prepared, remaining(deadline))
    except (PortClosed, ProtocolError) as exc:
        return _unsent(port, exc)
    return request_id


async def _asend(port: Port, prepared: Prepared, deadline: float | None) -> Any:
    """`_send`, awaited (the event loop never waits on the pipe)."""
    try:
        request_id, _ = await port._asend_request(prepared, remaining(deadline))
    except (PortClosed, ProtocolError) as exc:
        return _unsent(port, exc)
    return request_id


def _unsent(port: Port, exc: PortClosed | ProtocolError) -> _Refused:
    """A request not written: its worker was gone (`WorkerCrashed`, not delivered: it may go
    to another), or it could not be encoded (`_Refused`: the worker is fine)."""
    if isinstance(exc, PortClosed):
        raise WorkerCrashed(str(port), port.exit_status, delivered=False) from exc
    return _Refused(exc)


def _failed(port: Port, exc: Exception, timeout: float | None) -> tuple[Any, Any]:
    """What a failed wait for a reply means: the worker died (`WorkerCrashed`) or did not
    answer in time (`CallTimeout`): raised, the worker removed; the handler raised, or the
    request or its reply could not be unpickled on arrival (`RemoteError`,
    `UndecodableReply`): the worker is fine, an error checkin."""
    if isinstance(exc, PortClosed):
        raise WorkerCrashed(str(port), port.exit_status) from exc
    if isinstance(exc, CallTimeout):
        raise CallTimeout(str(port), "call", timeout) from None
    return _Refused(exc), ("error", exc)


def _outcome(result: Any) -> Any:
    if isinstance(result, _Refused):
        raise result.error
    return result


class _Attempts:
    """`call`'s retry rule: a request that never reached its worker is sent again (up to
    `_UNDELIVERED_RETRIES` times), one whose worker crashed with it up to `retries` times.

    Also the call's `PROCESS_POOL_REQUEST` span, while a handler is attached (`observe`):
    the worker it reached last, how many workers it was handed to (`tries`), and, as a
    context manager around the call, its stop or exception event."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.crashes = 0
        self.undelivered = 0
        self.last_crash: WorkerCrashed | None = None
        self.span: _telemetry.Span | None = None
        self.tries = 0

    def observe(self, pool: str) -> None:
        """Start the call's span (its start event)."""
        self.span = _telemetry.start_span(_telemetry.PROCESS_POOL_REQUEST, {"pool": pool})

    def reached(self, from_: From, port: Port) -> None:
        """A worker was lent for the request: the end event names the last one."""
        assert self.span is not None
        self.tries += 1
        self.span.metadata.update(worker=str(port), worker_id=from_.worker_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        if span is None:
            return
        if exc is None:
            span.stop({"attempts": self.tries})
        else:
            span.exception(exc, {"attempts": self.tries})

    def again(self, exc: WorkerCrashed) -> None:
        """Count `exc`; raise it if no attempt is left."""
        self.last_crash = exc
        if not exc.delivered:
            # Nothing reached the process: safe to run elsewhere, idempotent or not.
            self.undelivered += 1
            if self.undelivered > _UNDELIVERED_RETRIES:
                raise exc
            return
        self.crashes += 1
        if self.crashes > self.retries:
            raise exc
        log_event(
            _log,
            "WARNING",
            "process_pool_retry",
            "{worker} crashed mid-request; retrying ({attempt}/{retries})",
            worker=exc.worker,
            attempt=self.crashes,
            retries=self.retries,
        )

    def pool_gone(self, exc: NoProc) -> NoReturn:
        """The pool stopped: raise `exc`, caused by the crash that made the call try again
        (its worker was killed by the stop, the request not yet wholly written), if any."""
        if self.last_crash is not None:
            raise exc from self.last_crash
        raise exc


inline_start(ProcessPool.start)  # bounded: its workers start asynchronously


# --- private helpers ---------------------------------------------------------------------------

# validate_port's errors, as ("checkout_failed", code) reasons.
_CHECKOUT_FAILED: dict[type, str] = {
    NotAPort: "not_a_port",
    PortClosed: "port_closed",
    PortNotOwned: "port_not_owned",
}


@attrs.frozen
class _Refused:
    """An error raised in a lease that leaves the worker fine (it is checked in, then the
    error is raised): the handler raised, or the request was refused before anything was
    written."""

    error: Exception


_CLOSE_SLACK = 2.0  # seconds on top of close_timeout for a graceful close's escalation
_THREADS_END = 1.0  # seconds a stopping pool waits for its idle closing threads to end
