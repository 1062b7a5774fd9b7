"""Cached frozen prefixes: replay a frozen part's outputs instead of recomputing them.

A frozen part that runs in inference behaviour and whose inputs need no gradient is a
deterministic function of its inputs, so across epochs it recomputes the same values.
:func:`cache` stores them per sample (keyed by the sample's inputs, or by ids given to
:meth:`CacheHandle.samples`) within a byte budget; :func:`uncache` undoes it;
:func:`cache_stats` reports what each part holds. See ``docs/cache.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_model
from .._core import View, find, install, iter_module_uses, remove, settle_flags
from .._errors import UnknownPathError, closest
from ..distributed import watch_loads
from .args import CacheError, forward_parameters
from .handle import CacheHandle
from .hooks import INNER_HOOKS, refuse_inner_hooks, refuse_run_hooks
from .part import GRAD_INPUTS, Part
from .run import RunLink, RunState, run_members
from .store import STORES, Store, check_room, parse_budget

__all__ = ["CacheError", "CacheHandle", "cache", "cache_stats", "uncache"]


def _module_at(view: View, path: str, function: str) -> nn.Module:
    """The module at ``path``, checked to be a frozen constant everywhere it is used (read from ``view``)."""
    uses = view.uses
    found = next((u for u in uses if u.path == path), None)
    if found is None:
        raise UnknownPathError(
            f"{function}(model, {path!r}): no module has that path. Closest: "
            f"{closest(path, [u.path for u in uses if u.path])}. Paths are state_dict style."
        )

    ids = view.trainable
    for use in uses:
        if use.module is found.module and not view.frozen_at(use):
            raise CacheError(
                f"{function}(model, {path!r}): the part at {use.path!r} is not frozen; only a frozen part is a "
                f"constant function of its inputs. Freeze it first: frozen.freeze(model, {use.path!r})."
            )
    trained = [n for n, p in found.module.named_parameters() if id(p) in ids]
    if trained:
        raise CacheError(
            f"{function}(model, {path!r}): parameter {path}.{trained[0]} inside the part still trains through "
            f"another use (a tied weight), so the part's outputs change every step. Freeze it everywhere "
            f"(tied='freeze') or cache a part without it."
        )
    return found.module


def cache(
    model: nn.Module,
    *paths: str,
    budget: int | str = "1GB",
    store: str = "cpu",
    path: str | None = None,
    inner_hooks: str = "refuse",
    grad_inputs: str = "refuse",
    shared: Sequence[str] = (),
    verify: bool = True,
) -> CacheHandle:
    """Cache the outputs of the frozen parts at ``paths`` per sample; return a :class:`CacheHandle`.

    Each sample is keyed by a 128-bit hash of all its tensor inputs (rows of dimension 0)
    and the call's other arguments, so shuffled batches hit; a batch with misses runs the
    part on the missing samples only. Entries are dropped whenever the part changes
    (thaw, ``load_state_dict``, ``.to()``, ``frozen.load_state``); while a part is thawed
    inside, calls pass through uncached. Parts given together share one store and budget,
    and a cached part fed by another's output reuses its keys instead of hashing it.

    Args:
        model: the model holding the parts.
        *paths: module paths of frozen parts that run before anything trains (their
            inputs must not require grad), e.g. ``"backbone"`` or ``"embeddings", "encoder.layer.0"``;
            or a run of siblings ``"first-last"`` (``"conv1-layer4"`` of a torchvision ResNet,
            ``"encoder.layer.0-7"``) cached as one part that stores only the last one's output --
            the parent must call them in sequence (checked on the first call).
        budget: the most bytes stored, an int or a string such as ``"2GB"`` or ``"512MiB"``;
            the least recently used samples are evicted beyond it.
        store: ``"cpu"`` (default), ``"device"`` (where the part computes) or ``"disk"``
            (a memory-mapped temporary file of ``budget`` bytes).
        path: for ``store="disk"``, the directory of that file (default: the system's temp dir).
        inner_hooks: ``"refuse"`` (default): a part with forward hooks on modules inside it is
            refused, at this call and at any later call, because a hit does not run those
            modules and so skips their hooks (a feature captured by one would be another
            batch's); hooks on the part itself run on a hit. ``"skip"``: allowed, and hits
            skip them (for hooks that count or profile real runs). See ``docs/cache.md``.
        grad_inputs: ``"refuse"`` (default): a call whose tensor inputs require grad is refused
            (a cached part is a prefix). ``"pass"``: such a call runs the part plainly, a
            white box that passes gradients to its inputs (counted as ``bypassed``), while
            calls on constant inputs use the cache -- a perceptual loss whose feature network
            sees generated images (gradients cross it) and target images (cached).
        shared: names of the parts' ``forward`` parameters whose tensors every sample of a
            call shares, passed by keyword or by position: they are hashed whole and never
            split, even when their dimension 0 happens to equal the batch size -- e.g.
            ``shared=("mask",)`` for ``nn.TransformerEncoder`` with a causal mask over a
            sequence as long as the batch. Every other tensor whose dimension 0 is the
            batch size is taken as per-sample.
        verify: check each part's first filling call for rows that depend on each other
            (row i of a part's output must depend on row i of its inputs only: batch
            centring, attention across the batch or a batch statistic would be replayed
            into other batches): the first half of the batch runs once more, alone, and a
            difference raises :class:`frozen.CacheError`. ``False`` skips that one extra run.

    The model is settled first (:func:`frozen.settle`, as ``freeze`` and ``thaw`` do): a
    ``Frozen(...)`` wrapper that is not settled detaches its parameters at every call, which
    would make every call look like a changed part.

    Returns:
        The handle: ``.stats()``, ``.clear()``, ``.paths``, ``.samples(ids)``.

    Raises:
        TypeError: ``model`` is not a module.
        frozen.UnknownPathError: no module has a given path.
        frozen.CacheError: a part is not frozen, trains through a tied weight, is cached
            already, or has forward hooks inside it (a hit would skip them: cache the hooked
            module as a part of its own); ``store``/``path``/``inner_hooks``/``grad_inputs``/``shared``
            are invalid. At call time: inputs that require grad (unless ``grad_inputs="pass"``),
            outputs that are not per-sample, a part that runs in training behaviour, draws
            random numbers or writes into its inputs, a forward hook added inside.
        frozen.FrozenError: ``budget`` is not a positive size.
        Nothing is changed when an error is raised.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)), "0")
        >>> handle = frozen.cache(net, "0", budget="1MB")
        >>> x = torch.randn(6, 4)
        >>> _ = net(x); _ = net(x[torch.randperm(6)])
        >>> {k: handle.stats()["0"][k] for k in ("hits", "misses", "forwards")}
        {'hits': 6, 'misses': 6, 'forwards': 1}
    """
    check_model(model, "frozen.cache")
    size = parse_budget(budget)
    if store not in STORES:
        raise CacheError(f"frozen.cache(..., store={store!r}): expected one of {STORES}. Use store='cpu'.")
    if grad_inputs not in GRAD_INPUTS:
        raise CacheError(
            f"frozen.cache(..., grad_inputs={grad_inputs!r}): expected one of {GRAD_INPUTS}. Use 'refuse' (the "
            f"default), or 'pass' to run calls whose inputs require grad plainly."
        )
    if inner_hooks not in INNER_HOOKS:
        raise CacheError(
            f"frozen.cache(..., inner_hooks={inner_hooks!r}): expected one of {INNER_HOOKS}. Use 'refuse' (the "
            f"default), or 'skip' when hooks inside the part may be skipped by a hit."
        )
    if path is not None and (store != "disk" or not os.path.isdir(path)):
        raise CacheError(
            f"frozen.cache(..., path={path!r}): expected an existing directory, with store='disk' (got "
            f"store={store!r}). Pass store='disk' and a directory that exists, or leave path=None."
        )
    if not isinstance(verify, bool):
        raise CacheError(f"frozen.cache(..., verify={verify!r}): expected True or False. Nothing was changed.")
    if not paths or not all(isinstance(p, str) and p for p in paths) or len(set(paths)) != len(paths):
        raise CacheError(f"frozen.cache(model, *paths): expected distinct non-empty module paths, got {paths!r}.")
    view = View(model)  # one walk for every path, and for settling
    uses = view.uses
    known = {u.path for u in uses}
    runs = {p: run_members(p, uses) for p in paths if p not in known}  # "conv1-layer4": siblings as one part
    groups = [[p] if runs.get(p) is None else runs[p][1] for p in paths]  # type: ignore[index]
    members = [[_module_at(view, q, "frozen.cache") for q in group] for group in groups]
    modules = [group[0] for group in members]
    _check_shared(shared, paths, modules)
    check_room(store, size, path, _devices(m for group in members for m in group), budget)
    for p, group, found in zip(paths, groups, members, strict=True):
        for q, module in zip(group, found, strict=True):
            if find(module, "forward", Part) is not None or find(module, "forward", RunLink) is not None:
                raise CacheError(
                    f"frozen.cache(model, {p!r}): {q!r} is cached already. Call frozen.uncache(model, ...) first."
                )
        if inner_hooks == "refuse":
            if len(group) == 1:
                refuse_inner_hooks(found[0], p)
            else:
                refuse_run_hooks(list(zip(group, found, strict=True)))
    # As freeze and thaw do: unsettled, a Frozen(...) wrapper detaches its parameters and switches
    # its module to eval at every call, which the part's snapshot sees as a changed part -- every
    # call invalidated and recomputed, no hit ever.
    settle_flags(model, view=view)
    handle = CacheHandle(Store(store, size, path), inner_hooks, grad_inputs, tuple(shared), verify)
    for index, (p, group, found) in enumerate(zip(paths, groups, members, strict=True)):
        part = Part(handle, model, found[0], p, index)
        if len(group) > 1:  # a run: the siblings after the first pass its output along (run.py)
            part.run = RunState(group)
            part.links = [RunLink(part, m, i) for i, m in enumerate(found[1:], 1)]
            part.load_hooks += watch_loads([sub for m in found[1:] for sub in m.modules()], part.forget)
        handle.parts[p] = part
        install(found[0], part)  # the outermost layer of its forward, whatever stands there already
        for module, link in zip(found[1:], part.links, strict=True):
            install(module, link)
    return handle


def _devices(modules: Iterable[nn.Module]) -> set[torch.device]:
    """The devices the parts' parameters and buffers are on (where a ``"device"`` store keeps rows)."""
    return {t.device for m in modules for t in (*m.parameters(), *m.buffers())}


