"""Frozen weights in low precision: stored narrow, cast at the boundary of the frozen part.

A frozen part never receives gradient for its weights, so it can keep them in a
narrower floating type (``bfloat16``, ``float16``) and halve their memory. At the
part's root, floating inputs are cast to that type and floating outputs back to the
caller's type; both casts are differentiable, so gradients still reach the inputs
(contract S1), in the caller's precision. Autocast is switched off inside the part: it
would mix its own type with the stored one (an fp16 part under bf16 autocast fails with
a raw dtype error otherwise).

Dtype changes after freezing (``docs/freeze.md``): ``model.to(dtype)``, ``.half()``,
``.float()``, ``.double()`` keep a low-precision part in its storage type — that is
what ``dtype=`` asked for — and the boundary casts to whatever the caller now uses.
The model's new type becomes the type :func:`frozen.thaw` gives the part back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .call import caller_dtype, cast_floating
from .record import Storage, record_of, set_storage
from .standins import StandIn, install, remove

__all__ = [
    "KeepStorage",
    "cast_module",
    "floating_tensors",
    "lower_precision",
    "module_float_dtype",
    "restore_precision",
]


def module_float_dtype(module: nn.Module) -> torch.dtype:
    """The type of the module's first floating parameter or buffer (the default if none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def floating_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every floating parameter and buffer under ``module``, by path."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [(name, t) for name, t in tensors if t.is_floating_point()]


def cast_module(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers in place, keeping every ``Parameter`` object.

    The class's own ``_apply`` assigns ``param.data``, so optimizers and records that hold
    the parameter objects keep working; calling it directly skips a :class:`KeepStorage`.
    """
    type(module)._apply(module, lambda t: t.to(dtype) if t.is_floating_point() else t)


class KeepStorage(StandIn):
    """Stands in for ``module._apply`` at the root of a low-precision part (``model.to(...)``).

    It lets the move happen (device, dtype), then puts the part's floating tensors back in
    their storage type and notes the type the caller moved the model to, which is what
    thaw gives back and what the boundary returns when no input is floating.
    """

    attr, layer = "_apply", "storage"

    def __call__(self, fn: Any, recurse: bool = True) -> nn.Module:
        module = self.module_ref()
        self.call_previous(fn, recurse)
        record = record_of(module)
        storage = None if record is None else record.storage
        if storage is not None:
            moved = {name: fn(torch.empty(0, dtype=dtype)).dtype for name, dtype in storage.original.items()}
            storage.original = moved
            for name, entry in _before_cast(module):  # what a part frozen later over the same tensors gives back
                entry[0] = moved.get(name, entry[0])
            storage.fallback = fn(torch.empty(0, dtype=storage.fallback)).dtype
            cast_module(module, storage.dtype)
        return module


# The type each tensor had before the first low-precision part holding it was cast, while
# any part holds it. A module or parameter reached under two roots (a submodule shared by
# "a" and "b", both frozen with dtype=) is cast by the first root: the second must give
# back the type from before that cast, not the cast one, or thaw leaves it narrow.
# Parameters are kept by object (cast in place); buffers by owning module and name
# (a cast replaces the buffer tensor).
_BEFORE_PARAMS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> [dtype, holders]
_BEFORE_BUFFERS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # module -> {name: [dtype, holders]}


def _before_cast(module: nn.Module) -> list[tuple[str, list]]:
    """Per floating tensor under ``module``: its path and its shared ``[dtype before the cast, holders]``."""
    entries = []
    for name, param in module.named_parameters():
        if param.is_floating_point():
            entries.append((name, _BEFORE_PARAMS.setdefault(param, [param.dtype, 0])))
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point():
            owner_path, _, buffer_name = name.rpartition(".")
            slots = _BEFORE_BUFFERS.setdefault(module.get_submodule(owner_path), {})
            entries.append((name, slots.setdefault(buffer_name, [buffer.dtype, 0])))
    return entries


def _release_before_cast(module: nn.Module) -> None:
    """Forget ``module``'s part in :data:`_BEFORE_PARAMS` / :data:`_BEFORE_BUFFERS` (a later freeze records afresh)."""
    for param in module.parameters():
        entry = _BEFORE_PARAMS.get(param)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _BEFORE_PARAMS[param]
    for name, _ in module.named_buffers():
        owner_path, _, buffer_name = name.rpartition(".")
        slots = _BEFORE_BUFFERS.get(module.get_submodule(owner_path), {})
        entry = slots.get(buffer_name)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del slots[buffer_name]


def lower_precision(module: nn.Module, dtype: torch.dtype) -> None:
    """Store ``module``'s floating tensors in ``dtype`` and cast at its boundary."""
    original = {}
    for name, entry in _before_cast(module):
        entry[1] += 1
        original[name] = entry[0]
    storage = Storage(
        dtype=dtype,
        original=original,
        fallback=module_float_dtype(module),
        keeper=KeepStorage(module),
    )
    cast_module(module, dtype)
    boundary = _Boundary(storage)
    storage.handles = [
        module.register_forward_pre_hook(boundary.before, with_kwargs=True),
        module.register_forward_hook(boundary.after, always_call=True),
    ]
    install(module, storage.keeper)
    set_storage(module, storage)


def restore_precision(module: nn.Module) -> None:
    """Undo :func:`lower_precision`: the original types (values keep the rounding)."""
    storage = set_storage(module, None)
    if storage is None:
        return
    _release_before_cast(module)
    for handle in storage.handles:
        handle.remove()
    remove(module, storage.keeper)
    for name, tensor in floating_tensors(module):
        original = storage.original.get(name)
        if original is not None and tensor.dtype != original:
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.to(original)  # same Parameter object
            else:
                owner_path, _, buffer_name = name.rpartition(".")
                module.get_submodule(owner_path)._buffers[buffer_name] = tensor.to(original)


class _Boundary:
    """The two hooks at a low-precision root: cast in (and leave autocast), cast back out."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.calls: list[tuple[torch.dtype, Any]] = []  # per call in progress: caller's type, autocast guard

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        back = caller_dtype(args, kwargs, self.storage.fallback)
        device = _device_type(module)
        context = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else None
        if context is not None:
            context.__enter__()
        self.calls.append((back, context))
        return cast_floating(args, self.storage.dtype), cast_floating(kwargs, self.storage.dtype)

    def after(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self.calls:
            return None
        back, context = self.calls.pop()
        if context is not None:
            context.__exit__(None, None, None)
        return None if output is None else cast_floating(output, back)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "calls": []}  # calls in progress do not travel


def _device_type(module: nn.Module) -> str:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device.type
    return "cpu"
