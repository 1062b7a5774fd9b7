"""Everything a call may change on a model, and the library's registries, as comparable data.

For "this query changed nothing" and "this refused call changed nothing" assertions: every
module's instance ``__dict__`` (the record's fields, hook dicts, stand-ins), every parameter's
flag, gradient, hooks and values, and frozen's own registries (the row index, the optimizer
hooks it installs, the flags it switched off).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer
from torch.utils.hooks import RemovableHandle

from frozen._core import record as core_record
from frozen._rows import record as rows_record
from frozen._rows import step as rows_step


def describe(value: Any, depth: int = 0) -> Any:
    """A comparable description of ``value``: identities for objects, contents for containers and records."""
    if depth > 6:
        return ("deep", id(value))
    if isinstance(value, nn.Parameter | torch.Tensor):
        return (
            "tensor",
            id(value),
            value.requires_grad,
            None if value.grad is None else (id(value.grad), value.grad.clone()),
            tuple((value._backward_hooks or {}).keys()),
            tuple((getattr(value, "_post_accumulate_grad_hooks", None) or {}).keys()),
            value.detach().clone(),
        )
    if isinstance(value, dict):
        return ("dict", tuple((k, describe(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=id) if isinstance(value, set | frozenset) else value
        return (type(value).__name__, tuple(describe(v, depth + 1) for v in items))
    if isinstance(value, RemovableHandle):
        return ("handle", id(value), value.id, id(value.hooks_dict_ref()))
    if isinstance(value, rows_record.FrozenRows):
        return ("rows", id(value), value.path, value.mask.tolist(), describe(value.handle, depth + 1))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [(f.name, describe(getattr(value, f.name), depth + 1)) for f in dataclasses.fields(value)]
        return (type(value).__name__, id(value), tuple(fields))
    if isinstance(value, nn.Module):
        return ("module", id(value))
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    return (type(value).__qualname__, id(value))


def model_state(model: nn.Module) -> dict[str, Any]:
    """Every module's instance dict, every parameter (flag, grad, hooks, values) and frozen's registries.

    The registries are read for this model's parameters only: a model an earlier test left in a
    reference cycle may be collected between two snapshots and leave them.
    """
    own = {id(p) for p in model.parameters()}
    indexed = sorted((id(p), id(r)) for p, r in rows_step._INDEX.items() if id(p) in own)
    modules = {}
    for path, module in model.named_modules(remove_duplicate=False):
        modules[path] = tuple((k, describe(v)) for k, v in module.__dict__.items() if k != "_parameters")
        modules[path] += (("_parameters", describe(module._parameters)),)
    return {
        "modules": modules,
        "registries": {
            "row index": indexed,
            # the optimizer hooks row freezing installs, as long as this model has frozen rows
            "optimizer hooks": [h.id in torch_optimizer._global_optimizer_pre_hooks for h in rows_step._HANDLES[:1]]
            if indexed
            else None,
            "switched off": sorted(id(p) for p in core_record._SWITCHED_OFF.keys() if id(p) in own),
        },
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Two :func:`model_state` results agree exactly (tensors bit for bit)."""
    assert before["registries"] == after["registries"]
    assert before["modules"].keys() == after["modules"].keys()
    for path in before["modules"]:
        assert _same(before["modules"][path], after["modules"][path]), f"module {path!r} changed"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
