"""Exact snapshots of everything freeze may touch, for "nothing changed" assertions."""

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    """Types, parameter ids and flags, modes, instance attributes, hooks and tensors."""
    return {
        "types": [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "params": [(n, id(p), p.requires_grad) for n, p in model.named_parameters(remove_duplicate=False)],
        "training": [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)],
        "dicts": [(n, sorted(m.__dict__)) for n, m in model.named_modules(remove_duplicate=False)],
        "hooks": [(n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(a: dict, b: dict) -> None:
    """Two snapshots agree exactly, tensors bit for bit (and in dtype)."""
    assert {k: v for k, v in a.items() if k != "state"} == {k: v for k, v in b.items() if k != "state"}
    assert a["state"].keys() == b["state"].keys()
    assert all(
        a["state"][k].dtype == b["state"][k].dtype and torch.equal(a["state"][k], b["state"][k]) for k in a["state"]
    )
