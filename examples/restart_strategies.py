"""Restart strategies, intensity escalation and auto-shutdown, shown on live supervision trees.

Run it with `dspex-actors demo` or `python -m dspex_actors.examples.restart_strategies`.

For each strategy we start a supervisor with three workers `a`, `b`, `c`, crash `b`, and print
the tree before and after: the short id after each worker's class name changes when it was
restarted. Then a supervisor that restarts too often gives up and its parent restarts it, and a
supervisor with `auto_shutdown` stops when its significant child finishes its job.

Restart intensity is measured on an injected clock; the intensity demo uses a `FakeClock` that
never moves, so every crash lands in the same window and the output is the same on every run.
"""

from __future__ import annotations

from typing import Any

import pykka
from rich.console import Console

import dspex_actors as da
from dspex_actors.testing import FakeClock

console = Console(highlight=False)


class Worker(da.Actor):
    """A worker that crashes when told `"crash"` and finishes when told `"done"`."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("simulated crash")
        if message == "done":
            self.exit(da.NORMAL)
        return message


def child(sup: da.Supervisor, child_id: str) -> pykka.ActorRef[Any]:
    ref = sup.which_child(child_id).ref
    assert isinstance(ref, pykka.ActorRef), f"{child_id} is not running"
    return ref


def crash_and_wait(sup: da.Supervisor, child_id: str) -> None:
    """Crash a child and return once its supervisor has reacted."""
    ref = child(sup, child_id)
    ref.tell("crash")
    da.wait_exit(ref)  # its exit signal is now queued in the supervisor's inbox...
    sup.count_children()  # ...and this call is served after it, so the restart is done


def refs(sup: da.Supervisor) -> dict[str, str]:
    return {str(info.id): da.short_ref(info.ref) for info in sup.which_children()}


# --8<-- [start:show_strategy]
def show_strategy(strategy: da.Strategy) -> dict[str, bool]:
    sup = da.Supervisor.start(
        [Worker.child_spec(id=name) for name in ("a", "b", "c")], strategy=strategy
    )
    try:
        console.rule(f"[bold]{strategy.name}[/]: crash b")
        before = refs(sup)
        console.print(da.supervision_tree(sup, label=f"before ({strategy.name})"))
        crash_and_wait(sup, "b")
        after = refs(sup)
        console.print(da.supervision_tree(sup, label=f"after ({strategy.name})"))
        restarted = {name: before[name] != after[name] for name in ("a", "b", "c")}
        console.print(
            "restarted: " + ", ".join(n for n, r in restarted.items() if r),
            "| kept: " + (", ".join(n for n, r in restarted.items() if not r) or "none"),
        )
        return restarted
    finally:
        sup.stop()


# --8<-- [end:show_strategy]


def show_escalation() -> tuple[Any, int]:
    console.rule("[bold]intensity[/]: max_restarts=2 in 5 s, then escalation to the parent")
    clock = FakeClock()
    inner = da.Supervisor.child_spec(
        "inner", [Worker.child_spec(id="flaky")], max_restarts=2, max_seconds=5, clock=clock
    )
    top = da.Supervisor.start([inner], max_restarts=3, max_seconds=5)
    try:
        inner_ref = child(top, "inner")
        inner_sup = da.Supervisor.from_ref(inner_ref)
        console.print(da.supervision_tree(top, label="before"))
        for attempt in (1, 2):
            crash_and_wait(inner_sup, "flaky")
            console.print(f"crash {attempt}: inner restarted flaky (within intensity)")
        child(inner_sup, "flaky").tell("crash")
        reason = inner_sup.wait()  # the third crash in the window is one too many
        console.print(f"crash 3: inner gave up and exited with {reason!r}")
        top.count_children()  # served after inner's exit signal: top has restarted it
        console.print(da.supervision_tree(top, label="after: top restarted inner"))
        counts = top.count_children()
        return reason, counts.active
    finally:
        top.stop()


def show_auto_shutdown() -> Any:
    console.rule("[bold]auto_shutdown[/]: ANY_SIGNIFICANT, the significant job finishes")
    job = Worker.child_spec(id="job", restart=da.Restart.TRANSIENT, significant=True)
    helper = Worker.child_spec(id="helper")
    sup = da.Supervisor.start([helper, job], auto_shutdown=da.AutoShutdown.ANY_SIGNIFICANT)
    console.print(da.supervision_tree(sup, label="before"))
    child(sup, "job").tell("done")
    reason = sup.wait()
    console.print(f"job exited normally; the supervisor shut down with {reason!r}")
    return reason


def main() -> int:
    outcomes = {strategy: show_strategy(strategy) for strategy in da.Strategy}
    reason, active = show_escalation()
    checks = {
        "one_for_one restarts only b": outcomes[da.Strategy.ONE_FOR_ONE]
        == {"a": False, "b": True, "c": False},
        "one_for_all restarts a, b, c": outcomes[da.Strategy.ONE_FOR_ALL]
        == {"a": True, "b": True, "c": True},
        "rest_for_one restarts b, c": outcomes[da.Strategy.REST_FOR_ONE]
        == {"a": False, "b": True, "c": True},
        "inner escalated with SHUTDOWN and was restarted": reason is da.SHUTDOWN and active == 1,
        "auto_shutdown stopped the supervisor": show_auto_shutdown() is da.SHUTDOWN,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        console.print("[bold red]unexpected:[/] " + "; ".join(failed))
        return 1
    console.rule("[bold green]all demos behaved as OTP specifies[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
