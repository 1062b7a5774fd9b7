"""``freeze`` / ``thaw``: freezing after construction, in place (contract S6, S9).

Each call reads validate -> plan -> apply. Validation and planning walk the model
once (one :class:`~frozen._core.View`, which selection, rows, tied-weight planning and
settling all read) and change nothing; apply writes the records (``_core/record.py``,
and the row records through ``frozen._rows``) and then settling writes the flags.
``load_state`` reuses the same apply step. No module type, tree shape, parameter
object or ``state_dict`` key changes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import ModelT, check_dtype, check_mode, check_model, check_tied
from .._core import (
    LOCK,
    ModuleUse,
    ParamUse,
    View,
    floating_tensors,
    freeze_slot,
    is_marked,
    lower_precision,
    mark,
    record_of,
    settle_flags,
)
from .._errors import FrozenError, TiedParameterError, TiedParameterWarning
from .._rows import RowsChange, apply_rows, plan_freeze_rows, split_rows
from .._select import Selection, Selector, resolve

__all__ = ["FreezePlan", "apply_freeze", "freeze"]


@dataclass
class FreezePlan:
    """What a ``freeze`` call will change, computed before anything changes."""

    mode: str
    tied: str
    marks: list[ModuleUse] = field(default_factory=list)  # modules to mark (not yet marked)
    slots: list[tuple[nn.Module, str, str, nn.Module | None]] = field(default_factory=list)  # owner, name, why, holder
    low_roots: list[nn.Module] = field(default_factory=list)
    dtype: torch.dtype | None = None
    shared: list[tuple[str, str]] = field(default_factory=list)  # (frozen path, other path) pairs
    requested_training: bool | None = None  # load_state: the train/eval mode saved with the marks
    rows: list[RowsChange] = field(default_factory=list)  # frozen.Rows targets: each parameter's rows after


def freeze(
    model: ModelT,
    *targets: Selector,
    exclude: Any = (),
    mode: str = "eval",
    tied: str = "freeze",
    train_norms: bool = False,
    dtype: torch.dtype | None = None,
) -> ModelT:
    """Freeze the selected parts of ``model`` in place; return ``model``.

    Every module of each selected part is marked frozen (see ``docs/freeze.md``): its
    parameters leave :func:`frozen.trainable` and get ``requires_grad=False``, and with
    ``mode="eval"`` it keeps inference behaviour across ``model.train()`` /
    ``model.eval()`` (BatchNorm uses and keeps its running statistics, Dropout is off;
    a layer with gradient checkpointing switched on keeps its parent's flag so that
    checkpointing stays on, its children run in eval). A selected *parameter*
    (``"0.weight"``, ``frozen.params("**.bias")``) is frozen at its slot only; a
    ``frozen.Rows(path, rows)`` target freezes rows of one parameter (``docs/rows.md``). Nothing
    else changes: no module type, tree shape, parameter object or ``state_dict`` key, so
    optimizers holding the parameters keep working (re-sync them with
    :func:`frozen.optim.sync`). The whole model is then settled (:func:`frozen.settle`).

    Freezing what is already frozen in place changes nothing and keeps the first
    record, so :func:`thaw` restores the state from before the first ``freeze``.
    Modules added to a frozen part afterwards are not frozen (adapters injected into a
    frozen base train).

    Args:
        model: the model to change.
        *targets: what to freeze (``docs/selectors.md``). None means the whole model
            (``frozen.freeze(teacher)``, as timm's ``freeze(model)`` or Keras'
            ``model.trainable = False``), and so does an empty list unpacked
            (``freeze(model, *[])`` is the same call): guard ``if targets:`` when a list
            built by code may come out empty.
        exclude: selectors kept out of the frozen parts, e.g. ``exclude=torch.nn.LayerNorm``;
            with no targets, the whole model except these.
        mode: ``"eval"`` (default) or ``"inherit"`` (follow the parent's train/eval;
            BatchNorm statistics may then change).
        tied: what to do when a selected module shares a parameter (or is the same
            object) with a part that is not selected: ``"freeze"`` (default) freezes it
            at every use and warns with :class:`frozen.TiedParameterWarning`; ``"train"``
            keeps the other uses training it, silently, the frozen module sees it as a
            constant; ``"error"`` raises :class:`frozen.TiedParameterError`.
            ``frozen.Frozen(tied=)`` shares ``"train"`` and ``"error"`` but has
            ``"warn"`` (its default) instead of ``"freeze"``: a wrapper freezes one use,
            so there the other uses always keep training the parameter, and ``"warn"``
            says so with a warning.
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
    check_tied(tied, "frozen.freeze")
    check_dtype(dtype)
    rows, targets = split_rows(targets)
    with LOCK:
        view = View(model)
        row_changes = plan_freeze_rows(view, rows, "frozen.freeze")
        if rows and not targets:
            plan = FreezePlan(mode=mode, tied=tied)  # only rows: nothing else to select
        else:
            selection = resolve(model, targets, exclude, train_norms=train_norms, function="frozen.freeze", view=view)
            plan = plan_freeze(view, selection, mode, tied, dtype)
        plan.rows = row_changes
        if plan.shared and tied == "freeze":
            listing = "; ".join(f"{a!r} and {b!r}" for a, b in plan.shared)
            warnings.warn(
                f"frozen.freeze: shared between a selected and an unselected part: {listing}. With "
                f"tied='freeze' it is frozen at both. Pass tied='train' to keep the unselected use "
                f"training it, or select both parts.",
                TiedParameterWarning,
                stacklevel=2,
            )
        apply_freeze(plan)
        settle_flags(model, view=view, function="frozen.freeze")
    return model


