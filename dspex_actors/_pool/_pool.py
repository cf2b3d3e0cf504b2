"""`Pool`: NimblePool's contract for Python: one actor owns N resources and lends them out.

A pool owns *workers* (plain values: a connection, a port, a model handle), created and cared
for by your `PoolWorker` callbacks, which all run inside the pool actor, one at a time.
`pool.checkout(command, fn)` asks the pool for an idle worker, runs ``fn(from_, client_state)``
**in the caller's thread** while the worker is marked checked out, and checks it back in with
the second element of the pair `fn` returns.

No thread hand-off while the pool is idle: a checkout or checkin that finds the pool doing
nothing and nothing queued is handled by the calling thread itself, holding the pool's
execution lock, exactly as the pool's thread would handle it next (same order, same state,
`current_actor()` is the pool). When the pool is busy it is queued as a message, as before.
A checkout then costs a few microseconds instead of two thread wake-ups; the only visible
difference is which thread runs a callback (and so who waits for it): a checkin that has more
to do than return the worker to the idle queue (waiters to serve, an overflow worker to
dismiss, a poisoned lease) is always left to the pool's own thread. A `KeyboardInterrupt` that
lands in a thread while it runs a pool callback this way ends the pool too (its state may be
half-updated), with that reason.

The semantics are NimblePool 1.1's, one to one (eager/lazy start, FIFO idle queue, FIFO waiters,
`Remove` / `Skip` / `Async` / `Stop`, idle pings, `handle_cancelled`, deadlines), plus three
deliberate improvements: Poolboy-style `max_overflow`, a clear error (and no leaked worker) when
`fn` returns something that is not a pair, and a callback's invalid return removing that worker
(with a `CallbackReturnError` in the caller) instead of crashing the pool.

When not to use it: for a pool of OS processes use `ProcessPool` (built on this); for fire and
forget jobs use a `DynamicSupervisor` or `concurrent.futures`; for one shared resource, an
`Actor` owning it is simpler.

Example:
    >>> import sqlite3
    >>> from dspex_actors import Ok, Pool, PoolWorker, Remove
    >>> class Sqlite(PoolWorker):
    ...     def init_worker(self, pool_state):
    ...         return Ok(sqlite3.connect(":memory:", check_same_thread=False), pool_state)
    ...     def handle_checkout(self, command, from_, conn, pool_state):
    ...         return Ok(conn, conn, pool_state)
    ...     def terminate_worker(self, reason, conn, pool_state):
    ...         conn.close()
    ...         return Ok(pool_state)
    >>> pool = Pool.start(Sqlite, pool_size=2)
    >>> pool.checkout("query", lambda from_, conn: (conn.execute("select 41 + 1").fetchone(), "ok"))
    (42,)
    >>> with pool.lease("query") as lease:
    ...     lease.client_state.execute("select 1").fetchone()
    (1,)
    >>> pool.status().idle
    2
    >>> pool.stop()

How it works (and what Python changes):

- The pool is an `Actor`. A checkout is a message carrying its own reply slot (a lock the
  caller waits on), so the pool answers when a worker is free without ever blocking on a
  caller; checkin, cancel and `update` are plain asynchronous messages.
- Deadlines are real time (`time.monotonic`): the caller really waits. The injected `clock`
  drives idle pings and `WorkerStats.last_activity`.
- A caller that is an `Actor` is monitored while it waits or holds a worker: if it exits, the
  worker is removed with reason ``"DOWN"`` (and replaced). A plain thread cannot be monitored;
  an exception in `fn` (or in a `with pool.lease(...)` block) cancels the lease instead.
- The wait queue is pruned as soon as a waiter times out or exits (NimblePool #27).
- `kill` runs no cleanup (see `kill`): idle workers are then not terminated.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Self

import attrs
import pykka

from .._actor import Actor, ActorHandle, InternalMessage, _run_inline, current_actor
from .._actor import _current as _actor_thread
from .._clock import SYSTEM_CLOCK, Clock, TimerHandle
from .._errors import (
    CallbackReturnError,
    DspexActorsError,
    InvalidOption,
    NoProc,
    PoolTimeout,
    StartError,
)
from .._logging import log_event
from .._naming._names import register
from .._reasons import NORMAL, Down, Exit, MonitorRef, Shutdown
from ._results import NO_POOL_STATE, Async, Ok, Remove, Skip, Stop

if TYPE_CHECKING:
    from .._child_spec import ChildSpec

__all__ = ["From", "Lease", "Pool", "PoolStatus", "PoolWorker", "WorkerStats"]


# --- public types ----------------------------------------------------------------------------


class From:
    """Identifies one checkout (NimblePool's ``{pool_pid, ref}``); pass it to `Pool.update`.

    Compared by identity: each checkout has its own. The pool makes them; build one yourself
    only to call a callback directly in a unit test (``From(pool=None, ref=object())``).

    Attributes:
        pool: the pool's `ActorRef`.
    """

    __slots__ = ("_token", "pool")

    def __init__(self, pool: pykka.ActorRef[Any], ref: Any = None) -> None:
        self.pool = pool
        self._token = ref

    @property
    def ref(self) -> Any:
        """The opaque token of this checkout (NimblePool's ``ref``); the pool's own `From`s
        are their own token."""
        token = getattr(self, "_token", None)  # the pool's requests never set it
        return self if token is None else token

    def __repr__(self) -> str:
        return f"<From {self.pool} at {id(self):#x}>"


@attrs.frozen
class PoolStatus:
    """A snapshot of a pool, from `Pool.status()`.

    Attributes:
        pool_size: the configured size.
        max_overflow: how many workers may exist above `pool_size` (Poolboy overflow).
        lazy: whether workers are created on demand.
        idle: workers waiting in the idle queue.
        busy: workers checked out.
        overflow: workers currently above `pool_size`.
        queued: checkouts waiting for a worker.
        initializing: workers being created (`Async` init running, or a retry scheduled).
        workers_started: workers created since the pool started.
        workers_removed: workers terminated since the pool started (removed, replaced,
            dismissed overflow).
        checkouts: checkouts served since the pool started.
        state: Poolboy's state name: ``"ready"`` (a checkout is served now), ``"overflow"``
            (it would create an overflow worker) or ``"full"`` (it would wait).
    """

    pool_size: int
    max_overflow: int
    lazy: bool
    idle: int
    busy: int
    overflow: int
    queued: int
    initializing: int
    workers_started: int
    workers_removed: int
    checkouts: int
    state: Literal["ready", "overflow", "full"]


@attrs.frozen
class WorkerStats:
    """Per-worker counters the pool keeps (seed Fix 6), from `Pool.worker_stats()`.

    Attributes:
        worker_id: the pool's number for this worker (1, 2, ... in creation order).
        busy: checked out right now.
        checkouts: times it was handed out.
        successful_checkins: checkins it survived (`handle_checkin` returned `Ok`) whose
            checkin state was not an error.
        error_checkins: checkins it survived whose checkin state was an error: an
            ``("error", reason)`` pair or an exception (the seed's ``{:error, _}`` checkin).
            A lease that ends the worker's life (the checkout function raised, the caller timed
            out or exited, `handle_checkin` returned `Remove`) removes it, stats and all;
            `PoolStatus.workers_removed` counts those.
        last_activity: pool clock time of its last checkout or checkin (or creation).
    """

    worker_id: int
    busy: bool
    checkouts: int
    successful_checkins: int
    error_checkins: int
    last_activity: float


# --- the callback protocol -------------------------------------------------------------------


class PoolWorker:
    """The callbacks a pool calls: subclass it and pass the **class** to `Pool.start`.

    The pool instantiates the class once, with no arguments, and calls every callback inside
    the pool actor, one at a time (except an `Async` init function): on the pool's own thread,
    or, for `handle_enqueue`/`handle_checkout`/`handle_checkin` (and what they lead to, such as
    `terminate_worker` after a `Remove`) arriving while the pool is idle, on the thread that
    checks out or in, under the pool's lock. Either way `current_actor()` is the pool and no
    other callback runs meanwhile; *Runs in: the pool thread* below means this. Names and
    argument order are NimblePool's. `init_worker` and `handle_checkout` are required; the
    others have NimblePool's defaults.

    Each callback is called through one wrapper: an exception is logged as
    ``Error during MyWorker.handle_checkout`` (with the traceback) and handled as stated under
    *If it raises*; a return value outside *Must return* raises `CallbackReturnError` (see each
    callback for where it surfaces) and never crashes the pool.

    Warning:
        Every callback blocks the pool: while one runs, no checkout is served. Keep them short;
        create slow resources with `Async` and hand slow cleanup to a thread.
    """

    def init_pool(self, init_arg: Any) -> Ok | Stop:
        """Set up the pool state once, before any worker.

        *Runs in*: the pool thread, during `Pool.start`.
        *Receives*: the `init_arg` given to `Pool.start`.
        *Must return*: `Ok(pool_state)` or `Stop(reason)` (the pool does not start).
        *If it raises*: `Pool.start` raises `StartError` with the exception as `reason`.
        *Optional*: the default returns `Ok(init_arg)`.
        """
        return Ok(init_arg)

    def init_worker(self, pool_state: Any) -> Ok | Async:
        """Create one worker.

        *Runs in*: the pool thread (eager pools: `pool_size` times during start; lazy pools: on
        demand; both: to replace a removed worker).
        *Receives*: the pool state.
        *Must return*: `Ok(worker_state, pool_state)`, or `Async(fn, pool_state)` to create it
        in another thread (the worker is available only once `fn()` returns its state).
        *If it raises*: logged, and retried later through the pool's inbox (other messages are
        served meanwhile). A crashing `Async` function is retried too.
        *Invalid return*: during start, `Pool.start` raises `CallbackReturnError`; later it is
        logged and retried like an exception.
        *Required.*
        """
        raise NotImplementedError

    def handle_enqueue(self, command: Any, pool_state: Any) -> Ok | Skip:
        """See (and maybe rewrite or refuse) a checkout's command as it arrives.

        *Runs in*: the pool thread, once per checkout, before it waits for a worker.
        *Receives*: the checkout's command and the pool state.
        *Must return*: `Ok(command, pool_state)` (the command passed on to `handle_checkout`,
        possibly wrapped) or `Skip(error, pool_state)` (the caller raises `error`).
        *If it raises* (deliberately better than NimblePool, which crashes): the caller's
        `checkout` raises that exception; the pool carries on. An invalid return raises
        `CallbackReturnError` in the caller.
        *Optional*: the default passes the command on unchanged.
        """
        return Ok(command, pool_state)

    def handle_checkout(self, command: Any, from_: From, worker_state: Any, pool_state: Any) -> Any:
        """Lend the idle worker at the head of the queue to a caller.

        *Runs in*: the pool thread.
        *Receives*: the (enqueued) command, the caller's `From`, the worker state, the pool
        state.
        *Must return*: `Ok(client_state, worker_state, pool_state)` (the caller's function gets
        `client_state`); `Remove(reason, pool_state)` (terminate this worker and try the next
        one for the same caller, who does not notice); or `Skip(error, pool_state)` (the caller
        raises `error`, the worker stays at the head of the idle queue).
        *If it raises*: logged and treated as `Remove(exception, pool_state)`.
        *Invalid return*: the worker is removed and the caller raises `CallbackReturnError`.
        A returned ``("error", reason)`` gets a hint to return
        ``Remove(("checkout_failed", reason), pool_state)`` (seed Fix 1).
        *Required.*
        """
        raise NotImplementedError

    def handle_checkin(
        self, client_state: Any, from_: From, worker_state: Any, pool_state: Any
    ) -> Ok | Remove:
        """Take a worker back after the caller's function returned.

        *Runs in*: the pool thread: before `checkout` returns if the pool is idle (on the
        caller's thread), else asynchronously after it returned.
        *Receives*: the second element of the pair the function returned (the checkin state),
        the caller's `From`, the worker state, the pool state.
        *Must return*: `Ok(worker_state, pool_state)` (back to the tail of the idle queue) or
        `Remove(reason, pool_state)` (terminate it; an eager pool starts a replacement).
        *If it raises*: logged and treated as `Remove(exception, pool_state)`.
        *Invalid return*: logged as `CallbackReturnError`; the worker is removed.
        *Optional*: the default keeps the worker state unchanged.
        """
        return Ok(worker_state, pool_state)

    def handle_update(self, message: Any, worker_state: Any, pool_state: Any) -> Ok:
        """Record a change to a checked-out worker, sent with `Pool.update(from_, message)`.

        *Runs in*: the pool thread, asynchronously, while the worker is checked out.
        *Receives*: the message, the worker state, the pool state.
        *Must return*: `Ok(worker_state, pool_state)`; a later `terminate_worker` sees the new
        worker state.
        *If it raises* or returns something else (deliberately better than NimblePool, which
        crashes): logged; the worker is removed with that error when its lease ends.
        *Optional*: the default keeps the worker state unchanged.
        """
        return Ok(worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: Any) -> Ok | Remove:
        """See a message the pool does not consume itself, once per **idle** worker.

        Such messages are `Pool.send_info(message)`, anything else told to the pool's actor,
        exit signals from linked actors other than the pool's parent, and `Down`s of monitors
        the pool does not know.

        *Runs in*: the pool thread.
        *Receives*: the message and the worker state (checked-out workers are skipped).
        *Must return*: `Ok(worker_state)` or `Remove(reason)` (terminate and replace it).
        *If it raises*: logged and treated as `Remove(exception)`.
        *Invalid return*: logged as `CallbackReturnError`; the worker is removed.
        *Optional*: the default keeps the worker.
        """
        return Ok(worker_state)

    def handle_ping(self, worker_state: Any, pool_state: Any) -> Ok | Remove | Stop:
        """Check a worker that has been idle for `worker_idle_timeout` seconds.

        Called only when the pool has a `worker_idle_timeout` and this method is overridden.
        Every `worker_idle_timeout` seconds the idle queue is scanned from its head; workers
        idle at least that long are pinged, up to `max_idle_pings` per scan; the scan stops at
        the first worker idle for less.

        *Runs in*: the pool thread.
        *Receives*: the worker state and the pool state.
        *Must return*: `Ok(worker_state)` (kept, in place; its idle time is *not* reset, so it
        is pinged again next scan), `Remove(reason)` (terminate and replace it), or
        `Stop(reason)` (stop the pool: every idle worker gets
        `terminate_worker(Shutdown(reason))` and the pool exits with `Shutdown(reason)`).
        *If it raises*: logged and treated as `Remove(exception)`.
        *Invalid return*: logged as `CallbackReturnError`; the worker is removed.
        *Optional*: without it, idle pings are disabled.
        """
        return Ok(worker_state)

    def handle_cancelled(self, context: Literal["queued", "checked_out"], pool_state: Any) -> None:
        """Hear that a checkout was cancelled.

        *Runs in*: the pool thread.
        *Receives*: ``"queued"`` (the caller timed out or exited while waiting, or the pool had
        already dropped its request at its deadline) or ``"checked_out"`` (the caller's function
        raised, or it timed out or exited after a worker was assigned; the worker is then
        removed, right after this call), and the pool state.
        *Must return*: anything (ignored).
        *If it raises*: logged and ignored.
        *Optional*: the default does nothing.
        """

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Ok:
        """Release one worker's resources: it is being removed, or the pool is stopping.

        *Runs in*: the pool thread.
        *Receives*: why: a `Remove` reason; ``"error"`` / ``"exit"`` (the checkout function
        raised an `Exception` / a `BaseException` such as `KeyboardInterrupt`); ``"timeout"``
        (the caller timed out after the worker was assigned); ``"DOWN"`` (the calling actor
        exited while holding it); ``"overflow"`` (an overflow worker dismissed at checkin);
        the exception a callback raised; a `CallbackReturnError`; or the pool's exit reason at
        stop. Then the last worker state the pool knows, and the pool state.
        *Must return*: `Ok(pool_state)`.
        *If it raises* (or returns something else): logged and discarded; the pool state is
        unchanged and the removal goes on.
        *Optional*: the default does nothing.
        """
        return Ok(pool_state)

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        """Release the pool's own resources, after `terminate_worker` ran for every idle worker.

        Workers checked out when the pool stops get no `terminate_worker` (as in NimblePool).

        *Runs in*: the pool thread, as the pool exits.
        *Receives*: the exit reason (`NORMAL`, `SHUTDOWN`, `Shutdown(r)`...) and the pool state
        (NimblePool passes its internal state map; we pass the pool state).
        *Must return*: anything (ignored).
        *If it raises*: logged and ignored.
        *Optional*: the default does nothing.
        """


# --- public API ------------------------------------------------------------------------------


class Lease:
    """One checkout as a context manager: `with pool.lease(command) as lease:`.

    Entering checks a worker out (raising what `checkout` raises); inside, use
    `lease.client_state` and `lease.from_`. Leaving normally checks the worker in with
    `lease.checkin_state` (by default the client state; assign another value to pass something
    else to `handle_checkin`). An exception inside the block cancels the lease: the pool calls
    `handle_cancelled("checked_out")` and removes the worker (reason ``"error"``, or ``"exit"``
    for a `BaseException`), and the exception propagates unchanged.

    A lease is used once.
    """

    __slots__ = ("_command", "_done", "_pool", "_req", "_timeout", "checkin_state")

    def __init__(self, pool: Pool, command: Any, timeout: float | None) -> None:
        self._pool = pool
        self._command = command
        self._timeout = timeout
        self._req: _Request | None = None
        self._done = False
        self.checkin_state: Any = None

    @property
    def from_(self) -> From:
        """This checkout's `From` (for `Pool.update`)."""
        return self._active()

    @property
    def client_state(self) -> Any:
        """What `handle_checkout` handed out."""
        return self._active().value

    def update(self, message: Any) -> None:
        """`Pool.update(self.from_, message)`: record a change with `handle_update`."""
        self._pool.update(self.from_, message)

    def __enter__(self) -> Self:
        if self._req is not None or self._done:
            raise RuntimeError("a Lease can be entered only once; call pool.lease() again")
        req = self._pool._acquire(self._command, self._timeout)
        self._req = req
        self.checkin_state = req.value
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        req = self._active()
        self._req = None
        self._done = True
        if exc is None:
            self._pool._checkin(req, self.checkin_state)
        else:
            self._pool._cancel(req, _kind_of(exc))

    def _active(self) -> _Request:
        if self._req is None:
            raise RuntimeError("this lease is not checked out (use it inside its `with` block)")
        return self._req

    def __repr__(self) -> str:
        state = "active" if self._req is not None else ("done" if self._done else "new")
        return f"<Lease {self._command!r} {state}>"


class Pool(ActorHandle):
    """Handle to a running pool; `Pool.start` returns one.

    `checkout` and `lease` block the calling thread until a worker is free (up to `timeout`
    seconds; `None` waits forever). `status`, `worker_stats` and `stop` are calls into the
    pool actor: a pool that is not running raises `NoProc`.
    """

    _default_stop_reason: ClassVar[Any] = NORMAL

    def __init__(self, actor_ref: pykka.ActorRef[Any]) -> None:
        super().__init__(actor_ref)
        # Read from the actor object, not asked for (from_ref on a busy pool must not wait).
        actor = actor_ref._actor_weakref()
        self.__core = actor._core if isinstance(actor, _PoolActor) else None

    @classmethod
    def start(
        cls,
        worker: type[PoolWorker],
        init_arg: Any = None,
        *,
        pool_size: int = 10,
        lazy: bool = False,
        max_overflow: int = 0,
        worker_idle_timeout: float | None = None,
        max_idle_pings: int | None = None,
        name: Any = None,
        clock: Clock | None = None,
    ) -> Pool:
        """Start a pool; return once `init_pool` (and, eager, every `init_worker`) has run.

        Args:
            worker: a `PoolWorker` subclass (the class; the pool makes one instance).
            init_arg: passed to `init_pool`.
            pool_size: how many workers (a positive integer). Eager pools create them now.
            lazy: create workers only when a checkout finds none idle, never above `pool_size`.
            max_overflow: extra workers (above `pool_size`) a checkout may create when none
                is idle and none can be created; each is terminated when it is checked in
                while nobody waits (Poolboy's overflow). Default 0.
            worker_idle_timeout: seconds; if set (and `handle_ping` is overridden), idle
                workers are pinged on this period.
            max_idle_pings: at most this many pings per scan (`None`: no limit).
            name: register the pool under this local name (see `register`).
            clock: drives idle pings and `last_activity` (a `FakeClock` in tests).

        Raises:
            InvalidOption: an invalid option; nothing was started.
            CallbackReturnError: `init_pool` or an `init_worker` returned an invalid value.
            StartError: `init_pool` raised or returned `Stop(reason)`.
            NameTaken: `name` is registered to a live actor.
        """
        config = _validate(
            worker, pool_size, lazy, max_overflow, worker_idle_timeout, max_idle_pings, clock
        )
        try:
            ref = _PoolActor.start(config, init_arg, name, current_actor())
        except StartError as exc:
            if isinstance(exc.reason, DspexActorsError):
                raise exc.reason from None
            raise
        return cls(ref)

    @classmethod
    def child_spec(
        cls, worker: type[PoolWorker], init_arg: Any = None, **options: Any
    ) -> ChildSpec:
        """A `ChildSpec` that starts this pool under a supervisor; `id` defaults to the class name.

        Keyword options named like `ChildSpec` fields (`id`, `restart`, `shutdown`, ...)
        configure the spec; the others are `Pool.start` options, validated now.
        """
        from .._child_spec import ChildSpec, split_spec_options

        spec_options, start_options = split_spec_options(options)
        _validate(
            worker,
            start_options.get("pool_size", 10),
            start_options.get("lazy", False),
            start_options.get("max_overflow", 0),
            start_options.get("worker_idle_timeout"),
            start_options.get("max_idle_pings"),
            start_options.get("clock"),
        )
        spec_options.setdefault("id", getattr(worker, "__name__", "Pool"))
        return ChildSpec(
            start=cls.start, args=(worker, init_arg), kwargs=start_options, **spec_options
        )

    # -- checkout --

    def checkout(
        self,
        command: Any,
        fn: Callable[[From, Any], tuple[Any, Any]],
        timeout: float | None = 5.0,
    ) -> Any:
        """Check a worker out, run ``fn(from_, client_state)`` here, check it in, return.

        `fn` must return a pair ``(result, checkin_state)``: `checkout` returns `result` and
        the pool passes `checkin_state` to `handle_checkin` (right away, in this thread, if the
        pool is idle; else asynchronously, through its inbox).

        Args:
            command: passed to `handle_enqueue` and `handle_checkout`.
            fn: runs in this thread while the worker is checked out.
            timeout: seconds to wait for a worker (`None`: forever). It does not limit `fn`.

        Returns:
            The first element of the pair `fn` returned.

        Raises:
            PoolTimeout: no worker within `timeout` (if the pool assigned one just as we gave
                up, it is removed with reason ``"timeout"``).
            NoProc: the pool is not running, or exited while we waited.
            CallbackReturnError: `handle_enqueue` or `handle_checkout` returned an invalid
                value, or `fn` returned something that is not a pair (the lease is cancelled:
                the worker is removed, not leaked).
            Exception: the error of a `Skip`; anything `fn` raises (re-raised unchanged, after
                the lease is cancelled and the worker removed).
        """
        req = self._acquire(command, timeout)
        try:
            ret = fn(req, req.value)
        except BaseException as exc:
            self._cancel(req, _kind_of(exc))
            raise
        if type(ret) is not tuple or len(ret) != 2:
            self._cancel(req, "error")
            raise CallbackReturnError(
                f"the checkout function {_name_of(fn)}",
                ["(result, checkin_state)"],
                ret,
                "return a 2-tuple: checkout() returns its first element and the pool passes "
                "the second to handle_checkin",
            )
        # The checkin, inlined (see _checkin): the request itself goes back to the pool.
        req.value = ret[1]
        req.kind = _RETURNED
        core = self.__core
        checkin = core.checkin  # type: ignore[union-attr]  # _acquire checked it
        if checkin is None or not _run_inline(core.proc, checkin, req):  # type: ignore[union-attr]
            try:  # noqa: SIM105 (cheaper than contextlib.suppress on the hot path)
                self._ref.tell(req)
            except pykka.ActorDeadError:
                pass  # a pool that is gone took its workers with it; the result still stands
        return ret[0]

    def lease(self, command: Any, timeout: float | None = 5.0) -> Lease:
        """A `Lease`: `checkout` as a context manager (``with pool.lease(cmd) as lease:``)."""
        _check_timeout(timeout)
        return Lease(self, command, timeout)

    def update(self, from_: From, message: Any) -> None:
        """Send `message` to `handle_update` for the worker checked out as `from_` (async).

        Raises:
            InvalidOption: `from_` is not the `From` of a checkout from this pool.
        """
        if not isinstance(from_, From) or from_.pool != self._ref:
            raise InvalidOption("from_", from_, "the From of a checkout from this pool")
        self._tell(_Update(from_.ref, message))

    def send_info(self, message: Any) -> None:
        """Deliver `message` to `handle_info` of every idle worker (async)."""
        self._tell(_Info(message))

    # -- inspection --

    def status(self, timeout: float | None = 5.0) -> PoolStatus:
        """A `PoolStatus` snapshot."""
        status: PoolStatus = self._call(_STATUS, timeout, "status")
        return status

    def worker_stats(self, timeout: float | None = 5.0) -> list[WorkerStats]:
        """`WorkerStats` of every live worker (idle or checked out), oldest first."""
        stats: list[WorkerStats] = self._call(_WORKER_STATS, timeout, "worker_stats")
        return stats

    @property
    def name(self) -> str:
        """The pool's label in errors and logs: its registered name, else class and id."""
        return self._core.label

    # -- internals used by checkout and Lease --

    @property
    def _core(self) -> _Core:
        core = self.__core
        if core is None:
            raise NoProc(str(self._ref), "checkout")  # not a running pool
        return core

    def _tell(self, message: Any) -> None:
        try:
            self._ref.tell(message)
        except pykka.ActorDeadError:
            raise NoProc(str(self._ref), type(message).__name__) from None

    def _acquire(self, command: Any, timeout: float | None) -> _Request:
        if timeout is not None and (
            type(timeout) not in (float, int) or timeout < 0 or timeout != timeout
        ):
            _check_timeout(timeout)
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            # Forever (e.g. `inf`): a longer lock wait raises OverflowError after the request
            # was sent, and the worker granted to it would never come back.
            timeout = None
        core = self.__core
        if core is None:
            raise NoProc(str(self._ref), "checkout")  # not a running pool
        req = _Request(self._ref, command, None if timeout is None else time.monotonic() + timeout)
        proc = getattr(_actor_thread, "proc", None)  # current_actor(), inlined (hot path)
        client = req.client = proc.ref if proc is not None else None
        if client is self._ref:
            raise RuntimeError(f"checkout from a callback of pool {core.label} would deadlock")
        inflight = core.inflight
        # Registered before it is sent: if the pool exits before answering, its exit path
        # finds the request here and wakes us (see _PoolActor._dspex_on_exit).
        inflight[req] = None
        # Handled right here if the pool is idle (no thread hand-off), else sent.
        handle = core.checkout
        if handle is None or not _run_inline(core.proc, handle, req):
            req.lock = _held_lock()  # before it is sent: the pool's thread releases it
            try:
                self._ref.tell(req)
            except pykka.ActorDeadError:
                inflight.pop(req, None)
                raise NoProc(core.label, "checkout") from None
        if req.kind is not _PENDING:
            got = True  # answered already (inline, the common case)
        elif (lock := req.lock) is None:
            got = False  # handled inline and dropped: its deadline had passed (timeout 0)
        else:  # sent to the pool's thread, or queued there (see _wait_for): wait
            got = lock.acquire() if timeout is None else lock.acquire(True, timeout)
        inflight.pop(req, None)
        if not got:
            with contextlib.suppress(pykka.ActorDeadError):
                self._ref.tell(_Cancel(req, "timeout"))
            raise PoolTimeout(core.label, timeout)
        if req.kind is _GRANTED:
            return req
        error: BaseException = req.value
        raise error

    def _checkin(self, req: _Request, checkin_state: Any) -> None:
        # The request itself goes back as the checkin (one object less on the hot path).
        req.value = checkin_state
        req.kind = _RETURNED
        core = self._core
        checkin = core.checkin
        if checkin is not None and _run_inline(core.proc, checkin, req):
            return
        # A pool that is gone took its workers with it; the caller's result still stands.
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(req)

    def _cancel(self, req: _Request, kind: str) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(_Cancel(req, kind))


# --- messages and records (private) ----------------------------------------------------------
# Framework messages are `InternalMessage`s: left in the inbox when the pool exits, they are
# dropped quietly (waiting callers are woken by `_dspex_on_exit`), not logged as dead letters.

# The phases of a `_Request`: sent as a checkout (PENDING), answered by the pool (GRANTED or
# FAILED), sent back by the client as its checkin (RETURNED, `value` = the checkin state).
_PENDING: Final = 0
_GRANTED: Final = 1
_FAILED: Final = 2
_RETURNED: Final = 3


class _Request(From, InternalMessage):
    """One checkout: the message sent to the pool, its reply slot, and its `From`."""

    __slots__ = (
        "client",
        "command",
        "deadline",
        "kind",
        "lock",
        "mref",
        "poison",
        "value",
    )

    def __init__(self, pool: pykka.ActorRef[Any], command: Any, deadline: float | None) -> None:
        self.pool = pool
        self.command = command
        self.deadline = deadline
        self.client: pykka.ActorRef[Any] | None = None
        # Held until the pool's answer is in `kind`/`value`; made only for a request that
        # waits (sent to the pool's thread, or queued there), not one answered inline.
        self.lock: threading.Lock | None = None
        self.kind = _PENDING
        self.value: Any = None
        self.mref: MonitorRef | None = None
        self.poison: BaseException | None = None


@attrs.frozen
class _Cancel(InternalMessage):
    req: _Request
    kind: str


@attrs.frozen
class _Update(InternalMessage):
    req: Any
    message: Any


@attrs.frozen
class _Info:
    message: Any


@attrs.frozen
class _AsyncDone(InternalMessage):
    ok: bool
    value: Any


class _Singleton(InternalMessage):
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_INIT_WORKER: Final = _Singleton("_InitWorker")
_CHECK_IDLE: Final = _Singleton("_CheckIdle")
_STATUS: Final = _Singleton("_Status")
_WORKER_STATS: Final = _Singleton("_WorkerStats")


class _Core:
    """What every handle of one pool shares: its label, the requests in flight, and the way
    to run a checkout or checkin in the caller's thread while the pool is idle."""

    __slots__ = ("checkin", "checkout", "inflight", "label", "proc")

    def __init__(self, label: str) -> None:
        self.label = label
        self.inflight: dict[_Request, None] = {}
        self.proc: Any = None  # the pool actor's _Proc
        # The pool's handlers for a checkout and a checkin run inline; set while it runs.
        self.checkout: Callable[[_Request], None] | None = None
        self.checkin: Callable[[_Request], bool] | None = None


class _Worker:
    __slots__ = (
        "checkouts",
        "error_checkins",
        "id",
        "idle_since",
        "last_activity",
        "state",
        "successful_checkins",
    )

    def __init__(self, worker_id: int, state: Any, now: float) -> None:
        self.id = worker_id
        self.state = state
        self.idle_since = now
        self.checkouts = 0
        self.successful_checkins = 0
        self.error_checkins = 0
        self.last_activity = now


@attrs.frozen
class _Raised:
    """What the callback wrapper returns when a callback raised (already logged)."""

    error: Exception


@attrs.frozen
class _Config:
    worker: type[PoolWorker]
    pool_size: int
    lazy: bool
    max_overflow: int
    worker_idle_timeout: float | None
    max_idle_pings: int | None
    clock: Clock


_EXPECTED: Final[dict[str, list[str]]] = {
    "init_pool": ["Ok(pool_state)", "Stop(reason)"],
    "init_worker": ["Ok(worker_state, pool_state)", "Async(fn, pool_state)"],
    "handle_enqueue": ["Ok(command, pool_state)", "Skip(error, pool_state)"],
    "handle_checkout": [
        "Ok(client_state, worker_state, pool_state)",
        "Remove(reason, pool_state)",
        "Skip(error, pool_state)",
    ],
    "handle_checkin": ["Ok(worker_state, pool_state)", "Remove(reason, pool_state)"],
    "handle_update": ["Ok(worker_state, pool_state)"],
    "handle_info": ["Ok(worker_state)", "Remove(reason)"],
    "handle_ping": ["Ok(worker_state)", "Remove(reason)", "Stop(reason)"],
    "terminate_worker": ["Ok(pool_state)"],
}


# --- the pool actor (handlers) ---------------------------------------------------------------


class _PoolActor(Actor):
    """The actor behind a `Pool` handle. Never used directly."""

    trap_exits = True
    start_timeout: ClassVar[float | None] = 60.0  # eager pools run every init_worker in start

    def __init__(
        self, config: _Config, init_arg: Any, name: Any, parent: pykka.ActorRef[Any] | None
    ) -> None:
        super().__init__()
        self._cfg = config
        self._init_arg = init_arg
        self._register_as = name
        self._parent = parent
        self._clock = config.clock
        # The real clock's reading, without the method call (the hot path reads it twice).
        self._now = time.monotonic if config.clock is SYSTEM_CLOCK else config.clock.monotonic
        cls = config.worker
        self._cls_name = cls.__qualname__
        self._w = cls()
        # Bound callbacks, looked up once (the hot path calls them for every checkout).
        self._cb_checkout: Callable[..., Any] = self._w.handle_checkout
        self._cb_checkin: Callable[..., Any] = self._w.handle_checkin
        self._has_enqueue = cls.handle_enqueue is not PoolWorker.handle_enqueue
        self._has_ping = cls.handle_ping is not PoolWorker.handle_ping
        self._has_cancelled = cls.handle_cancelled is not PoolWorker.handle_cancelled
        self._ps: Any = None
        self._ready = False  # init_pool has succeeded: terminate_pool runs at exit
        self._idle: deque[_Worker] = deque()
        self._busy: dict[_Request, _Worker] = {}
        self._waiting: dict[_Request, None] = {}  # insertion-ordered: FIFO, O(1) pruning
        self._by_mref: dict[MonitorRef, _Request] = {}
        self._workers: dict[int, _Worker] = {}
        self._lazy_left = config.pool_size if config.lazy else 0
        self._overflow = 0
        self._initializing = 0
        self._next_id = 0
        self._started = 0
        self._removed = 0
        self._checkouts = 0
        self._idle_timer: TimerHandle | None = None
        self._core = _Core("")

    # -- start and exit --

    def on_start(self) -> None:
        label = str(self._register_as) if self._register_as is not None else None
        self._core.label = label or f"{self._cls_name}#{self.actor_ref.actor_urn[-6:]}"
        if self._register_as is not None:
            register(self._register_as, self.actor_ref)
        result = self._invoke("init_pool", self._w.init_pool, self._init_arg)
        match result:
            case Ok(values=(ps,)):
                self._ps = ps
            case Stop(reason):
                cause = reason if isinstance(reason, BaseException) else None
                raise StartError(
                    self._cfg.worker,
                    cause or RuntimeError(f"{self._cls_name}.init_pool returned Stop({reason!r})"),
                )
            case _Raised(error):
                raise StartError(self._cfg.worker, error)
            case _:
                raise self._bad_return("init_pool", result)
        self._ready = True
        self._core.proc = self._dspex_proc
        self._core.checkout = self._on_checkout
        self._core.checkin = self._inline_checkin
        if not self._cfg.lazy:
            for _ in range(self._cfg.pool_size):
                self._start_worker(starting=True)
        timeout = self._cfg.worker_idle_timeout
        if timeout is not None:
            if self._has_ping:
                self._schedule_idle_check()
            else:
                log_event(
                    "WARNING",
                    "pool_no_handle_ping",
                    "pool {pool}: worker_idle_timeout is set but {worker} does not define "
                    "handle_ping; idle workers will not be pinged",
                    pool=self._core.label,
                    worker=self._cls_name,
                )

    def on_stop(self) -> None:
        self._terminate_all(self.exit_reason)

    def on_failure(self, *_exc_info: Any) -> None:
        self._terminate_all(self.exit_reason)

    def _dspex_on_exit(self, reason: Any) -> None:
        # Runs on every exit, kill included: wake every caller still waiting for a worker
        # (queued here, or whose request never reached us) so none waits for its timeout.
        self._core.checkout = self._core.checkin = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for req in self._core.inflight.copy():
            if req.kind is _PENDING:
                self._fail(req, NoProc(f"{self._core.label} (exited: {reason!r})", "checkout"))

    def on_exit_signal(self, exit: Exit) -> None:
        # As a gen_server that traps exits: the parent's exit signal (or one sent from plain
        # code) stops us; any other linked actor's exit is just information for the workers.
        if exit.ref is None or (self._parent is not None and exit.ref == self._parent):
            # Even for a parent that was killed: an exit *signal* with reason KILLED is an
            # ordinary exit, so on_stop runs terminate_worker/terminate_pool (NimblePool's
            # terminate/2) and no worker's resource leaks.
            super().on_exit_signal(exit)
        else:
            self._on_info(exit)

    def on_down(self, down: Down) -> None:
        req = self._by_mref.pop(down.monitor_ref, None)
        if req is None:
            self._on_info(down)
            return
        req.mref = None
        worker = self._busy.pop(req, None)
        if worker is not None:
            self._cancelled("checked_out")
            self._remove_worker(worker, "DOWN")
            self._serve_waiters()
        elif self._waiting.pop(req, 0) is None:
            self._cancelled("queued")

    # -- messages --

    def _inline_checkin(self, req: _Request) -> bool:
        """A checkin run by the caller's thread while the pool is idle (checkouts run
        `_on_checkout` directly).

        Returns False to decline a checkin that has more to do than put the worker back (a
        poisoned lease, an overflow worker to dismiss, waiters to serve): the caller then sends
        it, and the pool's own thread does that work, as before.
        """
        if req.poison is not None or self._overflow or self._waiting:
            return False
        self._on_checkin(req, req.value)
        return True

    def _handle_receive(self, message: Any) -> Any:
        # The hot path skips pykka's proxy-message checks: checkouts and checkins first.
        if type(message) is _Request:
            if message.kind is _RETURNED:
                return self._on_checkin(message, message.value)
            return self._on_checkout(message)
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is _Cancel:
            self._on_cancel(message.req, message.kind)
        elif message is _STATUS:
            return self._status()
        elif message is _INIT_WORKER:
            self._initializing -= 1
            self._start_worker()
            self._serve_waiters()
        elif kind is _AsyncDone:
            self._on_async_done(message)
        elif message is _CHECK_IDLE:
            self._on_check_idle()
        elif kind is _Update:
            self._on_update(message.req, message.message)
        elif message is _WORKER_STATS:
            return [self._stats_of(w) for w in self._workers.values()]
        elif kind is _Info:
            self._on_info(message.message)
        else:
            self._on_info(message)
        return None

    def _on_checkout(self, req: _Request) -> None:
        if req.deadline is not None and time.monotonic() >= req.deadline:
            return  # the caller has given up already: dropped silently, as NimblePool does
        if req.client is not None:
            req.mref = self.monitor(req.client)
            self._by_mref[req.mref] = req
        if self._has_enqueue:
            result = self._invoke("handle_enqueue", self._w.handle_enqueue, req.command, self._ps)
            match result:
                case Ok(values=(command, ps)):
                    self._ps = ps
                    req.command = command
                case Skip(error, ps) if _is_error(error):
                    self._ps = ps
                    self._answer_error(req, _instantiate(error))
                    return
                case _Raised(error):
                    self._answer_error(req, error)
                    return
                case _:
                    self._answer_error(req, self._bad_return("handle_enqueue", result))
                    return
        if self._waiting or not self._serve(req):
            self._wait_for(req)

    def _on_checkin(self, req: _Request, checkin_state: Any) -> None:
        worker = self._busy.pop(req, None)
        if worker is None:
            return  # cancelled meanwhile (its client exited): already removed
        if req.mref is not None:
            self._forget_client(req)
        if req.poison is not None:
            self._remove_worker(worker, req.poison)
            self._serve_waiters()
            return
        try:  # the callback wrapper, inlined on the hot path (see _invoke)
            result = self._cb_checkin(checkin_state, req, worker.state, self._ps)
        except Exception as exc:
            result = self._raised("handle_checkin", exc)
        if type(result) is Ok and len(result.values) == 2:
            worker.state, self._ps = result.values
            if (type(checkin_state) is tuple or isinstance(checkin_state, BaseException)) and (
                _is_error_state(checkin_state)
            ):
                worker.error_checkins += 1
            else:
                worker.successful_checkins += 1
            # Back to the tail of the idle queue (the common case, inlined: see _checked_in).
            if self._overflow or self._waiting:
                self._checked_in(worker)
                return
            worker.last_activity = worker.idle_since = self._now()
            self._idle.append(worker)
            return
        match result:
            case Remove(reason, ps) if ps is not NO_POOL_STATE:
                self._ps = ps
                self._remove_worker(worker, reason)
            case _Raised(error):
                self._remove_worker(worker, error)
            case _:
                error = self._bad_return("handle_checkin", result)
                self._log_bad_return(error)
                self._remove_worker(worker, error)
        self._serve_waiters()

    def _on_cancel(self, req: _Request, kind: str) -> None:
        worker = self._busy.pop(req, None)
        if worker is not None:
            self._forget_client(req)
            self._cancelled("checked_out")
            self._remove_worker(worker, kind)
            self._serve_waiters()
            return
        if self._waiting.pop(req, 0) is None:
            self._forget_client(req)
        # Still queued, or unknown (dropped at its deadline, or already answered): "queued".
        self._cancelled("queued")

    def _on_update(self, req: Any, message: Any) -> None:
        worker = self._busy.get(req)
        if worker is None:
            log_event(
                "WARNING",
                "pool_stale_update",
                "pool {pool}: update for a lease that is not checked out: {message}",
                pool=self._core.label,
                message=repr(message),
            )
            return
        result = self._invoke(
            "handle_update", self._w.handle_update, message, worker.state, self._ps
        )
        match result:
            case Ok(values=(ws, ps)):
                worker.state, self._ps = ws, ps
            case _Raised(error):
                req.poison = error
            case _:
                error = self._bad_return("handle_update", result)
                self._log_bad_return(error)
                req.poison = error

    def _on_async_done(self, message: _AsyncDone) -> None:
        self._initializing -= 1
        if message.ok:
            self._add_worker(message.value)
        else:
            self._start_worker()  # a crashed async init is retried at once, even when lazy
        self._serve_waiters()

    def _on_info(self, message: Any) -> None:
        if not self._idle:
            return
        kept: deque[_Worker] = deque()
        for worker in self._idle:
            result = self._invoke("handle_info", self._w.handle_info, message, worker.state)
            match result:
                case Ok(values=(ws,)):
                    worker.state = ws
                    kept.append(worker)
                case Remove(reason, ps) if ps is NO_POOL_STATE:
                    self._remove_worker(worker, reason)
                case _Raised(error):
                    self._remove_worker(worker, error)
                case _:
                    error = self._bad_return("handle_info", result)
                    self._log_bad_return(error)
                    self._remove_worker(worker, error)
        self._idle = kept
        self._serve_waiters()

    def _on_check_idle(self) -> None:
        self._schedule_idle_check()
        timeout = self._cfg.worker_idle_timeout
        assert timeout is not None
        limit = self._cfg.max_idle_pings
        now = self._clock.monotonic()
        kept: deque[_Worker] = deque()
        pings = 0
        scanning = True
        stop: Stop | None = None
        for worker in self._idle:
            if not scanning or (limit is not None and pings >= limit):
                kept.append(worker)
                continue
            if now - worker.idle_since < timeout:
                scanning = False  # the scan stops at the first worker not idle long enough
                kept.append(worker)
                continue
            pings += 1
            result = self._invoke("handle_ping", self._w.handle_ping, worker.state, self._ps)
            match result:
                case Ok(values=(ws,)):
                    worker.state = ws  # its idle timestamp stays: pinged again next scan
                    kept.append(worker)
                case Remove(reason, ps) if ps is NO_POOL_STATE:
                    self._remove_worker(worker, reason)
                case Stop():
                    stop = result
                    kept.append(worker)
                    scanning = False
                case _Raised(error):
                    self._remove_worker(worker, error)
                case _:
                    error = self._bad_return("handle_ping", result)
                    self._log_bad_return(error)
                    self._remove_worker(worker, error)
        self._idle = kept
        if stop is not None:
            self.exit(Shutdown(stop.reason))  # on_stop terminates idle workers with it
            return
        self._serve_waiters()

    # -- serving --

    def _serve(self, req: _Request) -> bool:
        """Try to give `req` a worker now; True if it got an answer (worker, skip or error)."""
        idle = self._idle
        created = 0  # workers created for this request in this call
        while True:
            if idle:
                worker = idle[0]
                try:  # the callback wrapper, inlined on the hot path (see _invoke)
                    result = self._cb_checkout(req.command, req, worker.state, self._ps)
                except Exception as exc:
                    result = self._raised("handle_checkout", exc)
                if type(result) is Ok and len(result.values) == 3:
                    idle.popleft()
                    client_state, worker.state, self._ps = result.values
                    worker.checkouts += 1
                    worker.last_activity = self._now()
                    self._checkouts += 1
                    self._busy[req] = worker
                    req.value = client_state
                    req.kind = _GRANTED
                    if req.lock is not None:
                        req.lock.release()
                    return True
                match result:
                    case Remove(reason, ps) if ps is not NO_POOL_STATE:
                        idle.popleft()
                        self._ps = ps
                        self._remove_worker(worker, reason)
                        continue  # the same request tries the next (or a new) worker
                    case Skip(error, ps) if _is_error(error):
                        self._ps = ps  # the worker stays at the head of the idle queue
                        self._answer_error(req, _instantiate(error))
                        return True
                    case _Raised(error):
                        idle.popleft()
                        self._remove_worker(worker, error)
                        continue
                    case _:
                        idle.popleft()
                        error = self._bad_return("handle_checkout", result)
                        self._log_bad_return(error)
                        self._remove_worker(worker, error)
                        self._answer_error(req, error)
                        return True
            elif self._lazy_left > 0 or self._overflow < self._cfg.max_overflow:
                if self._lazy_left > 0:
                    self._lazy_left -= 1
                else:
                    self._overflow += 1
                if created >= self._cfg.pool_size:
                    # Fresh workers keep being removed by handle_checkout: create the next one
                    # through the inbox, as an eager pool does, instead of looping in here.
                    self._retry_init()
                    return False
                created += 1
                self._start_worker()
            else:
                return False
            if not idle:
                return False  # the new worker is being created asynchronously: wait for it

    def _wait_for(self, req: _Request) -> None:
        """Queue `req` until a worker is free. One handled inline has no lock yet: it gets
        its held lock here, before any other thread can answer it (we hold `exec_lock`)."""
        if req.lock is None:
            req.lock = _held_lock()
        self._waiting[req] = None

    def _serve_waiters(self) -> None:
        waiting = self._waiting
        while waiting:
            req = next(iter(waiting))
            if req.deadline is not None and time.monotonic() >= req.deadline:
                del waiting[req]  # its caller has timed out; its cancel will say "queued"
                self._forget_client(req)
                continue
            if not self._serve(req):
                return
            del waiting[req]

    def _checked_in(self, worker: _Worker) -> None:
        now = self._now()
        worker.last_activity = now
        if self._overflow > 0 and not self._waiting:
            self._overflow -= 1  # Poolboy: dismiss whichever worker comes back
            self._terminate_worker("overflow", worker)
            self._removed += 1
            del self._workers[worker.id]
            return
        worker.idle_since = now
        self._idle.append(worker)
        if self._waiting:
            self._serve_waiters()

    # -- worker lifecycle --

    def _start_worker(self, starting: bool = False) -> None:
        """Run init_worker once; the worker joins the idle queue (or arrives later)."""
        result = self._invoke("init_worker", self._w.init_worker, self._ps)
        match result:
            case Ok(values=(ws, ps)):
                self._ps = ps
                self._add_worker(ws)
            case Async(fn, ps) if callable(fn):
                self._ps = ps
                self._initializing += 1
                self._run_async(fn)
            case _Raised():
                self._retry_init()
            case _:
                error = self._bad_return("init_worker", result)
                if starting:
                    raise error
                self._log_bad_return(error)
                self._retry_init()

    def _retry_init(self) -> None:
        # Through our own inbox, never in a loop: other messages are served between attempts.
        self._initializing += 1
        self.actor_ref.tell(_INIT_WORKER)

    def _add_worker(self, worker_state: Any) -> None:
        self._next_id += 1
        self._started += 1
        worker = _Worker(self._next_id, worker_state, self._clock.monotonic())
        self._workers[worker.id] = worker
        self._idle.append(worker)

    def _run_async(self, fn: Callable[[], Any]) -> None:
        ref = self.actor_ref
        label = self._core.label

        def run() -> None:
            try:
                message = _AsyncDone(True, fn())
            except Exception as exc:
                log_event(
                    "ERROR",
                    "pool_callback_error",
                    "Error during {callback} (async init function) in pool {pool}",
                    callback=f"{self._cls_name}.init_worker",
                    pool=label,
                    reason=repr(exc),
                    exc=exc,
                )
                message = _AsyncDone(False, exc)
            # If the pool stopped meanwhile, the worker state is dropped.
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

        threading.Thread(target=run, name="dspex-pool-async-init", daemon=True).start()

    def _remove_worker(self, worker: _Worker, reason: Any) -> None:
        """Terminate a worker already taken off the idle queue / busy map, and replace it."""
        self._terminate_worker(reason, worker)
        self._removed += 1
        del self._workers[worker.id]
        if self._overflow > 0:
            self._overflow -= 1  # Poolboy: an overflow pool shrinks instead of replacing
        elif self._cfg.lazy:
            self._lazy_left += 1
        else:
            self._retry_init()

    def _terminate_worker(self, reason: Any, worker: _Worker) -> None:
        result = self._invoke(
            "terminate_worker", self._w.terminate_worker, reason, worker.state, self._ps
        )
        match result:
            case Ok(values=(ps,)):
                self._ps = ps
            case _Raised():
                pass  # logged; discarded: the pool state is unchanged and the removal goes on
            case _:
                self._log_bad_return(self._bad_return("terminate_worker", result))

    def _terminate_all(self, reason: Any) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if not self._ready:
            return
        idle, self._idle = self._idle, deque()
        for worker in idle:
            self._terminate_worker(reason, worker)
        self._invoke("terminate_pool", self._w.terminate_pool, reason, self._ps)

    # -- idle pings --

    def _schedule_idle_check(self) -> None:
        timeout = self._cfg.worker_idle_timeout
        assert timeout is not None
        ref = self.actor_ref

        def tick() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_CHECK_IDLE)

        self._idle_timer = self._clock.call_later(timeout, tick)

    # -- helpers --

    def _invoke(self, callback: str, fn: Callable[..., Any], *args: Any) -> Any:
        """The one wrapper every user callback goes through: log an exception, map it."""
        try:
            return fn(*args)
        except Exception as exc:
            return self._raised(callback, exc)

    def _raised(self, callback: str, exc: Exception) -> _Raised:
        log_event(
            "ERROR",
            "pool_callback_error",
            "Error during {callback} in pool {pool}: {reason}",
            callback=f"{self._cls_name}.{callback}",
            pool=self._core.label,
            reason=repr(exc),
            exc=exc,
        )
        return _Raised(exc)

    def _bad_return(self, callback: str, got: Any) -> CallbackReturnError:
        return CallbackReturnError(
            f"{self._cls_name}.{callback}", _EXPECTED[callback], got, _hint(callback, got)
        )

    def _log_bad_return(self, error: CallbackReturnError) -> None:
        log_event(
            "ERROR",
            "pool_callback_invalid_return",
            "pool {pool}: {message}",
            pool=self._core.label,
            callback=error.callback,
            message=str(error),
        )

    def _cancelled(self, context: Literal["queued", "checked_out"]) -> None:
        if self._has_cancelled:
            self._invoke("handle_cancelled", self._w.handle_cancelled, context, self._ps)

    def _answer_error(self, req: _Request, error: BaseException) -> None:
        self._forget_client(req)
        self._fail(req, error)

    @staticmethod
    def _fail(req: _Request, error: BaseException) -> None:
        req.value = error
        req.kind = _FAILED
        if req.lock is not None:
            req.lock.release()

    def _forget_client(self, req: _Request) -> None:
        mref = req.mref
        if mref is not None:
            req.mref = None
            self._by_mref.pop(mref, None)
            self.demonitor(mref)

    def _stats_of(self, worker: _Worker) -> WorkerStats:
        return WorkerStats(
            worker_id=worker.id,
            busy=worker not in self._idle,
            checkouts=worker.checkouts,
            successful_checkins=worker.successful_checkins,
            error_checkins=worker.error_checkins,
            last_activity=worker.last_activity,
        )

    def _status(self) -> PoolStatus:
        idle = len(self._idle)
        max_overflow = self._cfg.max_overflow
        state: Literal["ready", "overflow", "full"]
        # Poolboy's state_name/1, with a lazy pool's free slots counting as "ready".
        if self._overflow < 1:
            if idle or self._lazy_left:
                state = "ready"
            else:
                state = "full" if max_overflow < 1 else "overflow"
        elif self._overflow >= max_overflow:
            state = "full"
        else:
            state = "overflow"
        return PoolStatus(
            pool_size=self._cfg.pool_size,
            max_overflow=max_overflow,
            lazy=self._cfg.lazy,
            idle=idle,
            busy=len(self._busy),
            overflow=self._overflow,
            queued=len(self._waiting),
            initializing=self._initializing,
            workers_started=self._started,
            workers_removed=self._removed,
            checkouts=self._checkouts,
            state=state,
        )


# `from_ref` refuses refs of other actors (TypeError), as it promises; set here because the
# actor class is defined after the handle.
Pool._actor_class = _PoolActor


# --- private helpers -------------------------------------------------------------------------


def _validate(
    worker: Any,
    pool_size: Any,
    lazy: Any,
    max_overflow: Any,
    worker_idle_timeout: Any,
    max_idle_pings: Any,
    clock: Any,
) -> _Config:
    if not (isinstance(worker, type) and issubclass(worker, PoolWorker)):
        raise InvalidOption("worker", worker, "a PoolWorker subclass (the class itself)")
    missing = [
        cb
        for cb in ("init_worker", "handle_checkout")
        if getattr(worker, cb) is getattr(PoolWorker, cb)
    ]
    if missing:
        raise InvalidOption(
            "worker", worker, f"a PoolWorker subclass that defines {' and '.join(missing)}"
        )
    if not _is_int(pool_size) or pool_size <= 0:
        raise InvalidOption("pool_size", pool_size, "a positive integer")
    if not isinstance(lazy, bool):
        raise InvalidOption("lazy", lazy, "True or False")
    if not _is_int(max_overflow) or max_overflow < 0:
        raise InvalidOption("max_overflow", max_overflow, "a non-negative integer")
    if worker_idle_timeout is not None and (
        not _is_number(worker_idle_timeout) or not worker_idle_timeout > 0
    ):
        raise InvalidOption(
            "worker_idle_timeout", worker_idle_timeout, "a positive number of seconds or None"
        )
    if max_idle_pings is not None and (not _is_int(max_idle_pings) or max_idle_pings <= 0):
        raise InvalidOption("max_idle_pings", max_idle_pings, "a positive integer or None")
    if clock is None:
        clock = SYSTEM_CLOCK
    elif not isinstance(clock, Clock):
        raise InvalidOption("clock", clock, "a Clock (monotonic() and call_later())")
    return _Config(
        worker=worker,
        pool_size=pool_size,
        lazy=lazy,
        max_overflow=max_overflow,
        worker_idle_timeout=(None if worker_idle_timeout is None else float(worker_idle_timeout)),
        max_idle_pings=max_idle_pings,
        clock=clock,
    )


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (not _is_number(timeout) or not timeout >= 0):
        raise InvalidOption("timeout", timeout, "a non-negative number of seconds or None")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_error(value: Any) -> bool:
    return isinstance(value, BaseException) or (
        isinstance(value, type) and issubclass(value, BaseException)
    )


def _is_error_state(checkin_state: Any) -> bool:
    """The seed's ``{:error, _}`` checkin: an ``("error", reason)`` pair or an exception."""
    return isinstance(checkin_state, BaseException) or (
        type(checkin_state) is tuple and len(checkin_state) == 2 and checkin_state[0] == "error"
    )


def _instantiate(error: BaseException | type[BaseException]) -> BaseException:
    return error() if isinstance(error, type) else error


def _kind_of(exc: BaseException) -> str:
    """NimblePool's cancel reason for a client that raised: ``"error"`` or ``"exit"``."""
    return "error" if isinstance(exc, Exception) else "exit"


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


_TUPLE_TAGS: Final = {
    "ok": "Ok",
    "remove": "Remove",
    "skip": "Skip",
    "async": "Async",
    "stop": "Stop",
}


def _hint(callback: str, got: Any) -> str:
    """A fix for the common mistakes: an error tuple (seed Fix 1) or a NimblePool-style tuple."""
    if isinstance(got, tuple) and got and isinstance(got[0], str):
        tag = got[0].lower().lstrip(":")
        if tag == "error":
            reason = got[1] if len(got) == 2 else got[1:]
            if callback == "handle_checkout":
                return (
                    f"to drop this worker, return Remove(('checkout_failed', {reason!r}), "
                    "pool_state); to fail only this checkout, return Skip(error, pool_state). "
                    "An error tuple is not part of the contract"
                )
            return "an error tuple is not part of the contract; use Remove(...) or raise"
        if tag in _TUPLE_TAGS:
            return f"return the result class {_TUPLE_TAGS[tag]}(...), not a tuple"
    return ""
