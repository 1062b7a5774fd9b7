"""PyTorch Lightning: freeze before training, thaw on a plan, optimizer kept in sync.

:class:`FreezeCallback` is ``frozen``'s counterpart of Lightning's
``BaseFinetuning`` / ``BackboneFinetuning``, with two differences: frozen parts
keep inference behaviour (BatchNorm statistics do not move unless
``train_norms=True``), and freezing is exact (``frozen.freeze``: parameters
keep their identity, ``thaw`` restores exactly what was changed).

* ``setup("fit")`` — before ``configure_optimizers`` — freezes the targets, so an
  optimizer built from ``frozen.trainable(self)`` or ``frozen.optim.param_groups(self)``
  sees only what trains;
* ``on_fit_start`` makes a single optimizer hold exactly the trainable set
  (:func:`frozen.optim.sync`), even if ``configure_optimizers`` passed
  ``self.parameters()``;
* ``on_train_epoch_end`` advances the ``unfreeze`` stages
  (:class:`frozen.schedule.GradualUnfreezing`), adding thawed parameters to the
  optimizer with fresh state.

Its progress is saved in checkpoints (``state_dict``); a resumed run replays the
stages already reached before Lightning restores the optimizer. Importing this module imports ``lightning``; ``import frozen`` does not.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

from lightning.pytorch.callbacks import Callback

from .._tree import iter_module_uses
from ..schedule import Stage
from ._common import FreezePlan

__all__ = ["FreezeCallback"]


class FreezeCallback(Callback):
    """A Lightning ``Callback`` that freezes ``targets`` and optionally thaws them on a plan.

    Args:
        *targets: what to freeze in the ``LightningModule``, as :func:`frozen.freeze`
            takes it (``"backbone"``, ``"encoder.layer.0-5"``, module types, ...).
        exclude: selectors kept trainable inside the targets.
        mode: ``"eval"`` (default) or ``"inherit"``.
        train_norms: keep normalisation layers inside the targets trainable and in
            training behaviour — Lightning's ``train_bn=True``.
        unfreeze: :class:`frozen.schedule.Stage` objects counted in epochs; ``Stage(2,
            ("backbone",), lr_ratio=0.1)`` thaws the backbone after two epochs into a
            new group at a tenth of the first group's rate.

    Raises:
        TypeError: ``unfreeze`` holds something other than ``Stage`` objects.
        frozen.InvalidModeError: unknown ``mode``.
        frozen.FrozenError: (at fit start) ``unfreeze`` with more than one optimizer.

    Example:
        >>> import frozen
        >>> from frozen.integrations.lightning import FreezeCallback
        >>> callback = FreezeCallback("backbone", unfreeze=[frozen.schedule.Stage(2, ("backbone",))])
        >>> callback.plan.targets, callback.state_dict()
        (('backbone',), {})
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
        self._restored: dict[str, Any] | None = None
        self._quiet: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.plan.freeze(pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.plan.start(pl_module, trainer.optimizers)
        if self._restored is not None and self.plan.schedule is not None:
            # Replay the stages a checkpointed run had reached, so the model and the
            # optimizer's groups are as they were when it was saved; Lightning then
            # loads the optimizer state (rates included) into those groups.
            for _ in range(self._restored.get("count", 0)):
                self.plan.step([config.scheduler for config in trainer.lr_scheduler_configs])
        self._quiet_eval_mode_warning(pl_module)  # after the replay: thawed parts are not frozen

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._end_quiet()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._end_quiet()

    def _quiet_eval_mode_warning(self, pl_module: Any) -> None:
        """Silence Lightning's "modules in eval mode" warning when frozen parts are all it would report.

        Frozen parts stay in inference behaviour on purpose (contract S3). The filter
        matches the exact count and lives only until ``on_train_start``, right after
        Lightning's check; any module in eval mode that ``frozen`` did not freeze keeps
        the warning.
        """
        frozen_modules = {id(use.module) for use in iter_module_uses(pl_module) if use.frozen}
        in_eval = [m for _, m in pl_module.named_modules() if not m.training]
        if not in_eval or not all(id(m) in frozen_modules for m in in_eval):
            return
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings(
            "ignore", message=re.escape(f"Found {len(in_eval)} module(s) in eval mode at the start of training")
        )

    def _end_quiet(self) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.plan.step([config.scheduler for config in trainer.lr_scheduler_configs])

    def state_dict(self) -> dict[str, Any]:
        return self.plan.schedule.state_dict() if self.plan.schedule is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None
