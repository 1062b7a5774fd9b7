"""``Frozen``: one use of a module as a white box (differentiable in its inputs, constant in its arrays).

A wrapper is an ``eqx.Module`` node in the model tree. It adds no segment to the paths
that ``frozen.jax`` uses (``model.backbone`` and ``"backbone"`` stay what they were),
forwards attribute access to the module it wraps, and at each call:

* stops the gradient of the module's own arrays (so gradients still reach the inputs);
* with ``mode="eval"`` runs the module in inference behaviour (``eqx.nn.inference_mode``:
  BatchNorm uses and keeps its running statistics, Dropout is the identity), whatever
  the ``inference`` flags outside say; ``mode="inherit"`` follows them.

``fj.freeze`` places the same wrappers (``origin="freeze"``); ``fj.thaw`` removes only
those. A wrapper ``fj.freeze`` places around a module it freezes only in part lists the
frozen arrays (``leaves``) and keeps the module's behaviour.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import equinox as eqx
import jax

from ._errors import FrozenError, check_choice
from ._tree import leaf_paths

__all__ = ["Frozen", "FrozenStateful", "MODES", "TIES", "make_wrapper", "stop_arrays"]

MODES = ("eval", "inherit")
TIES = ("train", "freeze")
_FIELDS = frozenset({"module", "mode", "tied", "leaves", "mark", "origin"})


def stop_arrays(tree: Any, only: frozenset[int] | None = None) -> Any:
    """Return ``tree`` with ``jax.lax.stop_gradient`` on its arrays (or on the leaves numbered in ``only``)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    stopped = [
        jax.lax.stop_gradient(leaf) if eqx.is_array(leaf) and (only is None or k in only) else leaf
        for k, leaf in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, stopped)


class Frozen(eqx.Module):
    """Wrap one use of ``module`` as a white box: gradients reach its inputs, never its own arrays.

    Args:
        module: the ``eqx.Module`` to freeze at this use.
        mode: ``"eval"`` (default) runs it in inference behaviour even when the model
            around it is in training mode; ``"inherit"`` follows the ``inference`` flags.
        tied: ``"train"`` (default): an array this use shares with another, unfrozen use
            (``eqx.nn.Shared``) keeps training through that use; ``"freeze"`` freezes it
            at every use.

    Raises:
        FrozenError: ``mode`` or ``tied`` is not one of the values above.
        TypeError: ``module`` is not an ``eqx.Module``.

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx, frozen.jax as fj
        >>> layer = fj.Frozen(eqx.nn.Linear(2, 2, key=jax.random.PRNGKey(0)))
        >>> layer.weight.shape, layer(jnp.ones(2)).shape
        ((2, 2), (2,))
    """

    frozen_wrapper: ClassVar[bool] = True  # how the walk (_tree.py) knows a wrapper without importing this
    module: Any
    mode: str = eqx.field(static=True)
    tied: str = eqx.field(static=True)
    leaves: tuple[tuple[str, str], ...] | None = eqx.field(static=True)
    mark: tuple[str, str] | None = eqx.field(static=True)
    origin: str = eqx.field(static=True)

    def __new__(cls, module: Any = None, *args: Any, **kwargs: Any) -> Frozen:
        # A stateful layer stays one (eqx.nn.Sequential passes the state only to StatefulLayer-s).
        return super().__new__(FrozenStateful if cls is Frozen and _stateful(module) else cls)

    def __init__(self, module: Any, *, mode: str = "eval", tied: str = "train") -> None:
        check_choice("fj.Frozen", "mode", mode, MODES)
        check_choice("fj.Frozen", "tied", tied, TIES)
        if not isinstance(module, eqx.Module):
            raise TypeError(
                f"fj.Frozen: expected an eqx.Module to wrap, received {type(module).__name__}. "
                "Wrap the layer that uses the arrays (e.g. fj.Frozen(eqx.nn.Linear(...))); to freeze a "
                "list of layers wrap each one, or use fj.freeze(model, 'layers')."
            )
        self.module = module
        self.mode = mode
        self.tied = tied
        self.leaves = None
        self.mark = None
        self.origin = "user"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.leaves is None and self.mode == "eval" and "inference" in kwargs:
            kwargs["inference"] = True  # a frozen part runs in inference behaviour, whatever the caller says
        return self._view()(*args, **kwargs)

    def _view(self) -> Any:
        """The module as this use sees it: arrays stopped, inference behaviour per ``mode``."""
        if self.leaves is not None:
            listed = {path for path, _ in self.leaves}
            only = frozenset(k for k, path in enumerate(leaf_paths(self.module)) if path in listed)
            return stop_arrays(self.module, only)
        module = stop_arrays(self.module)
        return eqx.nn.inference_mode(module, True) if self.mode == "eval" else module

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails: the wrapper's own fields never come here.
        if name in _FIELDS or name.startswith("__"):
            raise AttributeError(name)
        module = object.__getattribute__(self, "module")
        value = getattr(module, name)
        if isinstance(inspect.getattr_static(type(module), name, None), types.FunctionType):
            return getattr(self._view(), name)  # a method runs as this frozen use
        return value  # arrays and submodules themselves: eqx.tree_at and Shared's where/get need them

    def __getitem__(self, key: Any) -> Any:
        return self.module[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.module)

    def __len__(self) -> int:
        return len(self.module)

    def __bool__(self) -> bool:
        return True


class FrozenStateful(Frozen, eqx.nn.StatefulLayer):
    """A :class:`Frozen` around an ``eqx.nn.StatefulLayer`` (BatchNorm, a stateful Sequential): one too."""

    def is_stateful(self) -> bool:
        return bool(self.module.is_stateful())


def _stateful(module: Any) -> bool:
    return isinstance(module, eqx.nn.StatefulLayer)


def make_wrapper(
    module: Any,
    *,
    mode: str,
    tied: str,
    leaves: tuple[tuple[str, str], ...] | None = None,
    mark: tuple[str, str] | None = None,
    origin: str = "freeze",
) -> Frozen:
    """Build a wrapper with every field given (as ``eqx`` unflattening does): ``fj.freeze``'s wrappers."""
    if not isinstance(module, eqx.Module):
        raise FrozenError(f"fj.freeze: cannot wrap {type(module).__name__}; expected an eqx.Module.")
    wrapper = object.__new__(FrozenStateful if _stateful(module) else Frozen)
    for name, value in (
        ("module", module),
        ("mode", mode),
        ("tied", tied),
        ("leaves", leaves),
        ("mark", mark),
        ("origin", origin),
    ):
        object.__setattr__(wrapper, name, value)
    return wrapper
