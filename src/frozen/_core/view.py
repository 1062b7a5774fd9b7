"""One view of a model per call: its module uses, parameter uses and trainable set, from one walk.

A public call (``freeze``, ``thaw``, ``cache``, ``report``, ``settle``, a query) builds one
:class:`View` and hands it to everything it calls, instead of each helper walking the model
again: on a large model the walks, not the work, were the cost (``freeze`` walked a model 9
times, ``thaw`` 13). Freezing and thawing change records, never the tree, so after applying a
plan :meth:`View.refresh` re-reads the records over the walked uses instead of walking again.
A view is a snapshot for one call: do not keep it across calls that may change the model.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from torch import nn

from .flips import flipped_of, notice_flips, who_flipped
from .record import record_of, rows_of
from .trainable import claimed_by_other_libraries, trainable_of
from .tree import ModuleUse, ParamUse, iter_module_uses, param_uses_of

__all__ = ["View"]


class View:
    """What ``frozen`` sees in ``model``, from one walk (see the module docstring).

    Attributes:
        model: the model walked.
        uses: every module use, ``named_modules()`` pre-order (a shared module once per path).
        params: every parameter use, in model order (a tied parameter once per slot).
        claimed: ``id()`` of parameters another library keeps frozen (PEFT).
        wanted: ``id()`` of every parameter the contract trains: what ``settle`` makes the flags say.
        flipped: ``id()`` -> first use of each parameter outside ``wanted`` whose flag someone
            else turned on inside a frozen part (``flips.py``): it gets a gradient.
        trainable: ``id()`` of every parameter that trains now: ``wanted`` and ``flipped``.

    Example:
        >>> import torch
        >>> view = View(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        >>> [u.path for u in view.uses], [p for p, _ in view.named], len(view.trainable)
        (['', '0'], ['0.weight', '0.bias'], 2)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uses: list[ModuleUse] = list(iter_module_uses(model))  # the one walk
        self._derive()

    def refresh(self) -> View:
        """Re-read the records over the walked uses (after a plan was applied); return ``self``.

        Freezing in place marks modules and slots; it changes no module, parameter or path, so
        the walk still holds and only the frozen flags and the trainable set are read again.
        """
        fresh = []
        for use in self.uses:
            record = record_of(use.module)
            own = use.wrapped or (record.mode if record is not None else None)
            fresh.append(use._replace(frozen=own is not None, mode=own))
        self.uses = fresh
        self._derive()
        return self

    def _derive(self) -> None:
        self.params: list[ParamUse] = list(param_uses_of(self.uses))
        self.claimed = claimed_by_other_libraries(self.uses, self.params)
        self.wanted = trainable_of(self.params, self.claimed)
        self.flipped = flipped_of(self.uses, self.params, self.wanted)
        self.trainable = self.wanted | self.flipped.keys()
        for cached in ("named", "first_paths", "param_paths", "flipped_by"):
            self.__dict__.pop(cached, None)

    def notice(self, function: str) -> View:
        """Warn, once per flip, about the flipped parameters (``function``: the public call asking); return ``self``."""
        notice_flips(self.uses, self.params, self.flipped, function)
        return self

    @cached_property
    def flipped_by(self) -> dict[int, str]:
        """``id()`` of each flipped parameter -> ``"peft"`` (in a PEFT adapter or tuner layer) or ``"outside"``."""
        modules = {use.path: use.module for use in self.uses} if self.flipped else {}
        return {key: "peft" if who_flipped(use, modules) else "outside" for key, use in self.flipped.items()}

    @cached_property
    def named(self) -> list[tuple[str, nn.Parameter]]:
        """``(path, parameter)`` deduplicated, ``named_parameters()`` order, each under its first path."""
        seen: set[int] = set()
        named = []
        for use in self.params:
            if id(use.param) not in seen:
                seen.add(id(use.param))
                named.append((use.path, use.param))
        return named

    @cached_property
    def first_paths(self) -> dict[int, str]:
        """``id()`` of each module -> its first path (a module used at several paths is named by its first)."""
        first: dict[int, str] = {}
        for use in self.uses:
            first.setdefault(id(use.module), use.path)
        return first

    @cached_property
    def param_paths(self) -> dict[int, str]:
        """``id()`` of each parameter -> its first path."""
        return {id(p): path for path, p in self.named}

    def subtree(self, use: ModuleUse) -> list[ModuleUse]:
        """``use`` and every use below it (its paths extend ``use.path``), in walk order."""
        if not use.path:
            return list(self.uses)
        inside = f"{use.path}."
        return [u for u in self.uses if u.path == use.path or u.path.startswith(inside)]

    def frozen_at(self, use: ModuleUse) -> bool:
        """Whether the module ``use`` is frozen here: a frozen use, or parameters none of which train.

        A frozen use with a flipped parameter under it is not frozen: that parameter gets a gradient here.
        """
        inside = f"{use.path}." if use.path else ""
        params = {id(p.param) for p in self.params if p.path.startswith(inside)}
        if use.frozen:
            return not (params & self.flipped.keys())
        return bool(params) and not (params & self.trainable)

    def rows(self) -> list[tuple[ParamUse, Any]]:
        """Every parameter slot whose owner's record holds frozen rows, with them (``frozen._rows``)."""
        found = []
        for use in self.params:
            rows = rows_of(use.owner).get(use.name)
            if rows is not None:
                found.append((use, rows))
        return found
