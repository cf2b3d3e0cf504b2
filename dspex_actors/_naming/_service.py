"""`detect_service`: find the first live service among candidates (DSPex's detection, generalised).

DSPex picked its backend by looking up ``SessionPool`` and then ``Bridge`` in a Registry, which
failed while the registry's cleanup lagged behind restarts ("Python bridge not available" during
test start-up). The fix: prefer live local names, in order, and fall back to the registry.
`detect_service` is that fix for any list of candidates:

1. each candidate in order, as a local name (`whereis`): the first live holder wins;
2. then, if a `registry` is given, each candidate in order as a key in it: the first live entry
   wins;
3. else `ServiceUnavailable`, whose message names every candidate and why it was rejected:
   ``no service available: tried 'session_pool' (not registered; not in registry), 'bridge'
   (dead; not in registry)``. ``dead`` means "registered, but its actor has stopped".

The service is checked to be alive right before it is returned, so an actor that stopped during
detection is never returned. It can still stop right after: a caller must expect `NoProc`.

When not to use it: when there is one service with one name, `whereis` says it all.

Example:
    >>> import dspex_actors as da
    >>> class Bridge(da.Actor):
    ...     pass
    >>> bridge = Bridge.start()
    >>> da.register("bridge", bridge)
    >>> da.detect_service(["session_pool", "bridge"]).name
    'bridge'
    >>> bridge.stop()
    True
    >>> da.detect_service(["session_pool", "bridge"])
    Traceback (most recent call last):
    ...
    dspex_actors._errors.ServiceUnavailable: no service available: tried 'session_pool' \
(not registered), 'bridge' (not registered)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs
import pykka

from .._errors import InvalidOption, NoProc, ServiceUnavailable
from . import _names
from ._registry import Registry

__all__ = ["Service", "detect_service"]


@attrs.frozen
class Service:
    """The service `detect_service` found.

    Attributes:
        name: the candidate that matched.
        ref: its live actor (live when it was returned; see the module docs).
        source: ``"local"`` (a local name) or ``"registry"`` (the registry fallback).
    """

    name: Any
    ref: pykka.ActorRef[Any] = attrs.field(repr=str)
    source: Literal["local", "registry"] = "local"


def detect_service(candidates: Iterable[Any], *, registry: Registry | None = None) -> Service:
    """Return the first live service among `candidates`: local names first, then `registry`.

    Args:
        candidates: names (or registry keys) in order of preference, e.g.
            ``["session_pool", "bridge"]``.
        registry: a `Registry` whose entries under the candidate keys are the fallback.

    Raises:
        ServiceUnavailable: no candidate is live; `exc.tried` lists ``(candidate, why)``.
        InvalidOption: `candidates` is a string, a mapping, not iterable or empty, or `registry`
            is not a `Registry`.
    """
    names = _candidates_option(candidates)
    if registry is not None and not isinstance(registry, Registry):
        raise InvalidOption("registry", registry, "a Registry or None", code="invalid_registry")
    why: dict[int, list[str]] = {i: [] for i in range(len(names))}
    for i, name in enumerate(names):
        ref = _names.holder_of(name)
        if ref is None:
            why[i].append("not registered")
        elif _alive(ref):
            return Service(name, ref, "local")
        else:
            why[i].append("dead")
    if registry is not None:
        for i, name in enumerate(names):
            try:
                entries = registry._raw_entries(name)
            except NoProc:
                why[i].append("registry not running")
                continue
            live = next((e.ref for e in entries if _alive(e.ref)), None)
            if live is not None:
                return Service(name, live, "registry")
            why[i].append("dead in registry" if entries else "not in registry")
    raise ServiceUnavailable([(name, "; ".join(why[i])) for i, name in enumerate(names)])


def _alive(ref: pykka.ActorRef[Any]) -> bool:
    """The last check before a ref is returned: a service that stopped is never handed out."""
    return ref.is_alive()


def _candidates_option(candidates: Any) -> list[Any]:
    if isinstance(candidates, str | bytes | Mapping) or not isinstance(candidates, Iterable):
        raise InvalidOption(
            "candidates", candidates, "a list of names, e.g. ['session_pool', 'bridge']"
        )
    names = list(candidates)
    if not names:
        raise InvalidOption("candidates", names, "a non-empty list of names")
    return names
