"""Loads that torch's version counters do not see, as FSDP2 loads into its shards (for one-process tests)."""

from __future__ import annotations

import torch
from torch import nn


def load_quietly(module: nn.Module) -> None:
    """Make ``module`` load its parameters in place with their version counters preserved.

    FSDP2 copies a loaded ``state_dict`` into its shards under
    ``torch.autograd._unsafe_preserve_version_counter``; a snapshot that trusts ``_version``
    sees no change. This reproduces it on one module, without a process group.
    """

    def load(state_dict: dict, prefix: str, *_: object) -> None:
        with torch.no_grad():
            for name, tensor in module._parameters.items():
                if tensor is not None:
                    with torch.autograd._unsafe_preserve_version_counter(tensor):
                        tensor.copy_(state_dict[prefix + name])

    module._load_from_state_dict = load  # type: ignore[method-assign]
