"""What a type checker sees of the public functions that change a model in place and return it.

mypy checks this file (``[tool.mypy] files`` in pyproject.toml, run by ``test_lint.py``): each
``assert_type`` fails the type check if the function stops returning the model's own type, and
the test itself checks at run time that the object returned is the one passed in.
"""

from __future__ import annotations

from typing import assert_type

import torch
from torch import nn

import frozen


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_functions_that_change_a_model_in_place_return_it_with_its_own_type() -> None:
    net = Net()
    assert assert_type(frozen.freeze(net, "body"), Net) is net
    assert assert_type(frozen.lean(net, "body"), Net) is net
    assert assert_type(frozen.unlean(net, "body"), Net) is net
    assert assert_type(frozen.thaw(net, "body"), Net) is net
    assert assert_type(frozen.load_state(net, frozen.state(net)), Net) is net
    sequential = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert assert_type(frozen.freeze_to(sequential, -1), nn.Sequential) is sequential
    assert assert_type(frozen.freeze(sequential)[0], nn.Module) is sequential[0]  # indexing keeps working
