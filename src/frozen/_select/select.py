"""Selectors: which modules and parameters of a model a target names (contract S11).

The language is documented in one place, ``docs/selectors.md``. A target is a dotted
path pattern (matched against module *and* parameter paths, grammar in ``frozen._grammar``), a
module type, a module or parameter object, a predicate ``(path, module) -> bool``, or
``params(...)``: a pattern or predicate ``(path, parameter) -> bool`` over parameters
only. A target that names a module selects its whole subtree; one that names a
parameter selects that parameter use. ``exclude=`` removes what it names the same way.

Everything is computed in one pre-order walk: a use's subtree is the contiguous range
``[i, end[i])`` of the walk, so expanding matches to subtrees is one sweep, and a
pattern's automaton state at a node is one step from its parent's. Resolving costs
time linear in the number of module and parameter uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from torch import nn

from .._checks import check_model
from .._core import ModuleUse, ParamUse, View
from .._errors import ArgumentTypeError, SelectorError, closest
from .._grammar import Pattern
from .norms import is_norm
from .patterns import ParamSelector, PathTree, compile_pattern, params

__all__ = [
    "ParamSelector",
    "Selection",
    "Selector",
    "compile_pattern",
    "params",
    "resolve",
    "select",
]


def _norm_layer(path: str, module: nn.Module) -> bool:
    """``train_norms=True`` as an exclusion: a predicate (it may match nothing)."""
    return is_norm(module)


Selector = str | type | nn.Module | nn.Parameter | ParamSelector | Callable[[str, nn.Module], bool]


class Selection(NamedTuple):
    """The result of resolving targets."""

    uses: list[ModuleUse]  # every selected module use, subtrees included, minus exclusions, in model order
    matched: list[ModuleUse]  # the module uses a target matched itself (before subtrees and exclusions)
    params: list[ParamUse]  # parameter uses selected on their own (their module is not in ``uses``), model order


def select(
    model: nn.Module, *targets: Selector, exclude: Selector | Iterable[Selector] = (), train_norms: bool = False
) -> list[str]:
    """Return the paths that ``freeze(model, *targets, ...)`` would freeze: modules, then parameters alone.

    Each target selects the modules it matches together with their whole subtree, and
    the parameters it matches (a pattern reaching a parameter path such as ``"**.bias"``,
    a parameter object, or :func:`params`). ``exclude=`` removes the same way. The result
    is in ``state_dict`` order: each selected module path (``""`` is the model itself),
    and the path of each parameter selected on its own, i.e. whose module is not selected.
    The language is described in ``docs/selectors.md``.

    Args:
        model: the model to select in.
        *targets: patterns (``"encoder.layer.-2:"``, ``"**.bias"``), module types, module or
            parameter objects, predicates ``(path, module) -> bool`` or ``params(...)``. None
            (or an empty list unpacked) means the whole model, as ``""`` does.
        exclude: one selector or a list of them, removed from the selection. Types and
            predicates may match nothing here (so a generic recipe such as
            ``exclude=nn.BatchNorm2d`` works on any model); patterns and objects must match.
        train_norms: also exclude every normalisation layer -- torch's (BatchNorm,
            InstanceNorm, LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm) and a model's own
            classes named ``*Norm`` (``LlamaRMSNorm``, ``T5LayerNorm``): fastai's "train the norms".

    Returns:
        The selected module and parameter paths.

    Raises:
        TypeError: ``model`` is not a module, or a selector has an unsupported type.
        frozen.SelectorError: a malformed pattern, or a target that matches nothing.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> frozen.select(net, "0-1"), frozen.select(net, torch.nn.Linear, exclude="2"), frozen.select(net, "-1")
        (['0', '1'], ['0'], ['2'])
        >>> frozen.select(net, "**.bias", exclude="0")
        ['2.bias']
    """
    check_model(model, "frozen.select")
    tree = PathTree(model)
    modules, parameters, _ = _choose(tree, targets, exclude, train_norms, "frozen.select")
    by_owner: dict[int, list[str]] = {}
    for j in parameters:
        by_owner.setdefault(tree.owner[j], []).append(tree.params[j].path)
    chosen = set(modules)
    paths = []
    for i, use in enumerate(tree.uses):  # a module's own parameters come right after it, as in state_dict
        paths += [use.path] if i in chosen else []
        paths += by_owner.get(i, [])
    return paths


def resolve(
    model: nn.Module,
    targets: tuple,
    exclude: Any,
    *,
    train_norms: bool = False,
    function: str,
    view: View | None = None,
) -> Selection:
    """Resolve ``targets`` minus ``exclude`` to uses of ``model``; raise before anything changes.

    No targets is the whole model (``""``), as in every library users come from: timm's
    ``freeze(model)``, Lightning's ``BaseFinetuning.freeze(module)``, Keras'
    ``model.trainable = False``; ``exclude=`` then carves out of the whole model.
    ``view``: the caller's walk of ``model``, read instead of walking it again.
    """
    tree = PathTree(model, view)
    modules, parameters, matched = _choose(tree, targets, exclude, train_norms, function)
    return Selection(
        [tree.uses[i] for i in modules],
        [use for use, hit in zip(tree.uses, matched) if hit],
        [tree.params[j] for j in parameters],
    )


def _choose(
    tree: PathTree, targets: tuple, exclude: Any, train_norms: Any, function: str
) -> tuple[list[int], list[int], list[bool]]:
    """Indices of the selected module uses and parameter uses, and the module hits of the targets."""
    if not isinstance(train_norms, bool):
        raise ArgumentTypeError(
            f"{function}(..., train_norms={train_norms!r}): expected True or False, received "
            f"{type(train_norms).__name__} {train_norms!r}. Pass train_norms=True to keep the norms trainable."
        )
    excluded = list(_as_selectors(exclude, function))
    if train_norms:
        excluded.append(_norm_layer)
    if targets:
        target_modules, target_params = _match_all(tree, targets, function, "target", lambda s: True)
    else:
        target_modules, target_params = [i == 0 for i in range(len(tree.uses))], None  # the model itself
    # Exclusions by type or predicate may match nothing; patterns and objects name
    # something specific, so an empty match there is a typo worth an error.
    excluded_modules, excluded_params = _match_all(tree, excluded, function, "exclude", _names_something)
    dropped = tree.cover(excluded_modules)
    keep = [chosen and not out for chosen, out in zip(tree.cover(target_modules), dropped)]
    if target_params is None and excluded_params is None:
        return [i for i, k in enumerate(keep) if k], [], target_modules
    chosen_params = _params_alone(tree, keep, dropped, target_params, excluded_params)
    return [i for i, k in enumerate(keep) if k], chosen_params, target_modules


def _params_alone(
    tree: PathTree, keep: list[bool], dropped: list[bool], targeted: list[bool] | None, excluded: list[bool] | None
) -> list[int]:
    """Parameter uses selected on their own; updates ``keep`` for modules that lose a parameter.

    Excluding a parameter of a selected module (``freeze(m, "head", exclude="head.bias")``)
    selects that module's other parameters instead of the module itself.
    """
    count = len(tree.params)
    targeted = targeted or [False] * count
    excluded = excluded or [False] * count
    out = [x or dropped[o] for x, o in zip(excluded, tree.owner)]
    demoted = {o for x, o in zip(excluded, tree.owner) if x and keep[o]}
    for o in demoted:
        keep[o] = False
    return [
        j
        for j, o in enumerate(tree.owner)
        if not out[j] and (o in demoted or (targeted[j] and not keep[o]))  # a kept module covers its parameters
    ]


def _names_something(selector: Any) -> bool:
    """Whether an exclude selector names something specific (so matching nothing is a typo)."""
    if isinstance(selector, ParamSelector):
        return isinstance(selector.what, str)
    return isinstance(selector, (str, nn.Module, nn.Parameter))


def _as_selectors(exclude: Any, function: str) -> Iterable[Any]:
    # A Parameter is an iterable tensor: test it before Iterable.
    if isinstance(exclude, (str, type, nn.Module, nn.Parameter, ParamSelector)):
        return (exclude,)
    if callable(exclude) and not isinstance(exclude, Iterable):
        return (exclude,)
    if isinstance(exclude, Iterable):
        return tuple(exclude)
    raise ArgumentTypeError(
        f"{function}(..., exclude=...): expected a selector or a list of selectors, received "
        f"{type(exclude).__name__}. Pass e.g. exclude='head' or exclude=(torch.nn.LayerNorm, 'pooler')."
    )


def _match_all(
    tree: PathTree, selectors: Iterable[Any], function: str, role: str, must_match: Callable[[Any], bool]
) -> tuple[list[bool], list[bool] | None]:
    """Module hits and parameter hits (None when no selector looks at parameters) of ``selectors``."""
    modules, parameters = [False] * len(tree.uses), None
    for selector in selectors:
        hit_modules, hit_params = _match_one(tree, selector, function, role)
        if not any(hit_modules or ()) and not any(hit_params or ()) and must_match(selector):
            raise SelectorError(_no_match_message(tree, selector, function, role))
        if hit_modules is not None:
            modules = [a or b for a, b in zip(modules, hit_modules)]
        if hit_params is not None:
            parameters = hit_params if parameters is None else [a or b for a, b in zip(parameters, hit_params)]
    return modules, parameters


def _match_one(tree: PathTree, selector: Any, function: str, role: str) -> tuple[list[bool] | None, list[bool] | None]:
    if isinstance(selector, str):
        pattern = Pattern(selector, function, role)
        masks = tree.masks(pattern)
        return tree.module_hits(pattern, masks), tree.param_hits(pattern, masks)
    if isinstance(selector, ParamSelector):
        if isinstance(selector.what, str):
            return None, tree.param_hits(Pattern(selector.what, function, role))
        return None, [bool(selector.what(use.path, use.param)) for use in tree.params]
    if isinstance(selector, nn.Parameter):
        return None, [use.param is selector for use in tree.params]
    if isinstance(selector, type) or (
        isinstance(selector, tuple) and selector and all(isinstance(t, type) for t in selector)
    ):  # a tuple of types, as isinstance takes it
        return [isinstance(u.module, selector) or isinstance(u.wrapper, selector) for u in tree.uses], None
    if isinstance(selector, nn.Module):
        return [u.module is selector or u.wrapper is selector for u in tree.uses], None
    if callable(selector):
        # The inner module, as paths skip wrapper levels too.
        return [bool(selector(u.path, u.module)) for u in tree.uses], None
    hint = " To pass a list of targets, unpack it: freeze(model, *targets)." if isinstance(selector, list) else ""
    raise ArgumentTypeError(
        f"{function}: expected each {role} to be a path pattern (str), a module type, a module or parameter "
        f"object, a predicate (path, module) -> bool or frozen.params(...), received {type(selector).__name__} "
        f"{selector!r}. See docs/selectors.md.{hint}"
    )


def _no_match_message(tree: PathTree, selector: Any, function: str, role: str) -> str:
    text = selector.what if isinstance(selector, ParamSelector) else selector
    if isinstance(text, str):
        what = "parameter path" if isinstance(selector, ParamSelector) else "module or parameter path"
        return (
            f"{function}: the {role} pattern {text!r} matches no {what} of the model. Expected a dotted "
            f"path or pattern (docs/selectors.md); closest existing paths: {closest(text, _near(tree, text))}. "
            f"List every path with frozen.select(model, '**', frozen.params('**'))."
        )
    if isinstance(selector, nn.Parameter):
        return (
            f"{function}: the {role} parameter object of shape {tuple(selector.shape)} is not part of the model. "
            f"Expected a parameter reached from the model (e.g. model.cls_token); pass that object or its path."
        )
    if isinstance(selector, nn.Module):
        return (
            f"{function}: the {role} module object {type(selector).__name__} is not part of the model. "
            f"Expected a module reached from the model (e.g. model.encoder); pass that object or its path."
        )
    if isinstance(selector, ParamSelector):
        return (
            f"{function}: the {role} parameter predicate {selector!r} matches no parameter of the model "
            f"({len(tree.params)} parameter uses). Check the predicate; it is called as (path, parameter)."
        )
    name = getattr(selector, "__name__", repr(selector))
    kinds = sorted({type(u.module).__name__ for u in tree.uses})
    what = "module type" if isinstance(selector, (type, tuple)) else "predicate"
    return (
        f"{function}: the {role} {what} {name} matches no module of the model. Module types "
        f"present: {closest(name, kinds)}. Check the type (isinstance is used) or the predicate."
    )


def _near(tree: PathTree, text: str) -> list[str]:
    """Paths close to where ``text`` stops matching: the children of its longest matching prefix."""
    segments = text.split(".")
    for keep in range(len(segments) - 1, 0, -1):
        hits = tree.module_hits(Pattern(".".join(segments[:keep])))
        children = [u.path for i, u in enumerate(tree.uses) if i and hits[tree.parent[i]]]
        children += [p.path for p, o in zip(tree.params, tree.owner) if hits[o]]
        if children:
            return children
    return [u.path for u in tree.uses[1:]] + [p.path for p in tree.params]