def plan_freeze(view: View, selection: Selection, mode: str, tied: str, dtype: torch.dtype | None) -> FreezePlan:
    """Validate a ``freeze`` call and return what it will change; change nothing."""
    plan = FreezePlan(mode=mode, tied=tied, dtype=dtype)
    new: dict[int, ModuleUse] = {}
    for use in selection.uses:
        record = record_of(use.module)
        if record is not None and record.mode is not None and record.mode != mode:
            raise FrozenError(
                f"frozen.freeze(..., mode={mode!r}): the module at {use.path!r} is already frozen in place "
                f"with mode={record.mode!r}. Freezing again changes nothing; to change the mode, "
                f"thaw it first: frozen.thaw(model, {use.path!r})."
            )
        if not is_marked(use.module):
            new.setdefault(id(use.module), use)
    plan.marks = list(new.values())
    selected = {u.path for u in selection.uses}
    _plan_shared_modules(view, selected, new, tied, plan)
    _plan_shared_params(view, selected, new, selection.params, tied, plan)
    if plan.shared and tied == "error":
        listing = "; ".join(f"{a!r} and {b!r}" for a, b in plan.shared)
        raise TiedParameterError(
            f"frozen.freeze(..., tied='error'): shared between a selected and an unselected part: {listing}. "
            f"Pass tied='freeze' to freeze it everywhere, tied='train' to keep the unselected use "
            f"training it, or select both parts. Nothing was changed."
        )
    if dtype is not None:
        plan.low_roots = _low_precision_roots(view, selection, dtype, plan.shared)
    return plan


def _plan_shared_modules(
    view: View, selected: set[str], new: dict[int, ModuleUse], tied: str, plan: FreezePlan
) -> None:
    """Module *objects* also used at an unselected, unfrozen path (freezing in place freezes the object)."""
    for use in view.uses:
        if use.path not in selected and not use.frozen and id(use.module) in new:
            plan.shared.append((new[id(use.module)].path, use.path))
            if tied == "train":
                raise TiedParameterError(
                    f"frozen.freeze(..., tied='train'): shared between a selected and an unselected part: "
                    f"{plan.shared[-1][0]!r} and {use.path!r}. The same module object is used at both paths, "
                    f"and freezing in place freezes the object; to freeze only one use, wrap that use "
                    f"instead: parent.child = frozen.Frozen(child)."
                )


