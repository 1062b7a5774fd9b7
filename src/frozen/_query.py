"""Questions about a model: which parameters train, and is this part frozen?"""

from __future__ import annotations

import sys

from torch import nn

from ._checks import check_model
from ._errors import UnknownPathError, closest
from ._record import switched_off
from ._rows import restore_carried
from ._tree import iter_module_uses, iter_param_uses, join, named_parameters

__all__ = ["trainable", "named_trainable", "is_frozen", "trainable_ids"]


def trainable_ids(model: nn.Module) -> set[int]:
    """``id()`` of every parameter that is trainable in ``model``.

    A parameter is trainable when some non-frozen use reaches it and the user has not
    frozen it by hand. A flag the library itself turned off (by ``settle``/``freeze``)
    still counts as "the user wants it trained".
    """
    ids: set[int] = set()
    claimed = frozen_by_other_libraries(model)
    for use in iter_param_uses(model):
        param = use.param
        if use.frozen:
            continue
        if param.requires_grad or (switched_off(param, use.owner, use.name) and id(param) not in claimed):
            ids.add(id(param))
    return ids


def frozen_by_other_libraries(model: nn.Module) -> set[int]:
    """``id()`` of parameters another library keeps frozen on purpose, which thaw must leave off.

    The library cannot see a ``requires_grad=False`` written over its own ``False``, so it
    recognises the libraries that do so. PEFT (LoRA and the other tuners) freezes every
    parameter of the model it tunes except its adapters (named with the tuner's prefix, e.g.
    ``lora_``) and ``modules_to_save``: after ``freeze`` -> ``get_peft_model`` -> ``thaw``,
    those stay frozen. PEFT is never imported here.
    """
    peft_tuners = sys.modules.get("peft.tuners.tuners_utils")
    if peft_tuners is None:
        return set()
    claimed: set[int] = set()
    for module in model.modules():
        if isinstance(module, peft_tuners.BaseTuner):
            prefix = getattr(module, "prefix", "lora_")
            for name, param in module.named_parameters():
                if prefix not in name and "modules_to_save" not in name and not param.requires_grad:
                    claimed.add(id(param))
    return claimed


def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Return ``(path, parameter)`` for every parameter trainable in ``model``.

    Deduplicated and in ``model.named_parameters()`` order; paths are ``state_dict``
    keys (a ``Frozen`` wrapper adds no ``module.`` segment). A parameter tied between
    two places is listed once, under its first path.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), frozen.Frozen(torch.nn.Linear(2, 2)))
        >>> [name for name, _ in frozen.named_trainable(net)]
        ['0.weight', '0.bias']
    """
    check_model(model, "frozen.named_trainable")
    ids = trainable_ids(model)
    return [(path, p) for path, p in named_parameters(model) if id(p) in ids]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Return the parameters trainable in ``model`` (see :func:`named_trainable`).

    This is the list to give an optimizer: ``torch.optim.AdamW(frozen.trainable(model))``.
    """
    check_model(model, "frozen.trainable")
    restore_carried(model)  # a copied model's row freezing, before an optimizer sees it
    return [p for _, p in named_trainable(model)]


def is_frozen(model: nn.Module, path: str = "") -> bool:
    """Return whether the module or parameter at ``path`` is frozen in ``model``.

    A parameter path is frozen when the parameter is not trainable in ``model``. A
    module path is frozen when that use of it is frozen (it is, or sits inside, a
    ``Frozen`` wrapper or a part frozen by :func:`frozen.freeze`), or when it has
    parameters and none of them is trainable in ``model``. A module without
    parameters that is not inside a frozen use is not frozen.

    Args:
        model: the model to ask about.
        path: a ``state_dict``-style path; ``""`` (default) is the model itself.

    Raises:
        frozen.UnknownPathError: no module or parameter has that path.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 2))
        >>> frozen.is_frozen(net, "0"), frozen.is_frozen(net, "1.weight"), frozen.is_frozen(net)
        (True, False, False)
    """
    check_model(model, "frozen.is_frozen")
    if not isinstance(path, str):
        raise TypeError(
            f"frozen.is_frozen(model, path): expected path to be a str such as '0.weight', received {type(path).__name__}."
        )
    ids = trainable_ids(model)
    module_paths, param_paths = [], []
    for use in iter_module_uses(model):
        module_paths.append(use.path)
        if use.path == path:
            if use.frozen:
                return True
            params = {id(p) for p in use.module.parameters()}
            return bool(params) and not (params & ids)
        param_paths += [join(use.path, name) for name, p in use.module._parameters.items() if p is not None]
    for puse in iter_param_uses(model):
        if puse.path == path:
            return id(puse.param) not in ids
    raise UnknownPathError(
        f"frozen.is_frozen(model, path={path!r}): no module or parameter has that path. "
        f"Expected a state_dict-style path; closest existing paths: "
        f"{closest(path, [p for p in module_paths + param_paths if p])}. "
        f"List them with [name for name, _ in model.named_modules()] (wrapper levels "
        f"'module.' are not part of frozen's paths)."
    )
