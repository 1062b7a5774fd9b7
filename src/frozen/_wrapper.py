"""``Frozen``: a construction-time wrapper that makes one use of a module a white box."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_dtype, check_mode
from ._precision import caller_dtype, cast_floating, cast_module, module_float_dtype
from ._use import Plan, detach_slots, enter_eval, live_plan, restore_modes, restore_slots

__all__ = ["Frozen"]


# Attributes that belong to the wrapper itself; everything else is forwarded.
_OWN = frozenset(
    {"module", "mode", "dtype", "original_dtype", "training", "_plan", "_direct", "_inner", "_loading_prefix"}
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

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``dtype`` is not a ``torch.dtype``.
        frozen.FrozenError: ``dtype`` is not a floating-point type.
        frozen.InvalidModeError: ``mode`` is not ``"eval"`` or ``"inherit"``.

    Performance: before :func:`frozen.settle`, each call detaches the parameters under
    the wrapper that still require grad. After ``settle``, those frozen everywhere have
    ``requires_grad=False`` and the call is a plain call of ``module``; under
    ``torch.no_grad()`` / ``torch.inference_mode()`` it always is.

    Example:
        >>> import torch, frozen
        >>> model = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 3)), torch.nn.Linear(3, 1))
        >>> [name for name, _ in frozen.named_trainable(model)]
        ['1.weight', '1.bias']
        >>> list(model.state_dict())
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """

    module: nn.Module

    def __init__(self, module: nn.Module, *, mode: str = "eval", dtype: torch.dtype | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Frozen(module): expected a torch.nn.Module, received "
                f"{type(module).__module__}.{type(module).__qualname__}. To freeze a plain "
                f"function or tensor, wrap it in an nn.Module first (for a single tensor, "
                f"register it as a buffer instead: it is not trained)."
            )
        check_mode(mode)
        check_dtype(dtype)
        super().__init__()
        self.module = module
        self.mode = mode
        self.dtype = dtype
        self.original_dtype = module_float_dtype(module)
        if dtype is not None:
            cast_module(module, dtype)
        self.set_plan(None)
        self.register_load_state_dict_post_hook(_unprefix_incompatible_keys)

    def set_plan(self, plan: Plan | None) -> None:
        """Store the detach plan (``None``: not settled, compute it on every call).

        :func:`frozen.settle` calls this. With an empty plan and no ``dtype`` the call
        takes the direct path: the wrapped module is called as it is.
        """
        self._plan = plan
        self._direct = plan == () and self.dtype is None

    # -- calling ---------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Settled and nothing to detach or cast: the only per-call work is one mode check
        # (the module may be in training mode if it is also used plainly elsewhere).
        module = self._inner
        if self._direct and not (module.training and self.mode == "eval"):
            return module(*args, **kwargs)
        if self.dtype is not None:
            back = caller_dtype(args, kwargs, self.original_dtype)
            out = self._forward(*cast_floating(args, self.dtype), **cast_floating(kwargs, self.dtype))
            return cast_floating(out, back)
        return self._forward(*args, **kwargs)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        module = self._inner
        if self.mode == "eval" and module.training:
            saved = enter_eval(module)
            try:
                return self._call(module, args, kwargs)
            finally:
                restore_modes(saved)
        return self._call(module, args, kwargs)

    def _call(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if not torch.is_grad_enabled():
            return module(*args, **kwargs)
        plan = self._plan if self._plan is not None else live_plan(module)
        if not plan:
            return module(*args, **kwargs)
        swapped = detach_slots(plan)
        try:
            return module(*args, **kwargs)
        finally:
            restore_slots(swapped)

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
        # `wrapper.weight = ...` means the wrapped module's weight, as reading it does.
        # Private names and nn.Module's own attributes (hook flags, compile state) stay
        # on the wrapper: torch sets those on the module it works with.
        if (
            name not in _OWN
            and not name.startswith("_")
            and not hasattr(Frozen, name)
            and "module" in self.__dict__.get("_modules", {})
            and hasattr(self.module, name)
        ):
            setattr(self.module, name, value)
        else:
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.module)))

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        # No "module." segment: the keys are those of the plain model (contract S5).
        return self.module.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[override]
        # Keys arrive without the "module." segment; add it so the wrapped module (loaded
        # next, as our child) finds them. `state_dict` here is load_state_dict's private copy.
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict[f"{prefix}module.{key[len(prefix) :]}"] = state_dict.pop(key)
        self.__dict__["_loading_prefix"] = prefix

    def __repr__(self) -> str:
        options = "" if self.mode == "eval" else f", mode={self.mode!r}"
        options += "" if self.dtype is None else f", dtype={self.dtype}"
        return f"Frozen({self.module!r}{options})"


def _unprefix_incompatible_keys(wrapper: Frozen, incompatible: Any) -> None:
    """Report missing keys as ``state_dict`` names them, without "module."."""
    prefix = wrapper.__dict__.pop("_loading_prefix", None)
    if prefix is None:
        return
    inner = f"{prefix}module."
    keys = incompatible.missing_keys
    keys[:] = [prefix + k[len(inner) :] if k.startswith(inner) else k for k in keys]
