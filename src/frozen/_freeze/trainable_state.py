"""``trainable_state_dict``: a checkpoint of only what trains, the adapter-style file PEFT users expect.

A fine-tune that freezes most of a model changes only its trainable parameters and the
buffers of the modules that still run in training behaviour (BatchNorm statistics of a
trained head). Everything else is bit-identical to the base model (contract S2, S3), so
saving it again is waste: a 7B base with a trained head would write 14 GB per checkpoint
for a few MB of change. The keys are ``state_dict`` keys, so the file loads with the
plain ``model.load_state_dict(saved, strict=False)`` onto the same base model.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_model
from .._core import iter_module_uses, named_parameters, trainable_ids

__all__ = ["trainable_state_dict"]


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Return the ``state_dict`` entries of ``model`` that training can change.

    That is every trainable parameter (under its ``state_dict`` key; a tied parameter once)
    and every buffer of a module that is not frozen in inference behaviour (a frozen
    part's BatchNorm statistics never move; ``mode="inherit"`` ones may, and are kept).
    Values are the model's own tensors, detached, as ``state_dict`` gives them: save them
    with ``torch.save`` (or safetensors) before training on.

    To resume exactly: build the same base model (same weights), freeze it as at the
    start, restore the freeze state with :func:`frozen.load_state`, then
    ``model.load_state_dict(saved, strict=False)`` (the missing keys are the frozen,
    unchanged ones) and the optimizer with :func:`frozen.optim.load_state_dict`.

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), "0")
        >>> sorted(frozen.trainable_state_dict(net))
        ['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
    """
    check_model(model, "frozen.trainable_state_dict")
    full = model.state_dict(keep_vars=False)
    ids = trainable_ids(model, "frozen.trainable_state_dict")
    params = dict(named_parameters(model))
    kept = {path for path, p in params.items() if id(p) in ids}
    every_param = {path for path, _ in model.named_parameters(remove_duplicate=False)}
    still = {use.path for use in iter_module_uses(model) if use.frozen and use.mode == "eval"}
    for key in full:
        owner = key.rpartition(".")[0]
        if key not in every_param and key not in params and not _under(owner, still):
            kept.add(key)  # a buffer (or extra state) of a module that still trains or runs in training mode
    return {key: value for key, value in full.items() if key in kept}


def _under(path: str, frozen_paths: set[str]) -> bool:
    """Whether ``path`` is a frozen module's path or inside one."""
    while True:
        if path in frozen_paths:
            return True
        if not path:
            return False
        path = path.rpartition(".")[0]
