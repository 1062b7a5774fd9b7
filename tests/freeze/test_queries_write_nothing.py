"""Questions change nothing: not the model, its records and hooks, its parameters, nor frozen's registries.

Asked of a model with frozen rows, frozen parts and tied weights, and of its copies (deepcopy,
torch.save / torch.load), whose parameters are new objects: a query there used to put the row
freezing back on the copy's parameters (a gradient hook, an optimizer index) and note the copy's
switched-off flags in a registry.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from model_state import assert_same_state, model_state
from torch import nn

import frozen
from frozen._rows.rows import frozen_rows


class Tied(nn.Module):
    """An embedding and an output head sharing one weight, a frozen body and a wrapped block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(12, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 8))
        self.wrapped = frozen.Frozen(nn.Linear(8, 8))
        self.out = nn.Linear(8, 12, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.wrapped(self.body(self.emb(ids).mean(1))))


def frozen_model(whole: bool) -> Tied:
    model = Tied()
    frozen.freeze(model, "body.0-1", frozen.Rows("emb.weight", trainable=[9, 10, 11]))
    if whole:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", frozen.TiedParameterWarning)
            frozen.freeze(model, "emb")  # rows frozen, then the whole parameter
    model(torch.tensor([[1, 2], [3, 4]])).sum().backward()  # gradients in place, which no query may touch
    return model


def loaded(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {"the model": lambda m: m, "a deepcopy": copy.deepcopy, "a torch.load copy": loaded}
QUERIES = {
    "trainable": frozen.trainable,
    "named_trainable": frozen.named_trainable,
    "report": frozen.report,
    "str(report)": lambda m: str(frozen.report(m)),
    "state": frozen.state,
    "is_frozen (model)": frozen.is_frozen,
    "is_frozen (row-frozen parameter)": lambda m: frozen.is_frozen(m, "emb.weight"),
    "is_frozen (part)": lambda m: frozen.is_frozen(m, "body.0"),
    "grad": lambda m: frozen.grad(m(torch.tensor([[1, 2]])).sum(), m),
    "select": lambda m: frozen.select(m, "body"),
    "cache_stats": frozen.cache_stats,
    "frozen_rows": frozen_rows,
}


@pytest.mark.parametrize("whole", [False, True], ids=["rows", "rows then whole"])
@pytest.mark.parametrize("copy_of", list(COPIES))
@pytest.mark.parametrize("query", list(QUERIES))
def test_a_query_changes_nothing(query: str, copy_of: str, whole: bool) -> None:
    model = COPIES[copy_of](frozen_model(whole))
    model.eval()  # grad's forward must not move BatchNorm statistics: the query is what is checked
    before = model_state(model)
    QUERIES[query](model)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("copy_of", list(COPIES))
def test_every_query_in_a_row_changes_nothing_and_answers_as_on_the_original(copy_of: str) -> None:
    original = frozen_model(whole=False).eval()
    model = COPIES[copy_of](original)
    before = model_state(model)
    answers = {name: QUERIES[name](model) for name in ("state", "named_trainable", "report")}
    assert_same_state(before, model_state(model))
    assert answers["state"] == frozen.state(original)
    assert [p for p, _ in answers["named_trainable"]] == [p for p, _ in frozen.named_trainable(original)]
    assert answers["report"].to_dict() == frozen.report(original).to_dict()
    assert frozen_rows(model)["emb.weight"].trainable.tolist() == [9, 10, 11]
