"""Handing a port over (`validate_port`, `safe_connect`) and owning one (`PortActor`).

`validate_port` and `safe_connect` check a port before it changes hands and classify every way
the hand-over can fail, with the DSPex V2 pool's error kinds (``checkout_failed``,
``connect_failed``, ``connect_exited``, ``connect_error``): a pool's checkout runs them for every
lease. `PortActor` is an `Actor` owning one port, so that an OS process can be a supervised
child.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from .._actor import Actor
from .._actor import _current as _current_actor
from .._errors import (
    ConnectError,
    ConnectExited,
    ConnectFailed,
    InvalidOption,
    NotAPort,
    PortClosed,
    PortNotOwned,
)
from ._port import Port, PortExited, PortInfo, calling_owner, owner_alive, same_owner

__all__ = ["PortActor", "check_port", "hand_over", "safe_connect", "validate_port"]


def validate_port(port: Any) -> PortInfo:
    """Check that `port` is an open port owned by the caller and return its info.

    Raises:
        NotAPort: `port` is not a `Port` (``:not_a_port``).
        PortClosed: it is closed or its process has exited (``:port_closed``).
        PortNotOwned: the calling actor or thread is not its owner (``:port_not_owned``).
    """
    check_port(port)
    info: PortInfo | None = port.info()
    if info is None:
        raise PortClosed(port)
    return info


def safe_connect(port: Any, target: Any) -> PortInfo:
    """Validate `port`, then hand it to `target`, classifying every failure.

    Returns the port's info as seen by the new owner.

    Raises:
        ConnectFailed: `reason` is the validation error (`NotAPort`, `PortClosed` or
            `PortNotOwned`, also the `__cause__`) when the port is not ours to give;
            ``"target_dead"`` when `target` is not alive; ``"process_died"`` when the port's
            process exited between the check and the hand-over.
        ConnectExited: `target` exited during the hand-over (the port is taken back).
        ConnectError: anything unexpected, as ``(kind, reason)``.
    """
    hand_over(port, target)
    info: PortInfo | None = port.info()
    if info is None:
        raise ConnectFailed("process_died")
    return info


def check_port(port: Any) -> None:
    """`validate_port` without building the `PortInfo` (a pool's checkout runs it each time)."""
    if not isinstance(port, Port):
        raise NotAPort(port)
    if not port._is_open():
        raise PortClosed(port)
    owner = port._owner
    caller = calling_owner()
    if owner is not caller and not same_owner(owner, caller):
        raise PortNotOwned(port, owner, caller)


def hand_over(port: Any, target: Any) -> None:
    """`safe_connect` without building the `PortInfo`: the same checks and the same errors."""
    # The common case first, in its cheapest form: the calling actor (a pool, in a checkout)
    # owns the open port and hands it to the thread running the checkout. Anything else, or
    # a port found closing, takes the full path below for its exact outcome.
    proc = getattr(_current_actor, "proc", None)
    if (
        proc is not None
        and isinstance(port, Port)
        and port._owner is proc.ref
        and target is threading.current_thread()
    ):
        with port._lock:
            if not port._closing and port._exit is None:
                port._owner = target
                return
    try:
        check_port(port)
    except (NotAPort, PortClosed, PortNotOwned) as exc:
        raise ConnectFailed(exc) from exc
    if not isinstance(target, pykka.ActorRef | threading.Thread):
        error = TypeError(f"a port's owner is an ActorRef or a Thread, got: {target!r}")
        raise ConnectFailed(error) from error
    # The thread running this is alive: only another target can be dead or die meanwhile.
    elsewhere = target is not threading.current_thread()
    if elsewhere and not owner_alive(target):
        raise ConnectFailed("target_dead")
    previous = port._owner
    try:
        with port._lock:
            if port._closing or port._exit is not None:
                raise PortClosed(port, "closed during connect")
            port._owner = target
        if elsewhere and not owner_alive(target):
            port._reclaim(previous)
            raise ConnectExited("target_exited")
    except PortClosed as exc:
        raise ConnectFailed("process_died") from exc
    except ConnectExited:
        raise
    except Exception as exc:
        port._reclaim(previous)  # the port is never lost on the way
        raise ConnectError(type(exc).__name__, exc) from exc


class PortActor(Actor):
    """An `Actor` owning one `Port`, so an OS process can be a supervised child.

    The process exiting (for any reason, including status 0) makes the actor exit with reason
    `PortExited(port, status)`, which a supervisor treats as a crash. Stopping or killing the
    actor closes the port (the process group is terminated and reaped).

    Talk to it through its proxy: ``ref.proxy().request(obj).get()``; the actor's thread owns
    the port, so requests are serialised through it.

    Args:
        argv: the program, for `Port.open`; or
        target: a callable, for `Port.spawn` (with `args`).
        close_timeout: seconds `close` waits for a graceful exit before signalling.
        **options: passed to `Port.open` / `Port.spawn` (`max_frame`, `codec`, ...).

    Example:
        >>> ref = PortActor.start(target=lambda request: request)
        >>> ref.proxy().request("hi", 30).get()
        'hi'
        >>> ref.stop()
        True
    """

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        target: Callable[..., Any] | None = None,
        args: Sequence[Any] = (),
        close_timeout: float = 2.0,
        **options: Any,
    ) -> None:
        super().__init__()
        if (argv is None) == (target is None):
            raise InvalidOption("argv", argv, "given alone, or target given alone")
        self._argv = argv
        self._target = target
        self._args = tuple(args)
        self._options = options
        self._close_timeout = close_timeout
        self.port: Port | None = None

    def on_start(self) -> None:
        if self._argv is not None:
            self.port = Port.open(self._argv, owner=self.actor_ref, **self._options)
        else:
            assert self._target is not None
            self.port = Port.spawn(self._target, *self._args, owner=self.actor_ref, **self._options)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PortExited) and message.port is self.port:
            self.exit(message)
        return None

    def request(self, obj: Any, timeout: float | None = 5.0) -> Any:
        """`Port.request` on the owned port."""
        assert self.port is not None
        return self.port.request(obj, timeout)

    def send(self, obj: Any, timeout: float | None = 5.0) -> None:
        """`Port.send` on the owned port."""
        assert self.port is not None
        self.port.send(obj, timeout)

    def recv(self, timeout: float | None = 5.0) -> Any:
        """`Port.recv` on the owned port."""
        assert self.port is not None
        return self.port.recv(timeout)

    def os_pid(self) -> int:
        """The OS process id of the port's program."""
        assert self.port is not None
        return self.port.os_pid

    def _dspex_on_exit(self, reason: Any) -> None:
        if self.port is not None:
            self.port.close(self._close_timeout)
