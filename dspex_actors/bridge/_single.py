"""`Bridge`: DSPex's single-bridge mode: one worker process, many requests in flight.

Where a `SessionPool` lends a worker to one caller at a time, a `Bridge` shares its one worker:
every caller writes its request at once, and a reader thread hands each reply to the caller
whose request id it carries (DSPex's ``Bridge`` GenServer and its pending-request map). The
worker answers in order, so a slow command delays those behind it; nothing else does. A caller
that gives up (`CommandTimeout`) leaves its id behind: the late reply is counted
(``correlation_errors``) and can never reach another caller, but what the command did on the
worker is recorded in the session store all the same. The store is kept by the reader thread,
in the order the worker answered.

The worker's exit makes the bridge's actor exit (`PortExited`, a crash to a supervisor); every
request in flight fails with `WorkerCrashed`. A ``shutdown`` the worker answered with success
ends the bridge normally instead (`NORMAL`): the worker is closed (a worker program exits
after its reply anyway), and the requests written behind the shutdown fail with
`WorkerCrashed`. Under a supervisor (`Bridge.child_spec`), the restart starts a new worker,
and the session store, made once with the spec, rebuilds each session's programs on it when
the session is next used.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pykka

from .. import _telemetry
from .._actor import Actor, ActorHandle, InternalMessage
from .._aio import in_thread
from .._checks import (
    check_clock,
    check_name_option,
    check_options,
    deadline_in,
    is_number,
    remaining,
)
from .._clock import Clock
from .._errors import (
    CallTimeout,
    InvalidOption,
    NameTaken,
    NoProc,
    PortClosed,
    ProtocolError,
    StartError,
    WorkerCrashed,
)
from .._logging import area_logger, log_event, short_repr
from .._ports import _forkserver
from .._ports._framing import encode_frame
from .._ports._port import Port, PortExited, Prepared
from .._reasons import NORMAL
from ._protocol import INIT_PING_ID, CommandError, CommandTimeout, request, result_of
from ._session_pool import DEFAULT_SESSION_TTL, SessionCommands, SessionPool, SessionSpec
from ._store import ANONYMOUS, SessionStats, SessionStore

if TYPE_CHECKING:
    from .._child_spec import ChildSpec

__all__ = ["Bridge", "BridgeStatus"]

_log = area_logger("bridge")


@attrs.frozen
class BridgeStatus:
    """A snapshot of a `Bridge` (DSPex's bridge stats).

    Attributes:
        worker_pid: the worker process's pid.
        in_flight: requests written whose callers still wait for the reply.
        requests_sent: requests written since the bridge started.
        responses_received: replies handed to their callers.
        errors: commands answered with an error.
        correlation_errors: replies nobody waited for (their caller had timed out) or that
            carried no known id.
        sessions: live sessions, by id.
    """

    worker_pid: int
    in_flight: int
    requests_sent: int
    responses_received: int
    errors: int
    correlation_errors: int
    sessions: dict[str, SessionStats]


_ABANDONED_KEPT = 1024
"""How many given-up requests a bridge remembers, so that their late replies are recognised."""


def _write_late(started: list[threading.Thread], finish: Callable[[], None]) -> None:
    """Finish writing a request frame that its caller gave up on half-written (`Port._write`'s
    `late`), in a thread of its own: the worker reads it when it can, and lives on."""
    thread = threading.Thread(target=finish, name="dspex-bridge-late-write", daemon=True)
    thread.start()
    started.append(thread)


class _Slot:
    __slots__ = ("abandoned", "done", "error", "on_reply", "reply", "shutdown")

    def __init__(self, shutdown: bool, on_reply: Callable[[Any], None] | None) -> None:
        self.done = threading.Event()
        self.reply: Any = None
        self.error: BaseException | None = None
        self.shutdown = shutdown  # the request is a `shutdown` command
        self.on_reply = on_reply  # run by the reader, with the reply, before the caller wakes
        self.abandoned = False  # its caller gave up (a timeout): the reply is taken, not given


@attrs.frozen
class _WorkerExited(InternalMessage):
    exit: PortExited


@attrs.frozen
class _WorkerShutDown(InternalMessage):
    """The worker answered a ``shutdown`` with success: the bridge ends, normally."""


class _BridgeCore:
    """What the bridge's handles share with its actor: the worker's port, the requests in
    flight, the store and the counters. Callers write and wait in their own threads."""

    def __init__(
        self,
        spec: SessionSpec,
        port: Port,
        name: str,
        on_exit: Callable[[PortExited], None],
        on_shutdown: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.port = port
        self.name = name
        self.on_exit = on_exit
        self.on_shutdown = on_shutdown
        # The worker answered a shutdown with success (set by the reader, before it reads
        # on: the worker's exit that follows is the end asked for, not a crash).
        self.shut_down = False
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()  # one session rebuild at a time
        self.pending: dict[int, _Slot] = {}
        self.abandoned: collections.deque[int] = collections.deque()  # ids given up on
        self.closed: BaseException | None = None
        self.requests_sent = 0
        self.responses_received = 0
        self.errors = 0
        self.correlation_errors = 0

    def exchange(
        self,
        message: dict[str, Any],
        deadline: float | None,
        timeout: float,
        on_reply: Callable[[Any], None] | None = None,
    ) -> Any:
        """Write `message` and wait for the reply carrying its id. `on_reply` runs in the
        reader thread with the reply, before the caller wakes: replies are taken in the order
        the worker answered, whatever order their callers wake in, and even after the caller
        gave up (`CommandTimeout`): what the command did on the worker is known all the same."""
        request_id = message["id"]
        spec = self.spec
        enveloped = spec.target is not None
        prepared = Prepared.of(message, spec.codec, spec.max_frame, enveloped, request_id)
        frame = encode_frame(prepared.payload(request_id), max_frame=spec.max_frame)
        slot = _Slot(message["command"] == "shutdown", on_reply)
        with self.lock:
            if self.closed is not None:
                raise WorkerCrashed(str(self.port), self.port.exit_status, delivered=False)
            self.pending[request_id] = slot
            self.requests_sent += 1
        late: list[threading.Thread] = []
        try:
            self.port._write(frame, remaining(deadline), functools.partial(_write_late, late))
        except PortClosed as exc:
            self._unsent(request_id)
            raise WorkerCrashed(str(self.port), self.port.exit_status, delivered=False) from exc
        except CallTimeout:
            if not late:  # never written (other requests held the pipe that long)
                self._unsent(request_id)
            else:  # its frame will be whole: the worker runs it, and its reply comes late
                with self.lock:
                    self._abandon(request_id, slot)
            raise CommandTimeout(str(self.port), str(message["command"]), timeout) from None
        except BaseException:
            self._unsent(request_id)
            raise
        if not slot.done.wait(remaining(deadline)):
            with self.lock:
                if self.pending.get(request_id) is slot:  # still unanswered: leave it
                    self._abandon(request_id, slot)
                    raise CommandTimeout(str(self.port), str(message["command"]), timeout)
            slot.done.wait()  # answered as we gave up: take it
        if slot.error is not None:
            raise slot.error
        return slot.reply

    def _abandon(self, request_id: int, slot: _Slot) -> None:
        """Its caller gave up on `request_id` (holds `lock`): its reply, if it ever comes, is
        counted, not given. The last `_ABANDONED_KEPT` are remembered; an older one's reply
        is then counted as a reply nobody asked for, all the same."""
        slot.abandoned = True
        self.abandoned.append(request_id)
        if len(self.abandoned) > _ABANDONED_KEPT:
            oldest = self.abandoned.popleft()
            stale = self.pending.get(oldest)
            if stale is not None and stale.abandoned:
                del self.pending[oldest]

    def in_flight(self) -> int:
        """Requests written whose callers still wait for the reply (holds `lock`)."""
        return len(self.pending) - sum(
            1 for rid in self.abandoned if (slot := self.pending.get(rid)) and slot.abandoned
        )

    def _unsent(self, request_id: int) -> None:
        """A request that was never written: forgotten, and not counted as sent."""
        with self.lock:
            if self.pending.pop(request_id, None) is not None:
                self.requests_sent -= 1

    def read(self) -> None:
        """The reader thread (the port's owner): hand each reply to its caller by id."""
        port = self.port
        enveloped = self.spec.target is not None
        while True:
            try:
                value = port.recv(timeout=None)
            except CallTimeout:
                continue  # stdout ended before the exit was known: it comes
            except PortClosed:
                self._close(WorkerCrashed(str(port), port.exit_status))
                self.on_exit(PortExited(port, port.exit_status))
                return
            except ProtocolError as exc:
                # An undecodable frame names no caller: count it; a broken stream ends the
                # port, which the next recv reports.
                with self.lock:
                    self.correlation_errors += 1
                log_event(_log, "WARNING", "bridge_bad_frame", "{error}", error=str(exc))
                continue
            reply = value[2] if enveloped and isinstance(value, list) and len(value) == 3 else value
            request_id = reply.get("id") if isinstance(reply, Mapping) else None
            with self.lock:
                slot = self.pending.pop(request_id, None) if request_id is not None else None
                if slot is None or slot.abandoned:
                    self.correlation_errors += 1
                else:
                    self.responses_received += 1
            if slot is None or slot.abandoned:
                log_event(
                    _log,
                    "WARNING",
                    "bridge_uncorrelated_reply",
                    "a reply nobody waits for (its caller timed out?): {reply}",
                    reply=short_repr(reply),
                )
                if slot is None:
                    continue
            try:
                self._take(slot, reply)
            finally:
                slot.done.set()

    def _take(self, slot: _Slot, reply: Any) -> None:
        """The reader's part of a reply: what it changed (`on_reply`), and, for a shutdown
        the worker answered with success, the end of this worker: the requests written behind
        it fail with `WorkerCrashed`, and no request is written after it."""
        slot.reply = reply
        if slot.on_reply is not None:
            try:
                slot.on_reply(reply)
            except Exception as exc:  # bookkeeping must not end the reader
                log_event(
                    _log,
                    "ERROR",
                    "bridge_reply_error",
                    "taking the reply {reply} failed: {error!r}",
                    reply=short_repr(reply),
                    error=exc,
                    exc=exc,
                )
        if slot.shutdown and isinstance(reply, Mapping) and reply.get("success") is True:
            self.shut_down = True
            self._close(WorkerCrashed(str(self.port), None, delivered=True))
            self.on_shutdown()

    def _close(self, error: BaseException) -> None:
        with self.lock:
            self.closed = error
            pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.error = error
            slot.done.set()


class _BridgeActor(Actor):
    """Owns the worker: starts it, answers its init ping, exits when it exits."""

    def __init__(self, spec: SessionSpec, register_as: Any) -> None:
        super().__init__()
        self._spec = spec
        self._register_as = register_as
        self.core: _BridgeCore | None = None
        self._forkserver = False

    def on_start(self) -> None:
        from .._naming._names import register, whereis

        spec = self._spec
        if self._register_as is not None:
            holder = whereis(self._register_as)
            if holder is not None:  # refused before a worker starts (register checks again)
                raise NameTaken(self._register_as, holder)
        if spec.method == "forkserver":
            _forkserver.FORK_SERVER.acquire(spec.preload, spec.init_timeout)
            self._forkserver = True
        name = f"bridge_{self.actor_ref.actor_urn[-8:]}"
        argv = (
            None
            if spec.argv is None
            else [*spec.argv, "--mode", "pool-worker", "--worker-id", name]
        )
        port = spec.open(self.actor_ref, None, None, argv=argv)
        try:
            if spec.target is not None:
                port.ping(timeout=spec.init_timeout)
            ping = request("ping", {"initialization": True, "worker_id": name}, INIT_PING_ID)
            result_of(port.request(ping, timeout=spec.init_timeout), "ping", str(port))
        except BaseException:
            port.kill()
            port.close(spec.close_timeout)
            raise
        core = self.core = _BridgeCore(spec, port, name, self._tell_exited, self._tell_shut_down)
        reader = threading.Thread(target=core.read, name=f"dspex-bridge-{port.id}", daemon=True)
        port._reclaim(reader)  # the reader owns it from now on: it alone reads
        reader.start()
        if self._register_as is not None:
            register(self._register_as, self.actor_ref)

    def _tell_exited(self, exited: PortExited) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_WorkerExited(exited))

    def _tell_shut_down(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_WorkerShutDown())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _WorkerShutDown):
            self.exit(NORMAL)  # on_exit closes the worker
        elif isinstance(message, _WorkerExited):
            core = self.core
            self.exit(NORMAL if core is not None and core.shut_down else message.exit)
        return None

    def _dspex_on_exit(self, reason: Any) -> None:
        core = self.core
        if core is not None:
            core.port.close(self._spec.close_timeout)
            # What the store knew of this worker goes with it (the store outlives restarts).
            self._spec.store.forget_worker(core.port.id)
        if self._forkserver:
            self._forkserver = False
            _forkserver.FORK_SERVER.release(self._spec.preload)


