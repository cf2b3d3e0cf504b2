"""Recorders: `EventLog` for lifecycle events, `Records` for dspex_actors log records."""

from __future__ import annotations

import logging
import threading
from typing import Any


class EventLog:
    """A thread-safe, append-only list of events with a bounded wait for "n events seen"."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()

    def add(self, *event: Any) -> None:
        with self._cond:
            self._items.append(event)
            self._cond.notify_all()

    def events(self) -> list[tuple[Any, ...]]:
        with self._cond:
            return list(self._items)

    def kinds(self, kind: str) -> list[tuple[Any, ...]]:
        """Events of one kind (``"start"`` or ``"stop"``), without the kind."""
        return [e[1:] for e in self.events() if e[0] == kind]

    def names(self, kind: str) -> list[Any]:
        """The names in events of one kind, in order."""
        return [e[1] for e in self.events() if e[0] == kind]

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_len(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._items) >= n, timeout)


class Records(logging.Handler):
    """Structured dspex_actors log records captured during one test: each is the record's
    fields (``record.dspex``) plus ``event`` and ``level``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._items: list[dict[str, Any]] = []
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        item = dict(getattr(record, "dspex", {}))
        item["event"] = getattr(record, "event", None)
        item["level"] = record.levelname
        item["text"] = record.getMessage()
        with self._mutex:
            self._items.append(item)

    def all(self) -> list[dict[str, Any]]:
        with self._mutex:
            return list(self._items)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.all() if r.get("event") == event]
