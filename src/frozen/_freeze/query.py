"""Questions about a model: which parameters train, and is this part frozen?

Questions change nothing: not the model, its records, its parameters' hooks or flags, nor
the library's registries -- on a copied model as on the original. Each walks the model
once (a :class:`~frozen._core.View`).
"""

from __future__ import annotations

from torch import nn

from .._checks import check_model
from .._core import View, join
from .._errors import UnknownPathError, closest
from .._rows import frozen_rows_in

__all__ = ["trainable", "named_trainable", "is_frozen"]


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
    return _named_trainable(View(model), "frozen.named_trainable")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Return the parameters trainable in ``model`` (see :func:`named_trainable`).

    This is the list to give an optimizer: ``torch.optim.AdamW(frozen.trainable(model))``.

    It is what gets a gradient now. A parameter inside a frozen part whose ``requires_grad``
    someone else switched on (``p.requires_grad_(True)``, PEFT's ``set_adapter``) gets one, so
    it is listed, and the first call that sees it warns with :class:`frozen.ForeignFlagWarning`
    (once per flip); :func:`frozen.settle` turns the flag off again, :func:`frozen.thaw` keeps it.
    """
    check_model(model, "frozen.trainable")
    return [p for _, p in _named_trainable(View(model), "frozen.trainable")]


def _named_trainable(view: View, function: str) -> list[tuple[str, nn.Parameter]]:
    # A row-frozen slot whose parameter was replaced by one that cannot take its rows (an
    # FSDP2 shard) is refused here, before an optimizer is built from the list.
    frozen_rows_in(view, function)
    view.notice(function)
    return [(path, p) for path, p in view.named if id(p) in view.trainable]


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
    view = View(model)
    view.notice("frozen.is_frozen")
    module_paths, param_paths = [], []
    for use in view.uses:
        module_paths.append(use.path)
        if use.path == path:
            return view.frozen_at(use)
        param_paths += [join(use.path, name) for name, p in use.module._parameters.items() if p is not None]
    for puse in view.params:
        if puse.path == path:
            return id(puse.param) not in view.trainable
    raise UnknownPathError(
        f"frozen.is_frozen(model, path={path!r}): no module or parameter has that path. "
        f"Expected a state_dict-style path; closest existing paths: "
        f"{closest(path, [p for p in module_paths + param_paths if p])}. "
        f"List them with [name for name, _ in model.named_modules()] (wrapper levels "
        f"'module.' are not part of frozen's paths)."
    )
