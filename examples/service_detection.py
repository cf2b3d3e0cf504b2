"""Service detection (the DSPex seed's Fix 5): find the live backend by name, then by registry.

Run it with `python -m dspex_actors.examples.service_detection`.

A supervisor runs three children, in order: a `Registry` named ``"dspex_registry"``, a
``SessionPool`` named ``"session_pool"`` and a ``Bridge`` named ``"bridge"``; the bridge also
registers itself in the registry from its `on_start`. `detect_service(["session_pool",
"bridge"], registry=...)` then picks the backend exactly as DSPex's `detect_running_service`
does: a live pool first, then a live bridge, then the registry, else "no service available".

We watch the choice change as the pool crashes (the supervisor restarts it under the same name,
so detection finds the new one), as the pool is terminated (the bridge takes over), as the
bridge loses its local name (the registry still knows it), and when nothing is left.
"""

from __future__ import annotations

from typing import Any

import dspex_actors as da

CANDIDATES = ["session_pool", "bridge"]


class SessionPool(da.Actor):
    """Stands in for the session pool; crashes when told ``"crash"``."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("simulated pool crash")
        return f"pool handled {message!r}"


class Bridge(da.Actor):
    """Stands in for the single-process bridge; also registers itself in the registry."""

    def on_start(self) -> None:
        registry_ref = da.whereis("dspex_registry")
        if registry_ref is not None:
            da.Registry.from_ref(registry_ref).register("bridge", self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        return f"bridge handled {message!r}"


# --8<-- [start:detect]
def detect(label: str) -> da.Service | None:
    """Detect the backend and print what was chosen, or why nothing was."""
    registry_ref = da.whereis("dspex_registry")
    registry = da.Registry.from_ref(registry_ref) if registry_ref is not None else None
    try:
        service = da.detect_service(CANDIDATES, registry=registry)
    except da.ServiceUnavailable as exc:
        print(f"{label:<34} -> {exc}")
        return None
    answer = service.ref.ask("query", timeout=5)
    print(
        f"{label:<34} -> {service.name} ({service.source}, {da.short_ref(service.ref)}): {answer}"
    )
    return service


# --8<-- [end:detect]


def main() -> int:
    # --8<-- [start:tree]
    sup = da.Supervisor.start(
        [
            da.Registry.child_spec(da.Keys.UNIQUE, id="registry", name="dspex_registry"),
            SessionPool.child_spec(id="pool", name="session_pool"),
            Bridge.child_spec(id="bridge", name="bridge"),
        ]
    )
    # --8<-- [end:tree]
    chosen: list[tuple[Any, str] | None] = []
    try:
        first = detect("pool and bridge running")
        chosen.append(_choice(first))
        if first is not None:
            first.ref.tell("crash")
            da.wait_exit(first.ref)  # the supervisor now has the exit signal in its inbox...
            sup.count_children()  # ...and has restarted the pool once this call is answered
            again = detect("after the pool crashed")
            chosen.append(_choice(again))
            if again is not None and again.ref is first.ref:
                print("error: detection returned the crashed pool")
                return 1

        sup.terminate_child("pool")
        chosen.append(_choice(detect("pool terminated")))

        da.unregister("bridge")  # the bridge keeps running, but loses its local name
        chosen.append(_choice(detect("bridge's local name removed")))

        sup.terminate_child("bridge")
        chosen.append(_choice(detect("pool and bridge terminated")))

        sup.restart_child("pool")
        chosen.append(_choice(detect("pool restarted by hand")))
    finally:
        sup.stop()
    expected = [
        ("session_pool", "local"),
        ("session_pool", "local"),
        ("bridge", "local"),
        ("bridge", "registry"),
        None,
        ("session_pool", "local"),
    ]
    if chosen != expected:
        print(f"error: expected {expected}, got {chosen}")
        return 1
    return 0


def _choice(service: da.Service | None) -> tuple[Any, str] | None:
    return (service.name, service.source) if service is not None else None


if __name__ == "__main__":
    raise SystemExit(main())
