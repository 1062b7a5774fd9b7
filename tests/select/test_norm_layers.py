"""One rule for what a normalisation layer is, shared by ``train_norms=True`` and
``frozen.optim.param_groups(no_decay_bias_and_norm=True)``.

A norm is an instance of torch's norm classes, or of a class named ``*Norm`` (optionally
``*Norm2d``) holding no parameter below it: Hugging Face's ``LlamaRMSNorm`` and
``T5LayerNorm`` are plain ``nn.Module`` subclasses. ``train_norms=True`` keeps exactly those
trainable, and ``param_groups`` spares exactly those (and 1-D parameters) from weight decay.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import frozen


class ChannelNorm(nn.Module):
    """A model's own norm with a (1, C, 1, 1) scale: its name says norm, its weight is not 1-D."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.square().mean(1, keepdim=True).add(1e-6).sqrt() * self.weight


class PreNorm(nn.Module):
    """A wrapper named like a norm (vit-pytorch's): a LayerNorm, then ``fn`` -- not itself a norm."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class GroupNormConvLayer(nn.Module):
    """A convolution whose name contains "Norm" (as Wav2Vec2's): not a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.ones(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale.mean()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.GroupNorm(2, 4),
            nn.InstanceNorm2d(4, affine=True),
            ChannelNorm(4),
            GroupNormConvLayer(),
            nn.LocalResponseNorm(2),
            nn.Flatten(),
        )
        self.block = PreNorm(64, nn.Linear(64, 8))
        self.head = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.convs(x)))


NET_NORMS = {
    "convs.1.weight",
    "convs.1.bias",
    "convs.2.weight",
    "convs.2.bias",
    "convs.3.weight",
    "convs.3.bias",
    "convs.4.weight",  # ChannelNorm: a model's own norm
    "block.norm.weight",  # the LayerNorm inside PreNorm; PreNorm's fn stays frozen
    "block.norm.bias",
    "head.0.weight",
    "head.0.bias",
    "head.1.weight",
}


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return LlamaForCausalLM(config)


def tiny_t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))


def _norm_params(model: nn.Module, class_suffix: str) -> set[str]:
    return {
        f"{path}.{name}"
        for path, module in model.named_modules()
        if type(module).__name__.endswith(class_suffix)
        for name, _ in module.named_parameters(recurse=False)
    }


def _no_decay(model: nn.Module) -> tuple[set[str], set[str]]:
    """Paths param_groups spares from weight decay, and those it decays (trainable or parked)."""
    paths = {id(p): n for n, p in model.named_parameters()}
    spared, decayed = set(), set()
    for group in frozen.optim.param_groups(model, weight_decay=0.1, no_decay_bias_and_norm=True):
        names = {paths[id(p)] for p in group["params"]} | set(group["frozen_params"])
        (spared if group["weight_decay"] == 0.0 else decayed).update(names)
    return spared, decayed


@pytest.mark.parametrize(
    "build, expected",
    [
        (Net, lambda m: NET_NORMS),
        (tiny_llama, lambda m: _norm_params(m, "RMSNorm")),
        (tiny_t5, lambda m: _norm_params(m, "T5LayerNorm")),
    ],
    ids=["torch-norms-and-own-classes", "llama-rmsnorm", "t5-layernorm"],
)
def test_train_norms_and_no_decay_agree(build, expected):
    model = build()
    norms = expected(model)
    assert norms  # the model has norms to agree on
    spared, decayed = _no_decay(copy.deepcopy(model))
    frozen.freeze(model, train_norms=True)  # the whole model, its norms kept trainable
    kept = {name for name, _ in frozen.named_trainable(model)}
    assert kept == norms
    assert kept <= spared  # every norm parameter is spared from weight decay ...
    shapes = dict(model.named_parameters())
    assert {n for n in spared if shapes[n].ndim > 1} <= kept  # ... and only norms beyond 1-D parameters


def test_a_name_alone_does_not_make_a_norm():
    # "Norm" inside a name (GroupNormConvLayer), or a *Norm wrapping layers with weights (PreNorm):
    # frozen by train_norms, and their 2-D weights decayed by param_groups.
    model = Net()
    spared, decayed = _no_decay(copy.deepcopy(model))
    frozen.freeze(model, train_norms=True)
    wrapped = {"convs.5.scale", "convs.5.conv.weight", "block.fn.weight"}
    assert wrapped <= decayed and not wrapped & spared
    assert not wrapped & {name for name, _ in frozen.named_trainable(model)}
    assert "convs.4.weight" in spared  # ChannelNorm's 4-D scale: a norm, spared


def test_train_norms_trains_the_norms_and_nothing_else_in_a_real_step():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen.freeze(model, "convs", "block", train_norms=True)
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=0.1), lr=0.1)
    model.train()
    model(torch.randn(4, 3, 4, 4)).square().mean().backward()
    optimizer.step()
    after = model.state_dict()
    for name, _ in model.named_parameters():
        moved = not torch.equal(before[name], after[name])
        assert moved == (name in NET_NORMS or name.startswith("head.2")), name
    assert model.block.fn.weight.grad is None and model.convs[5].scale.grad is None


def test_train_norms_keeps_llama_rmsnorm_trainable_through_a_real_step():
    model = tiny_llama()
    norms = _norm_params(model, "RMSNorm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen.freeze(model, "model", train_norms=True)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.1)
    ids = torch.randint(0, 32, (2, 8))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert all(not torch.equal(before[n], after[n]) for n in norms)
    assert all(
        torch.equal(before[n], after[n]) for n, _ in model.model.named_parameters(prefix="model") if n not in norms
    )
