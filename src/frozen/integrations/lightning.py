"""PyTorch Lightning: freeze before training, thaw on a plan, optimizer kept in sync.

:class:`FreezeCallback` is ``frozen``'s counterpart of Lightning's
``BaseFinetuning`` / ``BackboneFinetuning``, with two differences: frozen parts
keep inference behaviour (BatchNorm statistics do not move unless
``train_norms=True``), and freezing is exact (``frozen.freeze``: parameters
keep their identity, ``thaw`` restores exactly what was changed).

* ``setup("fit")`` — before ``configure_optimizers`` — freezes the targets, so an
  optimizer built from ``frozen.trainable(self)`` or ``frozen.optim.param_groups(self)``
  sees only what trains. Targets that exist only once ``configure_model`` ran are
  frozen in ``on_fit_start`` instead (Lightning calls ``setup`` first);
* ``on_fit_start`` makes a single optimizer hold exactly the trainable set
  (:func:`frozen.optim.sync`), even if ``configure_optimizers`` passed
  ``self.parameters()``, teaches the LR schedulers any group that adds, and binds the
  ``unfreeze`` plan to this fit's optimizer (one callback serves several ``fit`` calls);
* ``on_train_epoch_start`` advances the plan to the epoch index — Lightning's
  ``BackboneFinetuning`` timing: after the epoch's scheduler step, so ``lr_ratio`` is
  taken from the rate the epoch trains with (``unit="step"``: ``on_train_batch_start``,
  to the global step).

Before each training batch (``on_train_batch_start``) a ``requires_grad`` flag ``frozen`` turned
off and someone else turned back on (PEFT's ``set_adapter``, a hand-written
``requires_grad_(True)``) is turned off again (:func:`frozen.settle`, warning with
:class:`frozen.ForeignFlagWarning`): it would train outside the optimizer and DDP's reducer.

Its progress is saved in checkpoints (``state_dict``); a resumed run replays the
stages already reached before Lightning restores the optimizer. Importing this
module imports ``lightning``; ``import frozen`` does not.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from torch.nn.parallel import DistributedDataParallel

from .._core import iter_module_uses, settle_flips
from .._errors import SelectorError
from ..distributed import rewrap
from ..schedule import Stage
from ._common import CallbackPlan

__all__ = ["FreezeCallback"]


class FreezeCallback(Callback):
    """A Lightning ``Callback`` that freezes ``targets`` and optionally thaws them on a plan.

    Args:
        *targets: what to freeze in the ``LightningModule``, as :func:`frozen.freeze`
            takes it (``"backbone"``, ``"encoder.layer.0-5"``, module types, ...).
        exclude: selectors kept trainable inside the targets.
        mode: ``"eval"`` (default) or ``"inherit"``.
        train_norms: keep normalisation layers inside the targets trainable and in
            training behaviour: ``True`` for every kind (BatchNorm, LayerNorm, GroupNorm, ...),
            ``"batchnorm"`` for BatchNorm only — exactly Lightning's ``train_bn=True``.
        unfreeze: :class:`frozen.schedule.Stage` objects counted in ``unit``; ``Stage(2,
            ("backbone",), lr_ratio=0.1)`` thaws the backbone at the start of epoch 2
            into a new group at a tenth of the first group's rate.
        state: ``"drop"`` (default) or ``"keep"``: the optimizer state of frozen
            parameters (:func:`frozen.optim.sync`).
        unit: ``"epoch"`` (default) or ``"step"`` (optimizer steps, ``trainer.global_step``).

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
        train_norms: bool | str = False,
        unfreeze: Iterable[Stage] = (),
        state: str = "drop",
        unit: str = "epoch",
    ) -> None:
        self.plan = CallbackPlan(
            targets,
            exclude=exclude,
            mode=mode,
            train_norms=train_norms,
            unfreeze=unfreeze,
            owner="FreezeCallback",
            state=state,
            unit=unit,
        )
        self._restored: dict[str, Any] | None = None
        self._quiet: Any = None
        self._deferred = False

    @classmethod
    def backbone_finetuning(
        cls,
        backbone: Any = "backbone",
        *,
        unfreeze_at: int = 10,
        lr_ratio: float = 0.1,
        growth: float = 2.0,
        align: bool = True,
        train_norms: bool | str = "batchnorm",
        **options: Any,
    ) -> FreezeCallback:
        """Lightning's ``BackboneFinetuning`` with its defaults, as a ``FreezeCallback``.

        Freezes ``backbone`` (BatchNorm layers keep training: ``train_bn=True``), thaws it at
        the start of epoch ``unfreeze_at`` into a group named ``"backbone"`` at
        ``lr_ratio`` times the first group's rate, then multiplies that rate by
        ``growth`` at each later epoch start, capped at the first group's rate. The rates
        equal Lightning's epoch for epoch (``tests/integrations/test_integrations_lightning.py``).

        Example:
            >>> from frozen.integrations.lightning import FreezeCallback
            >>> FreezeCallback.backbone_finetuning(unfreeze_at=3).plan.unfreeze[0].growth
            2.0
        """
        stage = Stage(unfreeze_at, backbone, lr_ratio=lr_ratio, name="backbone", growth=growth, align=align)
        return cls(backbone, train_norms=train_norms, unfreeze=[stage], **options)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._deferred = False
        if stage != "fit":
            return
        try:
            self.plan.freeze(pl_module)
        except SelectorError:
            # Lightning calls configure_model after setup: targets it creates do not exist yet.
            if type(pl_module).configure_model is LightningModule.configure_model:
                raise
            self._deferred = True

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Resuming a model this callback already trained (the same object, a second fit): put it
        # back in the plan's starting state before configure_optimizers runs, so the optimizer is
        # built as in the checkpointed run; on_fit_start replays the stages reached.
        if self.plan.unfreeze and self.plan.froze(pl_module):
            self.plan.refreeze(pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._deferred:
            self.plan.freeze(pl_module)  # raises now if the target is still missing
            self._rewrap(trainer)  # the strategy wrapped the model before this freeze
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.plan.start(pl_module, trainer.optimizers, schedulers)
        if self._restored is not None and self.plan.schedule is not None:
            # Replay the stages a checkpointed run had reached, so the model and the
            # optimizer's groups are as they were when it was saved; Lightning then
            # loads the optimizer and scheduler state (rates included) into those groups.
            if self.plan.advance(self._restored.get("count", 0), schedulers):
                self._rewrap(trainer)
            self.plan.schedule.load_state_dict(self._restored)
        self._restored = None  # a later fit() without ckpt_path starts from the beginning
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

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.plan.unit == "epoch":
            self._advance(trainer, trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        settle_flips(pl_module, "FreezeCallback.on_train_batch_start")
        if self.plan.unit == "step":
            self._advance(trainer, trainer.global_step)

    def _advance(self, trainer: Any, to: int) -> None:
        if self.plan.advance(to, [config.scheduler for config in trainer.lr_scheduler_configs]):
            self._rewrap(trainer)

    @staticmethod
    def _rewrap(trainer: Any) -> None:
        """Under DDP, rebuild the strategy's wrapper so its reducer holds what is trainable now.

        A collective: every rank runs the same plan, so every rank gets here at the same step.
        """
        model = getattr(trainer.strategy, "model", None)
        if isinstance(model, DistributedDataParallel):
            trainer.strategy.model = rewrap(model)

    def state_dict(self) -> dict[str, Any]:
        return self.plan.schedule.state_dict() if self.plan.schedule is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None
