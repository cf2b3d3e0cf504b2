"""Helpers shared by the bench scripts (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ops_per_second", "quiet_logs"]


def quiet_logs() -> None:
    """Silence dspex_actors' log records for the measurement.

    The library reports every crash (with its traceback) and every restart through the
    standard `logging` module; with nothing configured, Python's last-resort handler writes
    each error to stderr. The benches measure the mechanics, not the cost of formatting and
    writing thousands of tracebacks, so they switch the records off (the baselines log
    nothing either).
    """
    logging.getLogger("dspex_actors").setLevel(logging.CRITICAL + 1)


def ops_per_second(clients: int, per_client: int, op: Callable[[], Any]) -> float:
    """Operations per second with `clients` threads each doing `op` `per_client` times.

    The threads start together behind a barrier; the clock runs from their release until the
    last one finishes.
    """
    barrier = threading.Barrier(clients + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(per_client):
            op()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - start)