def _check_shared(shared: Any, paths: tuple[str, ...], modules: list[nn.Module]) -> None:
    """Refuse ``shared`` unless it is a sequence of names, each a parameter of some part's ``forward``."""
    if isinstance(shared, str) or not isinstance(shared, Sequence) or not all(isinstance(n, str) for n in shared):
        raise CacheError(
            f"frozen.cache(..., shared={shared!r}): expected a tuple of the parts' forward parameter names, "
            f"e.g. shared=('mask',). Nothing was changed."
        )
    accepted: set[str] = set()
    for module in modules:
        names = forward_parameters(type(module).forward)[1]
        if names is None:
            return  # that forward takes any keyword
        accepted |= names
    unknown = [n for n in shared if n not in accepted]
    if unknown:
        raise CacheError(
            f"frozen.cache(model, {', '.join(map(repr, paths))}, shared={tuple(shared)!r}): no cached part's "
            f"forward has a parameter {unknown[0]!r}; their parameters: {sorted(accepted)}. Name a parameter "
            f"of the part's forward. Nothing was changed."
        )


def _cached_parts(model: nn.Module) -> dict[str, Part]:
    parts: dict[str, Part] = {}
    for use in iter_module_uses(model):
        found = find(use.module, "forward", Part)
        if found is not None:
            parts.setdefault(found.path, found)
    return parts


