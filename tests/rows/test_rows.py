"""Row freezing: frozen rows are constants, trainable rows train as a separate tensor would."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
from optimizer_cases import CASES
from tiny_models import TiedVocabulary
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import frozen
from frozen._rows import record as _rows_record
from frozen._rows import step as _rows_step
from frozen._rows.rows import Rows, freeze_rows, frozen_rows, thaw_rows
from frozen._rows.state import load_rows_state, rows_state

# Beyond the 9-optimizer guarantee test: the other elementwise torch optimizers, and Adafactor,
# whose factored statistics span rows -- they must see only the trainable rows to match the reference.
EXTRA = [
    pytest.param(torch.optim.NAdam, dict(lr=0.01, weight_decay=0.1, momentum_decay=0.004), id="nadam-wd"),
    pytest.param(torch.optim.NAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), id="nadam-decoupled"),
    pytest.param(torch.optim.RAdam, dict(lr=0.01, weight_decay=0.1, foreach=True), id="radam-wd-foreach"),
    pytest.param(torch.optim.Adadelta, dict(lr=1.0, weight_decay=0.1), id="adadelta-wd"),
    pytest.param(torch.optim.Rprop, dict(lr=0.01, foreach=True), id="rprop-foreach"),
    pytest.param(torch.optim.ASGD, dict(lr=0.01, weight_decay=0.1, t0=1), id="asgd-wd"),
    pytest.param(torch.optim.Adafactor, dict(lr=0.01, weight_decay=0.1), id="adafactor-wd"),
]
LAYOUTS = {"scattered": [2, 5, 6, 11], "new-tokens": [8, 9, 10, 11]}  # a gathered copy / a view of a range


def build() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(dict(emb=nn.Embedding(12, 16), head=nn.Linear(16, 3)))


def loss_of(weight: torch.Tensor, head: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return head(torch.tanh(F.embedding(ids, weight))).pow(2).mean()


def batches(steps: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randint(0, 12, (6, 5)) for _ in range(steps)]


class Reference:
    """The separate-tensor reference: only the trainable rows are a parameter, the rest a constant."""

    def __init__(self, model: nn.ModuleDict, trainable: list[int]) -> None:
        self.index = torch.tensor(trainable)
        self.constant = model.emb.weight.detach().clone()
        self.rows = nn.Parameter(self.constant[self.index].clone())
        self.head = copy.deepcopy(model.head)

    def weight(self) -> torch.Tensor:
        return self.constant.index_copy(0, self.index, self.rows)


def train(step_loss, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for ids in batches(steps):
        optimizer.zero_grad(set_to_none=False)  # zero (not None) gradients left behind, like the S10 test
        step_loss(ids).backward()
        optimizer.step()


@pytest.fixture(autouse=True)
def no_leftover_row_freezing():
    yield
    leftover = list(_rows_step._INDEX.items())
    for param, record in leftover:  # clean up after a failed test, so the next one starts clean
        record.release()
        _rows_step.index_rows(param, None)
    assert not leftover and not _rows_step._INDEX and not _rows_step._HANDLES  # every test thaws what it froze


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cls, kwargs", CASES + EXTRA)
def test_frozen_rows_bit_identical_and_trainable_rows_match_separate_tensor(cls, kwargs, layout, record_property):
    trainable = LAYOUTS[layout]
    model = build()
    reference = Reference(model, trainable)
    weight = model.emb.weight
    record = freeze_rows(model, Rows("emb.weight", trainable=trainable))
    before, storage = weight.detach().clone(), weight.data_ptr()
    optimizer = cls(model.parameters(), **kwargs)
    ref_optimizer = cls([reference.rows, *reference.head.parameters()], **kwargs)
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=4)
    train(lambda ids: loss_of(reference.weight(), reference.head, ids), ref_optimizer, steps=4)

    frozen_index = record.frozen
    assert torch.equal(weight[frozen_index], before[frozen_index])  # frozen rows never moved
    assert torch.equal(weight[reference.index], reference.rows)  # trainable rows: the separate tensor's update
    assert not torch.equal(weight[reference.index], before[reference.index])
    assert all(torch.equal(a, b) for a, b in zip(model.head.parameters(), reference.head.parameters()))
    assert torch.count_nonzero(weight.grad[frozen_index]) == 0
    assert model.emb.weight is weight and weight.data_ptr() == storage and weight.shape == (12, 16)
    # State only for the trainable rows: as many bytes as the reference optimizer holds.
    got, expected = frozen.optim.state_nbytes(optimizer), frozen.optim.state_nbytes(ref_optimizer)
    record_property("optimizer_state_bytes", got)
    assert got == expected
    thaw_rows(model, "emb.weight")


def test_gradient_hook_zeroes_frozen_rows_for_backward_autograd_grad_and_frozen_grad():
    model = build()
    freeze_rows(model, Rows("emb.weight", [0, 3, -1]))
    ids = torch.arange(12).reshape(3, 4)
    loss = loss_of(model.emb.weight, model.head, ids)
    (by_autograd,) = torch.autograd.grad(loss, [model.emb.weight], retain_graph=True)
    by_frozen = frozen.grad(loss, model, retain_graph=True)["emb.weight"]
    loss.backward()
    for grad in (by_autograd, by_frozen, model.emb.weight.grad):
        assert grad is not None and grad.shape == (12, 16)  # a partly frozen tensor gets a gradient tensor
        assert torch.count_nonzero(grad[[0, 3, 11]]) == 0
        assert torch.count_nonzero(grad[[1, 2, 4]], dim=1).all()
    assert model.emb.weight.requires_grad and model.emb.weight in frozen.trainable(model)
    thaw_rows(model, "emb.weight")
    model.emb.weight.grad = None
    loss_of(model.emb.weight, model.head, ids).backward()
    assert torch.count_nonzero(model.emb.weight.grad, dim=1).all()  # thawed: the hook is gone


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return GPT2LMHeadModel(config)


def test_gpt2_new_token_rows_tied_with_head_under_adamw_match_the_separate_tensor():
    model, new = tiny_gpt2(), list(range(36, 40))
    reference_model = copy.deepcopy(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    freeze_rows(model, Rows("lm_head.weight", trainable=new))  # any path of the tied parameter
    assert list(frozen_rows(model)) == ["transformer.wte.weight"]
    keys, before = list(model.state_dict()), model.transformer.wte.weight.detach().clone()
    others = [p for n, p in model.named_parameters() if n != "transformer.wte.weight"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)

    index, constant = torch.tensor(new), reference_model.transformer.wte.weight.detach().clone()
    rows = nn.Parameter(constant[index].clone())
    ref_others = [p for n, p in reference_model.named_parameters() if n != "transformer.wte.weight"]
    ref_optimizer = torch.optim.AdamW([rows, *ref_others], lr=0.01, weight_decay=0.1)

    def ref_loss(ids):
        weights = {"transformer.wte.weight": constant.index_copy(0, index, rows)}  # ties lm_head too
        return torch.func.functional_call(reference_model, weights, (ids,), {"labels": ids}).loss

    train(lambda ids: model(ids, labels=ids).loss, optimizer, steps=3)
    train(ref_loss, ref_optimizer, steps=3)
    weight = model.transformer.wte.weight
    assert torch.equal(weight[:36], before[:36])  # frozen in both uses: embedding and output head
    assert torch.equal(weight[36:], rows) and not torch.equal(weight[36:], before[36:])
    assert all(torch.equal(a, b) for a, b in zip(others, ref_others))
    assert list(model.state_dict()) == keys and model.lm_head.weight is weight
    thaw_rows(model, "transformer.wte.weight")


def test_rows_trained_before_the_freeze_keep_their_state_and_frozen_rows_drop_theirs():
    model, trainable = build(), [1, 7, 8]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=2)
    reference = Reference(model, trainable)
    ref_optimizer = torch.optim.Adam([reference.rows, *reference.head.parameters()], lr=0.01, weight_decay=0.1)
    ref_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # same step counts and moments ...
    for key in ("exp_avg", "exp_avg_sq"):  # ... with only the trainable rows of the embedding's
        ref_optimizer.state[reference.rows][key] = optimizer.state[model.emb.weight][key][trainable].clone()
    freeze_rows(model, Rows("emb.weight", trainable=trainable))
    before = model.emb.weight.detach().clone()
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=3)
    train(lambda ids: loss_of(reference.weight(), reference.head, ids), ref_optimizer, steps=3)
    assert torch.equal(model.emb.weight[trainable], reference.rows)
    assert torch.equal(model.emb.weight[[0, 2, 11]], before[[0, 2, 11]])
    assert optimizer.state[model.emb.weight]["exp_avg"].shape == (3, 16)  # frozen rows hold no state
    thaw_rows(model, "emb.weight")
    assert optimizer.state[model.emb.weight]["exp_avg"].shape == (12, 16)  # widened: zeros for rows that join
    assert torch.count_nonzero(optimizer.state[model.emb.weight]["exp_avg"][[0, 2, 11]]) == 0
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=1)
    assert not torch.equal(model.emb.weight[[0, 2, 11]], before[[0, 2, 11]])  # thawed rows train again


def test_every_row_frozen_keeps_the_parameter_out_of_the_step():
    model = build()
    freeze_rows(model, Rows("emb.weight", slice(None)))
    before = model.emb.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=2)
    assert torch.equal(model.emb.weight, before) and model.emb.weight not in optimizer.state
    assert torch.count_nonzero(model.emb.weight.grad) == 0 and model.head.weight in optimizer.state
    thaw_rows(model, "emb.weight")


def test_partial_thaw_and_added_rows_relayout_the_optimizer_state():
    model = build()
    freeze_rows(model, Rows("emb.weight", range(6)))
    freeze_rows(model, Rows("emb.weight", [6, 7]))  # freezing adds to the rows frozen before
    assert frozen_rows(model)["emb.weight"].frozen.tolist() == list(range(8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=2)
    assert optimizer.state[model.emb.weight]["momentum_buffer"].shape == (4, 16)
    kept = optimizer.state[model.emb.weight]["momentum_buffer"].clone()
    thaw_rows(model, Rows("emb.weight", slice(0, 2)))
    assert frozen_rows(model)["emb.weight"].trainable.tolist() == [0, 1, 8, 9, 10, 11]
    before = model.emb.weight.detach().clone()
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=1)
    assert optimizer.state[model.emb.weight]["momentum_buffer"].shape == (6, 16)
    assert torch.equal(model.emb.weight[2:8], before[2:8])
    assert not torch.equal(kept, optimizer.state[model.emb.weight]["momentum_buffer"][2:])
    thaw_rows(model, "emb.weight")
    assert not _rows_step._HANDLES  # the optimizer hooks leave with the last frozen row


@pytest.mark.parametrize(
    "cls, kwargs", [(torch.optim.SGD, dict(lr=0.1, weight_decay=0.1)), (torch.optim.LBFGS, dict(lr=0.5, max_iter=3))]
)
def test_closure_steps_and_lbfgs_see_only_trainable_rows(cls, kwargs):
    model, trainable = build(), [3, 4, 9]
    reference = Reference(model, trainable)
    freeze_rows(model, Rows("emb.weight", trainable=trainable))
    before = model.emb.weight.detach().clone()
    optimizer = cls(model.parameters(), **kwargs)
    ref_optimizer = cls([reference.rows, *reference.head.parameters()], **kwargs)

    def closure_for(opt, weight, head, ids):
        def closure():
            opt.zero_grad()
            value = loss_of(weight(), head, ids)
            value.backward()
            return value

        return closure

    for ids in batches(2):
        # The closure runs forward and backward on the full tensor; LBFGS calls it several times per step.
        optimizer.step(closure_for(optimizer, lambda: model.emb.weight, model.head, ids))
        ref_optimizer.step(closure_for(ref_optimizer, reference.weight, reference.head, ids))
    assert torch.equal(model.emb.weight[trainable], reference.rows)
    assert torch.equal(model.emb.weight[[0, 1, 2, 5]], before[[0, 1, 2, 5]])
    assert model.emb.weight.shape == (12, 16)
    thaw_rows(model, "emb.weight")


def test_rows_persist_through_state_and_a_checkpoint_on_a_fresh_model():
    straight, resumed = build(), build()
    kwargs = dict(lr=0.01, weight_decay=0.1)
    freeze_rows(straight, Rows("emb.weight", trainable=[2, 3, 10]))
    optimizer = torch.optim.AdamW(straight.parameters(), **kwargs)
    ids = batches(4)
    for batch in ids[:2]:
        optimizer.zero_grad()
        loss_of(straight.emb.weight, straight.head, batch).backward()
        optimizer.step()
    saved = json.loads(json.dumps(rows_state(straight)))
    assert saved == {"emb.weight": {"rows": 12, "frozen": [[0, 2], [4, 10], [11, 12]]}}
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    assert list(straight.state_dict()) == list(build().state_dict())  # no key added

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    load_rows_state(resumed, saved)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), **kwargs)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    for model, opt in [(straight, optimizer), (resumed, resumed_optimizer)]:
        for batch in ids[2:]:
            opt.zero_grad()
            loss_of(model.emb.weight, model.head, batch).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    assert rows_state(resumed) == saved
    load_rows_state(resumed, {})  # loading an empty state thaws every row
    assert rows_state(resumed) == {}
    thaw_rows(straight, "emb.weight")


def test_optimizer_state_for_other_rows_is_refused_and_leaves_the_model_intact():
    model = build()
    freeze_rows(model, Rows("emb.weight", trainable=[0, 1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train(lambda ids: loss_of(model.emb.weight, model.head, ids), optimizer, steps=1)
    saved = copy.deepcopy(optimizer.state_dict())  # as torch.save would: state_dict() shares the tensors
    load_rows_state(model, {"emb.weight": {"rows": 12, "frozen": [[0, 6]]}})
    fresh = torch.optim.Adam(model.parameters(), lr=0.01)
    fresh.load_state_dict(saved)
    loss_of(model.emb.weight, model.head, batches(1)[0]).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(frozen.FrozenError, match="other frozen rows.*load_rows_state"):
        fresh.step()
    assert all(torch.equal(a, p) and a.shape == p.shape for a, p in zip(before, model.parameters()))
    thaw_rows(model, "emb.weight")


def test_bad_targets_raise_before_anything_changes():
    model = build()
    freeze_rows(model, Rows("emb.weight", [1]))
    saved = rows_state(model)
    with pytest.raises(frozen.UnknownPathError, match=r"'emb.wieght'.*'emb.weight'"):
        freeze_rows(model, Rows("emb.wieght", [0]))
    with pytest.raises(frozen.FrozenError, match="row 12 is out of range.*12 rows"):
        freeze_rows(model, Rows("emb.weight", [0, 12]))
    with pytest.raises(frozen.FrozenError, match="freezes none"):
        freeze_rows(model, Rows("emb.weight", trainable=range(12)))
    with pytest.raises(frozen.FrozenError, match=r"shape \(12,\)"):
        freeze_rows(model, Rows("emb.weight", torch.ones(3, dtype=torch.bool)))
    with pytest.raises(TypeError, match="exactly one of rows= .* trainable="):
        Rows("emb.weight", [0], trainable=[1])
    with pytest.raises(TypeError, match="integer row indices"):
        freeze_rows(model, Rows("emb.weight", [0.5]))
    with pytest.raises(TypeError, match="frozen.Rows target"):
        freeze_rows(model, "emb.weight")  # type: ignore[arg-type]
    with pytest.raises(frozen.FrozenError, match="saved for 7 rows.*12 rows"):
        load_rows_state(model, {"emb.weight": {"rows": 7, "frozen": [[0, 1]]}})
    sparse = nn.ModuleDict(dict(emb=nn.Embedding(4, 2, sparse=True)))
    with pytest.raises(frozen.FrozenError, match=r"sparse gradients.*sparse=False"):
        freeze_rows(sparse, Rows("emb.weight", [0]))
    assert rows_state(model) == saved and rows_state(sparse) == {}
    thaw_rows(model, "emb.weight")


def _copies(model: nn.Module) -> dict[str, nn.Module]:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return {"deepcopy": copy.deepcopy(model), "torch.save": torch.load(buffer, weights_only=False)}


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copy_of_the_model_keeps_its_frozen_rows(how: str) -> None:
    # deepcopy and pickle rebuild parameters without the identity record and the gradient hook:
    # before the carriers, an EMA copy or a reloaded checkpoint silently trained every row.
    model = frozen.freeze(TiedVocabulary(), Rows("emb.weight", trainable=[9, 10, 11]))
    copied = _copies(model)[how]
    assert frozen_rows(copied)["emb.weight"].trainable.tolist() == [9, 10, 11]  # reported before any forward
    before = copied.emb.weight.detach().clone()
    optimizer = torch.optim.AdamW(frozen.trainable(copied), lr=0.1, weight_decay=0.1)
    for ids in batches(3):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(copied(ids).flatten(0, 1), ids.flatten()).backward()
        assert not copied.emb.weight.grad[:9].any()  # through both tied uses
        optimizer.step()
    assert torch.equal(copied.emb.weight[:9], before[:9])
    assert not torch.equal(copied.emb.weight[9:], before[9:])
    assert torch.equal(model.emb.weight, before)  # the original was not touched
    for each in (model, copied):
        frozen.thaw(each, "emb.weight")


def test_thawing_rows_removes_their_carriers_from_the_model_and_its_later_copies() -> None:
    model = frozen.freeze(TiedVocabulary(), Rows("emb.weight", [0, 1]))
    carriers = [h for m in (model.emb, model.out) for h in m._forward_pre_hooks.values()]
    assert len(carriers) == 2 and all(h is _rows_record.watch_slots for h in carriers)
    frozen.thaw(model, "emb.weight")
    assert not model.emb._forward_pre_hooks and not model.out._forward_pre_hooks
    assert frozen_rows(copy.deepcopy(model)) == {}


def test_a_carrier_refuses_a_replaced_parameter_with_other_rows() -> None:
    model = frozen.freeze(TiedVocabulary(), Rows("emb.weight", [0, 1]))
    copied = copy.deepcopy(model)
    copied.emb.weight = nn.Parameter(torch.randn(20, 8))
    with pytest.raises(frozen.FrozenError, match=r"'emb.weight'.*shape \(20, 8\).*12 rows were frozen"):
        copied.emb(torch.tensor([1]))
    frozen.thaw(model, "emb.weight")


def test_compiled_models_with_frozen_rows_trace_the_carrier_away_and_a_compiled_copy_keeps_its_rows() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = frozen.freeze(TiedVocabulary(), Rows("emb.weight", trainable=[9, 10, 11]))
    copied = copy.deepcopy(model)  # compiled before any eager forward: the hook is traced away there
    for each in (model, copied):
        before = each.emb.weight.detach().clone()
        optimizer = torch.optim.AdamW(frozen.trainable(each), lr=0.1)  # restores the copy's rows
        compiled = torch.compile(each, backend="aot_eager")  # dynamo and AOTAutograd trace the hook
        for ids in batches(3):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(compiled(ids).flatten(0, 1), ids.flatten()).backward()
            optimizer.step()
        assert torch.equal(each.emb.weight[:9], before[:9]) and not torch.equal(each.emb.weight[9:], before[9:])
        frozen.thaw(each, "emb.weight")
    assert not torch._dynamo.utils.counters["graph_break"]  # the carrier costs a compiled model nothing


def test_a_functional_call_leaves_the_carriers_and_records_alone() -> None:
    # torch.func's functional_call puts plain tensors in the parameter slots for one call: the carrier must
    # not freeze rows on them (it crashed on vmap's storage-less tensors) nor record them.
    from torch.func import functional_call, grad, vmap

    model = frozen.freeze(TiedVocabulary(), Rows("emb.weight", [0, 1]))
    params = {k: v.detach() for k, v in model.named_parameters()}
    ids = torch.tensor([[0, 3], [1, 2]])

    def loss(p: dict, sample: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (sample,)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, ids)
    assert per_sample["emb.weight"].shape == (2, 12, 8)
    assert list(_rows_step._INDEX.values())[0].path == "emb.weight" and len(_rows_step._INDEX) == 1
    assert model.emb._parameters["weight"] is model.out.weight  # the model's own slots are back
    frozen.thaw(model, "emb.weight")
