"""frozen composes with PEFT: freeze with frozen, add LoRA with PEFT, train, thaw a block (docs/recipes/peft-lora.md)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_bert

import frozen

# peft 0.21 calls a transformers 5 API that is deprecated: not about frozen, keep it out of the error filter.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

BASE = "base_model.model."


def lora_model():
    model = frozen.freeze(tiny_bert(), "bert.embeddings", "bert.encoder.layer.0")
    config = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    peft_model = get_peft_model(model, config)
    # By hand: the head copy PEFT keeps trainable (modules_to_save) is switched off by the user.
    peft_model.get_submodule(BASE + "classifier.modules_to_save.default").requires_grad_(False)
    return peft_model


def train(model, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, 50, (4, 8), generator=g)
        loss = model(input_ids=ids, labels=torch.randint(0, 2, (4,), generator=g)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def lora_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if "lora_" in n}


def test_thaw_after_peft_leaves_the_base_frozen_and_the_adapters_training():
    model = lora_model()
    trainable_by_peft = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_by_peft == lora_names(model)
    frozen.thaw(model, BASE + "bert.encoder.layer.0")
    # PEFT wanted every base weight frozen: thawing what frozen froze must not switch them on.
    assert {n for n, _ in frozen.named_trainable(model)} == trainable_by_peft
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_by_peft
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train(model)
    after = dict(model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in base.items())  # base bit-identical, head copy included
    assert all(not torch.equal(v, after[n]) for n, v in lora.items())  # every adapter trained, layer 0's too


def test_frozen_state_does_not_leak_into_peft_adapters_created_inside_a_frozen_part():
    model = lora_model()
    query = BASE + "bert.encoder.layer.0.attention.self.query"
    assert model.get_submodule(query + ".lora_A.default").weight.requires_grad
    frozen.thaw(model, BASE + "bert.encoder.layer.0")
    frozen.freeze(model, BASE + "bert.encoder.layer.1")  # frozen's own freeze of a LoRA-carrying block
    assert not any("layer.1." in n for n, _ in frozen.named_trainable(model))
    frozen.thaw(model, BASE + "bert.encoder.layer.1")
    assert {n for n, _ in frozen.named_trainable(model)} == lora_names(model)


def test_report_tells_who_froze_each_part():
    model = lora_model()
    frozen.thaw(model, BASE + "bert.encoder.layer.0")
    rows = {row.path: row for row in frozen.report(model).rows}
    assert rows[BASE + "bert.embeddings"].frozen_by == "frozen"  # frozen.freeze, still frozen
    assert rows[BASE + "bert.encoder.layer.0.attention.self.query.base_layer"].frozen_by == "peft"
    assert rows[BASE + "bert.encoder.layer.1.attention.self.query.base_layer"].frozen_by == "peft"
    assert rows[BASE + "classifier.modules_to_save.default"].frozen_by == "hand"


def test_a_cached_frozen_prefix_below_the_lora_layers_trains_exactly_as_uncached():
    # LoRA only in layer 1 (layers_to_transform): the embeddings and layer 0 below it are a frozen prefix,
    # cached through PEFT's wrappers; shuffled epochs replay them and the adapters train as without the cache.
    ids = torch.randint(0, 50, (16, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))
    runs = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = frozen.freeze(tiny_bert(), "bert.embeddings", "bert.encoder.layer.0")
        config = LoraConfig(
            task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"], layers_to_transform=[1]
        )
        peft_model = get_peft_model(model, config)
        peft_model.get_submodule(BASE + "classifier.modules_to_save.default").requires_grad_(False)
        handle = frozen.cache(peft_model, BASE + "bert.embeddings", BASE + "bert.encoder.layer.0") if cached else None
        optimizer = torch.optim.AdamW(frozen.trainable(peft_model), lr=1e-2)
        losses = []
        for epoch in range(3):
            for rows in torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).split(4):
                loss = peft_model(input_ids=ids[rows], labels=labels[rows]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        adapters = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
        runs.append((losses, adapters, handle.stats() if handle else None))
    (plain_losses, plain_adapters, _), (losses, adapters, stats) = runs
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1.3e-6, atol=1e-5)
    assert adapters.keys() == plain_adapters.keys() and all("layer.1." in n for n in adapters)
    for name, value in plain_adapters.items():
        torch.testing.assert_close(adapters[name], value, rtol=1.3e-6, atol=1e-5)
    assert stats[BASE + "bert.encoder.layer.0"]["hits"] == 32 and stats[BASE + "bert.encoder.layer.0"]["forwards"] == 4
