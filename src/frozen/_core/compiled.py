"""Freeze/thaw on a ``torch.compile``-d model without a silent fall back to eager (S12).

Dynamo guards every compiled graph on the ``requires_grad`` flag of each parameter
(and on each module's ``training`` flag). So every *new* freeze configuration of a
compiled model compiles once more; a configuration seen before reuses its graph.
Dynamo keeps at most ``torch._dynamo.config.recompile_limit`` graphs (8 in torch
2.13) per function and then runs that function in eager mode for good, saying so
only in a log line. A gradual-unfreezing plan of N stages needs N + 1 graphs: 12
stages overflow the default. :func:`reserve_recompiles` makes room, knowingly, or
warns with :class:`RecompileWarning`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .._errors import FrozenWarning

__all__ = ["RecompileWarning", "is_compiled", "reserve_recompiles"]


class RecompileWarning(FrozenWarning):
    """A compiled model will see more freeze configurations than dynamo keeps graphs for."""


def is_compiled(model: nn.Module) -> bool:
    """Return whether ``model`` or one of its sub-modules runs through ``torch.compile``.

    Covers ``torch.compile(module)`` (an ``OptimizedModule``) and ``module.compile()``
    (in place).

    Example:
        >>> import torch, frozen._core.compiled as fc
        >>> net = torch.nn.Linear(2, 2)
        >>> fc.is_compiled(net), fc.is_compiled(torch.compile(net, backend="eager"))
        (False, True)
    """
    from torch._dynamo.eval_frame import OptimizedModule

    return any(
        isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()
    )


def reserve_recompiles(model: nn.Module, changes: int, *, raise_limit: bool = True) -> int:
    """Make dynamo keep a graph for each of ``changes`` more freeze configurations; return the limit.

    A compiled model needs one graph per distinct freeze configuration it runs: the
    current one plus one per freeze/thaw that leads to a new configuration (a plan of
    N stages: ``changes=N``). When that exceeds ``torch._dynamo.config.recompile_limit``
    this raises the limit to ``changes + 1`` (``raise_limit=True``, the default; the
    limit is global to the process and is never lowered here), or warns with
    :class:`RecompileWarning` (``raise_limit=False``): past the limit, dynamo would run
    the model in eager mode for the rest of the process, correct but slow, and say so
    only in a log line. Does nothing for a model that is not compiled.

    Args:
        model: the model (compiled, or holding compiled sub-modules).
        changes: how many freeze/thaw calls with new configurations are planned.
        raise_limit: raise the limit (default) or only warn.

    Returns:
        ``torch._dynamo.config.recompile_limit`` after the call.

    Raises:
        TypeError: ``changes`` is not a non-negative ``int``.

    Example:
        >>> import torch, frozen._core.compiled as fc
        >>> net = torch.compile(torch.nn.Linear(2, 2), backend="eager")
        >>> with torch._dynamo.config.patch(recompile_limit=8):
        ...     fc.reserve_recompiles(net, changes=12)
        13
    """
    if isinstance(changes, bool) or not isinstance(changes, int) or changes < 0:
        raise TypeError(f"reserve_recompiles(changes=...): expected a non-negative int, received {changes!r}.")
    limit = int(torch._dynamo.config.recompile_limit)
    needed = changes + 1
    if needed <= limit or not is_compiled(model):
        return limit
    if raise_limit:
        # Global by dynamo's design; raise only, so a larger limit set elsewhere stays.
        torch._dynamo.config.recompile_limit = needed
        return needed
    warnings.warn(
        RecompileWarning(
            f"the compiled model will run {needed} freeze configurations, but torch._dynamo.config."
            f"recompile_limit is {limit}: after {limit} dynamo falls back to eager mode for good (correct, "
            f"slower). Call frozen.reserve_recompiles(model, {changes}) to raise the limit, or "
            f"compile again after the last thaw."
        ),
        stacklevel=2,
    )
    return limit
