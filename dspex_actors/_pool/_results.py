"""The results a `PoolWorker` callback returns: `Ok`, `Remove`, `Skip`, `Async`, `Stop`.

They mirror NimblePool's tuples one to one, so an Elixir pool ports line by line:

- `{:ok, pool_state}` → `Ok(pool_state)`: init_pool, terminate_worker
- `{:ok, worker_state, pool_state}` → `Ok(worker_state, pool_state)`: init_worker,
  handle_checkin, handle_update
- `{:ok, client_state, worker_state, pool_state}` → `Ok(client_state, worker_state,
  pool_state)`: handle_checkout
- `{:ok, command, pool_state}` → `Ok(command, pool_state)`: handle_enqueue
- `{:ok, worker_state}` → `Ok(worker_state)`: handle_info, handle_ping
- `{:remove, reason, pool_state}` → `Remove(reason, pool_state)`: handle_checkout,
  handle_checkin
- `{:remove, reason}` → `Remove(reason)`: handle_info, handle_ping
- `{:skip, Exception.t(), pool_state}` → `Skip(error, pool_state)`: handle_enqueue,
  handle_checkout
- `{:async, fun, pool_state}` → `Async(fn, pool_state)`: init_worker
- `{:stop, reason}` → `Stop(reason)`: init_pool, handle_ping

Each callback accepts only its own forms; anything else (a plain tuple, an `Ok` with the wrong
number of values, ``("error", reason)``...) raises `CallbackReturnError` with the full
``Expected:`` list. The classes are frozen attrs values: compare them, print them, match them:

    >>> from dspex_actors import Ok, Remove
    >>> Ok("client", "worker", "pool")
    Ok('client', 'worker', 'pool')
    >>> match Remove("stale", 0):
    ...     case Remove(reason, pool_state):
    ...         print(reason, pool_state)
    stale 0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import attrs

from .._reasons import Recycle

__all__ = ["NO_POOL_STATE", "Async", "Ok", "Recycle", "Remove", "Skip", "Stop"]


@final
class _NoPoolState:
    """Marks a `Remove` without a pool state (the `handle_info` / `handle_ping` form)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_POOL_STATE"

    def __reduce__(self) -> str:
        return "NO_POOL_STATE"


NO_POOL_STATE: Final = _NoPoolState()
"""The `pool_state` of a `Remove(reason)` built without one."""


@attrs.frozen(init=False, repr=False)
class Ok:
    """Success: NimblePool's ``{:ok, ...}`` with the same values in the same order.

    `Ok(*values)`; how many values depends on the callback (see the module table).

    Attributes:
        values: the values, as a tuple.
    """

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", values)  # frozen; the hot path builds many

    def __repr__(self) -> str:
        return f"Ok({', '.join(map(repr, self.values))})"


@attrs.frozen
class Remove:
    """Drop this worker: `terminate_worker(reason, ...)` runs and (eager pool) a new one starts.

    From `handle_checkout` the same checkout then tries the next idle worker, without the client
    noticing. `handle_info` and `handle_ping` return `Remove(reason)` (no pool state).

    Attributes:
        reason: passed to `terminate_worker` (any value, e.g. ``("checkout_failed", r)``).
        pool_state: the new pool state, or `NO_POOL_STATE` for the two-element form.
    """

    reason: Any
    pool_state: Any = NO_POOL_STATE


@attrs.frozen
class Skip:
    """Refuse this checkout: the caller's `checkout` raises `error`; the worker stays idle.

    Attributes:
        error: an exception instance or class (a class is instantiated with no arguments).
        pool_state: the new pool state.
    """

    error: BaseException | type[BaseException]
    pool_state: Any


@attrs.frozen
class Async:
    """Initialise the worker outside the pool: `fn()` runs in a thread of its own (one of
    those the pool keeps for its starts, so a start after another creates no thread).

    The worker joins the idle queue (and may be checked out) only once `fn` has returned its
    worker state; if `fn` raises, `init_worker` is called again.

    Attributes:
        fn: a function of no arguments returning the worker state.
        pool_state: the new pool state.
    """

    fn: Callable[[], Any]
    pool_state: Any


@attrs.frozen
class Stop:
    """Stop: from `init_pool` the pool does not start; from `handle_ping` the pool stops.

    Attributes:
        reason: from `handle_ping`, the pool exits with `Shutdown(reason)` after
            `terminate_worker(Shutdown(reason), ...)` ran for each idle worker.
    """

    reason: Any
