"""Settings shared by the stateful property tests (hypothesis state machines against models).

`machine_settings(examples, steps)`: the same every run (``derandomize``, no example
database), no deadline (the machines drive real actors and threads), the ``too_slow`` health
check off, and no explain phase (under Python 3.11 its line tracer makes a failure take
minutes to report).
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings


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
