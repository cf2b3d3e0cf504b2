"""The pool contract: the `PoolWorker` callbacks, what they return, and what a pool reports.

This is NimblePool's behaviour module for Python: a `PoolWorker` subclass implements the
callbacks (same names, same argument order), each returns one of the result classes (`Ok`,
`Remove`, `Skip`, `Async`, `Stop`), and anything outside a callback's legal forms is reported
with a `CallbackReturnError` whose message lists them under ``Expected:`` (`bad_return` builds
it, with a hint for the common mistakes). The pool itself (`Pool`, its actor) lives in the
modules next to this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs
import pykka

from .._errors import CallbackReturnError
from ._results import Async, Ok, Remove, Skip, Stop

__all__ = [
    "EXPECTED",
    "From",
    "PoolStatus",
    "PoolWorker",
    "WorkerStats",
    "bad_return",
    "instantiate",
    "is_error",
    "is_error_state",
]


class From:
    """Identifies one checkout (NimblePool's ``{pool_pid, ref}``); pass it to `Pool.update`.

    Compared by identity: each checkout has its own. The pool makes them; build one yourself
    only to call a callback directly in a unit test (``From(pool=None, ref=object())``).

    Attributes:
        pool: the pool's `ActorRef`.
        worker_id: the id of the worker this checkout was given (as in `WorkerStats`: ask
            for it again with ``checkout(..., worker=worker_id)``); None until then.
    """

    __slots__ = ("_token", "pool", "worker_id")

    def __init__(self, pool: pykka.ActorRef[Any], ref: Any = None) -> None:
        self.pool = pool
        self._token = ref
        self.worker_id: int | None = None

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
        spares: started spare workers kept ready beyond `pool_size` (see `Pool.start`).
        workers_recycled: workers the pool decided to retire since it started (`Recycle`),
            each counted once: in `workers_removed` too once it has left (a worker whose
            replacement could not start serves on until one does).
        recycle_reasons: those recycles counted by reason, each by its label
            (`reason_label`: ``{"max_tasks": 12, "max_memory": 1}``).
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
    spares: int = 0
    workers_recycled: int = 0
    recycle_reasons: Mapping[str, int] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class WorkerStats:
    """Per-worker counters the pool keeps (DSPex's worker statistics), from `Pool.worker_stats()`.

    Attributes:
        worker_id: the pool's number for this worker (1, 2, ... in creation order).
        busy: checked out right now.
        checkouts: times it was handed out.
        successful_checkins: checkins it survived (`handle_checkin` returned `Ok`) whose
            checkin state was not an error.
        error_checkins: checkins it survived whose checkin state was an error: an
            ``("error", reason)`` pair or an exception (an Elixir ``{:error, _}`` checkin).
            A lease that ends the worker's life (the checkout function raised, the caller timed
            out or exited, `handle_checkin` returned `Remove`) removes it, stats and all;
            `PoolStatus.workers_removed` counts those.
        last_activity: pool clock time of its last checkout or checkin (or creation).
        retiring: why it is being recycled (the `Recycle` reason) while it waits for its
            replacement; None otherwise.
        spare: a spare worker, kept ready and lent only once a regular one is gone.
    """

    worker_id: int
    busy: bool
    checkouts: int
    successful_checkins: int
    error_checkins: int
    last_activity: float
    retiring: Any = None
    spare: bool = False


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
        ``Remove(("checkout_failed", reason), pool_state)``: an error tuple is not a result.
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


# --- the Expected/Got checks ------------------------------------------------------------------

EXPECTED: Final[dict[str, list[str]]] = {
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


def bad_return(callback: str, got: Any) -> CallbackReturnError:
    """The error for `callback` (``"MyWorker.handle_checkout"``) returning `got`: every legal form
    of that callback under ``Expected:``, `got` under ``Got:``, and a hint where one helps."""
    name = callback.rpartition(".")[2]
    return CallbackReturnError(callback, EXPECTED[name], got, _hint(name, got))


def is_error(value: Any) -> bool:
    return isinstance(value, BaseException) or (
        isinstance(value, type) and issubclass(value, BaseException)
    )


def is_error_state(checkin_state: Any) -> bool:
    """An error checkin (Elixir's ``{:error, _}``): an ``("error", reason)`` pair, or an
    exception."""
    return isinstance(checkin_state, BaseException) or (
        type(checkin_state) is tuple and len(checkin_state) == 2 and checkin_state[0] == "error"
    )


def instantiate(error: BaseException | type[BaseException]) -> BaseException:
    return error() if isinstance(error, type) else error


_TUPLE_TAGS: Final = {
    "ok": "Ok",
    "remove": "Remove",
    "skip": "Skip",
    "async": "Async",
    "stop": "Stop",
}


def _hint(callback: str, got: Any) -> str:
    """A fix for the common mistakes: an error tuple, or a NimblePool-style tuple."""
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
