"""One walk per call: a public call walks the model at most twice, whatever it does.

A walk is one full pass over the model: ``frozen._core.tree.iter_module_uses`` (which every
parameter walk goes through), or ``named_modules`` / ``named_parameters`` / ``modules`` /
``parameters`` called on the model itself. They are counted, not timed: on a 48-block model a
call that walked it 13 times was slow for that reason alone.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import frozen
from frozen._core import trainable_ids, tree

WALKING_METHODS = ("named_modules", "named_parameters", "modules", "parameters")


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied, as a language model's output head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.emb(ids).mean(1)))


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[nn.Module, Callable[[], object]], int]]:
    """``walks(model, call)``: how many times ``call()`` walks ``model``."""
    counted: list[nn.Module] = []
    count = [0]
    inside: list[bool] = []
    original = tree.iter_module_uses

    def counting_walk(model: nn.Module, *args: object, **kwargs: object) -> Iterator:
        count[0] += bool(counted) and model is counted[0]
        return original(model, *args, **kwargs)

    # Every module of the package that imported the walk by name walks through the counter.
    for module in [m for name, m in sys.modules.items() if name == "frozen" or name.startswith("frozen.")]:
        if getattr(module, "iter_module_uses", None) is original:
            monkeypatch.setattr(module, "iter_module_uses", counting_walk)
    for name in WALKING_METHODS:
        method = getattr(nn.Module, name)

        def counting_method(self: nn.Module, *args: object, _method: Callable = method, **kwargs: object) -> object:
            outermost = not inside  # modules() walks through named_modules(): one walk, counted once
            count[0] += outermost and bool(counted) and self is counted[0]
            inside.append(True)
            try:
                result = _method(self, *args, **kwargs)
                return list(result) if outermost and not isinstance(result, list) else result
            finally:
                inside.pop()

        monkeypatch.setattr(nn.Module, name, counting_method)

    def measure(model: nn.Module, call: Callable[[], object]) -> int:
        counted[:] = [model]
        count[0] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", frozen.TiedParameterWarning)
            call()
        return count[0]

    yield measure


def frozen_model() -> Backbone:
    torch.manual_seed(0)
    model = Backbone()
    frozen.freeze(model, "body.0-1", frozen.Rows("emb.weight", [0, 1]))
    return model


CALLS: dict[str, Callable[[nn.Module], object]] = {
    "freeze a part": lambda m: frozen.freeze(m, "body.2"),
    "freeze a tied part": lambda m: frozen.freeze(m, "emb"),
    "freeze the whole model": lambda m: frozen.freeze(m, ""),
    "freeze rows": lambda m: frozen.freeze(m, frozen.Rows("emb.weight", [5])),
    "freeze a part and rows": lambda m: frozen.freeze(m, "body.2", frozen.Rows("head.weight", [7])),
    "thaw a part": lambda m: frozen.thaw(m, "body.0"),
    "thaw rows": lambda m: frozen.thaw(m, frozen.Rows("emb.weight", [0])),
    "thaw everything": lambda m: frozen.thaw(m),
    "settle": lambda m: frozen.settle(m),
    "report": lambda m: frozen.report(m),
    "state": lambda m: frozen.state(m),
    "load_state": lambda m: frozen.load_state(m, frozen.state(frozen_model())),
    "trainable": lambda m: frozen.trainable(m),
    "named_trainable": lambda m: frozen.named_trainable(m),
    "is_frozen": lambda m: frozen.is_frozen(m, "body.1"),
    "grad": lambda m: frozen.grad(m(torch.tensor([[1, 2]])).sum(), m),
    "cache set-up": lambda m: frozen.cache(m, "body.0", "body.1"),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_a_call_walks_the_model_at_most_twice(walks, call: str) -> None:
    model = frozen_model()
    model.eval()
    assert walks(model, lambda: CALLS[call](model)) <= 2


@pytest.mark.parametrize("call", ["freeze a part", "thaw a part", "settle", "cache set-up", "trainable"])
def test_freezing_thawing_settling_and_caching_walk_the_model_once(walks, call: str) -> None:
    model = frozen_model()
    model.eval()
    assert walks(model, lambda: CALLS[call](model)) == 1


def test_the_counter_sees_every_kind_of_walk(walks) -> None:
    model = frozen_model()
    assert walks(model, lambda: (list(model.modules()), list(model.named_parameters()))) == 2
    assert walks(model, lambda: trainable_ids(model)) == 1  # a walk imported by name goes through the counter
