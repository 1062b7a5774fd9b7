"""``Frozen``: a construction-time wrapper that makes one use of a module a white box."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_dtype, check_mode, check_wrapper_tied
from .._errors import FrozenError
from .call import UsePlan, call_frozen, caller_dtype, cast_floating, slots_intact
from .precision import cast_module, module_float_dtype

__all__ = ["Frozen"]

# Attributes that belong to the wrapper itself; everything else is forwarded.
_OWN = frozenset(
    {"module", "mode", "dtype", "tied", "original_dtype", "training", "_plan", "_inner", "_loading_prefix"}
)


class Frozen(nn.Module):
    """Wrap ``module`` so that this use of it is frozen: a white box.

    ``Frozen(m)(*args, **kwargs)`` returns ``m(*args, **kwargs)``; gradients flow to
    every input that requires grad, and no gradient reaches ``m``'s parameters through
    this use. If the same parameters are also used plainly elsewhere in the model, they
    stay trainable and receive gradient from those uses only (contract S4).

    The wrapper is invisible in ``state_dict`` keys (a checkpoint of the plain model
    loads into the wrapped one and back, ``strict=True``), forwards attribute access to
    the wrapped module, and survives ``copy.deepcopy`` and ``torch.save``/``torch.load``.

    Args:
        module: the ``nn.Module`` to freeze at this use.
        mode: ``"eval"`` (default) runs ``module`` in inference behaviour even while
            the parent trains: BatchNorm uses and keeps its running statistics,
            Dropout is the identity, and ``model.train()`` does not undo it.
            ``"inherit"`` follows the parent's ``train()`` / ``eval()`` (BatchNorm
            statistics may then change).
        dtype: store the wrapped module's floating parameters and buffers in this
            type (e.g. ``torch.bfloat16``: half the memory). The module is cast in
            place (same ``Parameter`` objects); floating inputs are cast to ``dtype``
            at the boundary and floating outputs back to the caller's type (that of the
            first floating input, else the module's original type, kept in
            ``wrapper.original_dtype``). ``.module`` stays in ``dtype``: unwrapping does
            not restore precision — cast back with ``.module.to(wrapper.original_dtype)``
            (values keep the rounding) or reload the checkpoint. Do not use it on a
            module that is also used plainly elsewhere: that use would see the cast
            weights.
        tied: what :func:`frozen.settle` does when a parameter of this use also trains
            through another, plain use. It keeps training there whatever ``tied`` says (a
            wrapper freezes this one use; contract S4), and this use is a white box for
            it. ``"warn"`` (default): a :class:`frozen.TiedParameterWarning` naming both
            paths; ``"train"``: silently (a deliberate stop-gradient branch), as
            ``frozen.freeze(..., tied="train")``; ``"error"``:
            :class:`frozen.TiedParameterError`, as ``freeze(..., tied="error")``. There is
            no ``"freeze"``: to freeze a shared parameter at every use, freeze in place
            (``frozen.freeze(model, path)``, whose default ``tied="freeze"`` does that).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``dtype`` is not a ``torch.dtype``.
        frozen.FrozenError: ``dtype`` is not a floating-point type, or ``tied`` is unknown.
        frozen.InvalidModeError: ``mode`` is not ``"eval"`` or ``"inherit"``.

    Attaching a module or parameter to the wrapper itself (``wrapper.adapter = ...``)
    raises :class:`frozen.FrozenError`: attach it to ``wrapper.module`` or the parent.
    Assigning a plain tensor to a parameter name (``torch.func.functional_call`` with
    ``state_dict`` keys does) swaps the wrapped module's slot.

    Performance: before :func:`frozen.settle`, each call detaches the parameters under
    the wrapper that still require grad (not under ``torch.no_grad()``), and switches the
    modules under it that are in training mode to eval for the call (also under
    ``no_grad``: it cannot know whether they are used plainly elsewhere). After
    ``settle``, a module used only frozen is in eval once, and the call is a plain call
    of ``module`` after one identity check per parameter (which notices tensors that
    ``torch.func.functional_call`` substituted: they are detached, the white box holds
    under ``torch.func.grad``/``vmap``/``jacrev``).

    Example:
        >>> import torch, frozen
        >>> model = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 3)), torch.nn.Linear(3, 1))
        >>> [name for name, _ in frozen.named_trainable(model)]
        ['1.weight', '1.bias']
        >>> list(model.state_dict())
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """

    module: nn.Module

    def __init__(
        self, module: nn.Module, *, mode: str = "eval", dtype: torch.dtype | None = None, tied: str = "warn"
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Frozen(module): expected a torch.nn.Module, received "
                f"{type(module).__module__}.{type(module).__qualname__}. To freeze a plain "
                f"function or tensor, wrap it in an nn.Module first (for a single tensor, "
                f"register it as a buffer instead: it is not trained)."
            )
        check_mode(mode)
        check_dtype(dtype)
        check_wrapper_tied(tied)
        super().__init__()
        self.module = module
        self.mode = mode
        self.dtype = dtype
        self.tied = tied
        self.original_dtype = module_float_dtype(module)
        if dtype is not None:
            cast_module(module, dtype)
        self._plan: UsePlan | None = None
        self.register_load_state_dict_post_hook(_unprefix_incompatible_keys)

    def set_plan(self, plan: UsePlan | None) -> None:
        """Store the per-call plan (``None``: not settled, compute it on every call).

        :func:`frozen.settle` calls this. With nothing to detach, switch or cast, a call
        is a plain call of the wrapped module after one identity check per parameter
        (which notices tensors that ``torch.func.functional_call`` substituted).
        """
        self._plan = plan

    # -- calling ---------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        module, plan = self._inner, self._plan
        if self.dtype is None:
            if plan is not None and plan.direct and slots_intact(plan.slots):
                return module(*args, **kwargs)
            return call_frozen(plan, module, self.mode, args, kwargs)
        back = caller_dtype(args, kwargs, self.original_dtype)
        args, kwargs = cast_floating(args, self.dtype), cast_floating(kwargs, self.dtype)
        device = next((t.device.type for t in module.parameters()), "cpu")
        if torch.is_autocast_enabled(device):
            # Autocast would mix its own type with the stored one; the part runs as stored.
            with torch.autocast(device, enabled=False):
                return cast_floating(call_frozen(plan, module, self.mode, args, kwargs), back)
        return cast_floating(call_frozen(plan, module, self.mode, args, kwargs), back)

    def train(self, mode: bool = True) -> Frozen:
        """Set the wrapper's mode; the wrapped module follows only if ``mode="inherit"``.

        In ``mode="eval"`` the wrapped module's own flags are left alone: it may also be
        used plainly elsewhere, where the parent's ``train()`` must reach it. Each frozen
        call runs it in eval behaviour regardless (switching it for that call only if it
        is in training mode); :func:`frozen.settle` puts a module used only frozen into
        eval once, so that its calls need no switching.
        """
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        if self.mode == "inherit":
            self.module.train(mode)
        elif self._plan is not None:
            for module in self._plan.follow:  # gradient checkpointing stays on while training
                module.training = mode
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> Frozen:
        # model.to(dtype) / .half() / .double() keep a low-precision part in its storage type;
        # the boundary casts to the caller's new type, and thaw-like unwrapping uses it.
        super()._apply(fn, recurse)
        if self.dtype is not None:
            self.original_dtype = fn(torch.empty(0, dtype=self.original_dtype)).dtype
            cast_module(self.module, self.dtype)
        return self

    # -- transparency ----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _OWN or name.startswith("__"):
                raise
        return getattr(self.module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "module":
            # A plain attribute too, so that each call finds it without nn.Module.__getattr__.
            object.__setattr__(self, "_inner", value)
        inner = self.__dict__.get("_modules", {}).get("module")
        if inner is None or name in _OWN or name.startswith("_") or hasattr(Frozen, name):
            # Private names and nn.Module's own attributes (hook flags, compile state) stay on
            # the wrapper: torch sets those on the module it works with.
            super().__setattr__(name, value)
        elif isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and name in inner._parameters:
            # torch.func.functional_call with state_dict keys ("l1.weight") swaps the slot
            # through the wrapper: give the wrapped module's slot the tensor, as it would.
            inner._parameters[name] = value
        elif hasattr(inner, name):
            setattr(inner, name, value)  # `wrapper.weight = ...` means the wrapped module's, as reading does
        elif isinstance(value, (nn.Module, nn.Parameter)) or (isinstance(value, torch.Tensor) and name):
            raise FrozenError(
                f"Frozen: cannot attach {type(value).__name__} {name!r} to the wrapper: a Frozen wrapper holds "
                f"exactly one module, and what is attached to it would be invisible in state_dict() and "
                f"trainable(). Attach it to the wrapped module (wrapper.module.{name} = ..., frozen with it) "
                f"or to the wrapper's parent (it trains)."
            )
        else:
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.module)))

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        # No "module." segment: the keys are those of the plain model (contract S5).
        return self.module.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Keys arrive without the "module." segment; add it so the wrapped module (loaded
        # next, as our child) finds them. `state_dict` here is load_state_dict's private copy.
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict[f"{prefix}module.{key[len(prefix) :]}"] = state_dict.pop(key)
        self.__dict__["_loading_prefix"] = prefix

    def __repr__(self) -> str:
        options = "" if self.mode == "eval" else f", mode={self.mode!r}"
        options += "" if self.dtype is None else f", dtype={self.dtype}"
        options += "" if self.tied == "warn" else f", tied={self.tied!r}"
        return f"Frozen({self.module!r}{options})"


def _unprefix_incompatible_keys(wrapper: Frozen, incompatible: Any) -> None:
    """Report missing keys as ``state_dict`` names them, without "module."."""
    prefix = wrapper.__dict__.pop("_loading_prefix", None)
    if prefix is None:
        return
    inner = f"{prefix}module."
    keys = incompatible.missing_keys
    keys[:] = [prefix + k[len(inner) :] if k.startswith(inner) else k for k in keys]
