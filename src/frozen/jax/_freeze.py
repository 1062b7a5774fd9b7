"""``fj.freeze`` and ``fj.thaw``: new models with parts frozen or thawed (the input is never changed).

Both resolve their selectors and check everything before building the new model, so a
call that raises returns nothing and the caller's model is untouched (it is a value).
"""

from __future__ import annotations

from typing import Any

from ._errors import FrozenError, check_choice
from ._marks import place, read_marks, strip
from ._query import Analysis, analyse
from ._select import Selection, require_targets, resolve

__all__ = ["freeze", "thaw"]


def _check_ties(found: Analysis, chosen: Selection) -> None:
    """``tied="error"``: raise when the selection holds some uses of a tied array and not others."""
    entries = found.walk.entries
    for tie in found.ties:
        for source in tie.sources:
            inside: list[str] = []
            outside: list[str] = []
            for k in (source, tie.target):
                (inside if chosen.covered[k] or _under(found, chosen, k) else outside).append(entries[k].path)
            if inside and outside:
                raise FrozenError(
                    f"fj.freeze: the selection cuts a tie: the array {entries[source].path!r} is also used at "
                    f"{entries[tie.target].path!r} (eqx.nn.Shared at {tie.shared!r}); selected: {inside}, not "
                    f"selected: {outside}. Expected tied='error' to find no such array. Pass tied='freeze' to "
                    "freeze it at every use, or tied='train' to keep the unselected uses training it."
                )


def _under(found: Analysis, chosen: Selection, k: int) -> bool:
    """Whether entry ``k`` (a placeholder, never itself covered) lies below a covered node."""
    parent = found.walk.entries[k].parent
    return parent >= 0 and chosen.covered[parent]


def freeze(model: Any, *targets: Any, exclude: Any = (), mode: str = "eval", tied: str = "freeze") -> Any:
    """Return ``model`` with the parts ``targets`` name frozen (minus those ``exclude`` names).

    A frozen module is a white box at its use: gradients reach its inputs, none reach its
    arrays (``fj.grad`` gives ``None`` there), and with ``mode="eval"`` it runs in inference
    behaviour (BatchNorm keeps its statistics, Dropout is off) whatever the model's
    ``inference`` flags. A frozen array (``"head.bias"``) is constant and changes no behaviour.

    Args:
        model: an Equinox model (any pytree of modules).
        *targets: selectors (``docs/jax.md``): path patterns such as ``"blocks.0-5"`` or
            ``"**.norm"``, module types, module or array objects, predicates ``(path, module)``.
            ``""`` is the whole model.
        exclude: selectors (one or a list) to leave out.
        mode: ``"eval"`` or ``"inherit"`` (follow the ``inference`` flags).
        tied: for an array that ``eqx.nn.Shared`` ties to a place outside the selection:
            ``"freeze"`` (default) freezes it at every use, ``"train"`` keeps the other uses
            training it (the selected ones see a constant), ``"error"`` raises.

    Returns:
        A new model; freezing the same parts always gives the same tree structure.

    Raises:
        SelectorError: no target, a malformed pattern, or a selector that matches nothing.
        FrozenError: a bad ``mode``/``tied``, a part already frozen with another ``mode``,
            or (``tied="error"``) a selection that cuts a tie.

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 3, key=jax.random.PRNGKey(0)), "layers.0-1")
        >>> [fj.is_frozen(mlp, f"layers.{k}") for k in range(4)]
        [True, True, False, False]
    """
    check_choice("fj.freeze", "mode", mode, ("eval", "inherit"))
    check_choice("fj.freeze", "tied", tied, ("freeze", "train", "error"))
    require_targets(targets, "fj.freeze")
    found = analyse(model)
    chosen = resolve(found.walk, targets, exclude, "fj.freeze")
    if tied == "error":
        _check_ties(found, chosen)
    policy = "train" if tied == "train" else "freeze"
    marks = read_marks(found.walk)
    for i, entry in enumerate(found.walk.entries):
        if not chosen.covered[i]:
            continue
        if entry.kind == "module" and i not in chosen.demoted:
            before = marks.modules.get(entry.path)
            if before is not None and before[0] != mode:
                raise FrozenError(
                    f"fj.freeze: the module {entry.path!r} is already frozen with mode={before[0]!r}; received "
                    f"mode={mode!r}. Expected the same mode, or a thaw first: "
                    f"fj.freeze(fj.thaw(model, {entry.path!r}), {entry.path!r}, mode={mode!r})."
                )
            marks.modules.setdefault(entry.path, (mode, policy))
        elif entry.kind == "array":
            marks.arrays.setdefault(entry.path, policy)
    return place(strip(model), marks)


def thaw(model: Any, *targets: Any) -> Any:
    """Return ``model`` with what ``fj.freeze`` froze at ``targets`` thawed (everything, with no target).

    Thawing a part inside a frozen part thaws only that part. Thawing what is not frozen
    does nothing. Wrappers built by hand (``fj.Frozen(...)`` in a model's constructor)
    stay; naming one raises.

    Raises:
        SelectorError: a malformed pattern or a selector that matches nothing.
        FrozenError: a target is frozen by an ``fj.Frozen`` wrapper built by hand.

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 3, key=jax.random.PRNGKey(0)), "layers")
        >>> [fj.is_frozen(mlp, f"layers.{k}") for k in range(4)]
        [True, True, True, True]
        >>> mlp = fj.thaw(mlp, "layers.-1")
        >>> [fj.is_frozen(mlp, f"layers.{k}") for k in range(4)]
        [True, True, True, False]
    """
    found = analyse(model)
    entries = found.walk.entries
    marks = read_marks(found.walk)
    if not targets:
        marks.modules.clear()
        marks.arrays.clear()
        return place(strip(model), marks)
    chosen = resolve(found.walk, targets, (), "fj.thaw")
    for i in chosen.roots:
        if entries[i].user:
            raise FrozenError(
                f"fj.thaw: the part {entries[i].path!r} is frozen by an fj.Frozen wrapper built by hand, which "
                "thaw does not remove (it undoes fj.freeze only). Expected a part fj.freeze froze; to unfreeze "
                "this use, replace the wrapper by its module: model = eqx.tree_at(lambda m: m.<path>, model, "
                "m.<path>.module)."
            )
    for i, entry in enumerate(entries):
        if chosen.covered[i]:
            marks.modules.pop(entry.path, None)
            marks.arrays.pop(entry.path, None)
    return place(strip(model), marks)
