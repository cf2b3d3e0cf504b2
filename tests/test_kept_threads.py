"""`KeptThreads`: each job in a thread of its own, done threads reused, ended at `close`.

- jobs handed over one after another run in one thread; jobs handed over together each get
  a thread (none waits for another), and only `keep` threads stay waiting afterwards;
- a job's delivery runs in its thread once that thread counts as waiting (a job handed over
  by the delivery finds it), and waiting threads are listed by `parked_threads`;
- each job runs in a fresh `contextvars` context; a job's arguments are not kept alive by
  the thread waiting after it;
- `close` ends the waiting threads; a job handed over after it gets a thread that ends with it;
- a delivery that raises is logged, and its thread waits for the next job all the same.

Every wait is bounded and on a condition (events, thread liveness).
"""

from __future__ import annotations

import contextvars
import functools
import gc
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

from dspex_actors._threads import KeptThreads, parked_threads
from dspex_actors.testing import wait_for

WAIT = 10.0
NAME = "dspex-test-kept"

pytestmark = pytest.mark.leak_check


def named() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == NAME}


@pytest.fixture
def kept() -> Iterator[KeptThreads]:
    threads = KeptThreads(NAME, keep=2)
    try:
        yield threads
    finally:
        threads.close()
        wait_for(lambda: not named(), WAIT)


def ran(threads: KeptThreads) -> threading.Thread:
    """Run one job; return the thread it ran in, once that thread waits for the next."""
    done = threading.Event()
    where: list[threading.Thread] = []

    def job() -> Callable[[], None]:
        where.append(threading.current_thread())
        return done.set

    threads.run(job)
    assert done.wait(WAIT)
    return where[0]


def test_jobs_one_after_another_run_in_one_thread(kept: KeptThreads) -> None:
    first = ran(kept)
    for _ in range(5):
        assert ran(kept) is first
    assert named() == {first}
    assert first.ident in parked_threads()


def test_jobs_together_each_get_a_thread_and_only_keep_stay_waiting(kept: KeptThreads) -> None:
    gate = threading.Event()
    running = threading.Semaphore(0)

    def job() -> None:
        running.release()
        assert gate.wait(WAIT)

    for _ in range(4):
        kept.run(job)
    for _ in range(4):  # all four run at once: none waits for another's thread
        assert running.acquire(timeout=WAIT)
    assert len(named()) == 4
    gate.set()
    wait_for(lambda: len(named()) == 2, WAIT)
    wait_for(lambda: len(parked_threads() & {t.ident for t in named()}) == 2, WAIT)


def test_a_job_handed_over_by_a_delivery_finds_the_thread_waiting(kept: KeptThreads) -> None:
    second_ran = threading.Event()
    where: list[threading.Thread] = []

    def second() -> None:
        where.append(threading.current_thread())
        second_ran.set()

    def first() -> Callable[[], None]:
        where.append(threading.current_thread())
        return lambda: kept.run(second)

    kept.run(first)
    assert second_ran.wait(WAIT)
    assert where[0] is where[1]


def test_each_job_runs_in_a_fresh_context(kept: KeptThreads) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    set_done, done = threading.Event(), threading.Event()

    def setter() -> Callable[[], None]:
        var.set("set by the first job")
        return set_done.set

    def reader() -> Callable[[], None]:
        seen.append(var.get())
        return done.set

    thread = ran(kept)  # the thread all three jobs run in
    kept.run(setter)
    assert set_done.wait(WAIT)
    kept.run(reader)
    assert done.wait(WAIT)
    assert seen == ["unset"]
    assert named() == {thread}


def test_a_waiting_thread_keeps_nothing_of_its_last_job_alive(kept: KeptThreads) -> None:
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    done = threading.Event()

    def job(held: Payload = payload) -> Callable[[], None]:
        assert held is not None
        return done.set

    kept.run(job)
    assert done.wait(WAIT)
    del job, payload
    wait_for(lambda: gc.collect() is not None and ref() is None, WAIT)


def test_close_ends_the_waiting_threads_and_later_jobs_get_threads_that_end() -> None:
    threads = KeptThreads(NAME, keep=2)
    first = ran(threads)
    threads.close()
    first.join(WAIT)
    assert not first.is_alive()
    assert first.ident not in parked_threads()
    late = ran(threads)
    assert late is not first
    late.join(WAIT)
    assert not late.is_alive()


def test_close_with_wait_returns_once_the_waiting_threads_have_ended() -> None:
    threads = KeptThreads(NAME, keep=2)
    releases = [threading.Event(), threading.Event()]
    where: list[threading.Thread] = []
    parked = threading.Event()

    def job(release: threading.Event) -> Callable[[], None]:
        where.append(threading.current_thread())
        release.wait(WAIT)
        return parked.set

    for release in releases:  # handed over together: a thread each
        threads.run(functools.partial(job, release))
    wait_for(lambda: len(where) == 2, WAIT)
    releases[0].set()
    assert parked.wait(WAIT)  # the first thread waits for the next job; the second is busy
    threads.close(wait=0.2)  # the busy one is waited for this long only
    assert not where[0].is_alive()  # ended before close returned
    assert where[1].is_alive()  # still busy
    releases[1].set()
    where[1].join(WAIT)
    assert not where[1].is_alive()


def test_close_waits_for_a_busy_thread_only_when_told_its_job_is_over() -> None:
    """A job may block for long (a worker's start): `close(wait)` does not wait for it. An
    owner that knows the jobs are over (a pool whose closes are done) passes `busy=True`, and
    `close` returns once the thread has finished its job and ended."""
    threads = KeptThreads(NAME, keep=2)
    release = threading.Event()
    where: list[threading.Thread] = []

    def job() -> None:
        where.append(threading.current_thread())
        release.wait(WAIT)

    threads.run(job)
    wait_for(lambda: where, WAIT)
    threads.close(wait=WAIT)  # returns at once: its only thread is busy
    assert where[0].is_alive()
    closer = threading.Thread(target=threads.close, kwargs={"wait": WAIT, "busy": True})
    closer.start()
    try:
        closer.join(0.2)
        assert closer.is_alive()  # waiting for the busy thread
    finally:
        release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert not where[0].is_alive()  # it ended before close returned


def test_a_delivery_that_raises_is_logged_and_its_thread_serves_the_next_job(
    kept: KeptThreads, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ValueError("delivery broke")

    raised = threading.Event()

    def job() -> Callable[[], None]:
        def deliver() -> None:
            raised.set()
            broken()

        return deliver

    kept.run(job)
    assert raised.wait(WAIT)
    wait_for(
        lambda: any(r.msg and "delivery broke" in r.getMessage() for r in caplog.records), WAIT
    )
    thread = next(iter(named()))
    # It counted itself as waiting before the delivery: a job handed to it must still run.
    assert ran(kept) is thread
