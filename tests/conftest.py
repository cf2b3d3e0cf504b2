"""Fixtures shared by the test files. The helpers they are built on live in `tests/support/`.

- `sups`: starts supervisors and stops any still running at teardown, so the autouse leak
  check never sees a leftover.
- `log`: an `EventLog` for `Probe` actors; `clock`: a `FakeClock` at 100.0.
- `records`: the dspex_actors log records emitted during the test.
- `pools`: starts pools and stops any still running at teardown; `process_pools` the same for
  `ProcessPool`s (each returned once its workers are idle), `spools` for `SessionPool`s.
- `ports`: ports (a list of `Port`) closed at teardown; `grandchildren`: detached grandchild
  processes a test's workers started, killed at teardown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from dspex_actors.testing import FakeClock

from support.lifecycle import ProcessPools
from support.logs import EventLog, Records
from support.pools import Pools
from support.ports import Grandchildren, Ports
from support.supervision import Supervisors

if TYPE_CHECKING:
    from support.sessions import SessionPools


@pytest.fixture
def sups() -> Iterator[Supervisors]:
    s = Supervisors()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def log() -> EventLog:
    return EventLog()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


@pytest.fixture
def records() -> Iterator[Records]:
    captured = Records()
    logger = logging.getLogger("dspex_actors")
    level = logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)


@pytest.fixture
def pools() -> Iterator[Pools]:
    p = Pools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def process_pools() -> Iterator[ProcessPools]:
    p = ProcessPools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def spools() -> Iterator[SessionPools]:
    from support.sessions import SessionPools  # the bridge, imported by its tests only

    p = SessionPools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def ports() -> Iterator[Ports]:
    p = Ports()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def grandchildren() -> Iterator[Grandchildren]:
    g = Grandchildren()
    try:
        yield g
    finally:
        g.kill()
