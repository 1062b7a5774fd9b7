"""``freeze`` / ``thaw``: freezing after construction, in place (contract S6, S9).

Freezing marks every module of the selected parts individually (``_mark.py``: the
record of what changed, the mode guard, the tied-weight hooks), then settles the
model. No module type, tree shape, parameter object or ``state_dict`` key changes.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ._checks import TIED_POLICIES, check_dtype, check_mode, check_model
from ._errors import FrozenError, TiedParameterError, TiedParameterWarning
from ._mark import mark, record_of, unmark
from ._precision import (
    check_thaw_keeps_parts_whole,
    low_precision_roots,
    lower_precision,
    precision_of,
    restore_precision,
)
from ._query import trainable_ids
from ._select import Selector, resolve
from ._settle import settle
from ._state import frozen_slot_names, set_frozen_slot
from ._tree import iter_module_uses, iter_param_uses

__all__ = ["freeze", "thaw", "thaw_modules"]


def freeze(
    model: nn.Module,
    *targets: Selector,
    exclude: Any = (),
    mode: str = "eval",
    tied: str = "freeze",
    train_norms: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Freeze the selected parts of ``model`` in place; return ``model``.

    Every module of each selected part is marked frozen (see ``docs/freeze.md``): its
    parameters leave :func:`frozen.trainable` and get ``requires_grad=False``, and with
    ``mode="eval"`` it keeps inference behaviour across ``model.train()`` /
    ``model.eval()`` (BatchNorm uses and keeps its running statistics, Dropout is off).
    Nothing else changes: no module type, tree shape, parameter object or
    ``state_dict`` key, so optimizers holding the parameters keep working (re-sync them
    with :func:`frozen.optim.sync`). The whole model is then settled
    (:func:`frozen.settle`).

    Freezing what is already frozen in place changes nothing and keeps the first
    record, so :func:`thaw` restores the state from before the first ``freeze``.
    Modules added to a frozen part afterwards are not frozen (adapters injected into a
    frozen base train).

    Args:
        model: the model to change.
        *targets: what to freeze (``docs/selectors.md``); none means the whole model.
        exclude: selectors kept out of the frozen parts, e.g. ``exclude=torch.nn.LayerNorm``.
        mode: ``"eval"`` (default) or ``"inherit"`` (follow the parent's train/eval;
            BatchNorm statistics may then change).
        tied: what to do when a selected module shares a parameter (or is the same
            object) with a part that is not selected: ``"freeze"`` (default) freezes it
            everywhere and warns with :class:`frozen.TiedParameterWarning`; ``"train"``
            keeps the other uses training it, the frozen module sees it as a constant;
            ``"error"`` raises :class:`frozen.TiedParameterError`.
        train_norms: keep normalisation layers trainable (same as excluding them).
        dtype: store each frozen part's floating parameters and buffers in this type
            (e.g. ``torch.bfloat16``: half the memory), cast in place (same
            ``Parameter`` objects). At the root of each part, floating inputs are cast
            to ``dtype`` and floating outputs back to the caller's type. A part must be
            frozen whole for this (no exclusions inside, no parameter shared with a
            part that trains). :func:`thaw` restores the original types, not the
            original bits: values keep the rounding (reload the checkpoint for those).

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a module, or a selector has an unsupported type.
        frozen.SelectorError: a selector is malformed or matches nothing.
        frozen.InvalidModeError: ``mode`` is not ``"eval"`` or ``"inherit"``.
        frozen.TiedParameterError: ``tied="error"`` and something is shared with an
            unselected part, or ``tied="train"`` and a selected module *object* is also
            used at an unselected path.
        frozen.FrozenError: ``tied`` is unknown, a module is already frozen in
            place with another ``mode`` or precision, or ``dtype=`` is given for a part
            that is not frozen whole.
        Nothing is changed when an error is raised.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(), torch.nn.Linear(2, 1))
        >>> frozen.freeze(net, "0-1").train()[1].training
        False
        >>> [name for name, _ in frozen.named_trainable(net)], net[0].weight.requires_grad
        (['2.weight', '2.bias'], False)
    """
    check_model(model, "frozen.freeze")
    check_mode(mode)
    check_dtype(dtype)
    if tied not in TIED_POLICIES:
        raise FrozenError(
            f"frozen.freeze(..., tied={tied!r}): expected one of {TIED_POLICIES!r}. Use 'freeze' (default: a "
            f"shared parameter freezes everywhere, with a warning), 'train' (other uses keep training it) or 'error'."
        )
    uses = resolve(model, targets, exclude, train_norms=train_norms, function="frozen.freeze").uses
    new: dict[int, Any] = {}
    for use in uses:
        record = record_of(use.module)
        if record is not None and record.mode != mode:
            raise FrozenError(
                f"frozen.freeze(..., mode={mode!r}): the module at {use.path!r} is already frozen in place "
                f"with mode={record.mode!r}. Freezing again changes nothing; to change the mode, "
                f"thaw it first: frozen.thaw(model, {use.path!r})."
            )
        if record is None:
            new.setdefault(id(use.module), use)
    pairs, slots = _shared_with_unselected(model, {u.path for u in uses}, new, tied)
    low_roots = low_precision_roots(uses, dtype, pairs) if dtype is not None else []
    if pairs:
        listing = "; ".join(f"{frozen_at!r} and {other!r}" for frozen_at, other in pairs)
        if tied == "freeze":
            warnings.warn(
                f"frozen.freeze: shared between a selected and an unselected part: {listing}. With "
                f"tied='freeze' it is frozen at both. Pass tied='train' to keep the unselected use "
                f"training it, or select both parts.",
                TiedParameterWarning,
                stacklevel=2,
            )
        else:
            raise TiedParameterError(
                f"frozen.freeze(..., tied={tied!r}): shared between a selected and an unselected part: "
                f"{listing}. "
                + (
                    "The same module object is used at both paths, and freezing in place freezes the "
                    "object; to freeze only one use, wrap that use instead: parent.child = frozen.Frozen(child)."
                    if tied == "train"
                    else "Pass tied='freeze' to freeze it everywhere, tied='train' to keep the unselected use "
                    "training it, or select both parts. Nothing was changed."
                )
            )
    for use in new.values():
        mark(use.module, mode, tied)
    for owner, name, frozen_module in slots:
        set_frozen_slot(owner, name, True)
        record = record_of(frozen_module)
        record.tied_slots += ((owner, name),)
    for root in low_roots:
        lower_precision(root, dtype)
    return settle(model)


