"""`Pool`: NimblePool's contract for Python: one actor owns N resources and lends them out.

A pool owns *workers* (plain values: a connection, a port, a model handle), created and cared
for by your `PoolWorker` callbacks, which all run inside the pool actor, one at a time.
`pool.checkout(command, fn)` asks the pool for an idle worker, runs ``fn(from_, client_state)``
**in the caller's thread** while the worker is marked checked out, and checks it back in with
the second element of the pair `fn` returns.

No thread hand-off while the pool is idle: a checkout or checkin that finds the pool doing
nothing and nothing queued is handled by the calling thread itself, holding the pool's
execution lock, exactly as the pool's thread would handle it next (same order, same state,
`current_actor()` is the pool). When the pool is busy it is queued as a message.
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
  worker is removed with reason ``"DOWN"`` (and replaced). A thread that ends inside a lease
  (entered, never left) is noticed too, when its thread-local data goes: its worker is removed
  the same way. An exception in `fn` (or in a `with pool.lease(...)` block) cancels the lease.
- The wait queue is pruned as soon as a waiter times out or exits (NimblePool #27).
- `kill` runs no cleanup (see `kill`): idle workers are then not terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import pykka

from .. import _telemetry
from .._actor import ActorHandle, current_actor, forked_away, run_inline
from .._actor import _current as _actor_thread
from .._aio import AsyncWaker, in_thread
from .._checks import (
    check_clock,
    check_name_option,
    check_options,
    check_timeout,
    deadline_in,
    is_int,
    is_number,
    os_timeout,
)
from .._child_spec import inline_start
from .._clock import Clock
from .._errors import (
    CallbackReturnError,
    DspexActorsError,
    InvalidOption,
    NoProc,
    PoolTimeout,
    StartError,
)
from .._reasons import NORMAL
from ._actor import (
    _GRANTED,
    _PENDING,
    _RETURNED,
    _STATUS,
    _WORKER_STATS,
    CheckoutSpan,
    PoolActor,
    _Cancel,
    _Config,
    _Core,
    _held_lock,
    _Info,
    _Request,
    _Update,
)
from ._contract import From, PoolStatus, PoolWorker, WorkerStats, is_error_state

if TYPE_CHECKING:
    from .._child_spec import ChildSpec

__all__ = ["Lease", "Pool", "validate_options"]


# --- public API ------------------------------------------------------------------------------


class Lease:
    """One checkout as a context manager: `with pool.lease(command) as lease:`.

    Entering checks a worker out (raising what `checkout` raises); inside, use
    `lease.client_state` and `lease.from_`. Leaving normally checks the worker in with
    `lease.checkin_state` (by default the client state; assign another value to pass something
    else to `handle_checkin`). An exception inside the block cancels the lease: the pool calls
    `handle_cancelled("checked_out")` and removes the worker (reason ``"error"``, or ``"exit"``
    for a `BaseException`), and the exception propagates unchanged.

    A lease is used once. ``async with pool.alease(command) as lease:`` is the same, awaited
    (`Pool.alease`): waiting for the worker does not block the event loop, and a cancelled
    task inside the block cancels the lease as any exception does.
    """

    __slots__ = (
        "_affinity",
        "_command",
        "_done",
        "_pool",
        "_req",
        "_timeout",
        "_worker",
        "checkin_state",
    )

    def __init__(
        self,
        pool: Pool,
        command: Any,
        timeout: float | None,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> None:
        self._pool = pool
        self._command = command
        self._timeout = timeout
        self._worker = worker
        self._affinity = affinity
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
        req = self._pool._acquire(self._command, self._timeout, self._worker, self._affinity)
        self._req = req
        self.checkin_state = req.value
        if req.client is None:  # a thread: the pool cannot monitor it, so it is watched here
            _leases_of_this_thread()[req] = self._pool
        return self

    async def __aenter__(self) -> Self:
        if self._req is not None or self._done:
            raise RuntimeError("a Lease can be entered only once; call pool.alease() again")
        req = await self._pool._aacquire(self._command, self._timeout, self._worker, self._affinity)
        self._req = req
        self.checkin_state = req.value
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        req = self._active()
        self._req = None
        self._done = True
        if req.client is None:
            _leases_of_this_thread().pop(req, None)
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
    _actor_class: ClassVar[type] = PoolActor

    def __init__(self, actor_ref: pykka.ActorRef[Any]) -> None:
        super().__init__(actor_ref)
        # Read from the actor object, not asked for (from_ref on a busy pool must not wait).
        actor = actor_ref._actor_weakref()
        self.__core = actor._core if isinstance(actor, PoolActor) else None

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
        start_backoff: float = 0.05,
        max_start_backoff: float = 5.0,
        spares: int = 0,
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
            clock: drives idle pings, start backoff and `last_activity` (a `FakeClock` in
                tests).
            start_backoff: worker starts that keep failing back off: the first failure is
                retried at once, the next after `start_backoff` seconds, doubling each time
                up to `max_start_backoff`. A worker removed before it served anything counts
                as a failed start; a successful checkin of a worker started since the last
                failure resets the backoff (older workers serving on prove nothing). Meanwhile
                a caller who waits in vain gets a `PoolTimeout` caused by the last start
                failure.
            max_start_backoff: the longest wait between two failed starts.
            spares: started workers kept ready beyond `pool_size` and not lent: when a
                worker is removed (it died, it was recycled), a spare takes its place at once
                and a new spare is started. Eager pools only.

        Raises:
            InvalidOption: an invalid option; nothing was started.
            CallbackReturnError: `init_pool` or an `init_worker` returned an invalid value.
            StartError: `init_pool` raised or returned `Stop(reason)`.
            NameTaken: `name` is registered to a live actor.
        """
        config = validate_options(
            worker,
            pool_size=pool_size,
            lazy=lazy,
            max_overflow=max_overflow,
            worker_idle_timeout=worker_idle_timeout,
            max_idle_pings=max_idle_pings,
            clock=clock,
            start_backoff=start_backoff,
            max_start_backoff=max_start_backoff,
            spares=spares,
        )
        check_name_option(name)
        try:
            ref = PoolActor.start(config, init_arg, name, current_actor())
        except StartError as exc:
            if isinstance(exc.reason, DspexActorsError):
                raise exc.reason from exc.reason.__cause__  # its own cause (if any) stays
            raise
        return cls(ref)

    @classmethod
    def child_spec(cls, *args: Any, **options: Any) -> ChildSpec:
        """A `ChildSpec` that starts this pool under a supervisor, with this class's `start`
        and its own options (``Pool.child_spec(MyWorker, init_arg, pool_size=4, id=...)``,
        ``ProcessPool.child_spec(target=f, pool_size=2, id=..., name=...)``).

        Keyword options named like `ChildSpec` fields (`id`, `restart`, `shutdown`, `name`,
        ...) configure the spec; the others are `start` options, validated now. With `name`,
        the supervisor registers every incarnation under it: ``whereis(name)`` (and
        `from_ref`) drive the current one.

        Raises:
            InvalidOption: a bad or unknown option.
        """
        from .._child_spec import ChildSpec, split_spec_options

        spec_options, start_options = split_spec_options(options)
        cls._check_start(*args, **start_options)
        spec_options.setdefault("id", cls._child_id(*args, **start_options))
        return ChildSpec(start=cls.start, args=args, kwargs=start_options, **spec_options)

    @classmethod
    def _check_start(cls, worker: Any = None, init_arg: Any = None, **options: Any) -> None:
        """Check `start`'s options, as `child_spec` needs (a subclass checks its own)."""
        check_options(validate_options, worker, **options)

    @classmethod
    def _child_id(cls, worker: Any = None, *args: Any, **options: Any) -> Any:
        """The default child id: the worker class's name."""
        return getattr(worker, "__name__", cls.__name__)

    # -- checkout --

    def checkout(
        self,
        command: Any,
        fn: Callable[[From, Any], tuple[Any, Any]],
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Any:
        """Check a worker out, run ``fn(from_, client_state)`` here, check it in, return.

        `fn` must return a pair ``(result, checkin_state)``: `checkout` returns `result` and
        the pool passes `checkin_state` to `handle_checkin` (right away, in this thread, if the
        pool is idle; else asynchronously, through its inbox).

        Args:
            command: passed to `handle_enqueue` and `handle_checkout`.
            fn: runs in this thread while the worker is checked out.
            timeout: seconds to wait for a worker (`None`: forever). It does not limit `fn`.
            worker: ask for this worker (a `From.worker_id` of an earlier checkout, or a
                `WorkerStats.worker_id`): it gets this checkout if it is idle. If it is gone,
                any worker will do.
            affinity: what happens when `worker` is lent out: ``"prefer"`` (any idle worker
                instead), ``"strict"`` (wait for it, within `timeout`; requests behind are
                served meanwhile) or ``"strict_fail_fast"`` (raise `WorkerBusy` at once).

        Returns:
            The first element of the pair `fn` returned.

        Raises:
            InvalidOption: `fn` is not callable, or `timeout` is not a number >= 0 or None
                (no worker was taken).
            PoolTimeout: no worker within `timeout` (if the pool assigned one just as we gave
                up, it is removed with reason ``"timeout"``).
            NoProc: the pool is not running, or exited while we waited.
            WorkerBusy: `worker` is lent out and `affinity` is ``"strict_fail_fast"``.
            CallbackReturnError: `handle_enqueue` or `handle_checkout` returned an invalid
                value, or `fn` returned something that is not a pair (the lease is cancelled:
                the worker is removed, not leaked).
            Exception: the error of a `Skip`; anything `fn` raises (re-raised unchanged, after
                the lease is cancelled and the worker removed).
        """
        _check_fn(fn)
        req = self._acquire(command, timeout, worker, affinity)
        try:
            ret = fn(req, req.value)
        except BaseException as exc:
            self._cancel(req, _kind_of(exc))
            raise
        return self._give_back(req, ret, fn)

    async def acheckout(
        self,
        command: Any,
        fn: Callable[[From, Any], Any],
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Any:
        """Awaitable `checkout`: waiting for a worker does not block the event loop (however
        many tasks wait, no thread waits for them). `fn` may be a coroutine function (its
        result is awaited) or a plain one.

        Cancelling the task while it waits for a worker takes its request out of the queue;
        cancelling it while `fn` runs cancels the lease, as any exception in `fn` does (the
        worker is removed). `asyncio.timeout()` / `wait_for` work the same way.

        Raises: as `checkout`.
        """
        _check_fn(fn)
        req = await self._aacquire(command, timeout, worker, affinity)
        try:
            ret = fn(req, req.value)
            if inspect.isawaitable(ret):
                ret = await ret
        except BaseException as exc:
            self._cancel(req, _kind_of(exc))
            raise
        return self._give_back(req, ret, fn)

    def _give_back(self, req: _Request, ret: Any, fn: Any) -> Any:
        """Check the worker in with what the checkout function returned; return its result."""
        if type(ret) is not tuple or len(ret) != 2:
            self._cancel(req, "error")
            raise CallbackReturnError(
                f"the checkout function {_name_of(fn)}",
                ["(result, checkin_state)"],
                ret,
                "return a 2-tuple: checkout() returns its first element and the pool passes "
                "the second to handle_checkin",
            )
        self._checkin(req, ret[1])
        return ret[0]

    def lease(
        self,
        command: Any,
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Lease:
        """A `Lease`: `checkout` as a context manager (``with pool.lease(cmd) as lease:``);
        `worker` and `affinity` as in `checkout`."""
        check_timeout(timeout)
        _check_affinity(worker, affinity)
        return Lease(self, command, timeout, worker, affinity)

    def alease(
        self,
        command: Any,
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Lease:
        """A `Lease` to use with ``async with``: `acheckout` as an async context manager."""
        return self.lease(command, timeout, worker=worker, affinity=affinity)

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

    async def astatus(self, timeout: float | None = 5.0) -> Any:
        """Awaitable `status`."""
        return await in_thread(self.status, timeout)

    async def aworker_stats(self, timeout: float | None = 5.0) -> list[WorkerStats]:
        """Awaitable `worker_stats`."""
        return await in_thread(self.worker_stats, timeout)

    @property
    def name(self) -> str:
        """The pool's label in errors, logs and telemetry: its registered name (its own, or
        the one its supervisor registers every incarnation under), else class and id."""
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

    def _acquire(
        self,
        command: Any,
        timeout: float | None,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> _Request:
        """Check a worker out for the calling thread: the checkout half of the one seam.

        If the pool is idle, this thread handles the checkout itself, in the pool's place
        (`run_inline` of `PoolActor._on_checkout`: no thread hand-off, which is what makes a
        checkout cheaper than one actor message); otherwise the request is sent and this thread
        waits for the pool's answer on the request's lock.
        """
        core, req, timeout = self._submit(command, timeout, worker, affinity, None)
        if req.kind is not _PENDING:
            got = True  # answered already (inline, the common case)
        elif (lock := req.lock) is None:
            got = False  # handled inline and dropped: its deadline had passed (timeout 0)
        else:  # sent to the pool's thread, or queued there (see _wait_for): wait
            got = lock.acquire() if timeout is None else lock.acquire(True, timeout)
        return self._collect(core, req, got, timeout)

    async def _aacquire(
        self,
        command: Any,
        timeout: float | None,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> _Request:
        """`_acquire`, awaited: the request carries an `AsyncWaker` in place of the held lock
        a waiting thread blocks on, so the pool's answer (inline, or from its own thread)
        wakes this task."""
        waker = AsyncWaker(asyncio.get_running_loop())
        core, req, timeout = self._submit(command, timeout, worker, affinity, waker)
        if req.kind is _PENDING:
            try:
                await waker.wait(timeout)
            except BaseException as exc:
                # Cancelled while queued: out of the queue (a worker granted meanwhile is
                # removed, as for a caller that gives up).
                core.inflight.pop(req, None)
                with contextlib.suppress(pykka.ActorDeadError):
                    self._ref.tell(_Cancel(req, "cancelled"))
                if req.span is not None:
                    _gave_up(req.span, req, exc)
                raise
        # Answered, or timed out (answered just as the time ran out: taken).
        return self._collect(core, req, req.kind is not _PENDING, timeout)

    def _submit(
        self,
        command: Any,
        timeout: float | None,
        worker: int | None,
        affinity: str,
        waker: AsyncWaker | None,
    ) -> tuple[_Core, _Request, float | None]:
        """Check the arguments, then hand the request to the pool: handled inline when the
        pool is idle, else sent. Returns the pool's core, the request and the timeout as the
        OS can wait for it. A task's request carries its `waker` from the start; a thread's
        gets a held lock only when it is sent."""
        if timeout is not None and (
            type(timeout) not in (float, int) or timeout < 0 or timeout != timeout
        ):
            check_timeout(timeout)
        # Forever (e.g. `inf`) must be None: a longer lock wait raises OverflowError after the
        # request was sent, and the worker granted to it would never come back.
        timeout = os_timeout(timeout)
        if worker is not None or affinity != "prefer":
            _check_affinity(worker, affinity)
        core = self.__core
        if core is None:
            raise NoProc(str(self._ref), "checkout")  # not a running pool
        if core.proc is not None and forked_away(core.proc):
            # A forked process's copy of the handle: the pool and its workers are the
            # parent's, and must not be touched from here.
            raise NoProc(core.label, "checkout (the pool runs in the process this one forked from)")
        deadline = deadline_in(timeout)
        req = _Request(self._ref, command, deadline, worker, affinity)
        proc = getattr(_actor_thread, "proc", None)  # current_actor(), without the call
        client = req.client = proc.ref if proc is not None else None
        if client is self._ref:
            raise RuntimeError(f"checkout from a callback of pool {core.label} would deadlock")
        if waker is not None:
            req.lock = waker  # type: ignore[assignment]  # released as a lock is
        if _telemetry.active:
            req.span = CheckoutSpan(core.label).start()
        inflight = core.inflight
        # Registered before it is sent: if the pool exits before answering, its exit path
        # finds the request here and wakes us (see PoolActor._dspex_on_exit).
        inflight[req] = None
        actor = core.actor
        if actor is None or not run_inline(core.proc, actor._on_checkout, req):
            if waker is None:
                req.lock = _held_lock()  # before it is sent: the pool's thread releases it
            try:
                self._ref.tell(req)
            except pykka.ActorDeadError:
                inflight.pop(req, None)
                error = NoProc(core.label, "checkout")
                if req.span is not None:
                    req.span.exception(error)
                raise error from None
        return core, req, timeout

    def _collect(self, core: _Core, req: _Request, got: bool, timeout: float | None) -> _Request:
        """The end of a checkout: the granted request, or its timeout or error raised."""
        core.inflight.pop(req, None)
        span = req.span
        if not got:
            with contextlib.suppress(pykka.ActorDeadError):
                self._ref.tell(_Cancel(req, "timeout"))
            start_error = core.start_error
            timed_out = PoolTimeout(core.label, timeout, start_error)
            if span is not None:
                _gave_up(span, req, timed_out)
            raise timed_out from start_error
        if req.kind is _GRANTED:
            if span is not None:
                _granted(span, req)
            return req
        error: BaseException = req.value
        if span is not None:
            span.exception(error)
        raise error

    def _checkin(self, req: _Request, checkin_state: Any) -> None:
        """Give the worker back: the checkin half of the seam (see `_acquire`).

        The request itself goes back as the checkin. An idle pool takes it in this thread
        (`PoolActor._checkin_inline`, which declines a checkin with more to do than put the
        worker back); otherwise it is sent.
        """
        req.value = checkin_state
        req.kind = _RETURNED
        if req.span is not None:
            _checked_in(req.span, req, "error" if is_error_state(checkin_state) else "ok")
        core = self.__core
        actor = core.actor if core is not None else None
        if actor is not None and run_inline(core.proc, actor._checkin_inline, req):  # type: ignore[union-attr]
            return
        # A pool that is gone took its workers with it; the caller's result still stands.
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(req)

    def _cancel(self, req: _Request, kind: str) -> None:
        if req.span is not None:
            _checked_in(req.span, req, "removed")
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(_Cancel(req, kind))


AFFINITIES = ("prefer", "strict", "strict_fail_fast")


def _check_affinity(worker: Any, affinity: Any) -> None:
    if worker is not None and not is_int(worker):
        raise InvalidOption("worker", worker, "a worker id (an int) or None")
    if affinity not in AFFINITIES:
        raise InvalidOption("affinity", affinity, f"one of {', '.join(AFFINITIES)}")


def validate_options(
    worker: Any,
    *,
    pool_size: Any = 10,
    lazy: Any = False,
    max_overflow: Any = 0,
    worker_idle_timeout: Any = None,
    max_idle_pings: Any = None,
    clock: Any = None,
    start_backoff: Any = 0.05,
    max_start_backoff: Any = 5.0,
    spares: Any = 0,
) -> _Config:
    """Check every `Pool.start` option (the defaults are `Pool.start`'s); return the config."""
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
    if not is_int(pool_size) or pool_size <= 0:
        raise InvalidOption("pool_size", pool_size, "a positive integer")
    if not isinstance(lazy, bool):
        raise InvalidOption("lazy", lazy, "True or False")
    if not is_int(max_overflow) or max_overflow < 0:
        raise InvalidOption("max_overflow", max_overflow, "a non-negative integer")
    if worker_idle_timeout is not None and (
        not is_number(worker_idle_timeout) or not worker_idle_timeout > 0
    ):
        raise InvalidOption(
            "worker_idle_timeout", worker_idle_timeout, "a positive number of seconds or None"
        )
    if max_idle_pings is not None and (not is_int(max_idle_pings) or max_idle_pings <= 0):
        raise InvalidOption("max_idle_pings", max_idle_pings, "a positive integer or None")
    if not is_number(start_backoff) or not 0 <= start_backoff < float("inf"):
        raise InvalidOption("start_backoff", start_backoff, "a number of seconds >= 0")
    if not is_number(max_start_backoff) or not start_backoff <= max_start_backoff < float("inf"):
        raise InvalidOption(
            "max_start_backoff", max_start_backoff, "a number of seconds >= start_backoff"
        )
    if not is_int(spares) or spares < 0:
        raise InvalidOption("spares", spares, "a non-negative integer")
    if spares and lazy:
        raise InvalidOption("spares", spares, "0 for a lazy pool (it starts workers on demand)")
    return _Config(
        worker=worker,
        pool_size=pool_size,
        lazy=lazy,
        max_overflow=max_overflow,
        worker_idle_timeout=(None if worker_idle_timeout is None else float(worker_idle_timeout)),
        max_idle_pings=max_idle_pings,
        clock=check_clock(clock),
        start_backoff=float(start_backoff),
        max_start_backoff=float(max_start_backoff),
        spares=spares,
    )


inline_start(Pool.start)  # a supervisor may call it in its own thread: it is bounded


class _ThreadLeases:
    """The leases one thread holds. It lives in the thread's locals, which go when the thread
    ends: its finalizer then cancels what the thread never gave back (reason ``"DOWN"``, as for
    an actor that exits holding a worker)."""

    __slots__ = ("__weakref__", "leases")

    def __init__(self) -> None:
        self.leases: dict[_Request, Pool] = {}


_thread_locals = threading.local()


def _leases_of_this_thread() -> dict[_Request, Pool]:
    holder: _ThreadLeases | None = getattr(_thread_locals, "leases", None)
    if holder is None:
        holder = _thread_locals.leases = _ThreadLeases()
        weakref.finalize(holder, _thread_ended, holder.leases)
    return holder.leases


def _thread_ended(leases: dict[_Request, Pool]) -> None:
    for req, pool in list(leases.items()):
        pool._cancel(req, "DOWN")


def _granted(span: CheckoutSpan, req: _Request) -> None:
    """A checkout's stop event: its worker, and how long it waited in the queue."""
    if not span.context:
        return  # started with nothing attached: silent to its end, checkin included
    now = span.granted_at = _telemetry.monotonic_time()
    queue_wait = now - span.queued_at if span.queued_at else 0.0
    span.stop({"queue_wait": queue_wait}, {"worker_id": req.worker_id})


def _gave_up(span: CheckoutSpan, req: _Request, error: BaseException) -> None:
    """The end of a checkout whose caller gave up (its time ran out, its task was
    cancelled): its exception; or, if the pool granted it meanwhile (the pool counted that
    checkout, and removes the worker), its grant and a ``"removed"`` checkin, as for a lease
    that ended at once."""
    if req.kind is _GRANTED:
        _granted(span, req)
        _checked_in(span, req, "removed")
    else:
        span.exception(error)


def _checked_in(span: CheckoutSpan, req: _Request, result: str) -> None:
    """A lease's `POOL_CHECKIN` event (only for a checkout whose grant was observed: never a
    checkin without its checkout)."""
    if not span.granted_at:
        return  # not granted (given up while queued), or granted unobserved
    hold_time = _telemetry.monotonic_time() - span.granted_at
    span.granted_at = 0.0  # one checkin per lease
    _telemetry.emit(
        _telemetry.POOL_CHECKIN,
        {"hold_time": hold_time},
        {"pool": span.metadata["pool"], "worker_id": req.worker_id, "result": result},
    )


def _kind_of(exc: BaseException) -> str:
    """NimblePool's cancel reason for a client that raised: ``"error"`` or ``"exit"``, and
    ``"cancelled"`` for an asyncio task cancelled while it held the worker."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error" if isinstance(exc, Exception) else "exit"


def _check_fn(fn: Any) -> None:
    """A checkout's function, checked before any worker is taken for it."""
    if not callable(fn):
        raise InvalidOption("fn", fn, "a function of (from_, client_state)")


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))
