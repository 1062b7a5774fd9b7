"""PEFT switches adapter flags inside parts frozen with frozen: frozen's answers still match the gradients.

``set_adapter("two")`` and ``enable_adapter_layers()`` turn on every LoRA flag of the active adapter,
in frozen blocks too; those adapters then get gradients. For every parameter, "gets a gradient in a
real backward" must equal "``frozen.trainable`` lists it", before and after ``frozen.settle``.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_bert

import frozen

# peft 0.21 calls a transformers 5 API that is deprecated: not about frozen, keep it out of the error filter.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

BASE = "base_model.model."
QUERY0 = BASE + "bert.encoder.layer.0.attention.self.query"


def config() -> LoraConfig:
    return LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])


def with_gradients(model) -> set[int]:
    """``id()`` of the parameters that get a gradient from one real forward and backward pass."""
    model.train()
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (4, 8), generator=g)
    model(input_ids=ids, labels=torch.randint(0, 2, (4,), generator=g)).loss.backward()
    return {id(p) for p in model.parameters() if p.grad is not None}


def assert_answers_match_gradients(model) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    listed = {id(p) for p in frozen.trainable(model)}
    got = with_gradients(model)
    assert got == listed, (sorted(names[k] for k in got - listed), sorted(names[k] for k in listed - got))
    trains = {path for path, _ in frozen.named_trainable(model)}
    for path, _ in model.named_parameters():
        assert frozen.is_frozen(model, path) == (path not in trains), path
    report = frozen.report(model)
    assert report.trainable_params == sum(p.numel() for p in frozen.trainable(model))


def test_set_adapter_inside_a_block_frozen_after_get_peft_model():
    model = get_peft_model(tiny_bert(), config(), adapter_name="one")
    model.add_adapter("two", config())
    frozen.freeze(model, BASE + "bert.embeddings", BASE + "bert.encoder.layer.0")  # its adapters too
    model.set_adapter("two")  # PEFT switches lora_*.two on everywhere, layer 0 included
    with pytest.warns(
        frozen.ForeignFlagWarning, match=r"likely by PEFT.*" + QUERY0.replace(".", r"\.") + r"\.lora_A\.two"
    ):
        frozen.trainable(model)
    assert_answers_match_gradients(model)
    assert any(p.grad is not None for p in model.get_submodule(QUERY0 + ".lora_A.two").parameters())
    rows = {row.path: row for row in frozen.report(model).rows}
    assert rows[QUERY0 + ".lora_A.two"].state == "trainable (flag flipped by PEFT)"
    assert rows[QUERY0 + ".lora_A.two"].flipped_by == "peft"
    assert frozen.explain(model, QUERY0 + ".lora_A.two.weight").causes == ("flipped",)

    frozen.settle(model)  # re-freeze: layer 0's adapters are frozen again (told already: quiet)
    assert_answers_match_gradients(model)
    assert all(p.grad is None for p in model.get_submodule(BASE + "bert.encoder.layer.0").parameters())
    assert rows[QUERY0].state == "mixed (flag flipped by PEFT)"  # the earlier report: true then
    assert {row.path: row for row in frozen.report(model).rows}[QUERY0].state == "frozen"

    frozen.thaw(
        model, BASE + "bert.encoder.layer.0"
    )  # the other fix: now adapter two trains there, adapter one stays off
    assert_answers_match_gradients(model)
    assert model.get_submodule(QUERY0 + ".lora_A.two").weight.requires_grad
    assert not model.get_submodule(QUERY0 + ".lora_A.one").weight.requires_grad
    assert not model.get_submodule(QUERY0 + ".base_layer").weight.requires_grad  # PEFT's base stays frozen


def test_peft_recommended_flow_on_a_model_frozen_first_then_enable_adapter_layers():
    model = frozen.freeze(tiny_bert(), "bert.embeddings", "bert.encoder.layer.0")
    model = get_peft_model(model, config(), adapter_name="one")
    model.add_adapter("two", config())
    model.set_adapter("two")  # adapters made after the freeze are not frozen: nothing to tell
    assert_answers_match_gradients(model)
    frozen.freeze(model, BASE + "bert.encoder.layer.1")  # frozen's freeze of a block with adapters in it
    assert_answers_match_gradients(model)
    model.base_model.disable_adapter_layers()
    model.base_model.enable_adapter_layers()  # switches adapter two on again, in layer 1 too
    with pytest.warns(frozen.ForeignFlagWarning, match=r"frozen\.report:.*likely by PEFT.*layer\.1\..*lora_A\.two"):
        frozen.report(model)
    assert_answers_match_gradients(model)
    layer1 = model.get_submodule(BASE + "bert.encoder.layer.1")
    assert any(p.grad is not None for n, p in layer1.named_parameters() if "lora_A.two" in n)
