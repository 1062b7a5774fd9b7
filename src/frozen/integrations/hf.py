"""Hugging Face ``transformers``: freeze parts of a model trained by ``Trainer``.

``Trainer`` builds its optimizer from the parameters with ``requires_grad=True``.
``frozen`` keeps those flags equal to "trains in this model" (contract S8), so a
model frozen with :func:`frozen.freeze` before the ``Trainer`` is created needs
nothing more. :class:`FreezeCallback` does the same from inside the ``Trainer``
and adds gradual unfreezing:

* at ``Trainer(...)`` creation (``on_init_end``) it freezes the targets, before
  the optimizer exists;
* at ``on_train_begin`` it makes the optimizer hold exactly the trainable
  parameters (:func:`frozen.optim.sync`) and records every frozen parameter in the
  Trainer's decay or no-decay group, by the Trainer's own rule
  (``Trainer.get_decay_parameter_names``), so a part thawed without its own rate
  returns there with ``TrainingArguments``' ``weight_decay`` / ``learning_rate``;
* it advances the ``unfreeze`` stages at the start of each epoch (``unit="epoch"``,
  stages count finished epochs) or after each optimizer step (``unit="step"``, stages
  count ``global_step``). A stage with ``lr`` / ``lr_ratio`` gets two groups,
  ``name`` and ``name/no_decay``, split by the same rule; the ``Trainer``'s scheduler
  is extended to them, from their own base rate (``lr_ratio`` times the first group's
  base rate), so the ratio holds at every step and the schedule factor applies once;
* at each step (``on_step_begin``) a ``requires_grad`` flag ``frozen`` turned off and someone else
  turned back on (PEFT's ``set_adapter``, a hand-written ``requires_grad_(True)``) is turned off
  again (:func:`frozen.settle`, warning with :class:`frozen.ForeignFlagWarning`): the optimizer
  and DDP's reducer hold the trainable set of the plan, and a flip would train outside both;
* each thaw logs one line (logger ``"frozen"``, level INFO) with the new trainable count;
* under DDP the ``Trainer`` wrapped the model before ``on_train_begin`` and keeps the
  wrapper in a local variable of its loop, so it cannot be rebuilt from a callback
  (:func:`frozen.distributed.rewrap`): instead, before each optimizer step
  (``on_pre_optimizer_step``) the callback averages across ranks the gradients of the
  parameters thawed after wrapping — the ones DDP's reducer does not hold — exactly
  what DDP would have done for them;
* checkpoints resume exactly: see :mod:`frozen.integrations._trainer_checkpoint`; a Trainer that
  resumes such a checkpoint *without* the callback raises at its first optimizer step
  (naming the callback) instead of restarting every optimizer moment from zero;
* with activation (gradient) checkpointing, non-reentrant (the default), and a part cached by
  :func:`frozen.cache`, it removes the hook the ``Trainer`` installed with
  ``enable_input_require_grads`` (logged once): that hook makes the embeddings' output
  require grad, which a cached frozen prefix refuses, and only reentrant checkpointing needs it.

Importing this module imports ``transformers``; ``import frozen`` does not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback

from .. import thaw
from .._cache import cache_stats
from .._core import named_parameters, settle_flips, trainable_ids
from .._errors import FrozenError
from ..distributed import averaged_elsewhere
from ..optim import PARKED, load_state_dict
from ..schedule import Stage
from ._common import CallbackPlan, extend_scheduler, unwrap_model, unwrap_optimizer
from ._trainer_checkpoint import install, take

__all__ = ["FreezeCallback"]

logger = logging.getLogger("frozen")


class FreezeCallback(TrainerCallback):
    """A ``TrainerCallback`` that freezes ``targets`` and optionally thaws them on a plan.

    Args:
        *targets: what to freeze, as :func:`frozen.freeze` takes it (patterns such as
            ``"bert.embeddings"``, ``"bert.encoder.layer.0-3"``, module types, ...).
        exclude: selectors kept trainable inside the targets.
        mode: ``"eval"`` (default: frozen parts keep inference behaviour, Dropout off)
            or ``"inherit"``.
        train_norms: keep normalisation layers inside the targets trainable (``True``: every kind;
            ``"batchnorm"``: BatchNorm only).
        unfreeze: :class:`frozen.schedule.Stage` objects; ``Stage(at=1,
            targets=("bert.encoder.layer.3",))`` thaws it once one ``unit`` is done.
            ``growth`` is refused: the Trainer's scheduler sets every rate at every step.
        state: ``"drop"`` (default) or ``"keep"``: the optimizer state of frozen
            parameters (:func:`frozen.optim.sync`).
        unit: ``"epoch"`` (default) or ``"step"`` (optimizer steps, for ``max_steps`` runs).

    Raises:
        TypeError: ``unfreeze`` holds something other than ``Stage`` objects.
        frozen.InvalidModeError: unknown ``mode``.
        frozen.FrozenError: unknown ``state`` / ``unit``, or a stage with ``growth``.

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
        for stage in self.plan.unfreeze:
            if stage.growth is not None:
                raise FrozenError(
                    f"FreezeCallback(unfreeze=[{stage!r}]): growth is not supported with the Hugging Face Trainer, "
                    f"whose scheduler sets every group's rate at every step. Use lr or lr_ratio (the group then "
                    f"follows the Trainer's schedule), or Lightning's callback / frozen.schedule for growth."
                )
        self._model: nn.Module | None = None
        self._decay: set[str] = set()
        self._weight_decay = 0.0
        self._reduced: set[int] | None = None  # under DDP: the parameters its reducer holds

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self.plan.freeze(unwrap_model(model))

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            return
        model = self._model = unwrap_model(model)
        self.plan.freeze(model)  # a model passed via model_init is only created now
        _release_input_grads(model, args)
        if optimizer is None:
            return
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self._reduced = trainable_ids(model) if distributed else None  # DDP wrapped over these, before this event
        if distributed:
            averaged_elsewhere(model)  # thawed parameters: averaged in on_pre_optimizer_step, not by a rewrap
        raw = unwrap_optimizer(optimizer)
        stash = take(raw)  # a resumed run: the real layout travelled inside the checkpoint
        counts = [len(group["params"]) for group in raw.param_groups]  # the fresh Trainer's layout
        schedulers = [lr_scheduler] if lr_scheduler is not None else []
        # On resume the scheduler already holds the saved run's groups: extend it after the restore.
        self.plan.start(model, [raw], schedulers if stash is None else [])
        # The Trainer's own rule; the method does not use its instance.
        self._decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
        self._weight_decay = args.weight_decay
        if stash is None:
            self._park_by_decay_rule(raw, args)
        else:
            self._restore(raw, model, stash, schedulers)
        install(raw, model, counts, lambda: self.plan.schedule.state_dict() if self.plan.schedule else {})

    def _park_by_decay_rule(self, optimizer: Any, args: Any) -> None:
        """Record each frozen parameter in the Trainer's decay or no-decay group, so it returns there."""
        groups = optimizer.param_groups
        if len(groups) != 2 or [g.get("weight_decay") for g in groups] != [args.weight_decay, 0.0]:
            return  # not the Trainer's own optimizer: sync's rules apply
        assert self._model is not None
        ids = trainable_ids(self._model)
        for path, param in named_parameters(self._model):
            if id(param) not in ids:
                group = groups[0] if path in self._decay else groups[1]
                if path not in group.setdefault(PARKED, []):
                    group[PARKED].append(path)

    def _restore(self, optimizer: Any, model: nn.Module, stash: dict[str, Any], schedulers: list[Any]) -> None:
        """Put the model and optimizer back as the checkpointed run had them (stages, groups, state)."""
        schedule = self.plan.schedule
        if schedule is not None and stash["progress"]:
            schedule.load_state_dict(stash["progress"])
            for k in schedule.applied:
                thaw(model, *schedule.stages[k].targets)
        load_state_dict(optimizer, model, stash["saved"])
        for scheduler in schedulers:  # it loaded base rates for every group; give it a function for each
            extend_scheduler(scheduler)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._reduced is None or self._model is None:
            return
        ids, world = trainable_ids(self._model), dist.get_world_size()
        for _, param in named_parameters(self._model):
            if id(param) in ids and id(param) not in self._reduced:
                if param.grad is None:  # every rank must join every all_reduce, in the same order
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad)
                param.grad /= world

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._model is not None:
            settle_flips(self._model, "FreezeCallback.on_step_begin")

    def on_epoch_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.plan.unit == "epoch":
            # state.epoch is the epoch index here (fractional only mid-epoch, after a resume).
            self._advance(math.floor(state.epoch), state, lr_scheduler)

    def on_step_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.plan.unit == "step":
            self._advance(state.global_step, state, lr_scheduler)

    def _advance(self, to: int, state: Any, lr_scheduler: Any) -> None:
        schedule = self.plan.schedule
        if schedule is None or self._model is None:
            return
        thawed = schedule.advance(to)
        for stage in thawed:
            if stage.lr is not None or stage.lr_ratio is not None:
                self._split_no_decay(schedule.optimizer, stage.group_name)
        if thawed and lr_scheduler is not None:
            extend_scheduler(lr_scheduler)
        ids = trainable_ids(self._model)
        count = sum(p.numel() for _, p in named_parameters(self._model) if id(p) in ids)
        for stage in thawed:
            logger.info(
                "frozen: thawed %s at %s %d (global step %d); %s trainable parameters",
                ", ".join(map(str, stage.targets)),
                self.plan.unit,
                to,
                state.global_step,
                f"{count:,}",
            )

    def _split_no_decay(self, optimizer: Any, name: str) -> None:
        """Move a stage group's biases and norm weights to ``name/no_decay`` (weight_decay 0), as the Trainer does."""
        group = next((g for g in optimizer.param_groups if g.get("name") == name), None)
        if group is None:
            return
        group["weight_decay"] = self._weight_decay  # not torch's default: TrainingArguments' value
        assert self._model is not None
        path_of = {id(p): path for path, p in named_parameters(self._model)}
        rest = [p for p in group["params"] if path_of[id(p)] not in self._decay]
        if not rest:
            return
        group["params"][:] = [p for p in group["params"] if path_of[id(p)] in self._decay]
        options = {k: v for k, v in group.items() if k not in ("params", PARKED, "param_names")}
        optimizer.add_param_group({**options, "name": f"{name}/no_decay", "weight_decay": 0.0, "params": rest})


def _release_input_grads(model: nn.Module, args: Any) -> None:
    """Remove the Trainer's ``enable_input_require_grads`` hook where a cached prefix would refuse its input.

    The Trainer turns the hook on with gradient checkpointing so that *reentrant* checkpointing
    sees an input that requires grad; non-reentrant checkpointing (transformers' default) does
    not need it, and a frozen cached prefix must not take an input that requires grad
    (docs/cache.md). Reentrant runs keep it: they need it, and the cache says why it refuses.
    """
    # transformers 5 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs)
    renamed = hasattr(args, "activation_checkpointing")
    enabled = args.activation_checkpointing if renamed else getattr(args, "gradient_checkpointing", False)
    options = args.activation_checkpointing_kwargs if renamed else getattr(args, "gradient_checkpointing_kwargs", None)
    if not enabled or (options or {}).get("use_reentrant", False):
        return
    if getattr(model, "_require_grads_hooks", None) and cache_stats(model):
        model.disable_input_require_grads()  # type: ignore[operator]
        logger.info("frozen: removed enable_input_require_grads (non-reentrant checkpointing, a cached prefix)")
