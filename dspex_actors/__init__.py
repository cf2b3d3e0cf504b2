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
from ._dynamic_supervisor import DynamicSupervisor as DynamicSupervisor
from ._tree import short_ref as short_ref
from ._tree import supervision_tree as supervision_tree
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
from ._supervisor import RESTARTING as RESTARTING
from ._supervisor import BadStartReturn as BadStartReturn
from ._supervisor import ChildCounts as ChildCounts
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import Supervisor as Supervisor

# -- naming (issue 3): add `from ._names import x as x` lines below --
from ._errors import AlreadyNamed as AlreadyNamed
from ._errors import NameNotRegistered as NameNotRegistered
from ._names import Via as Via
from ._names import register as register
from ._names import unregister as unregister
from ._names import whereis as whereis
from ._registry import Entry as Entry
from ._registry import Keys as Keys
from ._registry import Registered as Registered
from ._registry import Registry as Registry
from ._registry import Unregistered as Unregistered
from ._service import Service as Service
from ._service import detect_service as detect_service
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
    "AlreadyNamed",
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
    "Entry",
    "Exit",
    "InvalidOption",
    "Keys",
    "MaxChildren",
    "MonitorRef",
    "NameNotRegistered",
    "NameTaken",
    "NoProc",
    "NotAPort",
    "PoolTimeout",
    "PortClosed",
    "PortNotOwned",
    "ProtocolError",
    "Registered",
    "Registry",
    "Restart",
    "Service",
    "ServiceUnavailable",
    "Shutdown",
    "StartChildError",
    "StartError",
    "Strategy",
    "SupervisorStartError",
    "SystemClock",
    "TimerHandle",
    "Unregistered",
    "Via",
    "WorkerCrashed",
    "check_child_specs",
    "current_actor",
    "demonitor",
    "detect_service",
    "exit_reason",
    "is_normal_exit",
    "kill",
    "monitor",
    "register",
    "send_exit",
    "unregister",
    "wait_exit",
    "whereis",
]
