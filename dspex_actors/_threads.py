"""`KeptThreads`: run short jobs each in a thread of its own, reusing threads that are done.

A pool starts its workers, and closes the processes of the ones it removed, in threads of their
own: a start or a close may block for seconds, and the pool must not. Starting a thread costs
its caller more than it seems: `Thread.start` waits until the new thread has run, which, in a
busy process, is until the scheduler and the GIL let it. When the caller is the pool's thread,
every caller of the pool waits meanwhile. So a thread that finished its job waits for the next
one instead of ending, and handing a job to a waiting thread never waits.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable

from ._logging import area_logger, log_event

__all__ = ["Job", "KeptThreads", "parked_threads"]

Job = Callable[[], Callable[[], None] | None]
"""A job, as `KeptThreads.run` runs it. It may return what delivers its result: that runs in the
same thread, once the thread counts as waiting for the next job."""

_log = area_logger("threads")

_PARKED: set[int] = set()  # the idents of kept threads waiting for a job, in every owner


def parked_threads() -> frozenset[int]:
    """The idents of the threads waiting, in a running pool, for its next job (a worker's start
    or close). They belong to their pool (they end when it exits), not to whoever gave them
    their last job."""
    return frozenset(_PARKED)


class KeptThreads:
    """Threads that run jobs, each job in a thread of its own, as many at once as are handed
    over; up to `keep` of them, once done, wait for the next job instead of ending.

    Each job runs in a fresh `contextvars` context, as in a new thread (thread-local data
    persists from job to job). A thread counts as waiting before its job's result is
    delivered, so a job handed over on that delivery finds it. The waiting threads end at
    `close`; a job handed over after that gets a thread of its own, which ends with it.
    """

    __slots__ = (
        "_busy",
        "_changed",
        "_closed",
        "_ended",
        "_idle",
        "_keep",
        "_live",
        "_lock",
        "_name",
        "_queue",
    )

    def __init__(self, name: str, keep: int = 2) -> None:
        self._name = name
        self._keep = keep
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting on the queue, less the jobs queued for them
        self._live: set[threading.Thread] = set()  # every thread not yet ended
        self._busy: set[threading.Thread] = set()  # those running a job
        self._ended: list[threading.Thread] = []  # threads that ended since `close`
        self._changed = threading.Condition(self._lock)  # a thread ended, or took a job
        self._closed = False

    def run(self, job: Job) -> None:
        """Run `job` in a waiting thread, or in a new one if none waits."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(job)
                return
        # In a list the thread empties: a Thread keeps its arguments for as long as it runs.
        box = [job]
        thread = threading.Thread(target=self._serve, args=(box,), name=self._name, daemon=True)
        with self._lock:
            self._live.add(thread)
            self._busy.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._live.discard(thread)
                self._busy.discard(thread)
            raise

    def close(self, wait: float = 0.0, *, busy: bool = False) -> None:
        """End every waiting thread; a thread still running a job ends after it. Then wait up
        to `wait` seconds until they have ended, so that none outlives its owner's stop:
        every thread not running a job, and with `busy` those running one too (for an owner
        that knows their jobs are over, or about to be)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._queue.put(None)
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        me = threading.current_thread()
        with self._changed:
            self._changed.wait_for(
                lambda: not self._live - {me} - (set() if busy else self._busy), wait
            )
            ended, self._ended = self._ended, []
        for thread in ended:  # out of `_serve`: what is left of it is quick
            thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self, box: list[Job]) -> None:
        current = threading.current_thread()
        try:
            self._serve_jobs(box)
        finally:
            with self._changed:
                self._live.discard(current)
                self._busy.discard(current)
                if self._closed:
                    self._ended.append(current)
                self._changed.notify_all()

    def _serve_jobs(self, box: list[Job]) -> None:
        me = threading.get_ident()
        current = threading.current_thread()
        job: Job | None = box.pop()
        while job is not None:
            deliver = contextvars.Context().run(job)
            job = None  # what it held is not kept alive while this thread waits
            with self._lock:
                self._busy.discard(current)
                keep = not self._closed and self._idle < self._keep
                if keep:
                    self._idle += 1
                    _PARKED.add(me)
            if deliver is not None:
                try:
                    deliver()
                except Exception as exc:  # this thread is counted as waiting: it must wait
                    log_event(
                        _log,
                        "ERROR",
                        "kept_thread_error",
                        "a delivery in thread {thread} raised: {error!r}",
                        thread=self._name,
                        error=exc,
                        exc=exc,
                    )
            if not keep:
                return
            job = self._queue.get()
            _PARKED.discard(me)
            if job is not None:
                with self._changed:
                    self._busy.add(current)
                    self._changed.notify_all()
