"""The whole exception hierarchy of dspex_actors.

Every error the library raises is a `DspexActorsError` and also subclasses the nearest builtin, so
callers can catch either: `except LookupError` catches `ChildNotFound`, `except TimeoutError`
catches `CallTimeout`. Errors about dead actors also subclass `pykka.ActorDeadError`, and call
timeouts subclass `pykka.Timeout`, so code written against plain pykka keeps working.

Each error carries the fields a program needs (`child_id`, `reason`, `field`, `value`...) as
attributes; the message is for people.
"""

from __future__ import annotations

import signal
from typing import Any

import pykka

__all__ = [
    "AlreadyNamed",
    "AlreadyPresent",
    "AlreadyStarted",
    "BadStartReturn",
    "CallTimeout",
    "CallbackReturnError",
    "CheckoutFailed",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpecError",
    "ConnectError",
    "ConnectExited",
    "ConnectFailed",
    "DspexActorsError",
    "DuplicateChildId",
    "InvalidOption",
    "MaxChildren",
    "NameNotRegistered",
    "NameTaken",
    "NoProc",
    "NotAPort",
    "PoolTimeout",
    "PortClosed",
    "PortNotOwned",
    "ProtocolError",
    "RemoteError",
    "ResponseMismatch",
    "ServiceUnavailable",
    "StartChildError",
    "StartError",
    "SupervisorStartError",
    "UndecodableReply",
    "WorkerBusy",
    "WorkerCrashed",
    "WorkerStartError",
]


def _after(timeout: Any) -> str:
    """How long a timed-out wait lasted, for a message: `` after 0.982s`` (three significant
    digits below 1000 s: what remained of a caller's deadline is rarely a round number), or
    nothing when it is not known (None)."""
    if timeout is None:
        return ""
    if isinstance(timeout, float):
        return f" after {timeout:.3g}s" if timeout < 1000 else f" after {timeout:.0f}s"
    return f" after {timeout}s"


class DspexActorsError(Exception):
    """Base class of every error raised by dspex_actors."""


# --- options and specs (raised before anything starts) -----------------------------------------


class InvalidOption(DspexActorsError, ValueError):
    """An option passed to a `start` function is invalid.

    Attributes:
        option: the option's name, e.g. ``"max_restarts"``.
        value: the rejected value.
        code: the OTP error term it corresponds to, e.g. ``"invalid_intensity"``.
    """

    def __init__(self, option: str, value: Any, expected: str, code: str = "") -> None:
        self.option = option
        self.value = value
        self.code = code or f"invalid_{option}"
        super().__init__(f"{option} must be {expected}, got: {value!r}")


class ChildSpecError(DspexActorsError, ValueError):
    """A child specification is invalid.

    Attributes:
        field: the `ChildSpec` field at fault (``"restart"``, ``"shutdown"``...).
        value: the rejected value.
        code: the OTP error term, e.g. ``"invalid_restart_type"`` or ``"bad_combination"``.
    """

    def __init__(self, field: str, value: Any, message: str, code: str) -> None:
        self.field = field
        self.value = value
        self.code = code
        super().__init__(message)


