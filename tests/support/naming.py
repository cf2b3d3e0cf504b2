"""Actors for the naming tests (the registry, local names).

- `Worker`: a registrable actor; told ``"crash"``, it crashes.
- `SlowToDie`: holds its exit open in ``on_stop`` until `release` is set, so a test sees an
  actor stopped but not yet cleaned up.
"""

from __future__ import annotations

import threading
from typing import Any

import dspex_actors as da

RELEASE_LIMIT = 10.0  # seconds `SlowToDie` waits for its release at most


class Worker(da.Actor):
    """A registrable actor; told `"crash"`, it crashes."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash requested")
        return message


class SlowToDie(da.Actor):
    """Holds its exit open in `on_stop` until `release` is set: stopped, not yet cleaned up."""

    def __init__(self, stopping: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.stopping = stopping
        self.release = release

    def on_stop(self) -> None:
        self.stopping.set()
        self.release.wait(RELEASE_LIMIT)
