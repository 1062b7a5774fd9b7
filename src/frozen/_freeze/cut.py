"""``freeze_to``: fastai's ``freeze_to(n)`` — the cut between frozen and trainable blocks (docs/freeze.md, "Shortcuts").

fastai freezes parameter groups of a ``Learner``; people think of a model as
[stem, block_0 ... block_{L-1}, head] (:func:`frozen.blocks`), so this counts those.
It is a composition of ``freeze`` and ``thaw``: the records, the flags and what
``thaw`` later undoes are theirs.
"""

from __future__ import annotations

import warnings

from .._checks import ModelT, check_mode, check_model, check_tied
from .._core import LOCK, View
from .._errors import FrozenError
from .._select import layout, resolve
from .freeze import freeze, plan_freeze
from .state import load_state, state
from .thaw import plan_thaw, thaw

__all__ = ["freeze_to"]


def freeze_to(model: ModelT, n: int, *, mode: str = "eval", tied: str = "freeze") -> ModelT:
    """Freeze the first ``n`` blocks of ``model`` and thaw everything after them; return ``model``.

    The blocks are :func:`frozen.blocks` ``(model)``: ``[stem, block_0, ..., block_{L-1},
    top]`` (an ``nn.Sequential``'s children). ``n`` counts like a Python slice and like
    fastai: ``freeze_to(model, 2)`` freezes ``blocks[:2]``, ``freeze_to(model, -2)`` leaves
    the last two blocks trainable, ``freeze_to(model, 0)`` thaws the whole model. Whatever
    was frozen before, afterwards exactly ``blocks[:n]`` is frozen in place (by
    :func:`frozen.freeze`, with ``mode`` and ``tied``) and the rest of the model is thawed
    (by :func:`frozen.thaw`, frozen rows included); ``Frozen`` wrappers stay as they are.

    Args:
        model: the model to change.
        n: how many blocks to freeze, from the start; negative counts from the end.
            ``-len(blocks) <= n <= len(blocks)``.
        mode: as in :func:`frozen.freeze`.
        tied: as in :func:`frozen.freeze`: a frozen block sharing a parameter with a
            trainable one (GPT-2's ``wte`` and ``lm_head``) freezes it everywhere and warns
            (``"freeze"``), lets the trainable block train it (``"train"``), or raises.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a module or ``n`` is not an int.
        frozen.FrozenError: ``n`` is out of range, the model has no blocks
            (:func:`frozen.blocks`), or :func:`frozen.freeze` / :func:`frozen.thaw` refuse.
        Nothing is changed when an error is raised.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> [name for name, _ in frozen.named_trainable(frozen.freeze_to(net, -1))]
        ['2.weight', '2.bias']
    """
    check_model(model, "frozen.freeze_to")
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(
            f"frozen.freeze_to(model, n): expected n to be an int (how many blocks to freeze; negative counts "
            f"from the end), received {type(n).__name__} {n!r}."
        )
    check_mode(mode)
    check_tied(tied, "frozen.freeze_to")
    with LOCK:
        groups = layout(model, f"frozen.freeze_to(model, {n})").groups()
        if not -len(groups) <= n <= len(groups):
            raise FrozenError(
                f"frozen.freeze_to(model, n={n}): the model has {len(groups)} blocks (frozen.blocks(model): "
                f"{[g[0] if len(g) == 1 else g for g in groups]}), so expected {-len(groups)} <= n <= {len(groups)}. "
                f"Use n={len(groups)} to freeze every block, n=0 to thaw them all. Nothing was changed."
            )
        frozen_paths = [path for group in groups[: n if n >= 0 else len(groups) + n] for path in group]
        # Thaw first, then freeze: a parameter the model holds itself (cls_token) is frozen on its
        # own, so the module holding it must be thawed (unmarked) rather than left frozen whole.
        view = View(model)  # one walk for both validations
        modules = {use.path for use in view.uses}
        kept = [path for path in frozen_paths if path in modules]
        plan_thaw(view, resolve(model, ("",), kept, function="frozen.freeze_to", view=view), named=True)
        if frozen_paths:  # validate the freeze too, before the thaw changes anything
            selection = resolve(model, tuple(frozen_paths), (), function="frozen.freeze_to", view=view)
            plan_freeze(view, selection, mode, tied, None)
        saved = state(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            thaw(model, "", exclude=kept)
            try:
                if frozen_paths:
                    freeze(model, *frozen_paths, mode=mode, tied=tied)
            except FrozenError:
                # Only the thaw can make the freeze refuse (a part sharing a weight trains now,
                # tied="error"): put the model back as it was, so a refusal changes nothing.
                load_state(model, saved)
                raise
    for warning in caught:  # said again from the caller's line, not from inside freeze_to
        warnings.warn(warning.message, warning.category, stacklevel=2)
    return model