class Bridge(SessionCommands, ActorHandle):
    """DSPex's single-bridge mode: one worker, many commands in flight, matched by id.

    The same commands as a `SessionPool` (`execute_in_session`, `execute_anonymous`,
    `end_session`), the same session store (so a restarted bridge rebuilds its sessions) and
    the same errors, except that a timed-out command leaves the worker in place: replies are
    matched by id, so a late one cannot reach another caller.
    """

    _actor_class = _BridgeActor

    @classmethod
    def start(
        cls,
        *,
        worker_argv: Sequence[str] | None = None,
        name: Any = "bridge",
        op_timeout: float = 60.0,
        session_ttl: float | None = DEFAULT_SESSION_TTL,
        clock: Clock | None = None,
        store: SessionStore | None = None,
        start_method: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        init_timeout: float = 10.0,
        close_timeout: float = 1.0,
        preload: Sequence[str] | None = None,
    ) -> Bridge:
        """Start the worker; return once it has answered its init ping.

        Options as `SessionPool.start` (one worker; no checkout, so no `checkout_timeout`
        nor affinity).

        Raises:
            InvalidOption: a bad option; nothing was started.
            NameTaken: `name` is registered to a live actor.
            StartError: the worker could not start or did not answer its init ping.
        """
        spec = cls.options(
            worker_argv=worker_argv,
            name=name,
            op_timeout=op_timeout,
            session_ttl=session_ttl,
            clock=clock,
            store=store,
            start_method=start_method,
            env=env,
            cwd=cwd,
            init_timeout=init_timeout,
            close_timeout=close_timeout,
            preload=preload,
        )
        try:
            ref = _BridgeActor.start(spec, name)
        except StartError as exc:
            if isinstance(exc.reason, NameTaken):
                raise exc.reason from None
            raise
        return cls(ref)

    @staticmethod
    def options(
        *,
        worker_argv: Sequence[str] | None = None,
        name: Any = "bridge",
        op_timeout: float = 60.0,
        session_ttl: float | None = DEFAULT_SESSION_TTL,
        clock: Clock | None = None,
        store: SessionStore | None = None,
        start_method: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        init_timeout: float = 10.0,
        close_timeout: float = 1.0,
        preload: Sequence[str] | None = None,
    ) -> SessionSpec:
        """Check `start`'s options; return the worker's `SessionSpec`.

        Raises:
            InvalidOption: a bad option.
        """
        check_name_option(name)
        spec, _ = SessionPool.options(
            pool_size=1,
            worker_argv=worker_argv,
            op_timeout=op_timeout,
            name=None,
            session_ttl=session_ttl,
            clock=clock,
            store=store,
            start_method=start_method,
            env=env,
            cwd=cwd,
            init_timeout=init_timeout,
            close_timeout=close_timeout,
            preload=preload,
        )
        return spec

    @classmethod
    def child_spec(cls, *args: Any, **options: Any) -> ChildSpec:
        """A `ChildSpec`: `start`'s options plus `ChildSpec`'s (id ``"Bridge"``, name
        ``"bridge"``). The session store is made now, once: a restart keeps every session.

        Raises:
            InvalidOption: a bad or unknown option (or a positional one).
        """
        from .._child_spec import ChildSpec, split_spec_options

        if args:
            raise InvalidOption("args", args, "keyword options only")
        spec_options, start_options = split_spec_options(options)
        spec_options.setdefault("id", cls.__name__)
        spec_options.setdefault("name", "bridge")
        if start_options.get("store") is None:
            start_options["store"] = SessionStore(
                check_clock(start_options.get("clock")),
                start_options.get("session_ttl", DEFAULT_SESSION_TTL),
            )
        start_options["name"] = None  # registered by the supervisor, under the spec's name
        check_options(cls.options, **start_options)
        return ChildSpec(start=cls.start, kwargs=start_options, **spec_options)

    @property
    def _core(self) -> _BridgeCore:
        actor = self._ref._actor_weakref()
        core = actor.core if isinstance(actor, _BridgeActor) else None
        if core is None or not self._ref.is_alive():
            raise NoProc(str(self._ref), "execute")
        return core

    async def _aexecute(
        self, session_id: str, command: str, args: Mapping[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        # In a thread of its own: the one worker's replies are matched by id in threads.
        return await in_thread(self._execute, session_id, command, args, timeout)

    def _session_store(self) -> SessionStore:
        return self._core.spec.store

    def status(self) -> BridgeStatus:
        """A `BridgeStatus` snapshot."""
        core = self._core
        with core.lock:
            counts = (
                core.in_flight(),
                core.requests_sent,
                core.responses_received,
                core.errors,
                core.correlation_errors,
            )
        return BridgeStatus(core.port.os_pid, *counts, sessions=core.spec.store.stats())

    def _execute(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        if not isinstance(command, str) or not command:
            raise InvalidOption("command", command, "a command name")
        if args is None:
            args = {}
        elif not isinstance(args, Mapping):
            raise InvalidOption("args", args, "a mapping of the command's arguments")
        core = self._core
        spec = core.spec
        if timeout is None:
            timeout = spec.op_timeout
        elif not is_number(timeout) or not timeout >= 0:
            raise InvalidOption("timeout", timeout, "a non-negative number of seconds")
        deadline = deadline_in(timeout)
        body = {**args, "session_id": session_id}
        message = request(command, body)
        Prepared.of(message, spec.codec, spec.max_frame, False, None)  # refused before sending
        if not _telemetry.active:
            return self._run(core, session_id, command, body, message, deadline, timeout)
        metadata = {
            "pool": str(self._ref),
            "command": command,
            "session_id": session_id,
            "worker": str(core.port),
        }
        with _telemetry.span(_telemetry.BRIDGE_COMMAND, metadata):
            return self._run(core, session_id, command, body, message, deadline, timeout)

    @staticmethod
    def _run(
        core: _BridgeCore,
        session_id: str,
        command: str,
        body: dict[str, Any],
        message: dict[str, Any],
        deadline: float | None,
        timeout: float,
    ) -> dict[str, Any]:
        """A checked command (`message`): its session brought up to date on the worker, then
        the command sent.

        What each reply changed is recorded in the store by the reader thread, in the order
        the worker answered: with many commands in flight, a worker-wide ``cleanup`` answered
        after a ``create_program`` is recorded after it too, whichever caller wakes first."""
        store = core.spec.store
        worker = core.port.id
        name = str(core.port)
        public_session = None if session_id == ANONYMOUS else session_id

        def succeeded(reply: Any, what: str) -> bool | None:
            """True: a success; False: an error reply; None: not a reply in the envelope."""
            try:
                result_of(reply, what, name, public_session)
            except CommandError:
                return False
            except ProtocolError:
                return None
            return True

        if store.plan(session_id, worker, command):
            with core.sync_lock:  # one rebuild at a time: no step sent twice
                for step, step_args in store.plan(session_id, worker, command):

                    def applied(reply: Any, step: str = step, args: Any = step_args) -> None:
                        if succeeded(reply, step):
                            store.applied(worker, step, args)

                    reply = core.exchange(request(step, step_args), deadline, timeout, applied)
                    result_of(reply, step, name, public_session)

        def recorded(reply: Any) -> None:
            ok = succeeded(reply, command)
            if ok is not None:
                store.record(session_id, command, body, worker, None, ok=ok)

        reply = core.exchange(message, deadline, timeout, recorded)
        try:
            return result_of(reply, command, name, public_session)
        except CommandError:
            with core.lock:
                core.errors += 1
            raise
