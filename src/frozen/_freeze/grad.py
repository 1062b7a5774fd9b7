"""``grad``: gradients by path, with ``None`` for everything that does not train."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_model
from .._core import View
from .._errors import NonScalarLossError

__all__ = ["grad"]


def grad(
    loss: torch.Tensor, model: nn.Module, *, retain_graph: bool | None = None, create_graph: bool = False
) -> dict[str, torch.Tensor | None]:
    """Return ``{path: gradient of loss}`` for every named parameter of ``model``.

    Like ``torch.autograd.grad``, it does not touch ``.grad``. Frozen parameters and
    parameters the loss does not depend on map to ``None`` — never to a zero tensor —
    as the gradient of a constant is "nothing", not zero (the seed discussion's point).
    A parameter with frozen rows (``frozen.Rows``) trains, so it maps to its full gradient,
    whose frozen rows are zero.
    Keys are ``state_dict`` paths in ``named_parameters()`` order, one per parameter
    (a tied parameter appears once, under its first path).

    Args:
        loss: a tensor with exactly one element.
        model: the model whose parameters to differentiate against.
        retain_graph, create_graph: as in ``torch.autograd.grad``.

    Raises:
        TypeError: ``loss`` is not a tensor.
        frozen.NonScalarLossError: ``loss`` has more than one element.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1))
        >>> g = frozen.grad(net(torch.ones(1, 2)).sum(), net)
        >>> {k: v is None for k, v in g.items()}
        {'0.weight': True, '0.bias': True, '1.weight': False, '1.bias': False}
    """
    check_model(model, "frozen.grad")
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"frozen.grad(loss, model): expected loss to be a torch.Tensor with one element, "
            f"received {type(loss).__name__}. Compute the loss with torch operations."
        )
    if loss.numel() != 1:
        raise NonScalarLossError(
            f"frozen.grad(loss, model): expected loss to have exactly one element, received "
            f"a tensor of shape {tuple(loss.shape)}. Reduce it first, e.g. loss.sum() or loss.mean()."
        )
    view = View(model)
    view.notice("frozen.grad")
    named, ids = view.named, view.trainable
    result: dict[str, torch.Tensor | None] = {path: None for path, _ in named}
    wanted = [(path, p) for path, p in named if id(p) in ids and p.requires_grad]
    if wanted and loss.requires_grad:
        grads = torch.autograd.grad(
            loss, [p for _, p in wanted], retain_graph=retain_graph, create_graph=create_graph, allow_unused=True
        )
        result.update((path, g) for (path, _), g in zip(wanted, grads))
    return result
