"""Logging: structured records through the standard `logging` module, where applications look.

Every record dspex_actors writes goes to a standard-library logger under ``dspex_actors``
(``dspex_actors.actor``, ``dspex_actors.supervisor``, ``dspex_actors.naming``,
``dspex_actors.pool``, ``dspex_actors.port``, ``dspex_actors.process_pool``), so
`logging.basicConfig`, `logging.config.dictConfig` and structlog capture them, and with no
configuration at all Python's last-resort handler still prints warnings and errors to stderr.
Nothing is installed on the root logger or on anyone else's logger.

What is shown at which level:

- **ERROR**: crash reports (``actor_crashed``, a supervised child's abnormal exit
  ``child_terminated``), a supervisor giving up (``reached_max_restart_intensity``), failed
  (re)starts, pool callbacks that raised or returned something invalid.
- **WARNING**: a pool removing a worker for an abnormal reason (``pool_worker_removed``), dead
  letters, a `ProcessPool` retrying a crashed request.
- **INFO**: a child restarted (``child_restarted``), an auto-shutdown, what a worker process
  writes on stderr (``port_stderr``), a worker process exiting on its own with a non-zero
  status.
- **DEBUG**: progress chatter (a child started, a name freed, a port exiting as asked).

Each record carries ``record.event`` (the event name above) and ``record.dspex`` (a dict of the
event's fields: ``supervisor``, ``child_id``, ``reason``, ``offender``, ``pool``...); the
fields are also set as attributes of the record where they do not clash with `LogRecord`'s own,
so a JSON formatter can ship them as data.

Applications on loguru call `log_to_loguru()` once: from then on our records go to loguru (with
the same level, the fields in ``extra`` and the traceback) and no longer propagate to the
standard handlers, so nothing is shown twice. `log_to_loguru(False)` undoes it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

__all__ = ["area_logger", "exception_text", "log_event", "log_to_loguru", "short_repr"]

ROOT: Final = "dspex_actors"

_LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

# What a LogRecord already has (and `extra` may not overwrite: logging raises KeyError).
_RESERVED: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def area_logger(area: str) -> logging.Logger:
    """The standard logger of one area of the library: ``dspex_actors.<area>``."""
    return logging.getLogger(f"{ROOT}.{area}")


def short_repr(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters (ending in ``...``) for messages and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exception_text(exc: BaseException) -> str:
    """``str(exc)``; if that raises (a broken ``__str__``, one returning a non-string), what
    `traceback` prints in its place: ``<exception str() failed>``."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def log_event(
    logger: logging.Logger, level: str, event: str, message: str, /, **fields: Any
) -> None:
    """Write one structured event record; `message` may use ``{field}`` placeholders.

    Costs one level check when the level is not enabled. ``exc=`` (an exception) attaches
    its traceback and is not a field.
    """
    levelno = _LEVELS[level]
    if not logger.isEnabledFor(levelno):
        return
    exc = fields.pop("exc", None)
    extra: dict[str, Any] = {k: v for k, v in fields.items() if k not in _RESERVED}
    extra["event"] = event
    extra["dspex"] = fields
    exc_info = (type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
    try:
        text = message.format(**fields)
    except (KeyError, IndexError, ValueError):  # a template that does not fit its fields
        text = f"{message} {fields!r}"
    logger.log(levelno, "%s", text, exc_info=exc_info, extra=extra, stacklevel=2)


# --- loguru, for the applications that use it --------------------------------------------------


class _ToLoguru(logging.Handler):
    """Hands our records to loguru with their level, fields and traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger as loguru_logger

        try:
            level: str | int = loguru_logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        fields = getattr(record, "dspex", {})
        exc = record.exc_info if record.exc_info and record.exc_info[0] else None
        loguru_logger.bind(logger=record.name, event=getattr(record, "event", None), **fields).opt(
            exception=exc
        ).log(level, "{}", record.getMessage())


_loguru_handler: _ToLoguru | None = None


def log_to_loguru(enabled: bool = True) -> None:
    """Send dspex_actors' records to loguru instead of the standard handlers (or back).

    Call it once at start-up in an application that logs with loguru. Our records then reach
    loguru's sinks (``record["extra"]`` holds ``event`` and the event's fields) and stop
    propagating to the standard library's handlers, so nothing is shown twice. Levels are
    those of the ``dspex_actors`` loggers (INFO and above by default: set
    ``logging.getLogger("dspex_actors").setLevel(logging.DEBUG)`` for the chatter).
    """
    global _loguru_handler
    root = logging.getLogger(ROOT)
    if enabled and _loguru_handler is None:
        _loguru_handler = _ToLoguru()
        root.addHandler(_loguru_handler)
        root.propagate = False
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    elif not enabled and _loguru_handler is not None:
        root.removeHandler(_loguru_handler)
        _loguru_handler = None
        root.propagate = True