class DuplicateChildId(ChildSpecError):
    """Two child specs given to one supervisor share an id (OTP ``duplicate_child_name``)."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(
            "id",
            child_id,
            f"duplicate child id {child_id!r}: ids must be unique within a supervisor",
            "duplicate_child_name",
        )


# --- calls to actors -----------------------------------------------------------------------------


class NoProc(DspexActorsError, pykka.ActorDeadError, LookupError):
    """The actor a call was addressed to is not running (OTP ``noproc``)."""

    def __init__(self, target: str, call: str = "") -> None:
        self.target = target
        self.call = call
        where = f" (calling {call})" if call else ""
        super().__init__(f"no process: {target} is not running{where}")


class CallTimeout(DspexActorsError, pykka.Timeout, TimeoutError):
    """A blocking call to an actor got no answer within its timeout."""

    def __init__(self, target: str, call: str, timeout: float | None) -> None:
        self.target = target
        self.call = call
        self.timeout = timeout
        super().__init__(f"{call} on {target} timed out{_after(timeout)}")


class StartError(DspexActorsError, RuntimeError):
    """An actor's `on_start` raised, so `start()` failed (OTP ``{error, Reason}`` from init).

    Attributes:
        actor_class: the class that failed to start.
        reason: the exception raised by `on_start` (also the `__cause__`).
    """

    def __init__(self, actor_class: type, reason: BaseException) -> None:
        self.actor_class = actor_class
        self.reason = reason
        super().__init__(f"{actor_class.__name__} failed to start: {reason!r}")
        self.__cause__ = reason


# --- supervision ---------------------------------------------------------------------------------


class SupervisorStartError(DspexActorsError, RuntimeError):
    """A supervisor could not start one of its initial children (OTP ``failed_to_start_child``).

    The children started before it have already been stopped, in reverse order.

    Attributes:
        child_id: the id of the child that failed.
        reason: why it failed (usually the exception raised by its start function).
    """

    def __init__(self, child_id: Any, reason: Any) -> None:
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"failed to start child {child_id!r}: {reason!r}")


class BadStartReturn(DspexActorsError, TypeError):
    """A child's start function returned something that is not an `ActorRef`, a handle with
    `actor_ref`, or None (ignore).

    Attributes:
        value: what it returned.
    """

    def __init__(self, value: Any) -> None:
        self.value = value
        super().__init__(
            f"start function returned {value!r}; expected an ActorRef, a handle with "
            "`actor_ref`, or None (ignore)"
        )


class StartChildError(DspexActorsError, RuntimeError):
    """`start_child` or `restart_child`: the child's start function failed.

    Attributes:
        child_id: the child's id.
        reason: the exception or bad return value.
    """

    def __init__(self, child_id: Any, reason: Any) -> None:
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"child {child_id!r} failed to start: {reason!r}")


class ChildNotFound(DspexActorsError, LookupError):
    """No child with that id (or ref) under this supervisor (OTP ``not_found``)."""

    def __init__(self, child: Any) -> None:
        self.child = child
        super().__init__(f"no child {child!r} under this supervisor")


class ChildRunning(DspexActorsError, RuntimeError):
    """The operation needs a stopped child, but it is running (OTP ``running``)."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is running; terminate it first")


class ChildRestarting(DspexActorsError, RuntimeError):
    """The child is between failed restart attempts (OTP ``restarting``)."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is being restarted; terminate it first")


class AlreadyStarted(DspexActorsError, RuntimeError):
    """A child with that id is running, or a name is held (OTP ``already_started``).

    Attributes:
        ref: the running actor.
    """

    def __init__(self, what: Any, ref: Any) -> None:
        self.what = what
        self.ref = ref
        super().__init__(f"{what!r} is already started: {ref}")


class AlreadyPresent(DspexActorsError, RuntimeError):
    """A spec with that id exists but is not running (OTP ``already_present``)."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(
            f"child {child_id!r} is already present (stopped or restarting); "
            "use restart_child or delete_child"
        )


class MaxChildren(DspexActorsError, RuntimeError):
    """A DynamicSupervisor already runs `max_children` children (Elixir ``:max_children``)."""

    def __init__(self, max_children: int) -> None:
        self.max_children = max_children
        super().__init__(f"max_children ({max_children}) reached")


# --- naming --------------------------------------------------------------------------------------


class NameTaken(AlreadyStarted):
    """A name is already registered to a live actor."""

    def __init__(self, name: Any, ref: Any) -> None:
        super().__init__(name, ref)
        self.args = (f"name {name!r} is already registered to {ref}",)


class ServiceUnavailable(DspexActorsError, LookupError):
    """`detect_service` found no live service among its candidates.

    Attributes:
        tried: ``[(candidate, why_rejected), ...]`` in the order tried.
    """

    def __init__(self, tried: list[tuple[Any, str]]) -> None:
        self.tried = tried
        parts = ", ".join(f"{name!r} ({why})" for name, why in tried) or "no candidates"
        super().__init__(f"no service available: tried {parts}")


