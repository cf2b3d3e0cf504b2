"""The `dspex-actors` command.

dspex-actors demo      run the demos: restart strategies on live supervision trees
                       (examples/restart_strategies.py), then DSPex's session pool of DSPy
                       workers under a chaos monkey (examples/bridge_demo.py)
dspex-actors version   print the installed version

``demo`` takes the bridge demo's flags (``--duration``, ``--workers``, ``--sessions``,
``--chaos``) and ``--only strategies|bridge`` to run one part.
"""

from __future__ import annotations

import argparse
import importlib
from importlib.metadata import version
from types import ModuleType

__all__ = ["main"]

PARTS = ("strategies", "bridge")
"""The parts of ``dspex-actors demo``, in the order they run."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dspex-actors` command; returns the exit status."""
    bridge = _example("bridge_demo")  # its flags are the demo command's
    parser = argparse.ArgumentParser(
        prog="dspex-actors",
        description="Erlang/OTP supervision, naming and pools for Python.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the demos: restart strategies on live supervision trees, then DSPex's "
        "session pool of DSPy workers under a chaos monkey",
    )
    demo.add_argument("--only", choices=PARTS, help="run only this part of the demo")
    bridge.add_options(demo, duration=bridge.FULL_DURATION)
    commands.add_parser("version", help="print the installed version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(version("dspex-actors"))
        return 0
    statuses: list[int] = []
    if args.only in (None, "strategies"):
        statuses.append(_example("restart_strategies").main())
    if args.only in (None, "bridge"):
        statuses.append(bridge.run_from(args))
    return max(statuses)


def _example(name: str) -> ModuleType:
    # Imported by name: the examples ship as the `dspex_actors.examples` package (the
    # repository's examples/ folder), which type checkers do not see as one.
    return importlib.import_module(f"dspex_actors.examples.{name}")


if __name__ == "__main__":
    raise SystemExit(main())
