"""``frozen.trainable_state_dict``: save only what trains, resume exactly from it on the same base model."""

from __future__ import annotations

import io

import torch
from torch import nn

import frozen


def base() -> nn.Module:
    torch.manual_seed(0)  # "the same base model": same construction, same weights
    return nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)
    )


def start() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = frozen.freeze(base(), "0-3")
    model.train()
    return model, torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_it_holds_the_trainable_parameters_and_the_statistics_that_move_and_nothing_frozen():
    model, _ = start()
    saved = frozen.trainable_state_dict(model)
    assert sorted(saved) == [
        "4.bias",
        "4.num_batches_tracked",
        "4.running_mean",
        "4.running_var",
        "4.weight",
        "5.bias",
        "5.weight",
    ]
    assert all(saved[k].data_ptr() == v.data_ptr() for k, v in model.state_dict().items() if k in saved)


def test_resuming_from_it_after_a_thaw_is_bit_identical_to_the_straight_run():
    model, optimizer = start()
    train(model, optimizer, range(0, 3))
    frozen.thaw(model, "3")
    frozen.optim.sync(optimizer, model)
    train(model, optimizer, range(3, 5))
    buffer = io.BytesIO()
    torch.save(
        {
            "weights": frozen.trainable_state_dict(model),
            "freeze": frozen.state(model),
            "optimizer": frozen.optim.state_dict(optimizer, model),
        },
        buffer,
    )
    full_size, small_size = (
        sum(t.numel() for t in model.state_dict().values()),
        sum(t.numel() for t in frozen.trainable_state_dict(model).values()),
    )
    assert small_size < full_size
    train(model, optimizer, range(5, 8))  # the straight run

    buffer.seek(0)
    saved = torch.load(buffer)
    again, again_optimizer = start()  # built exactly as at the start
    frozen.load_state(again, saved["freeze"])
    missing, unexpected = again.load_state_dict(saved["weights"], strict=False)
    assert unexpected == [] and all(k.startswith(("0.", "1.")) for k in missing)  # only frozen, unchanged ones
    frozen.optim.load_state_dict(again_optimizer, again, saved["optimizer"])
    train(again, again_optimizer, range(5, 8))

    expected, resumed = model.state_dict(), again.state_dict()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), [
        k for k in expected if not torch.equal(expected[k], resumed[k])
    ]
    assert torch.equal(again[0].weight, base()[0].weight)  # frozen all along