# --- pools ---------------------------------------------------------------------------------------


class CallbackReturnError(DspexActorsError, TypeError):
    """A pool callback returned a value outside its contract.

    The message names the callback (``MyWorker.handle_checkout``), lists every legal return form
    under ``Expected:`` and shows the value under ``Got:``.
    """

    def __init__(self, callback: str, expected: list[str], got: Any, hint: str = "") -> None:
        self.callback = callback
        self.expected = expected
        self.got = got
        lines = [f"unexpected return from {callback}.", "", "Expected:"]
        lines += [f"    {form}" for form in expected]
        lines += ["", f"Got: {got!r}"]
        if hint:
            lines += ["", f"Hint: {hint}"]
        super().__init__("\n".join(lines))


class PoolTimeout(DspexActorsError, TimeoutError):
    """A checkout got no worker before its deadline (NimblePool ``{:timeout, ...}``).

    When the pool's worker starts were failing meanwhile, the last start failure is the
    `__cause__` (and is named in the message).
    """

    def __init__(self, pool: str, timeout: float | None, start_error: Any = None) -> None:
        self.pool = pool
        self.timeout = timeout
        text = f"checkout from pool {pool} timed out{_after(timeout)}"
        if start_error is not None:
            text += f"; its last worker start failed: {start_error}"
        super().__init__(text)


class WorkerBusy(DspexActorsError, RuntimeError):
    """A checkout asked for one worker with ``affinity="strict_fail_fast"``, and that worker
    is lent out: nothing was checked out.

    Attributes:
        pool: the pool's label.
        worker_id: the worker asked for.
    """

    def __init__(self, pool: str, worker_id: int) -> None:
        self.pool = pool
        self.worker_id = worker_id
        super().__init__(f"worker {worker_id} of pool {pool} is busy")


class CheckoutFailed(DspexActorsError, RuntimeError):
    """A worker could not be checked out (DSPex's ``{:checkout_failed, reason}``)."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(f"checkout_failed: {reason!r}")


# --- ports ---------------------------------------------------------------------------------------


class NotAPort(DspexActorsError, TypeError):
    """`validate_port` was given something that is not a `Port` (DSPex's ``:not_a_port``)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        super().__init__(f"not a port: {value!r}")


class PortClosed(DspexActorsError, RuntimeError):
    """The port is closed or its process has exited (DSPex's ``:port_closed``)."""

    def __init__(self, port: Any, detail: str = "") -> None:
        self.port = port
        super().__init__(f"port closed: {port}" + (f" ({detail})" if detail else ""))


class PortNotOwned(DspexActorsError, RuntimeError):
    """The calling actor or thread does not own the port (DSPex's ``:port_not_owned``)."""

    def __init__(self, port: Any, owner: Any, caller: Any) -> None:
        self.port = port
        self.owner = owner
        self.caller = caller
        super().__init__(f"port {port} is owned by {owner}, not by {caller}")


class ConnectFailed(DspexActorsError, RuntimeError):
    """Handing a port to a new owner failed (DSPex's ``{:connect_failed, reason}``).

    `reason` is ``"process_died"``, ``"target_dead"`` or the wrapped cause.
    """

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(f"connect_failed: {reason!r}")


class ConnectExited(DspexActorsError, RuntimeError):
    """The port's process exited during a connect (DSPex's ``{:connect_exited, reason}``)."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(f"connect_exited: {reason!r}")


class ConnectError(DspexActorsError, RuntimeError):
    """An unexpected error during a connect (DSPex's ``{:connect_error, {kind, reason}}``)."""

    def __init__(self, kind: str, reason: Any) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"connect_error: {kind}: {reason!r}")


class ProtocolError(DspexActorsError, ValueError):
    """A frame or message broke the wire protocol (bad length, bad JSON, wrong id...)."""


class ResponseMismatch(ProtocolError):
    """A reply carried another request's id (DSPex's ``response_mismatch``): the process
    answered something it was not asked now, so nothing it says can be trusted.

    Attributes:
        expected: the id of the request sent.
        got: the id the reply carried.
    """

    def __init__(self, worker: str, expected: Any, got: Any) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"reply id mismatch from {worker}: expected {expected!r}, got {got!r}")