def _plan_shared_params(
    view: View, selected: set[str], new: dict[int, ModuleUse], params: list[ParamUse], tied: str, plan: FreezePlan
) -> None:
    """Parameters of the selection also trained at an unselected slot: the tied policy decides."""
    owned: dict[int, tuple[nn.Module | None, str]] = {}
    for use in new.values():
        for name, p in use.module._parameters.items():
            if p is not None:
                owned.setdefault(id(p), (use.module, f"{use.path}.{name}" if use.path else name))
    for puse in params:
        plan.slots.append((puse.owner, puse.name, "selected", None))
        owned.setdefault(id(puse.param), (None, puse.path))
    chosen = {(id(p.owner), p.name) for p in params}
    training = view.trainable
    for puse in view.params:
        key = id(puse.param)
        if key not in owned or id(puse.owner) in new or (id(puse.owner), puse.name) in chosen:
            continue
        if puse.path.rpartition(".")[0] in selected or puse.frozen or key not in training:
            continue
        holder, frozen_path = owned[key]
        if tied != "train":
            plan.shared.append((frozen_path, puse.path))
            plan.slots.append((puse.owner, puse.name, "tied", holder))


def _low_precision_roots(view: View, selection: Selection, dtype: torch.dtype, shared: list) -> list[nn.Module]:
    """Validate ``freeze(..., dtype=...)``; return the roots of the parts to cast (once each).

    A part stored in low precision is cast at its root, so it must be frozen whole:
    no excluded module inside it (it would receive low-precision inputs with
    full-precision weights) and no parameter shared with a part that still trains.
    """
    if shared:
        frozen_at, other = shared[0]
        raise FrozenError(
            f"frozen.freeze(..., dtype={dtype}): {frozen_at!r} shares a parameter with {other!r}, which is "
            f"not selected; casting it would change the weights that part uses too. Select both parts, or "
            f"freeze without dtype=."
        )
    selected = {use.path for use in selection.uses}
    ids = {id(use.module) for use in selection.uses}
    roots: dict[int, nn.Module] = {}
    for use in selection.uses:
        if use.path and use.path.rpartition(".")[0] in selected:
            continue  # inside a selected part: its root casts it
        outside = [u.path for u in view.subtree(use) if id(u.module) not in ids]
        if outside:
            inner = outside[0][len(use.path) + 1 :] if use.path else outside[0]
            raise FrozenError(
                f"frozen.freeze(..., dtype={dtype}): the part {use.path!r} contains {inner!r}, which is "
                f"excluded and would keep training in full precision inside a low-precision part. Expected a "
                f"part frozen whole: drop the exclusion (or train_norms=), or freeze the sub-parts separately."
            )
        if is_marked(use.module):
            if all(t.dtype == dtype for _, t in floating_tensors(use.module)):
                continue  # already frozen in this precision: nothing to do
            raise FrozenError(
                f"frozen.freeze(..., dtype={dtype}): {use.path!r} is already frozen in place in another "
                f"precision. Thaw it first: frozen.thaw(model, {use.path!r})."
            )
        for root in _called_roots(use.module):
            roots.setdefault(id(root), root)  # a module reached twice is cast once
    return list(roots.values())


def _called_roots(module: nn.Module) -> list[nn.Module]:
    """Where the boundary casts go: ``module``, or, for a container that is never called
    itself (``ModuleList``, ``ModuleDict``: no forward of their own), its children."""
    if type(module).forward is not nn.Module.forward:
        return [module]
    return [root for child in module.children() for root in _called_roots(child)]


def apply_freeze(plan: FreezePlan) -> None:
    """Write a validated plan into the records (the caller settles the model next)."""
    with LOCK:
        for use in plan.marks:
            mark(use.module, plan.mode, plan.tied, plan.requested_training)
        for owner, name, why, holder in plan.slots:
            freeze_slot(owner, name, why, holder)
        if plan.dtype is not None:
            for root in plan.low_roots:
                lower_precision(root, plan.dtype)
        apply_rows(plan.rows)
