"""Hugging Face ``transformers``: freeze parts of a model trained by ``Trainer``.

``Trainer`` builds its optimizer from the parameters with ``requires_grad=True``.
``frozen`` keeps those flags equal to "trains in this model" (contract S8), so a
model frozen with :func:`frozen.freeze` before the ``Trainer`` is created needs
nothing more. :class:`FreezeCallback` does the same from inside the ``Trainer``
and adds gradual unfreezing:

* at ``Trainer(...)`` creation (``on_init_end``) it freezes the targets, before
  the optimizer exists;
* at ``on_train_begin`` it makes the optimizer hold exactly the trainable
  parameters (:func:`frozen.optim.sync`), whatever was frozen in between;
* after each epoch it advances the ``unfreeze`` stages; thawed parameters join
  the optimizer (a group named ``"thawed"`` with the optimizer's defaults, or one
  with the stage's ``lr``). The ``Trainer``'s learning-rate scheduler is extended
  to the new group: it follows the same warm-up/decay shape, scaled to its own rate.

Importing this module imports ``transformers``; ``import frozen`` does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import TrainerCallback

from ..schedule import Stage
from ._common import FreezePlan

__all__ = ["FreezeCallback"]


class FreezeCallback(TrainerCallback):
    """A ``TrainerCallback`` that freezes ``targets`` and optionally thaws them on a plan.

    Args:
        *targets: what to freeze, as :func:`frozen.freeze` takes it (patterns such as
            ``"bert.embeddings"``, ``"bert.encoder.layer.0-3"``, module types, ...).
        exclude: selectors kept trainable inside the targets.
        mode: ``"eval"`` (default: frozen parts keep inference behaviour, Dropout off)
            or ``"inherit"``.
        train_norms: keep normalisation layers inside the targets trainable.
        unfreeze: :class:`frozen.schedule.Stage` objects counted in epochs
            (``Stage(at=1, targets=("bert.encoder.layer.3",))`` thaws it after epoch 1).

    Raises:
        TypeError: ``unfreeze`` holds something other than ``Stage`` objects.
        frozen.InvalidModeError: unknown ``mode``.

    Example:
        >>> from frozen.integrations.hf import FreezeCallback
        >>> callback = FreezeCallback("bert.embeddings", "bert.encoder.layer.0")
        >>> callback.plan.targets
        ('bert.embeddings', 'bert.encoder.layer.0')
    """

    def __init__(
        self,
        *targets: Any,
        exclude: Any = (),
        mode: str = "eval",
        train_norms: bool = False,
        unfreeze: Iterable[Stage] = (),
    ) -> None:
        self.plan = FreezePlan(
            targets, exclude=exclude, mode=mode, train_norms=train_norms, unfreeze=unfreeze, owner="FreezeCallback"
        )

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self.plan.freeze(model)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            return
        self.plan.freeze(model)  # a model passed via model_init is only created now
        if optimizer is not None:
            self.plan.start(model, [optimizer])

    def on_epoch_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        self.plan.step([lr_scheduler] if lr_scheduler is not None else [])
