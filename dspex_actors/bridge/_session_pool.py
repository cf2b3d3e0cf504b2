"""`SessionPool`: DSPex's session pool of DSPy bridge workers (its SessionPoolV2), on `ProcessPool`.

A `ProcessPool` whose workers speak DSPex's bridge protocol (`_protocol`), with three things a
plain process pool has no reason to know:

- **Sessions.** `execute_in_session(sid, command, args)` injects ``session_id`` into the args,
  as DSPex does. The pool keeps a `SessionStore`: what each session created. Before a
  session's command runs on a worker, the commands that worker lacks are sent first (its
  programs created, its LM configured), so any worker can serve any session, a crash loses
  nothing, and `list_programs` answers the same on every worker.
- **Affinity.** A session's commands ask for the worker that served it last (the pool's own
  worker affinity, which NimblePool could not express): ``"prefer"`` takes another idle worker
  if that one is busy (then rebuilds the session there), ``"strict"`` waits for it,
  ``"strict_fail_fast"`` raises `WorkerBusy`. A worker that dies drops its sessions' affinity.
- **DSPex's errors.** A worker's error reply raises `CommandError` and keeps the worker (an
  error checkin, as the seed's stats count it); a reply with another id (`ResponseMismatch`),
  an undecodable or malformed reply (`ProtocolError`), no reply in time (`CommandTimeout`) and
  a worker that died or could not be written to (`WorkerCrashed`) remove it; a checkout that
  finds no worker in time is a `PoolTimeout`, a pool that is not running `NoProc`; a request
  that cannot be encoded is refused (`ProtocolError`) before any worker is used.
- **Worker-wide commands.** The store, not a worker, holds the sessions, and it outlives
  every worker. ``cleanup`` and ``reset_state`` empty the one worker that runs them (its
  memory, its counters) and end no session: each session's programs are created on that
  worker again at its next command there. ``shutdown`` ends the worker that runs it: it is
  closed and replaced at once (a worker program exits after its reply anyway), and its
  sessions are rebuilt wherever they are served next. To drop a session's state, use
  ``cleanup_session`` (programs and LM), ``delete_program`` or `end_session`.

Worker I/O runs in the caller's thread; the pool actor only hands workers out, as in DSPex.
Workers are, by default, Python targets (`worker.handle_request`) forked by a fork server that
has DSPy imported already (a replacement serves within milliseconds); with ``worker_argv`` they
are programs started as ``worker_argv + ["--mode", "pool-worker", "--worker-id", <id>]``, which
is how DSPex starts its ``dspy_bridge.py``: DSPex's own script runs unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs
import pykka

from .. import _telemetry
from .._checks import check_clock, check_options, deadline_in, is_number, remaining
from .._clock import Clock
from .._errors import (
    CallTimeout,
    InvalidOption,
    NoProc,
    PortClosed,
    ResponseMismatch,
    WorkerCrashed,
)
from .._pool._contract import From, PoolStatus
from .._pool._handle import AFFINITIES, Pool
from .._pool._results import Ok, Stop
from .._ports._port import Port, check_argv
from .._ports._process_pool import PortSpec, PortWorker, ProcessPool, _Refused
from ._protocol import INIT_PING_ID, CommandError, CommandTimeout, request, result_of
from ._store import ANONYMOUS, SessionStats, SessionStore
from ._worker_program import PRELOAD, handle_request

if TYPE_CHECKING:
    from .._child_spec import ChildSpec

__all__ = ["BridgeWorker", "SessionPool", "SessionPoolStatus", "SessionSpec"]

_UNDELIVERED_RETRIES = 8
"""How often a command is sent again when its worker turned out dead before it was written
(each time the dead worker is removed: the pool's other workers, or a replacement, follow)."""
_REBUILD_CRASHES = 2
"""How many workers a command's session rebuild may see die before the command fails: the
rebuild itself (a program that crashes any worker) may be what kills them."""

DEFAULT_SESSION_TTL = 3600.0
"""Seconds a session may stay idle before it expires (DSPex: stale after an hour)."""


@attrs.frozen
class SessionSpec(PortSpec):
    """A `PortSpec` for bridge workers, with the pool's session settings.

    Attributes:
        store: the sessions' state (it outlives the workers, and a supervised pool's
            restarts).
        affinity: ``"prefer"``, ``"strict"`` or ``"strict_fail_fast"``.
        checkout_timeout: seconds a command waits for a worker.
        op_timeout: seconds a command waits for its reply (unless the call says otherwise).
    """

    store: SessionStore = attrs.field(kw_only=True)
    affinity: str = attrs.field(default="prefer", kw_only=True)
    checkout_timeout: float = attrs.field(default=5.0, kw_only=True)
    op_timeout: float = attrs.field(default=60.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.affinity not in AFFINITIES:
            raise InvalidOption("affinity", self.affinity, f"one of {', '.join(AFFINITIES)}")
        for option in ("checkout_timeout", "op_timeout"):
            value = getattr(self, option)
            if not is_number(value) or not value >= 0:
                raise InvalidOption(option, value, "a non-negative number of seconds")


@attrs.frozen
class SessionPoolStatus:
    """A snapshot of a `SessionPool` (DSPex's ``get_pool_status``, with affinity stats).

    Attributes:
        pool: the workers, as `Pool.status()` reports them.
        sessions: live sessions (the anonymous one included once used), by id.
        affinity: the pool's affinity mode.
        affinity_hits: session commands served by the worker that served the session last.
        affinity_misses: session commands served by another worker (rebuilt there first).
        uptime: seconds since the session store was made: the pool's first start (clock).
    """

    pool: PoolStatus
    sessions: dict[str, SessionStats]
    affinity: str
    affinity_hits: int
    affinity_misses: int
    uptime: float

    @property
    def active_sessions(self) -> int:
        """Named sessions alive (DSPex's ``active_sessions``)."""
        return sum(1 for session_id in self.sessions if session_id != ANONYMOUS)


class BridgeWorker(PortWorker):
    """`PortWorker` for bridge workers: each starts with its own ``--worker-id`` and must
    answer DSPex's init ping (id 0, ``{"initialization": true, "worker_id": ...}``) before it
    joins; a worker that leaves takes what it held of the sessions with it."""

    def open_port(self, pool_state: Any, name: str, owner: Any, on_start: Any) -> Port:
        spec: SessionSpec = pool_state.spec
        if spec.argv is None:
            return super().open_port(pool_state, name, owner, on_start)
        argv = [*spec.argv, "--mode", "pool-worker", "--worker-id", name]
        return spec.open(owner, on_start, pool_state.setup, argv=argv)

    def handshake(self, port: Port, pool_state: Any, name: str) -> None:
        spec: SessionSpec = pool_state.spec
        if spec.target is not None:
            port.ping(timeout=spec.init_timeout)  # the process serves at all
        ping = request("ping", {"initialization": True, "worker_id": name}, INIT_PING_ID)
        reply = port.request(ping, timeout=spec.init_timeout)
        if isinstance(reply, Mapping) and reply.get("id") != INIT_PING_ID:
            # A target's reply comes in the port's own envelope, whose id the port checked:
            # the DSPex id inside is checked here (a program's, the port checked already).
            raise ResponseMismatch(str(port), INIT_PING_ID, reply.get("id"))
        result_of(reply, "ping", str(port))

    def init_pool(self, init_arg: Any) -> Ok | Stop:
        result = super().init_pool(init_arg)
        if isinstance(init_arg, SessionSpec):
            # A new incarnation (a supervisor's restart): no worker holds anything, and the
            # worker ids the sessions remember name other processes now.
            init_arg.store.new_workers()
        return result

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Ok:
        pool_state.spec.store.forget_worker(worker_state.port.id)
        return super().terminate_worker(reason, worker_state, pool_state)


class SessionCommands:
    """The commands a session pool and a single bridge both serve: a command in a session or
    outside any, blocking or awaited, and the end of a session. A subclass runs them
    (`_execute`, `_aexecute`) and keeps the sessions (`_session_store`)."""

    def execute_in_session(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run `command` in session `session_id` (its id injected into `args`) and return
        the worker's result.

        Args:
            session_id: any non-empty string but ``"anonymous"``.
            command: a bridge command (``"create_program"``, ``"execute_program"``...).
            args: the command's arguments (a mapping of JSON values).
            timeout: seconds to wait for the reply (default: the pool's `op_timeout`;
                `math.inf`: no limit).

        Raises:
            CommandError: the worker answered with an error (the worker is kept).
            CommandTimeout: no reply in time (a pool's worker is removed; a single bridge's
                stays, its late reply dropped by id).
            ResponseMismatch: the reply was another request's (the worker is removed).
            ProtocolError: the request cannot be encoded (no worker was used), or the reply
                was undecodable or not DSPex's envelope (the worker is removed).
            WorkerCrashed: the worker died during the command, or could not be written to.
            PoolTimeout: no worker within `checkout_timeout` (a pool's).
            WorkerBusy: the session's worker is busy and the affinity is strict_fail_fast (a
                pool's).
            NoProc: the pool or bridge is not running.
            InvalidOption: a bad `session_id`, `command`, `args` or `timeout`.
        """
        _check_session(session_id)
        return self._execute(session_id, command, args, timeout)

    def execute_anonymous(
        self, command: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run `command` outside any session (DSPex's global programs live in the
        ``"anonymous"`` session, kept as any other); any worker serves it.

        Raises: as `execute_in_session`.
        """
        return self._execute(ANONYMOUS, command, args, timeout)

    async def aexecute_in_session(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Awaitable `execute_in_session`: the event loop is never blocked. On a
        `SessionPool`, cancelling the task while a worker runs the command kills that worker
        (the pool replaces it; the session is rebuilt on the next one); on a single `Bridge`
        it stops the waiting, and the reply, when it comes, is dropped.

        Raises: as `execute_in_session`.
        """
        _check_session(session_id)
        return await self._aexecute(session_id, command, args, timeout)

    async def aexecute_anonymous(
        self, command: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Awaitable `execute_anonymous`."""
        return await self._aexecute(ANONYMOUS, command, args, timeout)

    def end_session(self, session_id: str) -> bool:
        """Forget a session: its state leaves the store, and each worker holding it cleans
        it up at its next command. False if the session was unknown (or expired).

        Raises:
            InvalidOption: `session_id` is not a session's id (``"anonymous"`` is not one:
                its programs are the global ones, which never end).
            NoProc: the pool (or bridge) is not running.
        """
        _check_session(session_id)
        return self._session_store().end(session_id)

    def _execute(
        self, session_id: str, command: str, args: Mapping[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _aexecute(
        self, session_id: str, command: str, args: Mapping[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _session_store(self) -> SessionStore:
        raise NotImplementedError


class SessionPool(SessionCommands, ProcessPool):
    """DSPex's session pool: bridge workers, sessions kept by the pool, worker affinity.

    Start with `SessionPool.start`, or put one in a supervision tree with
    `SessionPool.child_spec`; `from_ref` drives a running one (`whereis(name)`).
    """

    def __init__(self, actor_ref: pykka.ActorRef[Any]) -> None:
        super().__init__(actor_ref)
        spec = self._ProcessPool__spec  # type: ignore[attr-defined]
        self.__session_spec: SessionSpec | None = spec if isinstance(spec, SessionSpec) else None

    @property
    def _session_spec(self) -> SessionSpec:
        spec = self.__session_spec
        if spec is None:
            return self._spec  # type: ignore[return-value]  # raises NoProc
        return spec

    @classmethod
    def start(  # type: ignore[override]
        cls,
        *,
        pool_size: int = 4,
        max_overflow: int = 0,
        lazy: bool = False,
        worker_argv: Sequence[str] | None = None,
        checkout_timeout: float = 5.0,
        op_timeout: float = 60.0,
        affinity: str = "prefer",
        name: Any = "session_pool",
        session_ttl: float | None = DEFAULT_SESSION_TTL,
        clock: Clock | None = None,
        store: SessionStore | None = None,
        start_method: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        init_timeout: float = 10.0,
        close_timeout: float = 1.0,
        spares: int = 0,
        worker_idle_timeout: float | None = None,
        max_tasks: int | None = None,
        max_memory: int | None = None,
        max_age: float | None = None,
        recycle_jitter: float = 0.1,
        preload: Sequence[str] | None = None,
        start_backoff: float = 0.05,
        max_start_backoff: float = 5.0,
        backend: str = "local",
        ray_options: Mapping[str, Any] | None = None,
    ) -> SessionPool:
        """Start a session pool; return once every worker is starting (they join as they
        answer their init ping).

        Args:
            pool_size: workers (DSPex's final default, 4).
            max_overflow: extra workers under load.
            lazy: start workers on first use.
            worker_argv: a program speaking the bridge protocol (e.g. ``[python,
                "dspy_bridge.py"]``); each worker gets ``--mode pool-worker --worker-id
                <id>`` appended. Default: the bundled DSPy worker as a Python target,
                forked from a fork server with DSPy preloaded.
            checkout_timeout: seconds a command waits for a worker (`PoolTimeout`).
            op_timeout: seconds a command waits for its reply (`CommandTimeout`), unless
                the call gives its own `timeout`.
            affinity: ``"prefer"``, ``"strict"`` or ``"strict_fail_fast"`` (see the module).
            name: register the pool under this name (None: unregistered).
            session_ttl: seconds of inactivity after which a session expires (None: never).
            clock: the clock of session expiry, idle pings and workers' ages (`max_age`); tests
                pass a `FakeClock`.
            store: the sessions' state to start from (`child_spec` passes one, so that a
                supervisor's restart keeps every session).
            start_method: as `ProcessPool.start`.
            env: environment of `worker_argv` programs.
            cwd: working directory of `worker_argv` programs.
            init_timeout: seconds a worker has to start and answer its init ping.
            close_timeout: seconds a removed worker gets to exit on EOF.
            spares: started workers kept ready beyond `pool_size`.
            worker_idle_timeout: ping idle workers on this period.
            max_tasks: recycle a worker after this many commands.
            max_memory: recycle a worker whose RSS reached this many bytes.
            max_age: recycle a worker this many seconds after its start.
            recycle_jitter: each worker's `max_tasks`, `max_memory` and `max_age` are drawn
                between ``(1 - recycle_jitter)`` times the limit and the limit, so that
                workers started together are not recycled together (0: exactly the limit).
            preload: modules the fork server imports for target workers (default: DSPy and
                the worker's command module).
            start_backoff: see `Pool.start`.
            max_start_backoff: see `Pool.start`.
            backend: ``"local"`` or ``"ray"``: each worker a Ray actor (as
                `ProcessPool.start`); the pool and its session store stay in this process.
            ray_options: each worker actor's Ray options (``backend="ray"`` only).

        Raises:
            InvalidOption: a bad option; nothing was started.
            NameTaken: `name` is registered to a live actor.
            StartError: the fork server could not import a `preload` module.
        """
        spec, pool_options = cls.options(
            pool_size=pool_size,
            max_overflow=max_overflow,
            lazy=lazy,
            worker_argv=worker_argv,
            checkout_timeout=checkout_timeout,
            op_timeout=op_timeout,
            affinity=affinity,
            name=name,
            session_ttl=session_ttl,
            clock=clock,
            store=store,
            start_method=start_method,
            env=env,
            cwd=cwd,
            init_timeout=init_timeout,
            close_timeout=close_timeout,
            spares=spares,
            worker_idle_timeout=worker_idle_timeout,
            max_tasks=max_tasks,
            max_memory=max_memory,
            max_age=max_age,
            recycle_jitter=recycle_jitter,
            preload=preload,
            start_backoff=start_backoff,
            max_start_backoff=max_start_backoff,
            backend=backend,
            ray_options=ray_options,
        )
        spec.start_backend()
        pool = Pool.start(BridgeWorker, spec, **pool_options)
        return cls(pool.actor_ref)

    @staticmethod
    def options(  # type: ignore[override]
        *,
        pool_size: int = 4,
        max_overflow: int = 0,
        lazy: bool = False,
        worker_argv: Sequence[str] | None = None,
        checkout_timeout: float = 5.0,
        op_timeout: float = 60.0,
        affinity: str = "prefer",
        name: Any = "session_pool",
        session_ttl: float | None = DEFAULT_SESSION_TTL,
        clock: Clock | None = None,
        store: SessionStore | None = None,
        start_method: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        init_timeout: float = 10.0,
        close_timeout: float = 1.0,
        spares: int = 0,
        worker_idle_timeout: float | None = None,
        max_tasks: int | None = None,
        max_memory: int | None = None,
        max_age: float | None = None,
        recycle_jitter: float = 0.1,
        preload: Sequence[str] | None = None,
        start_backoff: float = 0.05,
        max_start_backoff: float = 5.0,
        backend: str = "local",
        ray_options: Mapping[str, Any] | None = None,
    ) -> tuple[SessionSpec, dict[str, Any]]:
        """Check `start`'s options; return the workers' `SessionSpec` and `Pool.start`'s
        options."""
        if session_ttl is not None and (not is_number(session_ttl) or not session_ttl > 0):
            raise InvalidOption("session_ttl", session_ttl, "a positive number of seconds or None")
        clock = check_clock(clock)
        if store is None:
            store = SessionStore(clock, session_ttl)
        elif not isinstance(store, SessionStore):
            raise InvalidOption("store", store, "a SessionStore")
        if worker_argv is not None:
            try:
                check_argv(worker_argv)
            except InvalidOption as exc:  # named as the caller knows it
                raise InvalidOption("worker_argv", worker_argv, "a list of strings") from exc
        target = handle_request if worker_argv is None else None
        if preload is None:
            forkserver = backend == "local" and start_method in (None, "forkserver")
            preload = PRELOAD if target is not None and forkserver else ()
        base, pool_options = ProcessPool.options(
            worker_argv,
            target,
            pool_size=pool_size,
            lazy=lazy,
            max_overflow=max_overflow,
            spares=spares,
            start_method=start_method,
            name=name,
            env=env,
            cwd=cwd,
            worker_idle_timeout=worker_idle_timeout,
            close_timeout=close_timeout,
            init_timeout=init_timeout,
            max_tasks=max_tasks,
            max_memory=max_memory,
            max_age=max_age,
            recycle_jitter=recycle_jitter,
            preload=preload,
            start_backoff=start_backoff,
            max_start_backoff=max_start_backoff,
            backend=backend,
            ray_options=ray_options,
            clock=clock,
        )
        spec = SessionSpec(
            **attrs.asdict(base, recurse=False),
            store=store,
            affinity=affinity,
            checkout_timeout=checkout_timeout,
            op_timeout=op_timeout,
        )
        return spec, pool_options

    @classmethod
    def child_spec(cls, *args: Any, **options: Any) -> ChildSpec:
        """A `ChildSpec` for a supervision tree: `start`'s options plus `ChildSpec`'s (id
        ``"SessionPool"``, name ``"session_pool"`` and a 10 s shutdown by default, as
        DSPex's). The supervisor registers each incarnation under the name. The session
        store is made now, once: a restart keeps every session.

        Raises:
            InvalidOption: a bad or unknown option (or a positional one).
        """
        from .._child_spec import ChildSpec, split_spec_options

        if args:
            raise InvalidOption("args", args, "keyword options only")
        spec_options, start_options = split_spec_options(options)
        spec_options.setdefault("id", cls.__name__)
        spec_options.setdefault("name", "session_pool")
        spec_options.setdefault("shutdown", 10.0)
        if start_options.get("store") is None:
            start_options["store"] = SessionStore(
                check_clock(start_options.get("clock")),
                start_options.get("session_ttl", DEFAULT_SESSION_TTL),
            )
        start_options["name"] = None  # registered by the supervisor, under the spec's name
        check_options(cls.options, **start_options)
        return ChildSpec(start=cls.start, kwargs=start_options, **spec_options)

    @classmethod
    def from_ref(cls, actor_ref: pykka.ActorRef[Any]) -> Self:
        """Drive a running session pool (`whereis(name)`, `which_children()`).

        Raises:
            TypeError: `actor_ref` is not the ref of a running session pool.
        """
        handle = super().from_ref(actor_ref)
        if handle.__session_spec is None:
            raise TypeError(f"expected the ActorRef of a running SessionPool, got: {actor_ref!r}")
        return handle

    def status(self, timeout: float | None = 5.0) -> SessionPoolStatus:  # type: ignore[override]
        """Workers, sessions and affinity, in one `SessionPoolStatus`."""
        spec = self._session_spec
        store = spec.store
        pool = super().status(timeout)
        return SessionPoolStatus(
            pool=pool,
            sessions=store.stats(),
            affinity=spec.affinity,
            affinity_hits=store.hits,
            affinity_misses=store.misses,
            uptime=store.uptime(),
        )

    def _session_store(self) -> SessionStore:
        if not self.actor_ref.is_alive():  # as every other call of a stopped pool
            raise NoProc(str(self.actor_ref), "end_session")
        return self._session_spec.store

    def _execute(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        run = _Command(self, session_id, command, args, timeout)

        def use(from_: From, port: Port) -> tuple[Any, Any]:
            worker = run.lent(port)
            for step, step_args in run.steps(port):  # usually none: the session is in sync
                message = request(step, step_args)
                reply = _round_trip(port, message, run.deadline, step, run.op_timeout, run)
                refused = run.rebuilt(port, worker, step, step_args, reply)
                if refused is not None:
                    return refused
            reply = _round_trip(port, run.prepared, run.deadline, run.command, run.op_timeout)
            return run.answered(from_, port, worker, reply)

        spec = run.spec
        with run:
            for attempt in range(_UNDELIVERED_RETRIES + 1):
                try:
                    preferred = spec.store.preferred(session_id)
                    lent = self.checkout(
                        None, use, spec.checkout_timeout, worker=preferred, affinity=spec.affinity
                    )
                    return run.outcome(lent)
                except WorkerCrashed as exc:
                    # Dead before the request was written (its death not yet known to the
                    # pool): nothing ran, so another worker takes it; the dead one is removed.
                    if exc.delivered or attempt == _UNDELIVERED_RETRIES:
                        raise
                    if run.rebuild_crashes >= _REBUILD_CRASHES:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aexecute(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        run = _Command(self, session_id, command, args, timeout)

        async def use(from_: From, port: Port) -> tuple[Any, Any]:
            worker = run.lent(port)
            for step, step_args in run.steps(port):
                message = request(step, step_args)
                reply = await _around_trip(port, message, run.deadline, step, run.op_timeout, run)
                refused = run.rebuilt(port, worker, step, step_args, reply)
                if refused is not None:
                    return refused
            reply = await _around_trip(
                port, run.prepared, run.deadline, run.command, run.op_timeout
            )
            return run.answered(from_, port, worker, reply)

        spec = run.spec
        with run:
            for attempt in range(_UNDELIVERED_RETRIES + 1):
                try:
                    preferred = spec.store.preferred(session_id)
                    lent = await self.acheckout(
                        None, use, spec.checkout_timeout, worker=preferred, affinity=spec.affinity
                    )
                    return run.outcome(lent)
                except WorkerCrashed as exc:
                    if exc.delivered or attempt == _UNDELIVERED_RETRIES:
                        raise
                    if run.rebuild_crashes >= _REBUILD_CRASHES:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover


class _Command:
    """One command on its way: checked and encoded once (a bad request never reaches a
    worker), then talked through with whichever worker the pool lends (the same steps for the
    blocking and the awaited call). While a telemetry handler is attached it carries the
    command's `BRIDGE_COMMAND` span (`span`), started once the command is checked; as a
    context manager around the command, it emits the span's stop or exception event."""

    def __init__(
        self,
        pool: SessionPool,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> None:
        if not isinstance(command, str) or not command:
            raise InvalidOption("command", command, "a command name")
        if args is None:
            args = {}
        elif not isinstance(args, Mapping):
            raise InvalidOption("args", args, "a mapping of the command's arguments")
        spec = pool._session_spec
        if timeout is None:
            timeout = spec.op_timeout
        elif not is_number(timeout) or not timeout >= 0:
            raise InvalidOption("timeout", timeout, "a non-negative number of seconds")
        self.spec = spec
        self.pool = pool
        self.session_id = session_id
        self.command = command
        self.body = {**args, "session_id": session_id}
        self.prepared = pool._prepare(request(command, self.body))  # refused before a worker
        self.public_session = None if session_id == ANONYMOUS else session_id
        self.op_timeout = float(timeout)
        # Set when a worker is lent: the timeout covers the work only (None: no deadline).
        self.deadline: float | None = 0.0
        self.rebuild_crashes = 0  # workers that died while the session was rebuilt on them
        self.span: _telemetry.Span | None = None
        if _telemetry.active:
            metadata = {"pool": pool.name, "command": command, "session_id": session_id}
            self.span = _telemetry.start_span(_telemetry.BRIDGE_COMMAND, metadata)

    # What `use` does with the lent worker, the same for the blocking and the awaited call:
    # `lent`, then each of `steps` (the session brought up to date on that worker) sent and
    # given to `rebuilt`, then the command sent and its reply given to `answered`.

    def lent(self, port: Port) -> str:
        """A worker was lent: the command's time starts now. Returns the worker's name."""
        self.deadline = deadline_in(self.op_timeout)
        worker = str(port)
        if self.span is not None:
            self.span.metadata["worker"] = worker
        return worker

    def steps(self, port: Port) -> list[tuple[str, dict[str, Any]]]:
        """What `port`'s worker lacks of the session: the commands that rebuild it."""
        return self.spec.store.plan(self.session_id, port.id, self.command)

    def rebuilt(
        self, port: Port, worker: str, step: str, step_args: dict[str, Any], reply: Any
    ) -> tuple[Any, Any] | None:
        """A rebuilding step's reply: None if it worked, else the checkout's result."""
        try:
            result_of(reply, step, worker, self.public_session)
        except CommandError as exc:
            # The worker refused to rebuild the session: the command fails, and the
            # worker (which answered) stays, an error checkin.
            return _Refused(exc), ("error", exc)
        self.spec.store.applied(port.id, step, step_args)
        return None

    def answered(self, from_: From, port: Port, worker: str, reply: Any) -> tuple[Any, Any]:
        """The command's reply: the checkout's (result, checkin state), recorded in the
        session store (and its affinity hit or miss emitted)."""
        ok = True
        try:
            result: Any = result_of(reply, self.command, worker, self.public_session)
        except CommandError as exc:
            ok = False
            result = _Refused(exc)
        worker_id = from_.worker_id
        store = self.spec.store
        hit = store.record(self.session_id, self.command, self.body, port.id, worker_id, ok=ok)
        if hit is not None and _telemetry.active:
            _telemetry.emit(
                _telemetry.BRIDGE_AFFINITY_HIT if hit else _telemetry.BRIDGE_AFFINITY_MISS,
                {"count": 1},
                {"pool": self.pool.name, "session_id": self.session_id, "worker_id": worker_id},
            )
        if not ok:
            return result, ("error", result.error)  # the worker is fine: an error checkin
        if self.command == "shutdown":
            # The worker has shut down (a worker program exits after this reply): it is
            # closed and replaced, never lent again.
            return result, "close"
        return result, "ok"

    @staticmethod
    def outcome(result: Any) -> dict[str, Any]:
        if isinstance(result, _Refused):
            raise result.error
        return result  # type: ignore[no-any-return]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.span is not None:
            self.span.__exit__(exc_type, exc, tb)


def _check_session(session_id: Any) -> None:
    if not isinstance(session_id, str) or not session_id or session_id == ANONYMOUS:
        expected = f"a non-empty string other than {ANONYMOUS!r}"
        raise InvalidOption("session_id", session_id, expected)


async def _around_trip(
    port: Port,
    message: Any,
    deadline: float | None,
    command: str,
    op_timeout: float,
    rebuilding: _Command | None = None,
) -> Any:
    """`_round_trip`, awaited (the event loop watches the worker's pipe)."""
    errors = _DspexErrors(port, command, op_timeout, rebuilding)
    with errors:
        request_id, _ = await port._asend_request(message, remaining(deadline))
        errors.sending = False
        return await port._aawait_reply(request_id, deadline)


def _round_trip(
    port: Port,
    message: Any,
    deadline: float | None,
    command: str,
    op_timeout: float,
    rebuilding: _Command | None = None,
) -> Any:
    """Send one request (a step `rebuilding` the command's session, or the command) and
    wait for its reply; what goes wrong is raised as DSPex's error kinds (raised inside the
    lease: the worker is removed)."""
    errors = _DspexErrors(port, command, op_timeout, rebuilding)
    with errors:
        request_id, _ = port._send_request(message, remaining(deadline))
        errors.sending = False
        return port._await_reply(request_id, deadline)


class _DspexErrors:
    """Around one round trip: the port's errors as DSPex's. Its process gone is
    `WorkerCrashed`, not delivered while `sending` (it was gone before the request was
    written) or while `rebuilding` a command's session (the command was never written: it
    may go to another worker; its `rebuild_crashes` counts it); no reply in time is
    `CommandTimeout`. A class, not a generator: it is on every command's path."""

    __slots__ = ("command", "op_timeout", "port", "rebuilding", "sending")

    def __init__(
        self, port: Port, command: str, op_timeout: float, rebuilding: _Command | None
    ) -> None:
        self.port = port
        self.command = command
        self.op_timeout = op_timeout
        self.rebuilding = rebuilding
        self.sending = True

    def __enter__(self) -> _DspexErrors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, PortClosed):
            port = self.port
            if self.rebuilding is not None and not self.sending:
                self.rebuilding.rebuild_crashes += 1  # it died having read a rebuild step
            delivered = not self.sending and self.rebuilding is None
            raise WorkerCrashed(str(port), port.exit_status, delivered=delivered) from exc
        if isinstance(exc, CallTimeout):
            raise CommandTimeout(str(self.port), self.command, self.op_timeout) from None
