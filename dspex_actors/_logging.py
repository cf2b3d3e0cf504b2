"""Logging: structured loguru records, off until the application turns them on.

dspex_actors logs like a library: `logger.disable("dspex_actors")` runs at import, and an
application shows our records with `logger.enable("dspex_actors")`. Every record about an event
carries `extra["event"]` (``child_started``, ``child_terminated``, ``shutdown_error``,
``reached_max_restart_intensity``, ``dead_letter``, ``actor_crashed``...) plus the fields that
event has (`supervisor`, `child_id`, `reason`, `offender`...), so a sink can filter or ship them
as data.

pykka logs through the standard `logging` module with only a NullHandler, so a crash in a plain
pykka actor is invisible by default. We forward pykka's records into loguru (under our name), so
they show up as soon as the application enables our logs.
"""

from __future__ import annotations

import logging
from typing import Any

from loguru import logger

__all__ = ["log", "log_event", "short_repr"]

log = logger
"""The loguru logger, as used inside dspex_actors (records are named after our modules)."""

_LEVELS = {
    logging.CRITICAL: "CRITICAL",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARNING",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
}


def short_repr(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters (ending in ``...``) for messages and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_event(level: str, event: str, message: str, /, **fields: Any) -> None:
    """Log one structured event record; `message` may use ``{field}`` placeholders."""
    exc = fields.pop("exc", None)
    bound = logger.bind(event=event, **fields)
    if exc is not None:
        bound = bound.opt(exception=exc)
    bound.log(level, message, **fields)


class _PykkaToLoguru(logging.Handler):
    """Forwards pykka's stdlib log records into loguru, keeping level and traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        level = _LEVELS.get(record.levelno, "INFO")
        exc = record.exc_info if record.exc_info and record.exc_info[0] else None
        logger.bind(event="pykka", source=record.name).opt(exception=exc).log(
            level, "{msg}", msg=record.getMessage()
        )


def _install_pykka_bridge() -> None:
    pykka_logger = logging.getLogger("pykka")
    if not any(isinstance(h, _PykkaToLoguru) for h in pykka_logger.handlers):
        # The logger's level is left alone: its effective level (WARNING by default) already
        # lets pykka's crash reports (ERROR) through, and lowering it would also show pykka's
        # debug chatter in any handler the application has on the root logger.
        pykka_logger.addHandler(_PykkaToLoguru())


_install_pykka_bridge()
