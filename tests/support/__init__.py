"""Helpers shared by the test files: import them from here, never from ``conftest``.

- `support.logs`: `EventLog` (lifecycle events in order) and `Records` (captured log records).
- `support.supervision`: `Probe` and its variants, the commands they obey, `FlakyStart`, and
  small accessors for supervisors (`probe_spec`, `ref_of`, `ids`, `counts`, `Supervisors`).
- `support.pools`: `Pools`, `Waiter`, leases held from the test thread, `ScriptedWorker` steps.
- `support.ports`: `Ports` (ports closed at teardown), tiny child programs, `Grandchildren`.
- `support.threads`: `in_thread`, to call a blocking public method from a helper thread.

The fixtures built on these live in ``tests/conftest.py``.
"""
