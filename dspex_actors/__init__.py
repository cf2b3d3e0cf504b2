"""dspex_actors: Erlang/OTP supervision, naming and pooling for Python, on pykka actors.

Import everything from here (or from `dspex_actors.testing` / `dspex_actors.bridge`); the
underscore modules are private and may move.
"""

from loguru import logger

from ._actor import (
    Actor,
    ActorHandle,
    current_actor,
    demonitor,
    exit_reason,
    kill,
    monitor,
    send_exit,
    wait_exit,
)
from ._child_spec import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    check_child_specs,
)
from ._clock import SYSTEM_CLOCK, Clock, SystemClock, TimerHandle
from ._errors import (
    AlreadyPresent,
    AlreadyStarted,
    CallbackReturnError,
    CallTimeout,
    CheckoutFailed,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    ChildSpecError,
    ConnectError,
    ConnectExited,
    ConnectFailed,
    DspexActorsError,
    DuplicateChildId,
    InvalidOption,
    MaxChildren,
    NameTaken,
    NoProc,
    NotAPort,
    PoolTimeout,
    PortClosed,
    PortNotOwned,
    ProtocolError,
    ServiceUnavailable,
    StartChildError,
    StartError,
    SupervisorStartError,
    WorkerCrashed,
)
from ._reasons import (
    KILLED,
    NOPROC,
    NORMAL,
    SHUTDOWN,
    Down,
    Exit,
    MonitorRef,
    Shutdown,
    is_normal_exit,
)

# -- supervision (lead) --
# -- naming (issue 3): add `from ._names import x as x` lines below --
# -- pools (issue 4): add `from ._pool import x as x` lines below --
# -- ports (issue 5): add `from ._port import x as x` lines below --

logger.disable("dspex_actors")

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "KILLED",
    "NOPROC",
    "NORMAL",
    "SHUTDOWN",
    "SYSTEM_CLOCK",
    "Actor",
    "ActorHandle",
    "AlreadyPresent",
    "AlreadyStarted",
    "AutoShutdown",
    "CallTimeout",
    "CallbackReturnError",
    "CheckoutFailed",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpec",
    "ChildSpecError",
    "ChildType",
    "Clock",
    "ConnectError",
    "ConnectExited",
    "ConnectFailed",
    "Down",
    "DspexActorsError",
    "DuplicateChildId",
    "Exit",
    "InvalidOption",
    "MaxChildren",
    "MonitorRef",
    "NameTaken",
    "NoProc",
    "NotAPort",
    "PoolTimeout",
    "PortClosed",
    "PortNotOwned",
    "ProtocolError",
    "Restart",
    "ServiceUnavailable",
    "Shutdown",
    "StartChildError",
    "StartError",
    "Strategy",
    "SupervisorStartError",
    "SystemClock",
    "TimerHandle",
    "WorkerCrashed",
    "check_child_specs",
    "current_actor",
    "demonitor",
    "exit_reason",
    "is_normal_exit",
    "kill",
    "monitor",
    "send_exit",
    "wait_exit",
]
