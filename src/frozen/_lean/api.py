"""Lean frozen middles: save less for backward where no weight gradient is needed.

:func:`lean` makes every frozen convolution of a part compute its backward for the input
only (saving the weight, not the input activation) and folds each frozen eval-mode
BatchNorm into the convolution just before it in an ``nn.Sequential`` (one operation
instead of two, nothing saved for the normalisation); a ReLU after them overwrites the
convolution's output, which nothing saved, instead of allocating. Like :func:`frozen.cache`
it puts a stand-in for ``forward`` on those modules (``_core/standins.py``: behind a cached
part, in front of frozen's guard) -- no new module, same tree, same ``state_dict``. Every call checks the modules are still frozen (else it runs the plain
forward) and refolds when a tensor or flag of the convolution or the norm changed. See
``docs/cache.md`` for the measurements behind making this opt-in.
"""

from __future__ import annotations

from torch import nn

from .._checks import ModelT, check_model
from .._core import ModuleRef, find, install, iter_module_uses, own_attribute, remove, settle, standing
from .._errors import ArgumentTypeError, FrozenError, UnknownPathError, closest
from .._freeze import is_frozen
from .forward import LeanConv, LeanNorm, LeanReLU
from .norm import NORMS, LeanBatchNorm

__all__ = ["lean", "unlean"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _eligible(conv: nn.Module) -> bool:
    return type(conv) in _CONVS and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _plan(
    model: nn.Module, path: str
) -> list[tuple[nn.Module, nn.Module | None, nn.Module | None, str, nn.Module | None]]:
    """``(conv, norm or None, ReLU or None, conv's path, its Sequential)`` for every eligible convolution under ``path``.

    Norms are given only where folding them is safe; ReLUs only where the convolution's
    output (through the norm, if any) goes to them alone.
    """
    uses = [u for u in iter_module_uses(model) if u.path == path or u.path.startswith(f"{path}.") or not path]
    counts: dict[int, int] = {}
    for use in iter_module_uses(model):
        counts[id(use.module)] = counts.get(id(use.module), 0) + 1
    convs = {id(u.module): u.module for u in uses if _eligible(u.module)}
    where = {id(u.module): u.path for u in reversed(uses)}  # each module's first path
    norms: dict[int, nn.Module] = {}
    relus: dict[int, nn.Module] = {}
    parents: dict[int, nn.Module] = {}  # the Sequential whose own forward feeds the norm and the ReLU
    for use in uses:
        seq = use.module
        if type(seq).forward is not nn.Sequential.forward or not isinstance(seq, nn.Sequential):
            continue
        children = list(seq)
        for index, first in enumerate(children[:-1]):
            # In a plain Sequential the convolution's output goes to the next child only.
            if id(first) not in convs or counts[id(first)] != 1:
                continue
            following = children[index + 1 :]
            parents[id(first)] = seq
            if isinstance(following[0], nn.modules.batchnorm._BatchNorm) and counts[id(following[0])] == 1:
                norms[id(first)] = following.pop(0)
            if following and type(following[0]) is nn.ReLU and counts[id(following[0])] == 1:
                relus[id(first)] = following[0]
    return [(conv, norms.get(key), relus.get(key), where[key], parents.get(key)) for key, conv in convs.items()]


def _check_paths(paths: tuple, function: str) -> None:
    """Each path is a module path (str): ``lean(model, 1)`` or ``lean(model, ["a", "b"])`` is a mistake."""
    for path in paths:
        if not isinstance(path, str):
            hint = f" To pass a list of paths, unpack it: {function}(model, *paths)." if isinstance(path, list) else ""
            raise ArgumentTypeError(
                f"{function}(model, {path!r}): expected each path to be a module path (str) such as "
                f"'backbone' or '' (the whole model; no path means the same), received "
                f"{type(path).__name__} {path!r}. List the module paths with [p for p, _ in "
                f"model.named_modules()].{hint} Nothing was changed."
            )


def lean(model: ModelT, *paths: str) -> ModelT:
    """Make the frozen parts at ``paths`` (none: the whole model) save less for backward; return ``model``.

    Frozen ``Conv1d/2d/3d`` compute only the input gradient and save no input activation;
    a frozen eval-mode ``BatchNorm`` right after such a convolution in an ``nn.Sequential``
    is folded into it (outputs and input gradients equal up to float rounding, ~1e-7
    relative in float32), and an ``nn.ReLU`` right after them runs in place on the
    convolution's output, which nothing saved. Any other frozen eval-mode ``BatchNorm1d/2d/3d``
    computes ``x * s + t`` per channel with a backward that saves only ``s`` (``norm.py``). ``Linear`` needs nothing: torch already
    saves only the weight when the weight needs no gradient. A module thawed later runs
    its plain forward.
    The model is settled first (:func:`frozen.settle`), as ``freeze`` and ``thaw`` do.

    Raises:
        TypeError: ``model`` is not a module, or a path is not a ``str`` (a
            :class:`frozen.FrozenError` too).
        frozen.UnknownPathError: no module has a given path.
        frozen.FrozenError: a part is not frozen. Nothing is changed then.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> before = frozen.freeze(net, "")(x)
        >>> torch.allclose(frozen.lean(net)(x), before, atol=1e-6)
        True
    """
    check_model(model, "frozen.lean")
    _check_paths(paths, "frozen.lean")
    known = [u.path for u in iter_module_uses(model)]
    for path in paths or ("",):
        if path not in known:
            raise UnknownPathError(
                f"frozen.lean(model, {path!r}): no module has that path. Closest: {closest(path, known)}."
            )
        if not is_frozen(model, path):
            raise FrozenError(
                f"frozen.lean(model, {path!r}): the part at {path!r} is not frozen; a lean backward drops the weight "
                f"gradient, so only frozen parts can be lean. Freeze it first: frozen.freeze(model, {path!r})."
            )
    settle(model)  # unsettled, a Frozen(...) wrapper's per-call detaching refolded at every call
    plans = [item for path in paths or ("",) for item in _plan(model, path)]
    first_paths = {id(u.module): u.path for u in reversed(list(iter_module_uses(model)))}
    for conv, norm, relu, where, parent in plans:
        # Beside frozen's own stand-ins (its guard, a cache) lean takes its layer; an instance forward
        # of someone else's (Accelerate's hooks) would be skipped by the lean computation: left alone.
        if own_attribute(conv, "forward") is not None or find(conv, "forward", LeanConv) is not None:
            continue
        lean_conv = LeanConv(conv, norm, model, where)
        lean_conv.parent = ModuleRef(parent)  # its shortcuts hold only inside this Sequential's forward
        install(conv, lean_conv)
        if norm is not None and "forward" not in norm.__dict__:
            install(norm, LeanNorm(norm, lean_conv, model, first_paths[id(norm)]))
        elif norm is not None:
            lean_conv.norm_ref = ModuleRef(None)  # the norm's forward is someone else's: do not fold
            relu = None  # its input is then the norm's own output, never the convolution's
        if relu is not None and not relu.inplace and "forward" not in relu.__dict__:
            install(relu, LeanReLU(relu, lean_conv))
    # Every other BatchNorm under the paths (no convolution folds it): input gradient only, saving its scale.
    for use in iter_module_uses(model):
        norm = use.module
        if type(norm) not in NORMS or not any(_under(use.path, p) for p in paths or ("",)):
            continue
        if own_attribute(norm, "forward") is not None or find(norm, "forward", LeanBatchNorm) is not None:
            continue  # someone else's forward (left alone, as for convolutions), or lean already
        install(norm, LeanBatchNorm(norm, model, first_paths[id(norm)]))
    return model


def _under(path: str, part: str) -> bool:
    return not part or path == part or path.startswith(f"{part}.")


def unlean(model: ModelT, *paths: str) -> ModelT:
    """Undo :func:`lean` for the parts at ``paths`` (none: the whole model); return ``model``.

    Example:
        >>> import torch, frozen
        >>> net = frozen.lean(frozen.freeze(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1)), ""))
        >>> "forward" in frozen.unlean(net)[0].__dict__
        False
    """
    check_model(model, "frozen.unlean")
    _check_paths(paths, "frozen.unlean")
    for use in iter_module_uses(model):
        if paths and not any(use.path == p or use.path.startswith(f"{p}.") for p in paths):
            continue
        for found in standing(use.module, "forward"):
            if not isinstance(found, LeanConv | LeanBatchNorm | LeanReLU):
                continue
            remove(use.module, found)  # a cached part in front, frozen's guard behind: they stay
            if isinstance(found, LeanConv):
                found.last = None  # a norm left lean alone then runs its plain forward
            if isinstance(found, LeanConv | LeanBatchNorm):
                for hook in found.load_hooks or ():
                    hook.remove()
    return model
