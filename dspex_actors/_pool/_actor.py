"""The actor behind a `Pool` handle: it owns the workers and runs every callback.

Read `Pool` (in `_handle`) first. Here is what happens behind it:

- A checkout is a `_Request`: the message sent to the pool, its reply slot and its `From` in one
  object. The pool answers it (a worker, a `Skip` error, a callback error) by filling the
  request and releasing its lock; the caller waits on that lock, so the pool never blocks on a
  caller. The same object goes back as the checkin.
- While the pool is idle (nothing queued, no message being handled) the calling thread handles
  its own checkout or checkin in the pool's place (`dspex_actors._actor.run_inline`): no thread
  hand-off, same order, same state. `Pool._acquire` and `Pool._checkin` are the one seam where
  that choice is made; `_on_checkout` and `_on_checkin` below run either way.
- Every user callback goes through `_invoke`: an exception is logged and becomes `_Raised`.
- Deadlines are real time (`time.monotonic`): the caller really waits. The injected `clock`
  drives idle pings and `WorkerStats.last_activity`.
- A caller that is an `Actor` is monitored while it waits or holds a worker: if it exits, the
  worker is removed with reason ``"DOWN"`` (and replaced).
- The wait queue is pruned as soon as a waiter times out or exits (NimblePool #27).
- `kill` runs no cleanup (see `kill`): idle workers are then not terminated.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal

import attrs
import pykka

from .. import _telemetry
from .._actor import Actor, InternalMessage
from .._child_spec import child_name
from .._clock import SYSTEM_CLOCK, Clock, TimerHandle
from .._errors import (
    CallbackReturnError,
    NoProc,
    StartError,
    WorkerBusy,
    WorkerStartError,
)
from .._logging import area_logger, log_event, short_repr
from .._naming._names import register
from .._reasons import Down, Exit, MonitorRef, Shutdown, reason_label
from .._threads import KeptThreads
from ._contract import (
    From,
    PoolStatus,
    PoolWorker,
    WorkerStats,
    bad_return,
    instantiate,
    is_error,
    is_error_state,
)
from ._results import NO_POOL_STATE, Async, Ok, Recycle, Remove, Skip, Stop

__all__ = ["PoolActor"]

_log = area_logger("pool")


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
        "affinity",
        "blocked",
        "client",
        "command",
        "deadline",
        "kind",
        "lock",
        "mref",
        "poison",
        "prefer",
        "span",
        "value",
    )

    def __init__(
        self,
        pool: pykka.ActorRef[Any],
        command: Any,
        deadline: float | None,
        prefer: int | None = None,
        affinity: str = "prefer",
    ) -> None:
        self.pool = pool
        self.command = command
        self.deadline = deadline
        self.worker_id: int | None = None
        # A worker asked for (its id), and how: "prefer" (it if idle, else any), "strict"
        # (wait for it) or "strict_fail_fast" (WorkerBusy if it is lent out).
        self.prefer = prefer
        self.affinity = affinity
        self.blocked = False  # queued, waiting for the one worker it asked for
        self.client: pykka.ActorRef[Any] | None = None
        # Held until the pool's answer is in `kind`/`value`; made only for a request that
        # waits (sent to the pool's thread, or queued there), not one answered inline.
        self.lock: threading.Lock | None = None
        self.kind = _PENDING
        self.value: Any = None
        self.mref: MonitorRef | None = None
        self.poison: BaseException | None = None
        # The checkout's telemetry span: made only while a handler is attached (see
        # `Pool._submit`), so every telemetry step of a checkout tests this one attribute.
        self.span: CheckoutSpan | None = None


class CheckoutSpan(_telemetry.Span):
    """A checkout's `POOL_CHECKOUT` span, and the two moments its events measure from: when
    the request was queued (for ``queue_wait``) and when its worker was granted (for the
    checkin's ``hold_time``). Both 0.0 until they happen."""

    __slots__ = ("granted_at", "queued_at")

    def __init__(self, pool: str) -> None:
        super().__init__(_telemetry.POOL_CHECKOUT, {"pool": pool})
        self.queued_at = 0.0
        self.granted_at = 0.0


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
    span: _telemetry.Span | None  # the start's telemetry span, if observed


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


_STARTER = "dspex-pool-async-init"  # the name of the threads that start workers
_THREADS_END = 1.0  # seconds an exiting pool waits for its idle threads to end


class _Core:
    """What every handle of one pool shares: its label, the requests in flight, and the pool
    actor itself while it runs (so a caller's thread can handle its own checkout and checkin
    while the pool is idle: see `Pool._acquire`)."""

    __slots__ = ("actor", "inflight", "label", "proc", "start_error")

    def __init__(self, label: str) -> None:
        self.label = label
        self.inflight: dict[_Request, None] = {}
        self.proc: Any = None  # the pool actor's _Proc
        # Set once the pool is ready, cleared as it exits (so that a handle kept after the
        # pool stopped does not keep its state alive).
        self.actor: PoolActor | None = None
        # Why the last worker start failed, while starts keep failing (cleared by a
        # successful checkin): a caller whose checkout times out gets it as the cause.
        self.start_error: BaseException | None = None


class _Worker:
    __slots__ = (
        "checkouts",
        "error_checkins",
        "id",
        "idle_since",
        "last_activity",
        "leaving",
        "recycle_counted",
        "retiring",
        "spare",
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
        self.spare = False  # kept ready beyond pool_size (in `_spares`, not lent)
        # Due for recycling (the `Recycle` reason): it keeps serving until its replacement
        # has joined, then leaves (at once if idle, else at its checkin: `leaving`).
        self.retiring: Recycle | None = None
        self.leaving = False
        # Its recycle is counted (once: a replacement that could not start un-marks it, and
        # marking it again later is the same recycle).
        self.recycle_counted = False


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
    start_backoff: float
    max_start_backoff: float
    spares: int


# --- the pool actor (handlers) ---------------------------------------------------------------


class PoolActor(Actor):
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
        # Its label when it registers no name: the name its supervisor registers it under,
        # the same for every incarnation (read here, in the thread that starts it).
        self._supervised_as = child_name()
        self._parent = parent
        self._clock = config.clock
        # The real clock's reading, without the method call (the hot path reads it twice).
        self._now = time.monotonic if config.clock is SYSTEM_CLOCK else config.clock.monotonic
        cls = config.worker
        self._cls_name = cls.__qualname__
        self._w = cls()
        # The two callbacks of every checkout, bound once (each lookup makes a bound method).
        self._handle_checkout: Callable[..., Any] = self._w.handle_checkout
        self._handle_checkin: Callable[..., Any] = self._w.handle_checkin
        self._has_enqueue = cls.handle_enqueue is not PoolWorker.handle_enqueue
        self._has_ping = cls.handle_ping is not PoolWorker.handle_ping
        self._has_cancelled = cls.handle_cancelled is not PoolWorker.handle_cancelled
        self._ps: Any = None
        self._ready = False  # init_pool has succeeded: terminate_pool runs at exit
        self._idle: deque[_Worker] = deque()
        # Spare workers: started and ready, not lent; one takes a regular worker's place the
        # moment that one is removed (a replacement for the spare is started then).
        self._spares: deque[_Worker] = deque()
        # Workers due for recycling, still serving, whose replacements are starting (oldest
        # first: the next worker to start replaces the first of them).
        self._retiring: deque[_Worker] = deque()
        self._recycled = 0
        self._recycle_reasons: dict[str, int] = {}  # by reason_label
        # Replacements of recycled workers that failed to start in a row: recycling waits
        # (the worker keeps working) until `_recycle_after`, backing off like starts do.
        self._recycle_failures = 0
        self._recycle_after = 0.0
        self._busy: dict[_Request, _Worker] = {}
        self._waiting: dict[_Request, None] = {}  # insertion-ordered: FIFO, O(1) pruning
        self._has_blocked = False  # some queued request may wait for one worker alone
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
        self._start_failures = 0  # worker starts failed in a row (for the backoff)
        # The newest worker id when a start last failed: only a worker started since (a
        # higher id) serving shows that starts work again; older ones serving say nothing.
        self._failed_after_id = 0
        self._retry_timers: list[TimerHandle] = []
        # Worker starts (`Async`): two threads kept waiting, enough for one start after another.
        self._starters = KeptThreads(_STARTER, keep=2)
        self._core = _Core("")

    # -- start and exit --

    def on_start(self) -> None:
        named = self._register_as if self._register_as is not None else self._supervised_as
        label = str(named) if named is not None else None
        self._core.label = label or f"{self._cls_name}#{self.actor_ref.actor_urn[-6:]}"
        if self._register_as is not None:
            register(self._register_as, self.actor_ref)
        result = self._invoke(self._w.init_pool, self._init_arg)
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
        self._core.actor = self
        if not self._cfg.lazy:
            for _ in range(self._cfg.pool_size + self._cfg.spares):
                self._start_worker(starting=True)
        timeout = self._cfg.worker_idle_timeout
        if timeout is not None:
            if self._has_ping:
                self._schedule_idle_check()
            else:
                log_event(
                    _log,
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
        self._core.actor = None
        self._starters.close(_THREADS_END)  # none outlives the pool
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for timer in self._retry_timers:
            timer.cancel()
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

    def _checkin_inline(self, req: _Request) -> bool:
        """`_on_checkin`, for a caller's thread running it in the pool's place.

        Declines (returns False) a checkin that has more to do than put the worker back (a
        poisoned lease, an overflow worker to dismiss, waiters to serve): the caller then sends
        it, and that work runs on the pool's own thread.
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
            result = self._invoke(self._w.handle_enqueue, req.command, self._ps)
            match result:
                case Ok(values=(command, ps)):
                    self._ps = ps
                    req.command = command
                case Skip(error, ps) if is_error(error):
                    self._ps = ps
                    self._answer_error(req, instantiate(error))
                    return
                case _Raised(error):
                    self._answer_error(req, error)
                    return
                case _:
                    self._answer_error(req, self._bad_return("handle_enqueue", result))
                    return
        if self._waiting:
            self._wait_for(req)
            if req.prefer is not None or self._waiting_blocked():
                self._serve_waiters()  # workers may be idle: the queue's head waits for one
            if req.prefer is not None and req in self._waiting and not req.blocked:
                self._queued_for_lent(req)
        elif not self._serve(req):
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
        result = self._invoke(self._handle_checkin, checkin_state, req, worker.state, self._ps)
        if type(result) is Ok and len(result.values) == 2:
            worker.state, self._ps = result.values
            self._count_checkin(worker, checkin_state)
            if worker.leaving:
                self._retire(worker)
                self._serve_waiters()
            else:
                self._checked_in(worker)
            return
        match result:
            case Remove(Recycle() as recycle, ps) if ps is not NO_POOL_STATE:
                self._ps = ps
                self._count_checkin(worker, checkin_state)  # the task itself went fine
                self._recycle(worker, recycle)
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

    def _count_checkin(self, worker: _Worker, checkin_state: Any) -> None:
        if is_error_state(checkin_state):
            worker.error_checkins += 1
        else:
            worker.successful_checkins += 1
            if self._start_failures and worker.id > self._failed_after_id:
                # A worker started since the last failure served: starts work again.
                self._start_failures = 0
                self._core.start_error = None

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
                _log,
                "WARNING",
                "pool_stale_update",
                "pool {pool}: update for a lease that is not checked out: {message}",
                pool=self._core.label,
                message=repr(message),
            )
            return
        result = self._invoke(self._w.handle_update, message, worker.state, self._ps)
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
            self._add_worker(message.value, message.span)
        else:
            # A crashed async init is retried (even when lazy), with the backoff.
            self._start_failed(message.value, message.span)
            self._start_again()
        self._serve_waiters()

    def _on_info(self, message: Any) -> None:
        """`handle_info` for every waiting worker, idle and spare (not those lent out)."""
        if not self._idle and not self._spares:
            return
        removals: list[tuple[_Worker, Any]] = []
        for worker in [*self._idle, *self._spares]:
            result = self._invoke(self._w.handle_info, message, worker.state)
            match result:
                case Ok(values=(ws,)):
                    worker.state = ws
                case Remove(reason, ps) if ps is NO_POOL_STATE:
                    removals.append((worker, reason))
                case _Raised(error):
                    removals.append((worker, error))
                case _:
                    error = self._bad_return("handle_info", result)
                    self._log_bad_return(error)
                    removals.append((worker, error))
        self._remove_waiting(removals)
        self._serve_waiters()

    def _on_check_idle(self) -> None:
        self._schedule_idle_check()
        timeout = self._cfg.worker_idle_timeout
        assert timeout is not None
        limit = self._cfg.max_idle_pings
        now = self._clock.monotonic()
        removals: list[tuple[_Worker, Any]] = []
        pings = 0
        stop: Stop | None = None
        # The idle queue from its head (the scan stops at the first worker not idle long
        # enough), then the spares, which wait as long as they are spare.
        for worker in [*self._idle, *self._spares]:
            if stop is not None or (limit is not None and pings >= limit):
                break
            if not worker.spare and now - worker.idle_since < timeout:
                continue  # a regular not idle long enough: none after it in the queue is
            pings += 1
            result = self._invoke(self._w.handle_ping, worker.state, self._ps)
            outcome = "removed"
            match result:
                case Ok(values=(ws,)):
                    worker.state = ws  # its idle timestamp stays: pinged again next scan
                    outcome = "ok"
                case Remove(reason, ps) if ps is NO_POOL_STATE:
                    removals.append((worker, reason))
                case Stop():
                    stop = result
                    outcome = "stop"
                case _Raised(error):
                    removals.append((worker, error))
                case _:
                    error = self._bad_return("handle_ping", result)
                    self._log_bad_return(error)
                    removals.append((worker, error))
            if _telemetry.active:
                self._emit_worker_event(_telemetry.POOL_WORKER_PING, worker, result=outcome)
        self._remove_waiting(removals)
        if stop is not None:
            self.exit(Shutdown(stop.reason))  # on_stop terminates idle workers with it
            return
        self._serve_waiters()

    def _remove_waiting(self, removals: list[tuple[_Worker, Any]]) -> None:
        """Remove workers that were waiting (idle or spare), each with its reason; an idle
        one due for recycling is recycled instead (`_recycle`)."""
        for worker, reason in removals:
            if worker.spare:
                if isinstance(reason, Recycle):
                    self._count_recycle(worker, reason)
                self._remove_worker(worker, reason)  # its replacement is the next spare
                continue
            self._idle.remove(worker)
            if isinstance(reason, Recycle):
                self._recycle(worker, reason)
            else:
                self._remove_worker(worker, reason)

    # -- serving --

    def _serve(self, req: _Request) -> bool:
        """Try to give `req` a worker now; True if it got an answer (worker, skip or error)."""
        idle = self._idle
        if req.prefer is not None and not self._prefer(req):
            return req.kind is not _PENDING  # answered WorkerBusy, or waits for its worker
        created = 0  # workers created for this request in this call
        while True:
            if idle:
                worker = idle[0]
                result = self._invoke(
                    self._handle_checkout, req.command, req, worker.state, self._ps
                )
                if type(result) is Ok and len(result.values) == 3:
                    idle.popleft()
                    client_state, worker.state, self._ps = result.values
                    req.worker_id = worker.id
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
                    case Skip(error, ps) if is_error(error):
                        self._ps = ps  # the worker stays at the head of the idle queue
                        self._answer_error(req, instantiate(error))
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

    def _prefer(self, req: _Request) -> bool:
        """A request asking for one worker: put that worker at the head of the idle queue if
        it is idle (True: serve on), or act on its affinity if it is lent out (False: served
        by no one now). A worker that is gone (or leaving) drops the preference: any will do."""
        worker = self._workers.get(req.prefer)  # type: ignore[arg-type]
        idle = self._idle
        if worker is None or worker.spare or worker.leaving:
            req.prefer = None
            return True
        if idle and idle[0] is worker:
            return True
        if worker in idle:
            idle.remove(worker)
            idle.appendleft(worker)
            return True
        if req.affinity == "prefer":
            return True  # lent out: any idle worker
        if req.affinity == "strict":
            req.blocked = self._has_blocked = True
            return False
        self._answer_error(req, WorkerBusy(self._core.label, worker.id))
        return False

    def _queued_for_lent(self, req: _Request) -> None:
        """A request queued behind others asks for one worker that is not idle: act on its
        affinity now, as at the head of the queue. ``"strict"``: it waits for that worker
        alone, and gets it when it comes back ahead of the requests queued after it (not of
        older ones: `_serve_blocked_on`); ``"strict_fail_fast"``:
        `WorkerBusy` at once. A worker that is gone drops the preference; ``"prefer"`` waits
        in turn for any worker."""
        worker = self._workers.get(req.prefer)  # type: ignore[arg-type]
        if worker is None or worker.spare or worker.leaving:
            req.prefer = None
        elif worker in self._idle or req.affinity == "prefer":
            return  # served in turn
        elif req.affinity == "strict":
            req.blocked = self._has_blocked = True
        else:
            del self._waiting[req]
            self._answer_error(req, WorkerBusy(self._core.label, worker.id))

    def _wait_for(self, req: _Request) -> None:
        """Queue `req` until a worker is free. One handled inline has no lock yet: it gets
        its held lock here, before any other thread can answer it (we hold `exec_lock`)."""
        if req.lock is None:
            req.lock = _held_lock()
        if req.span is not None:
            req.span.queued_at = time.monotonic()
        self._waiting[req] = None

    def _waiting_blocked(self) -> bool:
        return next(iter(self._waiting)).blocked

    def _serve_waiters(self) -> None:
        waiting = self._waiting
        while waiting:
            req = next(iter(waiting))
            if req.deadline is not None and time.monotonic() >= req.deadline:
                del waiting[req]  # its caller has timed out; its cancel will say "queued"
                self._forget_client(req)
                continue
            if not self._serve(req):
                if req.blocked:
                    self._serve_past_blocked()
                return
            del waiting[req]

    def _serve_past_blocked(self) -> None:
        """The head of the queue waits for one lent-out worker (strict affinity): serve the
        requests behind it that can be served now, in order, until one cannot for want of
        any worker."""
        for req in list(self._waiting)[1:]:
            if req.deadline is not None and time.monotonic() >= req.deadline:
                del self._waiting[req]
                self._forget_client(req)
                continue
            req.blocked = False
            if self._serve(req):
                del self._waiting[req]
            elif not req.blocked:
                return

    def _checked_in(self, worker: _Worker) -> None:
        now = self._now()
        worker.last_activity = now
        if self._overflow > 0 and not self._waiting:
            if worker.retiring is not None:
                # Due for recycling, its replacement starting: it leaves now, as recycled (it
                # does not count toward the pool's size: its replacement does). The overflow
                # is dismissed with the next worker back.
                self._retiring.remove(worker)
                self._retire(worker)
                return
            self._overflow -= 1  # Poolboy: dismiss whichever worker comes back
            if _telemetry.active:
                self._emit_worker_event(_telemetry.POOL_WORKER_REMOVED, worker, reason="overflow")
            self._terminate_worker("overflow", worker)
            self._removed += 1
            del self._workers[worker.id]
            return
        worker.idle_since = now
        self._idle.append(worker)
        if self._waiting:
            if self._has_blocked:
                self._serve_blocked_on(worker)
            self._serve_waiters()

    def _serve_blocked_on(self, worker: _Worker) -> None:
        """A worker came back: the request that has waited longest among those it can serve
        gets it. That is the first request waiting for it alone, unless a request that is not
        waiting for one lent-out worker is queued ahead of it: then the queue is served in
        order (`_serve_waiters`). So a request waiting for its worker alone takes it ahead of
        the requests behind it, never ahead of older ones, and neither kind can starve the
        other."""
        blocked = False
        for req in self._waiting:
            if not req.blocked:
                return  # served in order, from the head
            blocked = True
            if req.prefer == worker.id:
                break
        else:
            self._has_blocked = blocked
            return
        if self._serve(req):
            del self._waiting[req]

    # -- worker lifecycle --

    def _start_worker(self, starting: bool = False) -> None:
        """Run init_worker once; the worker joins the idle queue (or arrives later)."""
        span = None
        if _telemetry.active:
            span = _telemetry.start_span(_telemetry.POOL_WORKER_INIT, {"pool": self._core.label})
        result = self._invoke(self._w.init_worker, self._ps)
        match result:
            case Ok(values=(ws, ps)):
                self._ps = ps
                self._add_worker(ws, span)
            case Async(fn, ps) if callable(fn):
                self._ps = ps
                self._initializing += 1
                self._run_async(fn, span)
            case _Raised(error):
                self._start_failed(error, span)
                self._start_again()
            case _:
                error = self._bad_return("init_worker", result)
                if starting:
                    if span is not None:
                        span.exception(error)
                    raise error
                self._log_bad_return(error)
                self._start_failed(error, span)
                self._start_again()

    def _start_failed(self, error: BaseException, span: _telemetry.Span | None = None) -> None:
        """A worker start failed: keep why (for callers who wait in vain) and count it for
        the backoff, unless the error says it is no reason to wait (`backs_off`: a
        `WorkerStartError` of a process SIGKILLed from outside)."""
        if span is not None:
            span.exception(error)
        self._core.start_error = error
        if getattr(error, "backs_off", True):
            self._start_failures += 1
            self._failed_after_id = self._next_id

    def _start_again(self) -> None:
        """After a failed start: start again (`_retry_init`), unless a worker due for
        recycling waits for its replacement. Then that worker is no longer due (it serves on,
        healthy) and recycling waits out a backoff: a pool whose starts fail keeps its
        capacity, and recycling never turns into a storm of failing starts."""
        if not self._retiring:
            self._retry_init()
            return
        self._retiring.popleft().retiring = None
        self._recycle_failures += 1
        cfg = self._cfg
        delay = min(cfg.max_start_backoff, cfg.start_backoff * 2 ** (self._recycle_failures - 1))
        self._recycle_after = self._clock.monotonic() + delay

    def _recycle_postponed(self) -> bool:
        return self._recycle_failures > 0 and self._clock.monotonic() < self._recycle_after

    def _retry_init(self) -> None:
        """Start a worker again, through our own inbox, never in a loop (other messages are
        served between attempts): at once, or after the backoff while starts keep failing."""
        self._initializing += 1
        failures = self._start_failures
        if failures <= 1:
            self.actor_ref.tell(_INIT_WORKER)
            return
        cfg = self._cfg
        delay = min(cfg.max_start_backoff, cfg.start_backoff * 2 ** (failures - 2))
        ref = self.actor_ref

        def retry() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_INIT_WORKER)

        now = self._clock.monotonic()
        self._retry_timers = [h for h in self._retry_timers if h.when > now]
        self._retry_timers.append(self._clock.call_later(delay, retry))

    def _add_worker(self, worker_state: Any, span: _telemetry.Span | None) -> None:
        """A worker has started: it joins the idle queue, and the oldest worker due for
        recycling leaves (at once if idle, else at its checkin); or, when every regular
        worker is there and a spare is missing, it becomes a spare."""
        self._next_id += 1
        self._started += 1
        self._core.start_error = None  # the last start did not fail (the backoff stays)
        worker = _Worker(self._next_id, worker_state, self._clock.monotonic())
        self._workers[worker.id] = worker
        if span is not None:
            span.stop(metadata={"worker_id": worker.id})
        if self._retiring:
            self._recycle_failures = 0
            old = self._retiring.popleft()
            if old in self._idle:
                self._idle.remove(old)
                self._retire(old)
            else:
                old.leaving = True
        elif len(self._spares) < self._cfg.spares and self._regulars() > (
            self._cfg.pool_size + self._overflow
        ):
            worker.spare = True
            self._spares.append(worker)
            return
        worker.idle_since = self._now()
        self._idle.append(worker)

    def _regulars(self) -> int:
        """Workers that count toward `pool_size` (and overflow): not spare, and not due for
        recycling (whose replacements count instead)."""
        return sum(1 for w in self._workers.values() if not w.spare and w.retiring is None)

    def _recycle(self, worker: _Worker, reason: Recycle) -> None:
        """A healthy worker, neither idle nor lent (just checked in, or taken off the idle
        queue), is due for recycling. A spare takes its place at once if there is one (and
        a new spare starts); else it serves on while its replacement starts, and leaves when
        that one joins. No caller waits or fails for it, and it is no failed start."""
        if worker.leaving:
            self._retire(worker)  # its replacement is already serving
            self._serve_waiters()
            return
        if worker.retiring is not None or self._recycle_postponed():
            self._checked_in(worker)  # already being replaced, or starts are failing
            return
        self._count_recycle(worker, reason)
        if self._overflow > 0 or self._cfg.lazy:
            self._remove_worker(worker, reason)  # an overflow or lazy pool starts no one
            self._serve_waiters()
            return
        worker.retiring = reason
        if self._spares:
            self._promote_spare()
            self._retire(worker)
            self._start_worker()  # the new spare
            self._serve_waiters()
            return
        self._retiring.append(worker)
        self._checked_in(worker)  # serving on; lent as any other until its replacement joins
        self._start_worker()

    def _count_recycle(self, worker: _Worker, reason: Recycle) -> None:
        """Count, emit and log the pool's decision to recycle `worker`: once per worker."""
        if worker.recycle_counted:
            return
        worker.recycle_counted = True
        self._recycled += 1
        label = reason_label(reason)
        self._recycle_reasons[label] = self._recycle_reasons.get(label, 0) + 1
        if _telemetry.active:
            self._emit_worker_event(_telemetry.POOL_WORKER_RECYCLED, worker, reason=reason.why)
        log_event(
            _log,
            "INFO",
            "pool_worker_recycled",
            "pool {pool} recycles worker {worker_id}: {reason}",
            pool=self._core.label,
            worker_id=worker.id,
            reason=short_repr(reason.why),
        )

    def _retire(self, worker: _Worker) -> None:
        """A worker due for recycling leaves (neither idle nor lent): its replacement has
        joined."""
        self._terminate_worker(worker.retiring, worker)
        self._removed += 1
        del self._workers[worker.id]

    def _promote_spare(self) -> None:
        spare = self._spares.popleft()
        spare.spare = False
        spare.idle_since = self._now()
        self._idle.append(spare)

    def _run_async(self, fn: Callable[[], Any], span: _telemetry.Span | None) -> None:
        ref = self.actor_ref
        label = self._core.label

        def run() -> Callable[[], None]:
            try:
                message = _AsyncDone(True, fn(), span)
            except Exception as exc:
                log_event(
                    _log,
                    # A start cut short by the pool's stop is no error.
                    "ERROR" if ref.is_alive() else "DEBUG",
                    "pool_callback_error",
                    "Error during {callback} (async init function) in pool {pool}",
                    callback=f"{self._cls_name}.init_worker",
                    pool=label,
                    reason=repr(exc),
                    exc=exc,
                )
                message = _AsyncDone(False, exc, span)

            def deliver() -> None:
                # If the pool stopped meanwhile, the worker state is dropped.
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(message)

            return deliver

        self._starters.run(run)

    def _remove_worker(self, worker: _Worker, reason: Any) -> None:
        """Terminate a worker already taken off the idle queue / busy map, and replace it."""
        if not isinstance(reason, Recycle):  # a recycle is logged (and emitted) as such
            if _telemetry.active:
                self._emit_worker_event(_telemetry.POOL_WORKER_REMOVED, worker, reason=reason)
            log_event(
                _log,
                "WARNING",
                "pool_worker_removed",
                "pool {pool} removed worker {worker_id}: {reason}",
                pool=self._core.label,
                worker_id=worker.id,
                reason=short_repr(reason),
            )
        self._terminate_worker(reason, worker)
        self._removed += 1
        del self._workers[worker.id]
        if isinstance(reason, WorkerStartError):
            # The worker says it never really started (a program that exits at once): a
            # failed start, which must not be retried in a storm.
            self._start_failed(reason)
        if worker.leaving:
            return  # its replacement has already joined
        if worker.retiring is not None:
            self._retiring.remove(worker)
            return  # its replacement is already starting
        if worker.spare:
            self._spares.remove(worker)
            self._retry_init()  # a new spare
            return
        if self._overflow > 0:
            self._overflow -= 1  # Poolboy: an overflow pool shrinks instead of replacing
        elif self._cfg.lazy:
            self._lazy_left += 1
        else:
            if self._spares:
                self._promote_spare()  # the place is taken at once; the start is a new spare
            self._retry_init()

    def _terminate_worker(self, reason: Any, worker: _Worker) -> None:
        result = self._invoke(self._w.terminate_worker, reason, worker.state, self._ps)
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
        waiting = [*self._idle, *self._spares]  # those due for recycling are idle or lent
        self._idle, self._spares, self._retiring = deque(), deque(), deque()
        for worker in waiting:
            self._terminate_worker(reason, worker)
        self._invoke(self._w.terminate_pool, reason, self._ps)

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

    def _invoke(self, callback: Callable[..., Any], *args: Any) -> Any:
        """The one wrapper every user callback goes through: an exception is logged as
        ``Error during MyWorker.handle_checkout`` and returned as `_Raised`."""
        try:
            return callback(*args)
        except Exception as exc:
            return self._raised(callback.__name__, exc)

    def _raised(self, callback: str, exc: Exception) -> _Raised:
        log_event(
            _log,
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
        return bad_return(f"{self._cls_name}.{callback}", got)

    def _log_bad_return(self, error: CallbackReturnError) -> None:
        log_event(
            _log,
            "ERROR",
            "pool_callback_invalid_return",
            "pool {pool}: {message}",
            pool=self._core.label,
            callback=error.callback,
            message=str(error),
        )

    def _emit_worker_event(self, event: _telemetry.Event, worker: _Worker, **metadata: Any) -> None:
        """Emit a worker event (removed, recycled, ping): measurements ``count``; metadata
        ``pool``, ``worker_id`` and `metadata`."""
        _telemetry.emit(
            event, {"count": 1}, {"pool": self._core.label, "worker_id": worker.id, **metadata}
        )

    def _cancelled(self, context: Literal["queued", "checked_out"]) -> None:
        if self._has_cancelled:
            self._invoke(self._w.handle_cancelled, context, self._ps)

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
            busy=not worker.spare and worker not in self._idle,
            checkouts=worker.checkouts,
            successful_checkins=worker.successful_checkins,
            error_checkins=worker.error_checkins,
            last_activity=worker.last_activity,
            retiring=None if worker.retiring is None else worker.retiring.why,
            spare=worker.spare,
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
            spares=len(self._spares),
            workers_recycled=self._recycled,
            recycle_reasons=dict(self._recycle_reasons),
        )


# `from_ref` refuses refs of other actors (TypeError), as it promises; set here because the
# actor class is defined after the handle.


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock
