"""Freezing never switches gradient checkpointing off where backward passes through.

Hugging Face layers checkpoint only when ``gradient_checkpointing and training``. A frozen
layer with checkpointing on keeps its parent's training flag (its children still run in
eval: no Dropout, BatchNorm statistics kept), so a frozen middle layer is recomputed in
backward exactly as an unfrozen one is.
"""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertForSequenceClassification

import frozen


def bert(reentrant: bool) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    model = BertForSequenceClassification(config)
    # transformers 5 renamed gradient_checkpointing_enable (the old name warns); layers still read
    # their `gradient_checkpointing` flag together with `training`.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


def forward_calls_in_one_step(model: BertForSequenceClassification) -> int:
    layer = model.bert.encoder.layer[1]
    calls = []
    handle = layer.attention.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    ids = torch.randint(0, 50, (2, 6))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    handle.remove()
    return len(calls)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_a_frozen_middle_layer_is_recomputed_like_an_unfrozen_one(reentrant):
    unfrozen = forward_calls_in_one_step(bert(reentrant))
    model = frozen.freeze(bert(reentrant), "bert.encoder.layer.1-2")
    assert unfrozen == 2 and forward_calls_in_one_step(model) == unfrozen
    layer = model.bert.encoder.layer[1]
    assert layer.training and not layer.attention.training  # the layer checkpoints, its children run in eval
    assert all(p.grad is None for p in layer.parameters())
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None  # backward passed through


def test_frozen_batchnorm_under_torch_checkpoint_keeps_its_statistics_and_eval_behaviour():
    torch.manual_seed(0)
    middle = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.middle, self.head = nn.Linear(4, 4), middle, nn.Linear(4, 1)

        def forward(self, x):
            return self.head(checkpoint(self.middle, self.first(x), use_reentrant=False))

    net = frozen.freeze(Net(), "middle").train()
    mean, var = middle[1].running_mean.clone(), middle[1].running_var.clone()
    x = torch.randn(8, 4)
    out = net(x)
    out.sum().backward()
    assert torch.equal(middle[1].running_mean, mean) and torch.equal(middle[1].running_var, var)
    with torch.no_grad():
        expected = net.head(middle(net.first(x)))  # eval behaviour: dropout off, running statistics
    assert torch.allclose(out, expected) and net.first.weight.grad is not None
