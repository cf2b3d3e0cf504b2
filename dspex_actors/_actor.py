"""`Actor`: a pykka `ThreadingActor` with exit reasons, links, monitors and `trap_exits`.

pykka actors stop; Erlang processes *exit with a reason*, and others find out. This module adds
what supervision needs on top of pykka, and closes pykka's traps on the way:

- Every actor exits with a reason (`NORMAL`, `SHUTDOWN`, `Shutdown(info)`, `KILLED`, or the
  exception it crashed with), readable with `exit_reason(ref)` / `wait_exit(ref)`.
- `start()` is synchronous, like OTP's ``start_link``: it returns once `on_start` has run, and
  raises `StartError` (with the exception as `reason`) if `on_start` failed. pykka would return
  a ref to an actor that is already dead and never call `on_failure`.
- Monitors (`Actor.monitor`, or `monitor(ref, callback)` from plain code) deliver a `Down` after
  the actor's cleanup hook (`on_stop` / `on_failure`) has *finished*: pykka sets `actor_stopped`
  before `on_failure` runs, so a watcher could restart a child while the old one still cleans up.
- Links: when a linked peer exits with any reason but `NORMAL`, a non-trapping actor exits with
  the same reason; one with `trap_exits = True` gets `on_exit_signal(Exit(ref, reason))` instead.
  (As in Erlang, `SHUTDOWN` propagates through links; only `NORMAL` does not.)
- A `SystemExit` or `KeyboardInterrupt` raised in a handler ends only that actor (pykka would
  stop every actor in the process). `SystemExit(0)` / `SystemExit()` count as a `NORMAL` exit.
- `tell`s still queued when an actor exits are logged as dead letters (event ``dead_letter``);
  pykka drops them silently. Queued `ask`s get `pykka.ActorDeadError`, as in pykka.

Which hook runs when an actor exits:

| exit | hook |
|---|---|
| its own exception (crash), in a `tell`, `on_start`, `on_down` or `on_exit_signal` | `on_failure` |
| `stop()`, `exit(reason)`, an exit signal (link or `send_exit`) | `on_stop` |
| `kill` (not a linked peer's `KILLED` signal, which runs `on_stop`) | none |

An exception in an `ask` goes back to the asker and the actor keeps running (pykka's rule).

**What a thread cannot do.** Python cannot kill a thread. `kill(ref)` therefore stops the actor
at its next message boundary: the handler running now finishes, the rest of the inbox is dropped
(queued askers get `ActorDeadError`), no cleanup hook runs, and the reason is `KILLED`. A handler
that never returns can never be killed; an OS process can (see `Port`).

**Plain pykka actors** can be monitored, linked, killed and supervised too. Their reason is
`NORMAL` after a stop, the exception after a crash (captured from pykka's failure path), or the
reason a supervisor asked for. Their `Down` may arrive while their `on_failure` still runs, and
`kill` still runs their `on_stop`: pykka offers no hook to do better. Prefer `Actor`.

Example:
    >>> import dspex_actors as da
    >>> class Greeter(da.Actor):
    ...     def greet(self, name: str) -> str:
    ...         return f"hello {name}"
    >>> ref = Greeter.start()
    >>> ref.proxy().greet("otp").get(timeout=5)
    'hello otp'
    >>> ref.stop()
    True
    >>> da.exit_reason(ref)
    NORMAL
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import attrs
import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from ._aio import in_thread
from ._checks import check_timeout, deadline_in, os_timeout, remaining
from ._child_spec import inline_start
from ._errors import CallTimeout, NoProc, StartError
from ._logging import area_logger, log_event, short_repr
from ._reasons import KILLED, NOPROC, NORMAL, SHUTDOWN, Down, Exit, MonitorRef, is_normal_exit

if TYPE_CHECKING:
    from ._child_spec import ChildSpec

__all__ = [
    "Actor",
    "ActorHandle",
    "InternalMessage",
    "current_actor",
    "demonitor",
    "exit_reason",
    "in_handler",
    "kill",
    "acting_for",
    "monitor",
    "not_exited",
    "run_inline",
    "send_exit",
    "start_actor",
    "start_limit",
    "wait_exit",
]

_log = area_logger("actor")

DownCallback = Callable[[Down], None]


# --- system messages (never seen by user handlers) -------------------------------------------


class InternalMessage:
    """Base of framework messages an actor sends itself (e.g. a supervisor's restart retry).

    Left in an inbox when the actor exits, they are dropped quietly, not logged as dead letters.
    """

    __slots__ = ()


@attrs.frozen
class _Wake:
    """Put at the front of an inbox to make the loop look at a pending exit."""


@attrs.frozen
class _StopRequest:
    """Stop in FIFO order with this reason; the reply comes once the actor has fully exited."""

    reason: Any


@attrs.frozen
class _ExitSignal:
    """An exit signal for a trapping actor, queued in FIFO order."""

    ref: Any
    reason: Any


@attrs.frozen
class _DownMsg:
    down: Down


@attrs.frozen
class _RunInActor:
    """Run `fn()` in the actor's thread between messages and reply with its result.

    Used by `dspex_actors.testing` (`gate`) and by framework code that needs a barrier with a
    side effect; never seen by user handlers.
    """

    fn: Callable[[], Any]


@attrs.frozen(eq=False)
class _Ready:
    """Put at the front of an inbox when what `Actor._wait_serving` waits for is ready."""

    token: object


_SYSTEM = (
    _Ready,
    _Wake,
    _StopRequest,
    _ExitSignal,
    _DownMsg,
    _RunInActor,
    InternalMessage,
    pykka_messages._ActorStop,
)

_current = threading.local()


def current_actor() -> pykka.ActorRef[Any] | None:
    """The `ActorRef` of the `Actor` whose thread is running this code, or None (like `self()`)."""
    proc: _Proc | None = getattr(_current, "proc", None)
    return proc.ref if proc is not None else None


class _Inbox(queue.Queue[Envelope[Any]]):
    """An unbounded FIFO inbox that can take urgent messages at the front, and can be closed.

    After `close()`, a `put` does not enqueue: the envelope is rejected at once (askers get
    `ActorDeadError`, tells are logged as dead letters), so nothing sent to a dying actor hangs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.owner = "an actor"
        self.proc: _Proc | None = None

    def put(self, item: Envelope[Any], block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if not self.closed:
                self.queue.append(item)
                self.unfinished_tasks += 1
                self.not_empty.notify()
                return
        _reject(item, self.owner, self.proc)

    def put_front(self, item: Envelope[Any]) -> None:
        with self.mutex:
            if self.closed:
                return
            self.queue.appendleft(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def wait_nonempty(self) -> None:
        """Block until a message is queued (without taking it: see `run_inline`)."""
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait()

    def close(self) -> list[Envelope[Any]]:
        """Refuse further messages and return everything still queued."""
        with self.mutex:
            self.closed = True
            items = list(self.queue)
            self.queue.clear()
        return items


def _reject(envelope: Envelope[Any], owner: str, proc: _Proc | None) -> None:
    """Answer an envelope that will never be handled."""
    message = envelope.message
    if isinstance(message, _StopRequest | pykka_messages._ActorStop):
        # A stop request is answered once the actor has fully exited, not before.
        if envelope.reply_to is not None and (proc is None or not proc.add_stop_reply(envelope)):
            envelope.reply_to.set(None)
        return
    if envelope.reply_to is not None:
        error = pykka.ActorDeadError(f"{owner} stopped before handling the message")
        envelope.reply_to.set_exception(exc_info=(type(error), error, None))
    elif not isinstance(message, _SYSTEM):
        log_event(
            _log,
            "WARNING",
            "dead_letter",
            "dead letter: {actor} exited before handling {message}",
            actor=owner,
            message=short_repr(message, 200),
        )


# --- the per-actor record --------------------------------------------------------------------

_attach_lock = threading.Lock()


_pid = os.getpid()  # this process's pid, kept without a system call on hot paths
_forks_watched = False  # the hook keeping `_pid` is registered once an actor exists


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


def _watch_forks() -> None:
    global _forks_watched, _pid
    if not _forks_watched:  # (once: a duplicate registration only repeats the same update)
        _forks_watched = True
        _pid = os.getpid()  # (a fork before the hook existed left the parent's)
        os.register_at_fork(after_in_child=_note_fork)


def forked_away(proc: _Proc) -> bool:
    """Whether `proc` is a forked process's copy of an actor of the process it forked from:
    no thread runs it here, and what it owns (its workers, its ports) is not this process's."""
    return proc.pid != _pid


class _Proc:
    """Everything links, monitors and exit reasons need to know about one actor.

    Attached to the actor's `ActorRef` (and so it lives as long as any ref does). For our own
    `Actor` it is created before the thread starts; for a plain pykka actor it is created the
    first time something monitors, links or kills it.
    """

    def __init__(self, ref: pykka.ActorRef[Any], ours: bool) -> None:
        self.ref = ref
        self.ours = ours
        self.lock = threading.Lock()
        self.exited = False
        self.reason: Any = None
        self.links: set[_Proc] = set()
        self.monitors: dict[MonitorRef, _Proc | DownCallback] = {}
        self.watching: dict[MonitorRef, _Proc] = {}  # monitors this actor holds on others
        self.done = threading.Event()
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.pending_exit: Any = None
        self.requested_reason: Any = None  # plain pykka actors: the reason a stop was for
        self.crash_reason: BaseException | None = None  # plain pykka actors: from _handle_failure
        self.stop_replies: list[pykka.Future[Any]] = []
        self.replies_closed = False
        self.tearing_down = False
        self.killed = False  # kill() was called: no cleanup hook runs
        # Held while the actor handles a message (and while it starts), so that another
        # thread may run a message in the actor's place when it is idle (`run_inline`).
        self.exec_lock = threading.Lock()
        _watch_forks()
        self.pid = _pid  # the process the actor runs in (a fork's copy runs in none)
        self.inline_crash: BaseException | None = None  # what a message run inline raised
        # Set once `on_start` has succeeded and `started` is set (so `start()` has its answer):
        # only then may a message run inline (a plain flag: `run_inline` reads it on every
        # checkout).
        self.running = False
        self.inbox: Any = None  # our own Actor's `_Inbox`

    def pending(self) -> Any:
        """The exit reason this actor has been asked to exit with, if any."""
        return self.pending_exit

    def add_stop_reply(self, envelope: Envelope[Any]) -> bool:
        """Answer this stop request when the actor has exited; False if it already has."""
        assert envelope.reply_to is not None
        with self.lock:
            if self.replies_closed:
                return False
            self.stop_replies.append(envelope.reply_to)
            return True

    def __repr__(self) -> str:
        return f"<_Proc {self.ref}>"

    @property
    def trap_exits(self) -> bool:
        actor = self.ref._actor_weakref()
        return bool(getattr(actor, "trap_exits", False)) if actor is not None else False

    # -- signals into this actor --

    def interrupt(self, reason: Any, *, kill: bool = False) -> None:
        """Exit at the next message boundary with `reason`.

        `kill=True` (only `kill()` and an untrappable `send_exit(ref, KILLED)`) overrides any
        other pending reason and skips the cleanup hook. An exit *signal* whose reason happens
        to be `KILLED` (a linked peer was killed) is an ordinary exit: `on_stop` runs.
        """
        with self.lock:
            if self.exited or self.tearing_down:
                return  # already exiting: its reason is settled, and cleanup cannot be cut short
            if kill:
                self.killed = True
            if self.pending_exit is None or kill:
                self.pending_exit = reason
            if not self.ours:
                self.requested_reason = self.pending_exit
        if self.ours:
            inbox = self.ref.actor_inbox
            assert isinstance(inbox, _Inbox)
            inbox.put_front(Envelope(_Wake()))
        else:
            _plain_stop_now(self.ref)

    def exit_signal(self, sender: Any, reason: Any) -> None:
        """Deliver an exit signal (from a link, or `send_exit`) with Erlang's rules."""
        if reason is KILLED and sender is None:  # send_exit(ref, KILLED) is kill: untrappable
            self.interrupt(KILLED, kill=True)
        elif self.ours and self.trap_exits:
            self.ref.actor_inbox.put(Envelope(_ExitSignal(sender, reason)))
        elif reason is not NORMAL:
            self.interrupt(reason)

    # -- the end --

    def finish(self, reason: Any) -> None:
        """Record the exit reason, then notify links and monitors. Runs exactly once."""
        with self.lock:
            if self.exited:
                return
            self.exited = True
            self.reason = reason
            links, self.links = self.links, set()
            monitors, self.monitors = self.monitors, {}
            watching, self.watching = self.watching, {}
        for target in watching.values():  # our own monitors die with us
            with target.lock:
                target.monitors = {m: w for m, w in target.monitors.items() if w is not self}
        for peer in links:
            with peer.lock:
                peer.links.discard(self)
            peer.exit_signal(self.ref, reason)
        for mref, watcher in monitors.items():
            _deliver_down(watcher, Down(mref, self.ref, reason))
        self.done.set()
        _AT_EXIT.forget(self)
        with self.lock:
            replies, self.stop_replies = self.stop_replies, []
            self.replies_closed = True
        for reply in replies:
            reply.set(None)


def _deliver_down(watcher: _Proc | DownCallback, down: Down) -> None:
    if isinstance(watcher, _Proc):
        watcher.ref.actor_inbox.put(Envelope(_DownMsg(down)))
        return
    try:
        watcher(down)
    except Exception as exc:
        log_event(
            _log,
            "ERROR",
            "monitor_callback_failed",
            "monitor callback {callback!r} raised",
            callback=watcher,
            exc=exc,
        )


def _proc_of(ref: Any) -> _Proc:
    """The `_Proc` of an actor ref, attaching one to a plain pykka actor on first use."""
    if not isinstance(ref, pykka.ActorRef):
        raise TypeError(f"expected a pykka ActorRef, got: {ref!r}")
    proc: _Proc | None = _attached(ref)
    if proc is not None:
        return proc
    with _attach_lock:
        proc = _attached(ref)
        if proc is not None:
            return proc
        proc = _Proc(ref, ours=False)
        ref._dspex_proc = proc  # type: ignore[attr-defined]
    _watch_plain_actor(proc)
    return proc


def _attached(ref: pykka.ActorRef[Any]) -> _Proc | None:
    proc: _Proc | None = getattr(ref, "_dspex_proc", None)
    return proc


def _watch_plain_actor(proc: _Proc) -> None:
    """Learn how a plain pykka actor ends: wrap its failure hook, wait for its stop event."""
    actor = proc.ref._actor_weakref()
    if actor is None or not proc.ref.is_alive():
        proc.finish(NOPROC)
        return
    original = actor._handle_failure

    def recording_failure(
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if proc.crash_reason is None and exc is not None:
            proc.crash_reason = exc
        original(exc_type, exc, tb)

    actor._handle_failure = recording_failure
    del actor

    def watch() -> None:
        proc.ref.actor_stopped.wait()
        reason = proc.requested_reason or proc.crash_reason or NORMAL
        proc.finish(reason)

    thread = threading.Thread(target=watch, name=f"dspex-watch-{proc.ref.actor_class.__name__}")
    thread.daemon = True
    thread.start()


def _plain_stop_now(ref: pykka.ActorRef[Any]) -> None:
    """Stop a plain pykka actor at its next message boundary (front of its queue)."""
    inbox = ref.actor_inbox
    if isinstance(inbox, queue.Queue):
        with inbox.mutex:
            inbox.queue.appendleft(Envelope(pykka_messages._ActorStop()))
            inbox.unfinished_tasks += 1
            inbox.not_empty.notify()
    else:  # an inbox we cannot reach into: a stop in FIFO order is the best we can do
        ref.tell(pykka_messages._ActorStop())


# --- interpreter exit ----------------------------------------------------------------------

_EXIT_STOP_LIMIT = 10.0
"""Seconds interpreter exit waits for each running tree (or lone actor) to stop."""


class _AtExit:
    """Stops, when the interpreter exits, every actor that still runs and was started from
    plain code (not by another actor): newest first, each as its handle's `stop()` would (a
    supervisor stops its children, a pool its workers), each within its own shutdown settings
    and at most `_EXIT_STOP_LIMIT` seconds.

    Actor threads are daemons, so a script that ends (normally, by an uncaught exception or
    on Ctrl-C) without stopping its actors still exits, and this cleans up after it. Two
    process-wide hooks make that work, installed when the first such actor starts (never at
    import): an `atexit` function, and, if SIGTERM still has its default action and the
    actor starts in the main thread, a SIGTERM handler that exits the interpreter like an
    uncaught exception (status 143), so that the same cleanup runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: dict[_Proc, None] = {}  # in start order
        self._installed = False

    def track(self, proc: _Proc) -> None:
        with self._lock:
            self._roots[proc] = None
            if not self._installed:
                self._installed = True
                self._install()

    def forget(self, proc: _Proc) -> None:
        with self._lock:
            self._roots.pop(proc, None)

    def _install(self) -> None:
        atexit.register(self.stop_all)
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):  # not settable here
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def stop_all(self) -> None:
        """Stop every root still running, newest first (bounded)."""
        with self._lock:
            roots = list(self._roots)
        for proc in reversed(roots):
            if proc.exited:
                continue
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                proc.ref.ask(_StopRequest(SHUTDOWN), timeout=_EXIT_STOP_LIMIT)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


_AT_EXIT = _AtExit()


# --- public functions ----------------------------------------------------------------------


def monitor(ref: pykka.ActorRef[Any], callback: DownCallback) -> MonitorRef:
    """Call `callback(Down)` once when the actor behind `ref` exits (from plain code).

    The callback runs in the exiting actor's thread after its cleanup hook has finished (or at
    once, in this thread, if the actor is already gone, with its recorded reason or `NOPROC`).
    Keep it short and non-blocking: set an event, put on a queue, `tell` an actor.
    """
    target = _proc_of(ref)
    mref = MonitorRef(ref)
    with target.lock:
        if not target.exited:
            target.monitors[mref] = callback
            return mref
        reason = target.reason
    _deliver_down(callback, Down(mref, ref, reason))
    return mref


def demonitor(mref: MonitorRef) -> None:
    """Remove a monitor; its `Down` will not be delivered (idempotent)."""
    target = _proc_of(mref.target)
    with target.lock:
        watcher = target.monitors.pop(mref, None)
    if isinstance(watcher, _Proc):
        with watcher.lock:
            watcher.watching.pop(mref, None)


def kill(ref: pykka.ActorRef[Any]) -> None:
    """Kill an actor: it exits with `KILLED` at its next message boundary, with no cleanup hook.

    Its inbox is dropped (queued askers get `ActorDeadError`). Python cannot interrupt a running
    handler; see the module docs. Killing a dead actor does nothing.
    """
    _proc_of(ref).interrupt(KILLED, kill=True)


def send_exit(ref: pykka.ActorRef[Any], reason: Any, *, sender: Any = None) -> None:
    """Send an exit signal, as Erlang's ``exit(Pid, Reason)``.

    A trapping actor gets `on_exit_signal(Exit(sender, reason))`, in message order; any other
    actor exits with `reason` at its next message boundary, unless `reason` is `NORMAL` (ignored).
    `send_exit(ref, KILLED)` is `kill(ref)` and cannot be trapped.
    """
    _proc_of(ref).exit_signal(sender, reason)


def in_handler(ref: pykka.ActorRef[Any]) -> bool:
    """Whether the actor's thread is inside a handler or its cleanup hook right now: a kill
    cannot stop it there (it lands, if at all, once the handler returns). False for a plain
    pykka actor, which cannot tell."""
    proc = _attached(ref)
    if proc is None or not proc.ours:
        return False
    return proc.exec_lock.locked() or (proc.tearing_down and not proc.exited)


def not_exited(ref: pykka.ActorRef[Any]) -> bool:
    """True until the actor has exited: unlike pykka's `is_alive`, an `Actor` running its
    cleanup hook (`on_stop`/`on_failure`) has not exited yet, and may still use what it
    uses (a pool, a port)."""
    proc = _attached(ref)
    if proc is not None and proc.ours:
        return not proc.exited
    return ref.is_alive()


def exit_reason(ref: pykka.ActorRef[Any]) -> Any:
    """The actor's exit reason, or None while it is running (or has not finished exiting)."""
    proc = _proc_of(ref)
    with proc.lock:
        return proc.reason if proc.exited else None


def wait_exit(ref: pykka.ActorRef[Any], timeout: float | None = 5.0) -> Any:
    """Wait until the actor has fully exited (cleanup done, monitors told); return its reason.

    Raises:
        CallTimeout: it is still running after `timeout` seconds (`None` waits forever).
    """
    proc = _proc_of(ref)
    if not proc.done.wait(os_timeout(timeout)):
        raise CallTimeout(str(ref), "wait_exit", timeout)
    return proc.reason


# --- the Actor class -------------------------------------------------------------------------


class Actor(pykka.ThreadingActor):
    """A pykka `ThreadingActor` that exits with a reason and supports links and monitors.

    Subclass it exactly like `pykka.ThreadingActor`; everything pykka offers (`ask`, `tell`,
    proxies, `on_receive`, `on_start`, `on_stop`, `on_failure`) works as in pykka. In addition:

    Attributes:
        trap_exits: when True, exit signals from linked actors arrive as `on_exit_signal(Exit)`
            instead of making this actor exit.
        start_timeout: seconds `start()` waits for `on_start` (`None`: forever). On timeout the
            actor is killed and `start()` raises `StartError` with a `TimeoutError` reason.
    """

    trap_exits: ClassVar[bool] = False
    start_timeout: ClassVar[float | None] = 5.0
    # Daemon threads: an actor never keeps the interpreter alive. At exit, the actors still
    # running are stopped in order instead (see `_AtExit`).
    use_daemon_thread: ClassVar[bool] = True

    _dspex_proc: _Proc

    @staticmethod
    def _create_actor_inbox() -> _Inbox:
        return _Inbox()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Start the actor and wait until its `on_start` has returned.

        Raises:
            StartError: `on_start` raised (the exception is `reason` and `__cause__`), or did
                not return within `start_timeout`.
        """
        ref = super().start(*args, **kwargs)
        proc = _proc_of(ref)
        if cls.on_start is pykka.Actor.on_start:
            return ref  # nothing can fail before the first message: no need to wait for it
        limit = cls.start_timeout
        cap: float | None = getattr(_current, "start_limit", None)  # see `start_limit`
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        if not proc.started.wait(os_timeout(limit)):
            proc.interrupt(KILLED, kill=True)
            cause = TimeoutError(f"on_start did not return within {limit}s")
            raise StartError(cls, cause) from cause
        if proc.start_error is not None:
            proc.done.wait()  # its cleanup has finished before we report the failure
            raise StartError(cls, proc.start_error) from proc.start_error
        return ref

    @classmethod
    def child_spec(cls, *args: Any, **options: Any) -> ChildSpec:
        """A `ChildSpec` that starts this actor with `args`; `id` defaults to the class name.

        Keyword options named like `ChildSpec` fields (`id`, `restart`, `shutdown`, `type`,
        `significant`, `name`) configure the spec; any other keyword is passed to `start`.
        """
        from ._child_spec import ChildSpec, split_spec_options

        spec_options, start_kwargs = split_spec_options(options)
        spec_options.setdefault("id", cls.__name__)
        return ChildSpec(start=cls.start, args=args, kwargs=start_kwargs, **spec_options)

    # -- links and monitors --

    def link(self, ref: pykka.ActorRef[Any]) -> None:
        """Link to another actor: when either exits abnormally, the other is told (Erlang link).

        Linking to an actor that has already exited delivers its exit signal at once.
        """
        me, other = self._dspex_proc, _proc_of(ref)
        if other is me:
            return
        first, second = sorted((me, other), key=id)
        with first.lock, second.lock:
            if not other.exited:
                me.links.add(other)
                other.links.add(me)
                return
            reason = other.reason
        me.exit_signal(ref, reason)

    def unlink(self, ref: pykka.ActorRef[Any]) -> None:
        """Remove a link (idempotent). An exit signal already queued is not withdrawn."""
        me, other = self._dspex_proc, _proc_of(ref)
        first, second = sorted((me, other), key=id)
        with first.lock, second.lock:
            me.links.discard(other)
            other.links.discard(me)

    def monitor(self, ref: pykka.ActorRef[Any]) -> MonitorRef:
        """Monitor another actor: `on_down(Down)` is called here once it has exited.

        A target that is already gone gives an immediate `Down` (its reason, or `NOPROC`).
        """
        me, target = self._dspex_proc, _proc_of(ref)
        mref = MonitorRef(ref)
        with me.lock:
            me.watching[mref] = target
        with target.lock:
            if not target.exited:
                target.monitors[mref] = me
                return mref
            reason = target.reason
        _deliver_down(me, Down(mref, ref, reason))
        return mref

    def demonitor(self, mref: MonitorRef) -> None:
        """Remove a monitor; a `Down` for it that is already queued is discarded too."""
        with self._dspex_proc.lock:
            self._dspex_proc.watching.pop(mref, None)
        demonitor(mref)

    def exit(self, reason: Any) -> None:
        """Exit with `reason` once the current message is handled (`on_stop` runs)."""
        self._dspex_proc.interrupt(reason)

    @property
    def exit_reason(self) -> Any:
        """This actor's exit reason while it exits (in `on_stop`/`on_failure`), else None."""
        return self._dspex_proc.pending_exit

    # -- hooks --

    def on_down(self, down: Down) -> None:
        """Called when an actor this one monitors has exited. Default: do nothing."""

    def on_exit_signal(self, exit: Exit) -> None:
        """Called, when `trap_exits` is True, for each exit signal from a linked actor.

        Default: exit with the same reason, unless it is `NORMAL` (ignored), which is what a
        non-trapping actor does, but in message order.
        """
        if exit.reason is not NORMAL:
            self.exit(exit.reason)

    # -- the loop (replaces pykka's) --

    def _start_actor_loop(self) -> None:
        proc = _Proc(self.actor_ref, ours=True)
        if current_actor() is None:  # started from plain code: a root, stopped at exit
            _AT_EXIT.track(proc)
        self.actor_ref._dspex_proc = proc  # type: ignore[attr-defined]
        self._dspex_proc = proc
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox), "dspex_actors.Actor needs its own inbox"
        inbox.owner = str(self.actor_ref)
        inbox.proc = proc
        proc.inbox = inbox
        thread = threading.Thread(
            target=self._actor_loop,
            name=f"dspex:{type(self).__name__}",
            daemon=self.use_daemon_thread,
        )
        proc.thread = thread
        thread.start()

    def _actor_loop(self) -> None:
        proc = self._dspex_proc
        _current.proc = proc
        crash: BaseException | None = None
        try:
            with proc.exec_lock:  # nothing runs inline before on_start has finished
                self.on_start()
        except BaseException as exc:
            reason = _reason_for(exc)
            crash = exc if not is_normal_exit(reason) else None
            proc.start_error = exc
            proc.pending_exit = reason
            proc.started.set()
        else:
            proc.started.set()
            proc.running = True
            reason, crash = self._dspex_run(proc)
        self._dspex_teardown(proc, reason, crash)

    def _dspex_run(self, proc: _Proc) -> tuple[Any, BaseException | None]:
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        while True:
            pending = proc.pending()
            if pending is not None:
                return pending, proc.inline_crash
            inbox.wait_nonempty()
            # Taken from the inbox under the lock: a thread that holds it and finds the inbox
            # empty knows every message sent before has been handled (see `run_inline`).
            with proc.exec_lock:
                envelope = inbox.get_nowait()
                message = envelope.message
                interrupted = proc.pending()  # may have been set while we waited
                if interrupted is not None:
                    if not isinstance(message, _Wake):
                        inbox.put_front(envelope)  # left for teardown to reject
                    return interrupted, proc.inline_crash
                if isinstance(message, _Wake | _Ready):  # a late _Ready: nobody waits for it
                    continue
                if isinstance(message, _StopRequest | pykka_messages._ActorStop):
                    if envelope.reply_to is not None:
                        proc.add_stop_reply(envelope)
                    reason = message.reason if isinstance(message, _StopRequest) else NORMAL
                    with proc.lock:
                        if proc.pending_exit is None:
                            proc.pending_exit = reason
                    continue
                try:
                    if isinstance(message, _ExitSignal):
                        self.on_exit_signal(Exit(message.ref, message.reason))
                    elif isinstance(message, _DownMsg):
                        self._dspex_on_down_msg(proc, message.down)
                    elif isinstance(message, _RunInActor):
                        result = message.fn()
                        if envelope.reply_to is not None:
                            envelope.reply_to.set(result)
                    else:
                        response = self._handle_receive(message)
                        if envelope.reply_to is not None:
                            envelope.reply_to.set(response)
                except Exception as exc:
                    if envelope.reply_to is not None:
                        envelope.reply_to.set_exception()  # the asker gets it; we carry on
                    else:
                        proc.pending_exit = exc
                        return exc, exc
                except BaseException as exc:
                    if envelope.reply_to is not None:
                        error = pykka.ActorDeadError(f"{self.actor_ref} exited with {exc!r}")
                        envelope.reply_to.set_exception(exc_info=(type(error), error, None))
                    reason = _reason_for(exc)
                    proc.pending_exit = reason
                    return reason, (None if is_normal_exit(reason) else exc)

    def _dspex_on_down_msg(self, proc: _Proc, down: Down) -> None:
        with proc.lock:
            known = proc.watching.pop(down.monitor_ref, None) is not None
        if known:  # a demonitored Down is flushed, as Erlang's demonitor(Ref, [flush])
            self.on_down(down)

    def _dspex_teardown(self, proc: _Proc, reason: Any, crash: BaseException | None) -> None:
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        with proc.exec_lock, proc.lock:  # waits for a message being run inline to finish
            proc.pending_exit = reason
            proc.tearing_down = True
        leftovers = inbox.close()
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        if crash is not None:
            log_event(
                _log,
                "ERROR",
                "actor_crashed",
                "{actor} crashed: {reason}",
                actor=str(self.actor_ref),
                reason=repr(crash),
                exc=crash,
            )
            self._dspex_call_hook(self.on_failure, type(crash), crash, crash.__traceback__)
        elif not proc.killed:
            failure = self._dspex_call_hook(self.on_stop)
            if failure is not None:  # a crashing cleanup changes the reason, as in OTP
                reason = failure
        for envelope in leftovers:
            _reject(envelope, inbox.owner, proc)
        self._dspex_on_exit(reason)
        proc.finish(reason)

    def _wait_serving(
        self,
        start: Callable[[Callable[[], None]], None],
        timeout: float | None,
        is_query: Callable[[Any], bool],
    ) -> bool:
        """From inside a handler: run `start(ready)`, which must arrange for `ready()` to be
        called (from any thread) once what it started is done, and wait for that, while still
        answering the queued messages `is_query` accepts (read-only questions about state,
        answered in the order they came). Every other message waits for its turn, in order,
        after the current handler.

        Returns True once `ready()` was called; False if `timeout` passed first, or if the
        actor is asked to stop or exit meanwhile (that request is handled as soon as the
        current handler returns).
        """
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        token = object()
        start(lambda: inbox.put_front(Envelope(_Ready(token))))
        deadline = deadline_in(timeout)
        deferred: list[Envelope[Any]] = []
        try:
            while True:
                try:
                    envelope = inbox.get(timeout=os_timeout(remaining(deadline)))
                except queue.Empty:
                    return False
                message = envelope.message
                if isinstance(message, _Ready):
                    if message.token is token:
                        return True
                    deferred.append(envelope)  # an older wait's: nobody waits for it now
                elif (
                    isinstance(message, _Wake | _StopRequest | pykka_messages._ActorStop)
                    or self._dspex_proc.pending() is not None
                ):
                    deferred.append(envelope)
                    return False
                elif is_query(message):
                    try:
                        response = self._handle_receive(message)
                    except Exception:
                        if envelope.reply_to is not None:
                            envelope.reply_to.set_exception()
                    else:
                        if envelope.reply_to is not None:
                            envelope.reply_to.set(response)
                else:
                    deferred.append(envelope)
        finally:
            for envelope in reversed(deferred):
                if not isinstance(envelope.message, _Ready):
                    inbox.put_front(envelope)

    def _dspex_on_exit(self, reason: Any) -> None:
        """Last step before links and monitors are told; framework subclasses extend it."""

    def _dspex_call_hook(self, hook: Callable[..., Any], *args: Any) -> BaseException | None:
        try:
            hook(*args)
        except BaseException as exc:
            log_event(
                _log,
                "ERROR",
                "hook_failed",
                "{hook} of {actor} raised",
                hook=hook.__name__,
                actor=str(self.actor_ref),
                exc=exc,
            )
            return exc
        return None


def run_inline(proc: _Proc, handler: Callable[[Any], bool | None], message: Any) -> bool:
    """Handle `message` with `handler` in this thread, in the actor's place, if it is idle.

    The actor's own loop takes a message from the inbox and handles it while holding
    `exec_lock`; so a thread that gets the lock and finds the inbox empty may handle one
    message itself: every message sent before has been handled, none is being handled, and the
    actor's state is touched by one thread at a time, exactly as if the message had been
    queued. `current_actor()` is the actor meanwhile. Returns False (send the message instead)
    when the actor is busy, has messages queued or is exiting, or when `handler` returns
    False (it declined the message before changing anything; None counts as handled).

    An exception escaping `handler` crashes the actor with it, as it would in the loop; it is
    not raised here, except a `BaseException` that is not an `Exception` (e.g. a
    `KeyboardInterrupt` delivered to this thread), which ends the actor and is re-raised.
    Framework code uses this for its hot paths (a pool's checkout and checkin): a thread hand-off
    costs more than the work.
    """
    if proc.pid != _pid:
        return False  # a forked process's copy: the actor is not there (no thread runs it)
    lock = proc.exec_lock
    if not lock.acquire(False):
        return False
    try:
        if not proc.running or proc.pending_exit is not None or proc.tearing_down:
            return False  # not started yet (on_start running or not begun), or exiting
        inbox = proc.inbox  # our own Actor's (only those run inline)
        if inbox.queue or inbox.closed:
            return False
        previous = getattr(_current, "proc", None)
        _current.proc = proc
        try:
            handled = handler(message)
        except BaseException as exc:
            reason = _reason_for(exc)
            with proc.lock:
                if proc.pending_exit is None:
                    proc.inline_crash = None if is_normal_exit(reason) else exc
                    proc.pending_exit = reason
            inbox.put_front(Envelope(_Wake()))
            if not isinstance(exc, Exception):
                raise
            handled = True
        finally:
            _current.proc = previous
        return handled is not False
    finally:
        lock.release()


def _reason_for(exc: BaseException) -> Any:
    """The exit reason for an exception that escaped a handler."""
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return NORMAL
    return exc


@contextlib.contextmanager
def start_limit(seconds: float | None) -> Iterator[None]:
    """Meanwhile, an `Actor.start` in this thread waits at most `seconds` for `on_start`
    (or its class's `start_timeout`, if shorter): a supervisor bounds a child's start so."""
    previous = getattr(_current, "start_limit", None)
    _current.start_limit = seconds
    try:
        yield
    finally:
        _current.start_limit = previous


@contextlib.contextmanager
def acting_for(ref: pykka.ActorRef[Any]) -> Iterator[None]:
    """Meanwhile, `current_actor()` in this thread is `ref`'s actor: for work an actor hands
    to a helper thread (what a supervisor's start function starts is its child, linked to
    it)."""
    previous = getattr(_current, "proc", None)
    _current.proc = _proc_of(ref)
    try:
        yield
    finally:
        _current.proc = previous


def start_actor(actor_class: type[Actor], *args: Any) -> pykka.ActorRef[Any]:
    """Start a framework actor; an `on_start` failure raises its own error, not a `StartError`.

    Framework actors (supervisors, registries) fail to start with typed errors of ours
    (`SupervisorStartError`, `NameTaken`...), which their `start` raises as they are.
    """
    try:
        return actor_class.start(*args)
    except StartError as exc:
        raise exc.reason from exc.reason.__cause__  # its own cause (if any) stays


inline_start(Actor.start)


# --- handles ---------------------------------------------------------------------------------


class ActorHandle:
    """Base of the handles that framework `start` functions return (`Supervisor`, `Pool`...).

    A handle wraps the actor's `ActorRef` and turns each call into an `ask` with a timeout,
    converting pykka's errors into ours: a dead actor raises `NoProc`, a slow one `CallTimeout`.
    Every blocking method takes `timeout` in seconds; `None` waits forever.
    """

    _default_stop_reason: ClassVar[Any] = NORMAL
    _actor_class: ClassVar[type | None] = None  # the actor class a subclass drives, if any

    def __init__(self, actor_ref: pykka.ActorRef[Any]) -> None:
        self._ref = actor_ref

    @classmethod
    def from_ref(cls, actor_ref: pykka.ActorRef[Any]) -> Self:
        """Drive an already running actor (e.g. found in `which_children()`) through a handle.

        Raises:
            NoProc: `actor_ref` is None (what `whereis` gives for a name with no process:
                between a crash and the supervisor's restart, say).
            TypeError: `actor_ref` is not a ref to the kind of actor this handle drives.
        """
        if actor_ref is None:
            raise NoProc("None", "from_ref")
        expected = cls._actor_class
        if not isinstance(actor_ref, pykka.ActorRef) or (
            expected is not None and not issubclass(actor_ref.actor_class, expected)
        ):
            raise TypeError(f"expected the ActorRef of a {cls.__name__}, got: {actor_ref!r}")
        return cls(actor_ref)

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The underlying pykka `ActorRef`."""
        return self._ref

    def is_alive(self) -> bool:
        """True until the actor starts exiting."""
        return self._ref.is_alive()

    def wait(self, timeout: float | None = 5.0) -> Any:
        """Wait until the actor has fully exited and return its exit reason.

        Raises:
            CallTimeout: still running after `timeout` seconds.
        """
        return wait_exit(self._ref, timeout)

    def stop(self, reason: Any = None, timeout: float | None = None) -> None:
        """Stop the actor with `reason` and wait until it has fully exited.

        Messages already queued are handled first (FIFO), as with pykka's `stop`.

        Raises:
            NoProc: the actor is not running.
            CallTimeout: it has not exited after `timeout` seconds (it keeps stopping).
        """
        if reason is None:
            reason = self._default_stop_reason
        self._call(_StopRequest(reason), timeout, "stop")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving a ``with`` block stops the actor as `stop` does (with the handle's default
        reason, waiting until it has exited), unless it has exited already."""
        with contextlib.suppress(NoProc):
            self.stop()

    # -- awaitable twins (asyncio) --

    async def until_exit(self, timeout: float | None = 5.0) -> Any:
        """Awaitable `wait` (``await`` is a keyword, so not ``await``): the exit reason, once
        the actor has fully exited, without blocking the event loop.

        Raises:
            CallTimeout: still running after `timeout` seconds.
        """
        return await in_thread(self.wait, timeout)

    async def astop(self, reason: Any = None, timeout: float | None = None) -> None:
        """Awaitable `stop` (`reason` None: the handle's own default). Cancelling the await
        stops the waiting, not the stop."""
        if reason is None:
            await in_thread(self.stop, timeout=timeout)
        else:
            await in_thread(self.stop, reason, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving an ``async with`` block stops the actor as `astop` does, unless it has
        exited already."""
        with contextlib.suppress(NoProc):
            await self.astop()

    async def aask(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send `message` to the actor's `on_receive` and await its reply (pykka's ``ask``).

        Raises:
            NoProc: the actor is not running.
            CallTimeout: no reply within `timeout` seconds.
        """
        return await in_thread(self._call, message, timeout, "ask")

    def _call(self, message: Any, timeout: float | None, call: str) -> Any:
        check_timeout(timeout)
        proc = _attached(self._ref)
        if proc is not None and proc.thread is threading.current_thread():
            raise RuntimeError(f"{call} on {self._ref} from its own thread would deadlock")
        try:
            return self._ref.ask(message, timeout=os_timeout(timeout))
        except pykka.ActorDeadError as exc:
            if isinstance(exc, NoProc):
                raise
            raise NoProc(str(self._ref), call) from None
        except pykka.Timeout:
            raise CallTimeout(str(self._ref), call, timeout) from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ref}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._ref is self._ref

    def __hash__(self) -> int:
        return id(self._ref)
