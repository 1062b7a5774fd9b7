"""The optimizers of the S10 guarantee, each with the options that move a parameter even when its gradient is zero.

``CASES`` crosses them with the for-loop, foreach and (where the CPU has one) fused implementations, as
``pytest.param`` ids like ``adamw-foreach``.
"""

from __future__ import annotations

import pytest
import torch

SGD, Adam, AdamW, RMSprop, Adagrad, Adamax = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adamax,
)
# Every optimizer with options that move a parameter even when its gradient is zero.
OPTIMIZERS = {
    "sgd-momentum-wd": (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    "sgd-nesterov-wd": (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "adam": (Adam, dict(lr=0.01)),
    "adam-wd-amsgrad": (Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    "adamw": (AdamW, dict(lr=0.01, weight_decay=0.1)),
    "rmsprop-momentum-centered-wd": (RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    "adagrad-wd": (Adagrad, dict(lr=0.1, weight_decay=0.1)),
    "adamax-wd": (Adamax, dict(lr=0.01, weight_decay=0.1)),
}
FUSED_ON_CPU = {SGD, Adam, AdamW, Adagrad}  # checked on torch 2.13 CPU: RMSprop/Adamax take no `fused`
CASES = [
    pytest.param(cls, {**kwargs, **impl}, id=f"{name}-{impl_id}")
    for name, (cls, kwargs) in OPTIMIZERS.items()
    for impl_id, impl in [("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]
    if impl_id != "fused" or cls in FUSED_ON_CPU
]
