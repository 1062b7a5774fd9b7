"""``thaw``: undo what ``freeze`` changed, exactly, for the selected parts (contract S6).

Like ``freeze`` it reads validate -> plan -> apply on one walk of the model (a
:class:`~frozen._core.View`): :func:`plan_thaw` checks everything and changes nothing,
:func:`apply_thaw` writes the records (``frozen.load_state`` reuses it), and the model is
settled without touching any train/eval flag, so modes come back exactly as they were.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._checks import ModelT, check_model
from .._core import (
    LOCK,
    View,
    is_marked,
    record_of,
    release_slot,
    restore_precision,
    settle_flags,
    switched_off,
    unmark,
)
from .._errors import FrozenError
from .._rows import apply_rows, plan_thaw_rows, split_rows
from .._select import Selection, Selector, resolve

__all__ = ["apply_thaw", "plan_thaw", "thaw"]


def thaw(model: ModelT, *targets: Selector, exclude: Any = ()) -> ModelT:
    """Undo :func:`freeze` for the selected parts of ``model``; return ``model``.

    Each selected module frozen in place gets back exactly what freezing changed: its
    parameters train again (``requires_grad`` flags the *user* turned off stay off),
    its ``train``/``eval`` follows its parent again (it takes the mode last asked of
    it), its guard and boundary hooks are removed, and parameters frozen at other uses
    because of it (``tied="freeze"``) train there again. A selected parameter frozen at its slot
    thaws there. Then the model is settled.

    * No targets: everything frozen in place is thawed (frozen rows included).
    * ``frozen.Rows(path, rows)``: those rows thaw; a path naming a row-frozen parameter
      (or a part holding one) thaws all its rows.
    * A part of a frozen part: only that part thaws; the rest stays frozen.
    * Something never frozen: nothing happens (no error), as in Keras/Lightning.
    * A part frozen with ``dtype=``: it thaws whole (else :class:`frozen.FrozenError`),
      back to its original types (or the type the model was moved to since); values
      keep the low-precision rounding.
    * A use wrapped in :class:`frozen.Frozen` at construction time, named by a target:
      :class:`frozen.FrozenError` -- replace the wrapper by its ``.module`` instead.
      Wrappers deeper inside a selected part stay as they are.

    Args:
        model: the model to change.
        *targets: what to thaw (``docs/selectors.md``); none means everything.
        exclude: selectors kept frozen.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a module, or a selector has an unsupported type.
        frozen.SelectorError: a selector is malformed or matches nothing.
        frozen.FrozenError: a target names a use frozen by a ``Frozen`` wrapper.
        Nothing is changed when an error is raised.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), "")
        >>> [name for name, _ in frozen.named_trainable(frozen.thaw(net, "1"))]
        ['1.weight', '1.bias']
    """
    check_model(model, "frozen.thaw")
    rows, selectors = split_rows(targets)
    with LOCK:
        view = View(model)
        modules: list[nn.Module] = []
        slots: list[tuple[nn.Module, str]] = []
        covered: set[int] = set()
        if selectors or not rows:
            selection = resolve(model, selectors, exclude, function="frozen.thaw", view=view)
            modules, slots = plan_thaw(view, selection, named=bool(selectors))
            covered = _covered(selection)
        row_changes = plan_thaw_rows(view, list(rows), covered, "frozen.thaw")
        apply_thaw(view, modules, slots)
        apply_rows(row_changes)
        settle_flags(model, pin=False, view=view, function="frozen.thaw")
    return model


def _covered(selection: Selection) -> set[int]:
    """``id()`` of the parameters a thaw selection covers (its modules', or the parameter): their rows thaw."""
    covered = {id(p) for use in selection.uses for p in use.module._parameters.values() if p is not None}
    return covered | {id(p.param) for p in selection.params}


def plan_thaw(view: View, selection: Selection, *, named: bool) -> tuple[list[nn.Module], list[tuple[nn.Module, str]]]:
    """Validate a ``thaw``; return the modules to unmark and the parameter slots to release."""
    if named:
        for use in selection.matched:
            if use.frozen and not is_marked(use.module):
                raise FrozenError(
                    f"frozen.thaw: the module at {use.path!r} is frozen by a frozen.Frozen wrapper (at that "
                    f"path or above it), which thaw cannot undo in place: thaw only undoes frozen.freeze. To "
                    f"train it, replace the wrapper by its module, e.g. parent.child = parent.child.module "
                    f"(state_dict keys do not change)."
                )
    modules = list({id(u.module): u.module for u in selection.uses}.values())
    _check_low_precision_parts_whole(view, modules)
    chosen = {id(p.param) for p in selection.params}
    slots = [
        (use.owner, use.name)
        for use in view.params
        if id(use.param) in chosen and (r := record_of(use.owner)) is not None and use.name in r.frozen_slots
    ]
    for use in selection.uses:  # parameters selected on their own inside a thawed part thaw with it
        record = record_of(use.module)
        if record is not None:
            slots += [(use.module, n) for n, why in record.frozen_slots.items() if why == "selected"]
    _check_can_thaw(view, modules, slots)
    return modules, slots


def _check_can_thaw(view: View, modules: list[nn.Module], slots: list[tuple[nn.Module, str]]) -> None:
    """Refuse, before any change, to thaw a parameter created under ``torch.inference_mode()``."""
    thawing = {id(m) for m in modules} | {id(o) for o, _ in slots}
    for use in view.params:
        if id(use.owner) in thawing and use.param.is_inference() and switched_off(use.param, use.owner, use.name):
            raise FrozenError(
                f"frozen.thaw: the parameter at {use.path!r} was created under torch.inference_mode() and "
                f"can never require grad again, so it cannot thaw. Expected a model built outside "
                f"inference_mode; rebuild it there (or clone its parameters outside it). Nothing was changed."
            )


def _check_low_precision_parts_whole(view: View, thawing: list[nn.Module]) -> None:
    ids = {id(m) for m in thawing}
    for use in view.uses:
        record = record_of(use.module)
        if record is None or record.storage is None:
            continue
        thawed = [id(u.module) in ids for u in view.subtree(use) if is_marked(u.module)]
        if any(thawed) and not all(thawed):
            raise FrozenError(
                f"frozen.thaw: the part {use.path!r} is frozen in {record.storage.dtype}, and only "
                f"some of it was selected. A low-precision part thaws whole, back to its original types: "
                f"frozen.thaw(model, {use.path!r}), then freeze again what should stay frozen."
            )


def apply_thaw(view: View, modules: list[nn.Module], slots: list[tuple[nn.Module, str]]) -> None:
    """Unmark ``modules``, release ``slots`` and the tied slots only the unmarked ones held."""
    released: list[tuple[nn.Module, str]] = list(slots)
    for module in modules:
        record = record_of(module)
        if record is not None and record.storage is not None:
            restore_precision(module)
        if is_marked(module):
            released += unmark(module)
    still_held = {(id(o), n) for use in view.uses if (r := record_of(use.module)) for o, n in r.tied_slots}
    for owner, name in released:
        if (id(owner), name) not in still_held:
            release_slot(owner, name)