def _shared_with_unselected(model: nn.Module, selected: set[str], new: dict[int, Any], tied: str) -> tuple[list, list]:
    """Pairs ``(frozen path, other path)`` shared with unselected, still-training uses, and the slots to freeze."""
    pairs: list[tuple[str, str]] = []
    slots: list[tuple[nn.Module, str, nn.Module]] = []
    for use in iter_module_uses(model):
        if use.path not in selected and not use.frozen and id(use.module) in new:
            pairs.append((new[id(use.module)].path, use.path))
            if tied == "train":
                return pairs, slots  # always an error; the first pair says enough
    owned = {
        id(p): (use.module, f"{use.path}.{n}" if use.path else n)
        for use in new.values()
        for n, p in use.module._parameters.items()
        if p is not None
    }
    training = trainable_ids(model)
    for param_use in iter_param_uses(model):
        module_path = param_use.path.rpartition(".")[0]
        if (
            id(param_use.param) in owned
            and id(param_use.owner) not in new
            and module_path not in selected
            and not param_use.frozen
            and id(param_use.param) in training
        ):
            frozen_module, frozen_path = owned[id(param_use.param)]
            if tied != "train":
                pairs.append((frozen_path, param_use.path))
                slots.append((param_use.owner, param_use.name, frozen_module))
    return pairs, slots


def thaw(model: nn.Module, *targets: Selector, exclude: Any = ()) -> nn.Module:
    """Undo :func:`freeze` for the selected parts of ``model``; return ``model``.

    Each selected module frozen in place gets back exactly what freezing changed: its
    parameters train again (``requires_grad`` flags the *user* turned off stay off),
    its ``train``/``eval`` follows its parent again (it takes the mode last asked of
    it), its forward hooks are removed, and parameters frozen at other uses because of
    it (``tied="freeze"``) train there again. Then the model is settled.

    * No targets: everything frozen in place is thawed.
    * A part of a frozen part: only that part thaws; the rest stays frozen.
    * Something never frozen: nothing happens (no error), as in Keras/Lightning.
    * A part frozen with ``dtype=``: it thaws whole (else :class:`frozen.FrozenError`),
      back to its original types; values keep the low-precision rounding.
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
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
        >>> [name for name, _ in frozen.named_trainable(frozen.thaw(net, "1"))]
        ['1.weight', '1.bias']
    """
    check_model(model, "frozen.thaw")
    selection = resolve(model, targets, exclude, function="frozen.thaw")
    if targets:
        for use in selection.matched:
            if use.frozen and record_of(use.module) is None:
                raise FrozenError(
                    f"frozen.thaw: the module at {use.path!r} is frozen by a frozen.Frozen wrapper (at that "
                    f"path or above it), which thaw cannot undo in place: thaw only undoes frozen.freeze. To "
                    f"train it, replace the wrapper by its module, e.g. parent.child = parent.child.module "
                    f"(state_dict keys do not change)."
                )
    check_thaw_keeps_parts_whole(list(iter_module_uses(model)), [u.module for u in selection.uses])
    thaw_modules(model, [u.module for u in selection.uses])
    return settle(model)


def thaw_modules(model: nn.Module, modules: list[nn.Module]) -> None:
    """Unmark the marked ones among ``modules`` and release the tied slots only they held."""
    released: list[tuple[nn.Module, str]] = []
    for module in {id(m): m for m in modules}.values():
        if record_of(module) is not None:
            released += unmark(module).tied_slots
        if precision_of(module) is not None:
            restore_precision(module)
    still_held = {
        (id(o), n) for use in iter_module_uses(model) if (r := record_of(use.module)) for o, n in r.tied_slots
    }
    for owner, name in released:
        if (id(owner), name) not in still_held and name in frozen_slot_names(owner):
            set_frozen_slot(owner, name, False)
