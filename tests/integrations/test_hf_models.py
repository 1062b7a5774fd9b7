"""Post-construction freezing on real Hugging Face models built from small configs (no downloads)."""

import copy

import pytest
import torch
from snapshots import assert_same, snapshot
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ResNetConfig,
    ResNetModel,
)

import frozen


def bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2))


def test_bert_embeddings_and_first_half_frozen_by_pattern():
    model = bert()
    frozen.freeze(model, "bert.embeddings", "bert.encoder.layer.0-1")
    names = [n for n, _ in frozen.named_trainable(model)]
    assert not any(n.startswith(("bert.embeddings", "bert.encoder.layer.0.", "bert.encoder.layer.1.")) for n in names)
    assert "classifier.weight" in names and "bert.encoder.layer.2.output.dense.weight" in names
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    ids, labels = torch.randint(0, 40, (4, 8)), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    after = model.state_dict()
    frozen_keys = [
        k for k in before if k.startswith(("bert.embeddings", "bert.encoder.layer.0.", "bert.encoder.layer.1."))
    ]
    assert frozen_keys and all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(
        before["bert.encoder.layer.3.output.dense.weight"], after["bert.encoder.layer.3.output.dense.weight"]
    )
    assert model.bert.embeddings.word_embeddings.weight.grad is None
    assert not model.bert.encoder.layer[0].attention.self.dropout.training  # eval behaviour kept


def test_bert_train_norms_keeps_layernorms_trainable():
    model = frozen.freeze(bert(), "bert.encoder.layer.0-1", train_norms=True)
    names = [n for n, _ in frozen.named_trainable(model)]
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in names
    assert "bert.encoder.layer.0.output.dense.weight" not in names


def test_round_trip_is_exact_on_bert():
    model = bert().train()
    before = snapshot(model)
    frozen.freeze(model, "bert.embeddings", "bert.encoder.layer.*.attention", exclude="bert.encoder.layer.3")
    frozen.freeze(model, "bert.pooler", mode="inherit")
    model.train()
    frozen.thaw(model)
    assert_same(before, snapshot(model))


def test_gpt2_tied_embeddings_freeze_policy():
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.warns(frozen.TiedParameterWarning, match=r"'transformer.wte.weight' and 'lm_head.weight'"):
        frozen.freeze(model, "transformer.wte")
    wte = model.transformer.wte.weight
    assert not wte.requires_grad and all(p is not wte for p in frozen.trainable(model))
    ids = torch.randint(0, 40, (2, 8))
    grads = frozen.grad(model(input_ids=ids, labels=ids).loss, model)
    assert grads["transformer.wte.weight"] is None and grads["transformer.h.0.mlp.c_fc.weight"] is not None


def test_gpt2_tied_embeddings_train_policy_gradient_from_lm_head_only():
    model = gpt2().eval()
    reference = copy.deepcopy(model)
    frozen.freeze(model, "transformer.wte", tied="train")
    wte = model.transformer.wte.weight
    assert wte.requires_grad and any(p is wte for p in frozen.trainable(model))
    ids = torch.randint(0, 40, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    weight = reference.transformer.wte.weight
    # The embedding lookup sees a constant; only the LM head's use contributes.
    loss = torch.func.functional_call(
        reference,
        {"transformer.wte.weight": weight.detach()},
        args=(),
        kwargs={"input_ids": ids, "labels": ids},
        tie_weights=False,
    ).loss
    (expected,) = torch.autograd.grad(loss, weight)
    torch.testing.assert_close(wte.grad, expected)
    full = reference(input_ids=ids, labels=ids).loss
    assert not torch.allclose(torch.autograd.grad(full, weight)[0], expected)


def test_gpt2_tied_embeddings_error_policy_unchanged():
    model = gpt2()
    before = snapshot(model)
    with pytest.raises(frozen.TiedParameterError, match=r"'transformer.wte.weight' and 'lm_head.weight'"):
        frozen.freeze(model, "transformer.wte", tied="error")
    assert_same(before, snapshot(model))


def test_resnet_batchnorm_statistics_stay_then_update_after_thaw():
    torch.manual_seed(0)
    model = ResNetModel(
        ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    )
    frozen.freeze(model, "embedder")
    norm = model.embedder.embedder.normalization
    stats = {k: v.clone() for k, v in norm.state_dict().items()}
    opt = torch.optim.SGD(frozen.trainable(model), lr=0.1, momentum=0.9)

    def steps():
        model.train()
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(2, 3, 32, 32)).pooler_output.square().mean().backward()
            opt.step()

    steps()
    assert not norm.training and all(torch.equal(v, norm.state_dict()[k]) for k, v in stats.items())
    frozen.thaw(model)
    steps()
    assert norm.training and not torch.equal(stats["running_mean"], norm.running_mean)
