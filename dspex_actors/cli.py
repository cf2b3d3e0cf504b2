"""The `dspex-actors` command.

dspex-actors demo      run the restart-strategies demo (examples/restart_strategies.py)
dspex-actors version   print the installed version
"""

from __future__ import annotations

import argparse
import importlib
from importlib.metadata import version

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dspex-actors` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="dspex-actors",
        description="Erlang/OTP supervision, naming and pools for Python.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="run the restart-strategies demo: live supervision trees, crashes, restarts"
    )
    commands.add_parser("version", help="print the installed version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(version("dspex-actors"))
        return 0
    # Imported by name: the examples ship as the `dspex_actors.examples` package.
    demo = importlib.import_module("dspex_actors.examples.restart_strategies")
    status: int = demo.main()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
