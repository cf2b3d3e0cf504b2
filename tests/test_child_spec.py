"""ChildSpec validation and defaults, `Actor.child_spec` and `Supervisor.child_spec`: typed errors,
up front.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors import BRUTAL_KILL, INFINITY, ChildSpec, ChildType, Restart

from support.logs import EventLog
from support.supervision import Probe


def start_nothing() -> None:
    return None


def test_a_spec_without_id_is_rejected_as_missing_id() -> None:
    with pytest.raises(da.ChildSpecError, match="needs an id") as info:
        ChildSpec(None, start_nothing)
    assert (info.value.code, info.value.field, info.value.value) == ("missing_id", "id", None)


def test_a_spec_without_start_is_rejected_as_missing_start() -> None:
    with pytest.raises(da.ChildSpecError, match="needs a start function") as info:
        ChildSpec("a", None)  # type: ignore[arg-type]
    assert (info.value.code, info.value.field) == ("missing_start", "start")


def test_a_start_that_is_not_callable_is_rejected_as_invalid_mfa() -> None:
    with pytest.raises(da.ChildSpecError, match=r"start must be callable, got: 'Probe\.start'"):
        ChildSpec("a", "Probe.start")  # type: ignore[arg-type]


def test_an_unhashable_id_is_rejected_naming_the_value() -> None:
    with pytest.raises(da.ChildSpecError, match=r"id must be hashable, got: \['a'\]") as info:
        ChildSpec(["a"], start_nothing)
    assert info.value.field == "id"


def test_args_must_be_a_tuple_and_a_list_is_converted() -> None:
    assert ChildSpec("a", start_nothing, args=[1, 2]).args == (1, 2)
    with pytest.raises(da.ChildSpecError, match="args must be a tuple, got: 'xy'") as info:
        ChildSpec("a", start_nothing, args="xy")
    assert info.value.field == "args"


def test_kwargs_must_be_a_mapping_with_str_keys() -> None:
    with pytest.raises(da.ChildSpecError, match=r"kwargs must be a mapping of str, got: \{1: 2\}"):
        ChildSpec("a", start_nothing, kwargs={1: 2})
    with pytest.raises(da.ChildSpecError, match="kwargs must be a mapping of str"):
        ChildSpec("a", start_nothing, kwargs=[("x", 1)])


def test_defaults_are_permanent_worker_5s_not_significant_and_infinity_for_supervisors() -> None:
    worker = ChildSpec("w", start_nothing)
    assert worker.restart is Restart.PERMANENT
    assert worker.type is ChildType.WORKER
    assert worker.shutdown == 5.0
    assert worker.significant is False
    assert worker.args == ()
    assert worker.kwargs == {}
    sup = ChildSpec("s", start_nothing, type=ChildType.SUPERVISOR)
    assert sup.shutdown is INFINITY
    # An explicit shutdown wins over the type's default.
    assert ChildSpec("s", start_nothing, type="supervisor", shutdown=1.5).shutdown == 1.5


@pytest.mark.parametrize("value", ["sometimes", 1, None, Restart])
def test_an_invalid_restart_type_names_the_field_and_value(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match=f"restart must be one of .*got: {value!r}") as info:
        ChildSpec("a", start_nothing, restart=value)
    assert (info.value.code, info.value.field, info.value.value) == (
        "invalid_restart_type",
        "restart",
        value,
    )


@pytest.mark.parametrize("value", [-10, -0.1, math.nan, math.inf, "soon", True, None])
def test_an_invalid_shutdown_names_the_field_and_value(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="shutdown must be a number of seconds") as info:
        ChildSpec("a", start_nothing, shutdown=value)
    assert (info.value.code, info.value.field) == ("invalid_shutdown", "shutdown")
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["manager", 0, None])
def test_an_invalid_child_type_names_the_field_and_value(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match=f"type must be one of .*got: {value!r}") as info:
        ChildSpec("a", start_nothing, type=value)
    assert (info.value.code, info.value.field) == ("invalid_child_type", "type")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_an_invalid_significant_names_the_field_and_value(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match=f"significant must be a bool, got: {value!r}"):
        ChildSpec("a", start_nothing, restart="temporary", significant=value)


def test_restart_and_type_accept_their_names_as_strings() -> None:
    spec = ChildSpec("a", start_nothing, restart="TRANSIENT", type="Supervisor")
    assert spec.restart is Restart.TRANSIENT
    assert spec.type is ChildType.SUPERVISOR


@pytest.mark.parametrize(
    ("restart", "shutdown", "type_", "significant"),
    [
        combo
        for combo in itertools.product(
            list(Restart), [0, 1.0, INFINITY, BRUTAL_KILL], list(ChildType), [False, True]
        )
        if not (combo[3] and combo[0] is Restart.PERMANENT)
    ],
)
def test_every_valid_combination_of_fields_is_accepted(
    restart: Restart, shutdown: Any, type_: ChildType, significant: bool
) -> None:
    spec = ChildSpec(
        "a", start_nothing, restart=restart, shutdown=shutdown, type=type_, significant=significant
    )
    assert (spec.restart, spec.shutdown, spec.type, spec.significant) == (
        restart,
        shutdown,
        type_,
        significant,
    )


def test_duplicate_ids_are_rejected_by_check_child_specs() -> None:
    specs = [ChildSpec("a", start_nothing), ChildSpec("b", start_nothing)]
    specs.append(ChildSpec("a", start_nothing))
    with pytest.raises(da.DuplicateChildId, match="duplicate child id 'a'") as info:
        da.check_child_specs(specs)
    assert (info.value.code, info.value.child_id) == ("duplicate_child_name", "a")


@pytest.mark.parametrize("value", [ChildSpec("a", start_nothing), "ab", 3, {"id": "a"}])
def test_check_child_specs_of_a_non_list_is_badarg(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="children must be a list") as info:
        da.check_child_specs(value)
    assert info.value.code == "badarg"


def test_check_child_specs_rejects_an_element_that_is_not_a_child_spec() -> None:
    with pytest.raises(da.ChildSpecError, match=r"must be a ChildSpec.*got: \('a', 1\)") as info:
        da.check_child_specs([ChildSpec("a", start_nothing), ("a", 1)])  # type: ignore[list-item]
    assert info.value.code == "invalid_child_spec"


def test_check_child_specs_accepts_a_valid_list_and_a_generator() -> None:
    da.check_child_specs([ChildSpec("a", start_nothing), ChildSpec("b", start_nothing)])
    da.check_child_specs(ChildSpec(i, start_nothing) for i in range(3))
    da.check_child_specs([])


def test_significant_with_permanent_is_a_bad_combination() -> None:
    with pytest.raises(da.ChildSpecError, match="cannot be PERMANENT") as info:
        ChildSpec("a", start_nothing, significant=True)
    assert (info.value.code, info.value.field) == ("bad_combination", "significant")


def test_significant_under_auto_shutdown_never_is_a_bad_combination() -> None:
    spec = ChildSpec("a", start_nothing, restart="transient", significant=True)
    with pytest.raises(da.ChildSpecError, match=r"'a' is significant.*NEVER") as info:
        da.check_child_specs([spec], da.AutoShutdown.NEVER)
    assert info.value.code == "bad_combination"
    da.check_child_specs([spec], da.AutoShutdown.ANY_SIGNIFICANT)
    da.check_child_specs([spec])  # without a mode, significant is not checked (OTP arity 1)


def test_actor_child_spec_builds_the_spec_from_args_and_options() -> None:
    log = EventLog()
    spec = Probe.child_spec("p", log, restart="transient", shutdown=0.5)
    assert spec.id == "Probe"  # like `use GenServer`: id = the module
    assert spec.args == ("p", log)
    assert (spec.restart, spec.shutdown, spec.type) == (Restart.TRANSIENT, 0.5, ChildType.WORKER)
    assert spec.start == Probe.start
    assert Probe.child_spec("p", log, id="other").id == "other"


def test_actor_child_spec_passes_unknown_keywords_to_start() -> None:
    log = EventLog()
    spec = Probe.child_spec("p", log=log, name="registered_as")
    assert spec.kwargs == {"log": log}
    assert spec.args == ("p",)
    assert spec.name == "registered_as"  # `name` is a ChildSpec field, not a start keyword


def test_replace_overrides_fields_and_validates_them_again() -> None:
    base = ChildSpec("a", start_nothing)
    changed = base.replace(id="b", restart="temporary", shutdown=BRUTAL_KILL)
    assert (changed.id, changed.restart, changed.shutdown) == ("b", Restart.TEMPORARY, BRUTAL_KILL)
    assert base.id == "a"  # frozen: the original is unchanged
    with pytest.raises(da.ChildSpecError, match="shutdown must be"):
        base.replace(shutdown=-1)


def test_replace_with_an_unknown_key_raises_naming_it() -> None:
    with pytest.raises(da.ChildSpecError, match="unknown child spec field 'modules'") as info:
        ChildSpec("a", start_nothing).replace(modules=["x"])
    assert (info.value.code, info.value.field) == ("unknown_key", "modules")


def test_supervisor_child_spec_is_a_supervisor_with_infinity_shutdown() -> None:
    spec = da.Supervisor.child_spec("tree", [ChildSpec("a", start_nothing)])
    assert spec.id == "tree"
    assert spec.type is ChildType.SUPERVISOR
    assert spec.shutdown is INFINITY
    assert spec.restart is Restart.PERMANENT


def test_supervisor_child_spec_validates_its_children_and_options_now() -> None:
    with pytest.raises(da.DuplicateChildId):
        da.Supervisor.child_spec("t", [ChildSpec("a", start_nothing)] * 2)
    with pytest.raises(da.InvalidOption, match=r"strategy must be one of .*got: 'bogus'"):
        da.Supervisor.child_spec("t", [], strategy="bogus")
    with pytest.raises(da.InvalidOption, match="max_restarts must be an integer >= 0, got: -1"):
        da.Supervisor.child_spec("t", [], max_restarts=-1)
    with pytest.raises(da.InvalidOption, match=r"colour must be a Supervisor\.start option"):
        da.Supervisor.child_spec("t", [], colour="red")


def test_a_spec_is_frozen() -> None:
    spec = ChildSpec("a", start_nothing)
    with pytest.raises(AttributeError):
        spec.id = "b"  # type: ignore[misc]


@pytest.mark.parametrize("value", [("a", []), {"x": 1}])
def test_an_id_that_cannot_be_hashed_is_rejected_even_inside_a_tuple(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="id must be hashable") as info:
        ChildSpec(value, start_nothing)
    assert info.value.code == "invalid_id"


@pytest.mark.parametrize("value", [True, False, ["x"], ("x", [])])
def test_an_invalid_name_is_rejected_when_the_spec_is_built(value: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="name must be None or a hashable value") as info:
        ChildSpec("a", start_nothing, name=value)
    assert (info.value.code, info.value.field, info.value.value) == ("invalid_name", "name", value)


def test_a_valid_name_is_kept() -> None:
    assert ChildSpec("a", start_nothing, name=("pool", 1)).name == ("pool", 1)
    assert ChildSpec("a", start_nothing).name is None