class UndecodableReply(ProtocolError):
    """The reply to a request arrived whole and under its id, but its value cannot be
    rebuilt here (with `PICKLE_CODEC`: a class this process cannot import, a
    ``__setstate__`` that raises). Only this request failed: the stream is in step, the
    port stays usable, and a pool keeps the worker.

    Attributes:
        worker: the port that answered.
    """

    def __init__(self, worker: str, reason: str) -> None:
        self.worker = worker
        super().__init__(f"the reply from {worker} cannot be decoded here: {reason}")


class WorkerCrashed(DspexActorsError, RuntimeError):
    """A worker process died while serving a request.

    Attributes:
        worker: the worker's port.
        exit_status: the process's exit status (negative: killed by that signal), if known.
        delivered: False when the process was dead before the request was written (nothing
            ran: a `ProcessPool` retries it on another worker whatever `retries` says).
    """

    def __init__(self, worker: str, exit_status: int | None, *, delivered: bool = True) -> None:
        self.worker = worker
        self.exit_status = exit_status
        self.delivered = delivered
        what = "crashed" if delivered else "was dead before the request was sent"
        super().__init__(f"worker {worker} {what} (exit status {exit_status})")


class WorkerStartError(DspexActorsError, RuntimeError):
    """A pool could not start a worker process (or it died before it answered).

    Raised by the worker start itself, and carried as the `__cause__` of the `PoolTimeout` of a
    caller who waited for a worker while starts kept failing.

    Attributes:
        worker: what was being started (the program, or the handler's name).
        exit_status: the process's exit status, if it started and exited.
        stderr_tail: the last lines it wrote on stderr.
    """

    def __init__(
        self, worker: str, reason: str, exit_status: int | None, stderr_tail: list[str]
    ) -> None:
        self.worker = worker
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        text = f"worker {worker} could not start: {reason}"
        if exit_status is not None:
            text += f" (exit status {exit_status})"
        if stderr_tail:
            text += "; its stderr ended with: " + " | ".join(stderr_tail[-5:])
        super().__init__(text)

    @property
    def backs_off(self) -> bool:
        """Whether the pool should wait before the next start: not for a process that was
        SIGKILLed from outside (by an operator, the OOM killer, a test's chaos), which says
        nothing about the next start; yes for one that failed by itself."""
        return self.exit_status != -signal.SIGKILL


class AlreadyNamed(DspexActorsError, ValueError):
    """`register(name, ref)`: the actor already holds another local name (one name per actor).

    Attributes:
        ref: the actor.
        name: the name it holds.
        requested: the name that was refused.
    """

    def __init__(self, ref: Any, name: Any, requested: Any) -> None:
        self.ref = ref
        self.name = name
        self.requested = requested
        super().__init__(f"cannot register {requested!r}: {ref} is already registered as {name!r}")


class NameNotRegistered(DspexActorsError, LookupError):
    """`unregister(name)`: no live actor holds that local name."""

    def __init__(self, name: Any) -> None:
        self.name = name
        super().__init__(f"name {name!r} is not registered")


class RemoteError(DspexActorsError, RuntimeError):
    """A `Port.spawn` handler raised while serving a request; the worker keeps serving.

    Attributes:
        kind: the exception's class name in the worker (``"ValueError"``).
        message: ``str()`` of that exception.
        worker: the port that answered.
    """

    def __init__(self, kind: str, message: str, worker: str) -> None:
        self.kind = kind
        self.message = message
        self.worker = worker
        super().__init__(f"{kind} in worker {worker}: {message}")