def uncache(model: nn.Module, *paths: str) -> nn.Module:
    """Stop caching the parts at ``paths`` (none: every cached part); free what they stored; return ``model``.

    Raises:
        TypeError: ``model`` is not a module.
        frozen.CacheError: a path is not cached. Nothing is changed then.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0")
        >>> _ = frozen.cache(net, "0")
        >>> frozen.cache_stats(frozen.uncache(net, "0"))
        {}
    """
    check_model(model, "frozen.uncache")
    parts = _cached_parts(model)
    unknown = [p for p in paths if p not in parts]
    if unknown:
        raise CacheError(
            f"frozen.uncache(model, {unknown[0]!r}): that part is not cached; cached parts: {sorted(parts)}."
        )
    for p in paths or tuple(parts):
        part = parts[p]
        remove(part.module, part)  # the layers behind it (lean, frozen's guard) stay as they are
        for link in part.links:
            remove(link.module_ref(), link)
        handle = part.handle
        for hook in part.load_hooks:
            hook.remove()
        del handle.parts[p]
        handle.store.close(keep=lambda key, prefix=part.prefix: not key.startswith(prefix))
    return model


def cache_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Return ``{path: counters}`` for every cached part of ``model`` (see :meth:`CacheHandle.stats`).

    The counters: ``calls``, ``hits`` and ``misses`` (samples), ``forwards`` (runs of the
    part's own forward), ``invalidations``, ``bypassed`` (calls while the part trains),
    and the store's ``entries``, ``bytes``, ``budget``, ``evictions`` and ``store`` kind.

    Example:
        >>> import torch, frozen
        >>> frozen.cache_stats(torch.nn.Linear(2, 2))
        {}
    """
    check_model(model, "frozen.cache_stats")
    return {path: part.handle.stats()[path] for path, part in _cached_parts(model).items()}
