"""Runnable examples; each module has `main() -> int` and is run by tests/test_examples.py.

Installed as `dspex_actors.examples`, so `dspex-actors demo` works from a plain install.
"""
