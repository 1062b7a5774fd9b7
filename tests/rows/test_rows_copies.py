"""Copies of a model with frozen rows train with those rows frozen, from their first step.

The rows live in the record of each module holding the parameter, so ``copy.deepcopy``,
pickle and ``torch.save`` / ``torch.load`` carry them and rebuild them on the copy's
parameter: no forward, no ``frozen.trainable`` call is needed first, and the weight may be
used outside the module's forward (a functional call) or under ``torch.compile``.
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TiedVocabulary
from torch import nn

import frozen
from frozen._rows.rows import frozen_rows


def by_torch_save(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "torch.save": by_torch_save,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
}


def batches(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randint(0, 12, (6, 5)) for _ in range(steps)]


def module_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())


def functional_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    # The weight used outside any module's forward: no module hook can run before it.
    weight = model.emb.weight
    return F.cross_entropy(F.linear(torch.tanh(F.embedding(ids, weight)), weight).flatten(0, 1), ids.flatten())


USES = {"forward": module_loss, "functional": functional_loss}


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_trains_with_its_rows_frozen_from_the_first_step_without_asking_trainable(how, use) -> None:
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", trainable=[9, 10, 11]))
    copied = COPIES[how](model)
    weight = copied.emb.weight
    assert weight is copied.out.weight and weight is not model.emb.weight  # tied in the copy too
    before = weight.detach().clone()
    optimizer = torch.optim.AdamW(copied.parameters(), lr=0.1, weight_decay=0.1)  # not frozen.trainable
    for ids in batches(3):
        optimizer.zero_grad(set_to_none=False)  # zero (not None) gradients stay behind, decay reads them
        USES[use](copied, ids).backward()
        assert torch.count_nonzero(weight.grad[:9]) == 0  # zeroed through both tied uses
        optimizer.step()
    assert torch.equal(weight[:9], before[:9])  # frozen rows bit-identical under AdamW's weight decay
    assert not torch.equal(weight[9:], before[9:])
    assert optimizer.state[weight]["exp_avg"].shape == (3, 8)  # state for the trainable rows only
    assert torch.equal(model.emb.weight, before)  # the original was not touched
    for each in (model, copied):
        frozen.thaw(each)


def test_a_compiled_copy_keeps_its_rows_without_an_eager_forward_or_trainable() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", trainable=[9, 10, 11]))
    copied = copy.deepcopy(model)
    before = copied.emb.weight.detach().clone()
    optimizer = torch.optim.AdamW(copied.parameters(), lr=0.1, weight_decay=0.1)
    compiled = torch.compile(copied, backend="aot_eager")  # the first forward ever is traced
    for ids in batches(2):
        optimizer.zero_grad(set_to_none=True)
        module_loss(compiled, ids).backward()
        assert torch.count_nonzero(copied.emb.weight.grad[:9]) == 0
        optimizer.step()
    assert torch.equal(copied.emb.weight[:9], before[:9]) and not torch.equal(copied.emb.weight[9:], before[9:])
    for each in (model, copied):
        frozen.thaw(each)


def frozen_then_whole() -> TiedVocabulary:
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", [0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        frozen.freeze(model, "")  # the whole model: the row-frozen weight needs no gradient now
    return model


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_of_a_model_frozen_whole_over_its_rows_runs_and_answers(how: str) -> None:
    model = frozen_then_whole()
    copied = COPIES[how](model)
    ids = batches(1)[0]
    assert torch.equal(copied(ids), model(ids))  # crashed: a gradient hook put on a weight needing none
    assert frozen.trainable(copied) == [] and frozen.state(copied) == frozen.state(model)
    assert frozen.report(copied).rows[0].frozen_rows == 2
    frozen.thaw(copied)  # everything, the rows included
    assert frozen_rows(copied) == {} and frozen.trainable(copied) == list(copied.parameters())
    before = copied.emb.weight.detach().clone()
    optimizer = torch.optim.AdamW(frozen.trainable(copied), lr=0.1, weight_decay=0.1)
    module_loss(copied, ids).backward()
    optimizer.step()
    assert (copied.emb.weight != before).any(dim=1).all()  # every row trains again
    frozen.thaw(model)


@pytest.mark.parametrize("how", list(COPIES))
def test_rows_copied_while_their_weight_needed_no_gradient_are_frozen_once_it_trains_again(how: str) -> None:
    # A Frozen wrapper over the embedding (settled: its weight needs no gradient) is copied, then
    # unwrapped in the copy: settling gives the copy's weight the gradient hook it could not take before.
    model = TiedVocabulary()
    model.out = nn.Linear(8, 12, bias=False)  # untied: the wrapper is the embedding's only use
    frozen.freeze(model, frozen.Rows("emb.weight", trainable=[9, 10, 11]))
    model.emb = frozen.Frozen(model.emb)
    frozen.settle(model)
    assert not model.emb.weight.requires_grad
    copied = COPIES[how](model)
    copied.emb = copied.emb.module
    frozen.settle(copied)
    weight = copied.emb.weight
    assert weight.requires_grad
    before = weight.detach().clone()
    optimizer = torch.optim.AdamW(copied.parameters(), lr=0.1, weight_decay=0.1)
    for ids in batches(2):
        optimizer.zero_grad()
        functional_loss(copied, ids).backward()  # outside the forward: the hook is settle's doing
        assert torch.count_nonzero(weight.grad[:9]) == 0
        optimizer.step()
    assert torch.equal(weight[:9], before[:9]) and not torch.equal(weight[9:], before[9:])
    for each in (model, copied):
        frozen.thaw(each)


def test_a_weight_turned_back_on_by_hand_gets_its_gradient_hook_at_the_next_forward() -> None:
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", [0, 1]))
    model.emb.weight.requires_grad_(False)
    copied = copy.deepcopy(model)  # rebuilt while its weight needed no gradient: no hook yet
    copied.emb.weight.requires_grad_(True)
    module_loss(copied, batches(1)[0]).backward()
    assert torch.count_nonzero(copied.emb.weight.grad[:2]) == 0
    assert torch.count_nonzero(copied.emb.weight.grad[2:], dim=1).all()
    for each in (model, copied):
        frozen.thaw(each)


def test_a_freed_copy_leaves_no_row_freezing_behind() -> None:
    from frozen._rows import step

    gc.collect()  # row-frozen models other tests left to the cycle collector
    model = frozen.freeze(TiedVocabulary(), frozen.Rows("emb.weight", [0, 1]))
    copied = copy.deepcopy(model)
    assert len(step._INDEX) == 2 and step._HANDLES
    del copied
    frozen.thaw(model)
    assert not step._INDEX and not step._HANDLES  # the optimizer hooks leave with the last live frozen row
