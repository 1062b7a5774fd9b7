"""``param_groups``: optimizer parameter groups over exactly the trainable set (S10).

Every parameter of the model is *placed* in one group, trainable or not: trainable
parameters go in the group's ``"params"``, frozen ones are recorded by path in its
``"frozen_params"``. That record is what lets :func:`frozen.optim.sync` put a
parameter thawed later back into the group it belongs to (with that group's learning
rate and weight decay), and it makes every group exist from the start, so
``torch.optim.lr_scheduler`` schedulers see all of them (see ``docs/optimizers.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .._checks import check_model
from .._core import iter_module_uses, iter_param_uses, trainable_ids
from .._errors import ArgumentTypeError, FrozenError, SelectorError, closest
from .._select import compile_pattern, is_norm
from ._layers import check_layer_decay, layer_levels

__all__ = ["param_groups", "PARKED"]

# Group key: paths of this group's parameters that are frozen right now.
PARKED = "frozen_params"


def _selects(match: Callable[[str], bool], param_path: str) -> bool:
    """Whether a compiled pattern selects the parameter at ``param_path``.

    The pattern language is the one of ``frozen.select`` (``docs/selectors.md``). A
    pattern selects a parameter when it matches the parameter's own path
    (``"**.bias"``) or the path of a module that contains it (``"encoder.layer.*"``).
    """
    segments = param_path.split(".")
    return any(match(".".join(segments[:i])) for i in range(1, len(segments) + 1))


def _resolve(model: nn.Module, patterns: Sequence[str], argument: str, paths: list[str]) -> list[list[str]]:
    """Paths selected by each pattern; raise naming the first pattern that selects nothing."""
    chosen = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ArgumentTypeError(
                f"frozen.optim.param_groups({argument}=...): expected patterns to be str such as 'head.*', received {pattern!r} ({type(pattern).__name__})."
            )
        match = compile_pattern(pattern, f"frozen.optim.param_groups({argument}=...)", "pattern")
        hits = [p for p in paths if _selects(match, p)]
        if not hits:
            modules = [use.path for use in iter_module_uses(model) if use.path]
            raise SelectorError(
                f"frozen.optim.param_groups({argument}=...): pattern {pattern!r} matches no module or "
                f"parameter of the model. Expected a state_dict-style path pattern; closest existing "
                f"paths: {closest(pattern, modules + paths)}. Nothing was built."
            )
        chosen.append(hits)
    return chosen


def _level_lrs(lr: Any, lr_decay: float | None, levels: int) -> list[Any]:
    """Learning rate of each level, lowest (earliest layers) first."""
    if isinstance(lr, slice):
        if lr.step is not None or lr.stop is None:
            raise FrozenError(
                f"frozen.optim.param_groups(lr={lr!r}): expected a slice of the form slice(top) or slice(bottom, top), as in fastai, received a step or no top. Pass e.g. lr=slice(1e-5, 1e-3)."
            )
        if lr.start is None:  # fastai: slice(top) gives the last level `top`, the others top / 10
            return [lr.stop / 10] * (levels - 1) + [lr.stop]
        if levels == 1:
            return [lr.stop]
        ratio = (lr.stop / lr.start) ** (1 / (levels - 1))
        return [lr.start * ratio**k for k in range(levels)]
    if lr_decay is not None:
        if lr is None or not isinstance(lr_decay, (int, float)) or not 0 < lr_decay:
            raise FrozenError(
                f"frozen.optim.param_groups(lr_decay={lr_decay!r}, lr={lr!r}): expected a positive number lr_decay together with a number lr (the top level's rate), e.g. lr=1e-3, lr_decay=1/2.6. Pass both."
            )
        return [lr * lr_decay ** (levels - 1 - k) for k in range(levels)]
    return [lr] * levels


def param_groups(
    model: nn.Module,
    *,
    parts: Sequence[str | Sequence[str]] | None = None,
    lr_decay: float | None = None,
    layer_decay: float | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    no_decay_bias_and_norm: bool = False,
    **group_defaults: Any,
) -> list[dict[str, Any]]:
    """Return named optimizer parameter groups over exactly ``frozen.trainable(model)``.

    Args:
        model: the model.
        parts: optional ordered list of parts, earliest layers first, each a pattern or a
            list of patterns (``["embeddings", "encoder.layer.0-5", "encoder.layer.6-11"]``).
            Each part is a *level*; parameters no part selects form one more level on top,
            named ``"rest"`` (usually the head). A parameter selected by two parts belongs
            to the first. Levels only matter for discriminative learning rates.
        lr_decay: layer-wise decay: the top level gets ``lr``, the one below
            ``lr * lr_decay``, and so on (ULMFiT: ``1/2.6``; BERT-style: ``0.95``).
        layer_decay: BEiT / ELECTRA layer-wise decay over the model's own blocks
            (:func:`frozen.blocks`), no ``parts`` needed: with ``M`` blocks, block ``j``
            (0 = the stem) gets ``lr * layer_decay ** (M - 1 - j)``, so the head gets ``lr``,
            transformer block ``i`` of ``L`` ``lr * layer_decay ** (L - i)`` and the stem
            ``lr * layer_decay ** (L + 1)``. Groups are named ``"stem"``, each block's path,
            ``"head"``. Not with ``parts`` or ``lr_decay``; ``lr`` must be a number.
        overrides: ``{pattern: options}`` applied to the parameters a pattern selects, in
            order (a later pattern wins on the same key, and overrides win over
            ``no_decay_bias_and_norm``). An option ``"name"`` replaces the pattern in the
            group's name.
        no_decay_bias_and_norm: when True, put ``weight_decay=0.0`` on 1-D parameters
            (biases, normalisation weights, scalars) and on every parameter of a
            normalisation layer (the rule of ``train_norms=``: torch's norm classes and
            classes named ``*Norm`` such as ``LlamaRMSNorm``), as Hugging Face's Trainer
            and timm do.
        **group_defaults: options of every group (``lr=1e-3``, ``weight_decay=0.01``).
            With ``parts``, ``lr`` may be fastai's ``slice(top)`` (top level ``top``,
            others ``top/10``) or ``slice(bottom, top)`` (geometric from bottom to top).

    Returns:
        A list of group dicts for any ``torch.optim`` optimizer. Each has ``"name"``
        (``"default"``, a part's pattern, or ``"rest"``, then ``/pattern`` per override
        and ``/no_decay``), ``"params"`` (its trainable parameters, model order) and
        ``"frozen_params"`` (paths of its frozen parameters, for :func:`sync`). Groups
        with neither are left out; no parameter is in two groups.

    Raises:
        TypeError: wrong argument types.
        frozen.SelectorError: a pattern in ``parts`` or ``overrides`` that is malformed or
            matches nothing (the message lists the closest paths).
        frozen.FrozenError: an inconsistent learning rate (a slice or ``lr_decay``
            without ``parts``, ``lr_decay`` without ``lr``).

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1))
        >>> groups = frozen.optim.param_groups(net, lr=0.1, overrides={"1.bias": {"lr": 0.01}})
        >>> [(g["name"], g["lr"], len(g["params"]), g["frozen_params"]) for g in groups]
        [('default', 0.1, 1, ['0.weight', '0.bias']), ('default/1.bias', 0.01, 1, [])]
        >>> optimizer = torch.optim.SGD(groups, lr=0.1)
    """
    check_model(model, "frozen.optim.param_groups")
    overrides = _checked_overrides(parts, overrides)
    if layer_decay is not None:
        check_layer_decay(layer_decay, group_defaults.get("lr"), parts, lr_decay)
    if parts is None and (isinstance(group_defaults.get("lr"), slice) or lr_decay is not None):
        raise FrozenError(
            f"frozen.optim.param_groups(lr={group_defaults.get('lr')!r}, lr_decay={lr_decay!r}): discriminative "
            f"learning rates need the ordered parts they apply to, received parts=None. Pass "
            f"parts=['embeddings', 'encoder.layer.0-5', ...] (earliest layers first)."
        )
    owners: dict[int, nn.Module] = {}
    named: list[tuple[str, nn.Parameter]] = []
    for use in iter_param_uses(model):
        if id(use.param) not in owners:
            owners[id(use.param)] = use.owner
            named.append((use.path, use.param))
    paths = [path for path, _ in named]
    # Validate everything before building anything.
    if layer_decay is not None:
        level_of, labels, lrs = layer_levels(model, paths, group_defaults["lr"], layer_decay)
    else:
        level_of, labels = _levels(model, parts, paths)
        lrs = _level_lrs(group_defaults.get("lr"), lr_decay, len(labels))
    selected = dict(zip(overrides, _resolve(model, list(overrides), "overrides", paths)))
    ids = trainable_ids(model, "frozen.optim.param_groups")
    groups: dict[tuple, dict[str, Any]] = {}
    for path, param in named:
        level = level_of.get(path, len(labels) - 1)
        applied = [pattern for pattern in overrides if path in selected[pattern]]
        no_decay = no_decay_bias_and_norm and (param.ndim <= 1 or is_norm(owners[id(param)]))
        key = (level, tuple(applied), no_decay)
        if key not in groups:
            lr = lrs[level] if "lr" in group_defaults or lr_decay is not None else None
            groups[key] = _new_group(labels[level], lr, applied, overrides, no_decay, group_defaults)
        group = groups[key]
        group["params"].append(param) if id(param) in ids else group[PARKED].append(path)
    ordered = sorted(groups.items(), key=lambda item: item[0][0])  # stable: model order within a level
    return [group for _, group in ordered if group["params"] or group[PARKED]]


def _checked_overrides(parts: Any, overrides: Any) -> dict[str, Mapping[str, Any]]:
    """Validate the types of ``parts`` and ``overrides``; return the overrides as a dict."""
    if parts is not None and (isinstance(parts, str) or not isinstance(parts, Sequence)):
        raise ArgumentTypeError(
            f"frozen.optim.param_groups(parts=...): expected a list of parts, each a pattern or a list of "
            f"patterns, earliest layers first, received {parts!r}. Write parts=['embeddings', 'encoder.layer.0-5']."
        )
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ArgumentTypeError(
            f"frozen.optim.param_groups(overrides=...): expected a dict {{pattern: options}}, received "
            f"{overrides!r}. Write overrides={{'head': {{'lr': 1e-3}}}}."
        )
    checked = dict(overrides or {})
    for pattern, options in checked.items():
        if not isinstance(options, Mapping) or "params" in options or PARKED in options:
            raise ArgumentTypeError(
                f"frozen.optim.param_groups(overrides={{{pattern!r}: ...}}): expected a dict of group options "
                f"such as {{'lr': 1e-3}}, received {options!r}. Leave out 'params'."
            )
    return checked


def _levels(model: nn.Module, parts: Any, paths: list[str]) -> tuple[dict[str, int], list[str]]:
    """Each parameter path's level (the first part selecting it) and the levels' labels, "rest" last."""
    part_list = [[part] if isinstance(part, str) else list(part) for part in (parts or [])]
    level_of: dict[str, int] = {}
    for k, patterns in enumerate(part_list):
        for hits in _resolve(model, patterns, "parts", paths):
            for path in hits:
                level_of.setdefault(path, k)
    labels = [",".join(patterns) for patterns in part_list]
    if parts is None:
        labels = ["default"]
    elif len(level_of) < len(paths):
        labels.append("rest")
    return level_of, labels


def _new_group(
    label: str, lr: Any, applied: list[str], overrides: dict, no_decay: bool, defaults: dict[str, Any]
) -> dict[str, Any]:
    """An empty named group: the defaults, the level's rate, the overrides that apply, no decay."""
    options = dict(defaults)
    if lr is not None:
        options["lr"] = lr
    if no_decay:
        options["weight_decay"] = 0.0
    name = [label]
    for pattern in applied:
        options.update(overrides[pattern])
        name.append(str(overrides[pattern].get("name", pattern)))
    options.pop("name", None)
    name += ["no_decay"] if no_decay else []
    return {"name": "/".join(name), "params": [], PARKED: [], **options}
