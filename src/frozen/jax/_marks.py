"""Where ``fj.freeze`` puts its wrappers: one layout per freeze state, whatever the history.

The freeze state ``fj.freeze`` / ``fj.thaw`` keep is a set of *marks*: a module path with
its ``(mode, tied)``, an array path with its ``tied``. It is read back from the model's
wrappers (:func:`read_marks`), changed, and laid out again on the model stripped of
``fj.freeze``'s wrappers (:func:`place`):

* a module whose subtree is marked alike (every module and array in it) gets one whole
  wrapper (a frozen use: white box, inference behaviour per ``mode``);
* otherwise its marked arrays (through lists and dicts, not through submodules) are
  listed in a partial wrapper, which also records the module's own mark.

Because the layout depends on the marks only, freezing the same parts gives the same
tree structure (``jax.tree_util.tree_structure``) every time, so a jitted step compiles
once per freeze state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from ._errors import FrozenError
from ._tree import Walk, segment
from ._wrapper import Frozen, make_wrapper

__all__ = ["Marks", "place", "read_marks", "strip"]

_NONE = "none"  # status of a subtree holding nothing that can be marked
_NOT = "not"  # ... holding something unmarked, or marked in two ways


@dataclass
class Marks:
    """Module path -> (mode, tied); array path -> tied."""

    modules: dict[str, tuple[str, str]] = field(default_factory=dict)
    arrays: dict[str, str] = field(default_factory=dict)


def read_marks(found: Walk) -> Marks:
    """The marks of the walked model's ``fj.freeze`` wrappers."""
    marks = Marks()
    for entry in found.entries:
        if entry.mark is None:
            continue
        if entry.kind == "module":
            marks.modules[entry.path] = entry.mark
        elif entry.kind == "array":
            marks.arrays[entry.path] = entry.mark[1]
    return marks


def _children(value: Any) -> tuple[list[tuple[str, Any]], Any] | None:
    flat, treedef = jtu.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
    if jtu.treedef_is_leaf(treedef):
        return None
    return [(segment(keys[0]), child) for keys, child in flat], treedef


def _rewrap(wrapper: Frozen, module: Any) -> Frozen:
    return make_wrapper(
        module, mode=wrapper.mode, tied=wrapper.tied, leaves=wrapper.leaves, mark=wrapper.mark, origin=wrapper.origin
    )


def strip(tree: Any) -> Any:
    """``tree`` without the wrappers ``fj.freeze`` placed (wrappers built by hand stay)."""
    if isinstance(tree, Frozen):
        inner = strip(tree.module)
        return inner if tree.origin == "freeze" else _rewrap(tree, inner)
    split = _children(tree)
    if split is None:
        return tree
    children, treedef = split
    return jtu.tree_unflatten(treedef, [strip(child) for _, child in children])


def _join(a: Any, b: Any) -> Any:
    """Combine two subtree statuses: a mark (mode or "*" for arrays only, tied), _NONE or _NOT."""
    if a == _NONE:
        return b
    if b == _NONE:
        return a
    if a == _NOT or b == _NOT or a[1] != b[1]:
        return _NOT
    if a[0] == "*" or b[0] == "*" or a[0] == b[0]:
        return (b[0] if a[0] == "*" else a[0], a[1])
    return _NOT


def place(tree: Any, marks: Marks) -> Any:
    """Lay out ``marks`` on ``tree`` (stripped of ``fj.freeze``'s wrappers); see the module docstring.

    Raises:
        FrozenError: an array to freeze is not inside any ``eqx.Module`` (nothing can hold its wrapper).
    """

    def visit(value: Any, path: str) -> tuple[Any, list[tuple[str, str]], Any]:
        if isinstance(value, Frozen):  # a wrapper built by hand: transparent
            inner, waiting, inner_status = visit(value.module, path)
            return _rewrap(value, inner), waiting, inner_status
        split = _children(value)
        if split is None:
            if eqx.is_array(value) and path in marks.arrays:
                return value, [("", marks.arrays[path])], ("*", marks.arrays[path])
            return value, [], _NOT if eqx.is_array(value) else _NONE
        children, treedef = split
        is_module = isinstance(value, eqx.Module)
        own = marks.modules.get(path) if is_module else None
        status: Any = own if own is not None else (_NOT if is_module else _NONE)
        placed: list[Any] = []
        pending: list[tuple[str, str]] = []
        for name, child in children:
            new, waiting, child_status = visit(child, f"{path}.{name}" if path else name)
            placed.append(new)
            pending.extend((f"{name}.{rel}" if rel else name, tied) for rel, tied in waiting)
            status = _join(status, child_status)
        if is_module and status not in (_NONE, _NOT) and status[0] != "*":
            return make_wrapper(value, mode=status[0], tied=status[1]), [], status
        rebuilt = jtu.tree_unflatten(treedef, placed)
        if is_module and (own is not None or pending):
            partial = make_wrapper(rebuilt, mode="inherit", tied="train", leaves=tuple(pending), mark=own)
            return partial, [], status
        return rebuilt, pending, status

    result, pending, _ = visit(tree, "")
    if pending:
        raise FrozenError(
            f"fj.freeze: cannot freeze the array {pending[0][0]!r}: it is not inside an eqx.Module, and a frozen "
            "array needs a module to hold its wrapper. Expected arrays inside modules; put the arrays in an "
            "eqx.Module, or freeze the modules around them."
        )
    return result
