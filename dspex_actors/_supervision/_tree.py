"""`supervision_tree`: a supervision tree as a rich `Tree`, for terminals and examples.

>>> from rich.console import Console
>>> Console().print(supervision_tree(sup))          # doctest: +SKIP
Supervisor app (one_for_one)
├── db      worker      running  Db 1f3a9c
└── cache   supervisor  running  Supervisor 77b0e2
    └── ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from ._base import RESTARTING, ChildInfo
from ._dynamic import DynamicSupervisor, _DynamicSupervisorActor
from ._supervisor import Supervisor, _SupervisorActor

if TYPE_CHECKING:
    from rich.tree import Tree

__all__ = ["short_ref", "supervision_tree"]


def short_ref(ref: Any) -> str:
    """`Class abc123`: the actor class and the last 6 hex digits of its URN."""
    if isinstance(ref, pykka.ActorRef):
        cls = ref.actor_class
        if issubclass(cls, _SupervisorActor):
            name = "Supervisor"
        elif issubclass(cls, _DynamicSupervisorActor):
            name = "DynamicSupervisor"
        else:
            name = cls.__name__
        return f"{name} {ref.actor_urn[-6:]}"
    return repr(ref)


def _label(info: ChildInfo) -> str:
    if isinstance(info.ref, pykka.ActorRef):
        state = "[green]running[/]" if info.ref.is_alive() else "[red]exited[/]"
        who = short_ref(info.ref)
    elif info.ref is RESTARTING:
        state, who = "[yellow]restarting[/]", ""
    else:
        state, who = "[dim]stopped[/]", ""
    name = "(dynamic)" if info.id is None else str(info.id)
    return f"[bold]{name}[/]  {info.type.value}  {state}  {who}".rstrip()


def supervision_tree(
    sup: Supervisor | DynamicSupervisor, label: str | None = None, timeout: float = 5.0
) -> Tree:
    """Render `sup` and, recursively, its child supervisors as a `rich.tree.Tree`."""
    from rich.tree import Tree  # only when a tree is drawn: rich takes a while to import

    title = label or f"[bold cyan]{type(sup).__name__}[/] {short_ref(sup.actor_ref)}"
    tree = Tree(title)
    _add_children(tree, sup, timeout)
    return tree


def _add_children(tree: Tree, sup: Supervisor | DynamicSupervisor, timeout: float) -> None:
    try:
        children = sup.which_children(timeout)
    except pykka.ActorDeadError:
        tree.add("[red](not running)[/]")
        return
    for info in children:
        branch = tree.add(_label(info))
        ref = info.ref
        if isinstance(ref, pykka.ActorRef) and ref.is_alive():
            if issubclass(ref.actor_class, _SupervisorActor):
                _add_children(branch, Supervisor.from_ref(ref), timeout)
            elif issubclass(ref.actor_class, _DynamicSupervisorActor):
                _add_children(branch, DynamicSupervisor.from_ref(ref), timeout)
