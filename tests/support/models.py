"""Settings shared by the stateful property tests (hypothesis state machines against models).

`machine_settings(examples, steps)`: the same every run (``derandomize``, no example
database), no deadline (the machines drive real actors and threads), the ``too_slow`` health
check off, and no explain phase (under Python 3.11 its line tracer makes a failure take
minutes to report).

For the supervisor models: `EXITS` (the exits a child can take), `label` (how an exit reason
is compared) and `is_normal` (OTP's normal exits).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, settings

import dspex_actors as da


def machine_settings(examples: int, steps: int) -> settings:
    """Settings for a state machine: `examples` runs of up to `steps` steps each."""
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )


# --- exit reasons, as the supervisor models compare them -----------------------------------------

CRASH = "crash"  # the label of an exception exit reason in the event log

EXITS: dict[str, Any] = {
    "crash": None,  # the probe raises RuntimeError
    "killed": da.KILLED,  # `kill`: no cleanup hook runs, so no "stop" event
    "other": ("error", "custom"),  # an exit with a reason that is not normal
    "normal": da.NORMAL,
    "shutdown": da.SHUTDOWN,
    "shutdown_info": da.Shutdown("bye"),
}
"""The exits a model's child can take, by name: the value is the reason it exits with."""


def label(reason: Any) -> Any:
    """How an exit reason is compared: any exception is a crash, other reasons as they are."""
    return CRASH if isinstance(reason, BaseException) or reason is None else reason


def is_normal(reason: Any) -> bool:
    """OTP: `normal`, `shutdown` and `{shutdown, _}` are the normal exits (written here for the
    models, not taken from the library they check)."""
    return reason is da.NORMAL or reason is da.SHUTDOWN or isinstance(reason, da.Shutdown)
