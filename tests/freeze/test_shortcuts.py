"""The shortcuts people reach for: everything but the head (frozen.head), fastai's freeze_to(-n) over frozen.blocks.

Each model is a real one people fine-tune (tiny Hugging Face models built from configs, a
timm-like ResNet and ViT with get_classifier(), a plain nn.Sequential); each shortcut is
checked with real optimizer steps: frozen tensors bit-identical, trainable ones changed.
"""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import tiny_bert
from torch import nn

import frozen

# -- models ------------------------------------------------------------------------------


def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=3, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def gpt2_classifier():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    return GPT2ForSequenceClassification(config)


def bert_tokens():
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return BertForTokenClassification(config)


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4
    )
    config.num_labels = 3
    return ViTForImageClassification(config)


class Basic(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class TimmResNet(nn.Module):
    """timm's ResNet layout: a conv stem, stages layer1..layer3 of numbered blocks, get_classifier() -> fc."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        # Each stage holds a run of blocks too (layer1.0, layer1.1): the stages hold more.
        self.layer1 = nn.Sequential(Basic(4), Basic(4), Basic(4))
        self.layer2 = nn.Sequential(Basic(4), Basic(4))
        self.layer3 = nn.Sequential(Basic(4), Basic(4))
        self.global_pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.global_pool(x).flatten(1))


class ClassifierHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.norm(x))


class TimmViT(nn.Module):
    """timm's ViT layout: cls_token held by the model itself, blocks, a nested head (get_classifier() -> head.fc)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.patch_embed = nn.Linear(6, 8)
        self.blocks = nn.Sequential(
            *(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True) for _ in range(3))
        )
        self.norm = nn.LayerNorm(8)
        self.head = ClassifierHead()

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def sequential():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def loss_of(model) -> torch.Tensor:
    """One real forward of ``model`` on fresh inputs, reduced to a loss."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (4, 8), generator=g)
    if isinstance(model, TimmResNet):
        return model(torch.randn(4, 3, 8, 8, generator=g)).square().mean()
    if isinstance(model, TimmViT):
        return model(torch.randn(4, 5, 6, generator=g)).square().mean()
    if isinstance(model, nn.Sequential):
        return model(torch.randn(4, 6, generator=g)).square().mean()
    if type(model).__name__ == "ViTForImageClassification":
        return model(pixel_values=torch.randn(4, 3, 8, 8, generator=g), labels=torch.tensor([0, 1, 2, 0])).loss
    if type(model).__name__ == "GPT2LMHeadModel":
        return model(input_ids=ids, labels=ids).loss
    if type(model).__name__ == "BertForTokenClassification":
        return model(input_ids=ids, labels=torch.randint(0, 2, (4, 8), generator=g)).loss
    return model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss


def train(model, steps: int = 2) -> None:
    if not frozen.trainable(model):
        return  # everything frozen: nothing for an optimizer to hold
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()


def check_trained(model, trained: set[str]) -> None:
    """Train ``model``; exactly the parameters in ``trained`` change, every other is bit-identical."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert {name for name, _ in frozen.named_trainable(model)} == trained
    train(model)
    after = dict(model.named_parameters())
    for name, value in before.items():
        if name in trained:
            assert not torch.equal(value, after[name]), f"{name} should have trained"
        else:
            assert torch.equal(value, after[name]), f"{name} should be bit-identical"
            assert after[name].grad is None, f"{name} should have no gradient"


def params_under(model, *paths: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in paths)}


MODELS = {
    "bert-sequence-classification": (tiny_bert, "classifier"),
    "bert-token-classification": (bert_tokens, "classifier"),
    "gpt2-sequence-classification": (gpt2_classifier, "score"),
    "gpt2-lm-head": (gpt2_lm, "lm_head"),
    "vit-image-classification": (vit, "classifier"),
    "timm-resnet": (TimmResNet, "fc"),
    "timm-vit-nested-head": (TimmViT, "head.fc"),
    "sequential": (sequential, "4"),
}


# -- frozen.head ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_head_finds_the_head(name):
    build, expected = MODELS[name]
    assert frozen.head(build()) == expected


def test_head_of_a_sequential_skips_trailing_layers_without_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2), nn.Softmax(dim=-1))
    assert frozen.head(model) == "1"


def test_head_is_found_through_a_frozen_wrapper():
    model = TimmResNet()
    model.fc = frozen.Frozen(model.fc)
    assert frozen.head(model) == "fc"


def test_head_of_a_model_without_one_names_what_was_looked_for():
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(frozen.FrozenError, match="get_classifier.*'classifier'.*get_output_embeddings.*'pooler'"):
        frozen.head(model)


@pytest.mark.parametrize("name", [n for n in MODELS if n != "gpt2-lm-head"])
def test_everything_except_the_head_trains_only_the_head(name):
    build, _ = MODELS[name]
    model = build()
    frozen.freeze(model, "", exclude=frozen.head(model))
    check_trained(model, params_under(model, frozen.head(model)))


def test_everything_except_a_tied_lm_head_needs_a_tied_policy():
    model = gpt2_lm()
    # lm_head's weight is the token embedding: by default it freezes at both uses, and says so.
    with pytest.warns(frozen.TiedParameterWarning, match="'transformer.wte.weight' and 'lm_head.weight'"):
        frozen.freeze(model, "", exclude=frozen.head(model))
    assert frozen.named_trainable(model) == []
    frozen.thaw(model)
    # tied="train": the head trains the shared matrix; the embedding lookup sees it as a constant.
    frozen.freeze(model, "", exclude=frozen.head(model), tied="train")
    check_trained(model, {"transformer.wte.weight"})


# -- frozen.blocks -------------------------------------------------------------------------


def test_blocks_of_hugging_face_models():
    assert frozen.blocks(tiny_bert()) == [
        ("bert.embeddings",),
        ("bert.encoder.layer.0",),
        ("bert.encoder.layer.1",),
        ("bert.pooler", "dropout", "classifier"),
    ]
    assert frozen.blocks(gpt2_lm()) == [
        ("transformer.wte", "transformer.wpe", "transformer.drop"),
        ("transformer.h.0",),
        ("transformer.h.1",),
        ("transformer.h.2",),
        ("transformer.ln_f", "lm_head"),
    ]
    model = vit()
    layers = [p for p, _ in model.named_modules() if re.fullmatch(r"vit\.(encoder\.layer|layers)\.\d+", p)]
    assert len(layers) == 3
    assert frozen.blocks(model) == [("vit.embeddings",), *((p,) for p in layers), ("vit.layernorm", "classifier")]


def test_blocks_of_a_resnet_are_its_stages_not_the_blocks_inside_the_largest_stage():
    assert frozen.blocks(TimmResNet()) == [
        ("conv1", "bn1", "act1"),
        ("layer1",),
        ("layer2",),
        ("layer3",),
        ("global_pool", "fc"),
    ]


def test_blocks_put_the_models_own_parameters_in_the_stem():
    assert frozen.blocks(TimmViT()) == [
        ("cls_token", "patch_embed"),
        ("blocks.0",),
        ("blocks.1",),
        ("blocks.2",),
        ("norm", "head"),
    ]


def test_blocks_of_a_sequential_are_its_children():
    assert frozen.blocks(sequential()) == [("0",), ("1",), ("2",), ("3",), ("4",)]


def test_a_head_defined_before_the_blocks_belongs_on_top():
    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(4, 2)
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    assert frozen.blocks(HeadFirst()) == [("embed",), ("layers.0",), ("layers.1",), ("classifier",)]


def test_blocks_cover_every_parameter_once():
    for build, _ in MODELS.values():
        model = build()
        covered = [params_under(model, *group) for group in frozen.blocks(model)]
        assert set().union(*covered) == {n for n, _ in model.named_parameters()}
        assert sum(len(c) for c in covered) == len(dict(model.named_parameters()))


def test_blocks_of_a_model_without_repeated_blocks_raise():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.decoder = nn.Linear(4, 2), nn.Linear(2, 4)

    with pytest.raises(frozen.FrozenError, match=r"frozen.blocks\(model\): found no repeated blocks.*ModuleList"):
        frozen.blocks(Plain())


# -- frozen.freeze_to ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, -1, -2, 0, 4], ids=lambda n: f"n={n}")
def test_freeze_to_on_bert_freezes_the_first_blocks_and_trains_the_rest(n):
    model = tiny_bert()
    groups = frozen.blocks(model)
    frozen.freeze_to(model, n)
    trained = params_under(model, *(p for g in groups[n:] for p in g))
    check_trained(model, trained)
    for group in groups[:n]:
        assert all(frozen.is_frozen(model, path) for path in group)


@pytest.mark.parametrize(
    "name",
    ["gpt2-sequence-classification", "vit-image-classification", "timm-resnet", "timm-vit-nested-head", "sequential"],
)
def test_freeze_to_minus_two_leaves_the_last_two_blocks_training(name):
    build, _ = MODELS[name]
    model = build()
    last_two = [p for g in frozen.blocks(model)[-2:] for p in g]
    frozen.freeze_to(model, -2)
    check_trained(model, params_under(model, *last_two))


def test_freeze_to_keeps_the_batchnorm_statistics_of_frozen_stages():
    model = TimmResNet()
    frozen.freeze_to(model, 2)  # stem and layer1
    stats = {n: b.clone() for n, b in model.named_buffers() if n.startswith(("bn1", "layer1"))}
    trained_stats = {n: b.clone() for n, b in model.named_buffers() if n.startswith("layer3") and "running_mean" in n}
    train(model)
    assert all(torch.equal(v, model.get_buffer(n)) for n, v in stats.items())
    assert all(not torch.equal(v, model.get_buffer(n)) for n, v in trained_stats.items())


def test_freeze_to_on_a_tied_lm_head_follows_the_tied_policy():
    model = gpt2_lm()
    with pytest.warns(frozen.TiedParameterWarning, match="'transformer.wte.weight' and 'lm_head.weight'"):
        frozen.freeze_to(model, -1)
    check_trained(model, {"transformer.ln_f.weight", "transformer.ln_f.bias"})
    fresh = gpt2_lm()
    frozen.freeze_to(fresh, -1, tied="train")
    check_trained(fresh, {"transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"})


def test_freeze_to_gives_the_same_state_whatever_was_frozen_before():
    straight = frozen.freeze_to(tiny_bert(), 2)
    for before in (lambda m: frozen.freeze(m, ""), lambda m: frozen.freeze_to(m, 4), lambda m: frozen.freeze_to(m, 1)):
        model = tiny_bert()
        before(model)
        frozen.freeze_to(model, 2)
        assert frozen.state(model) == frozen.state(straight)
        assert [n for n, _ in frozen.named_trainable(model)] == [n for n, _ in frozen.named_trainable(straight)]


@pytest.mark.parametrize("n", [1, 2, -1], ids=lambda n: f"n={n}")
def test_freeze_to_leaves_no_frozen_module_above_the_blocks(n):
    # timm's ViT holds cls_token itself: the stem freezes that parameter alone, and the
    # model, frozen whole before, is thawed (it would otherwise stay in eval, frozen whole).
    straight = frozen.freeze_to(TimmViT(), n)
    model = frozen.freeze(TimmViT(), "")
    frozen.freeze_to(model, n)
    assert frozen.state(model) == frozen.state(straight)
    assert "" not in [entry["path"] for entry in frozen.state(model)["frozen"]] and model.train().training
    assert frozen.is_frozen(model, "cls_token")
    check_trained(model, params_under(model, *(p for g in frozen.blocks(model)[n:] for p in g)))


def test_freeze_to_zero_thaws_what_freeze_froze():
    model = tiny_bert()
    plain = {n: p.requires_grad for n, p in model.named_parameters()}
    frozen.freeze(model, "", exclude="classifier")
    frozen.freeze_to(model, 0)
    assert frozen.state(model)["frozen"] == [] and {n: p.requires_grad for n, p in model.named_parameters()} == plain


def snapshot(model) -> tuple:
    return (
        frozen.state(model),
        [(n, p.requires_grad, p.dtype) for n, p in model.named_parameters()],
        [m.training for m in model.modules()],
    )


@pytest.mark.parametrize("n", [5, -5, 100], ids=lambda n: f"n={n}")
def test_freeze_to_out_of_range_raises_and_changes_nothing(n):
    model = frozen.freeze_to(tiny_bert(), 1)
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=rf"n={n}\): the model has 4 blocks.*-4 <= n <= 4"):
        frozen.freeze_to(model, n)
    assert snapshot(model) == before


@pytest.mark.parametrize("n", [1.0, True, "2", None], ids=repr)
def test_freeze_to_refuses_an_n_that_is_not_an_int(n):
    with pytest.raises(TypeError, match="expected n to be an int"):
        frozen.freeze_to(tiny_bert(), n)


def test_freeze_to_refused_by_freeze_changes_nothing():
    model = frozen.freeze(tiny_bert(), "bert.embeddings", mode="inherit")
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match="already frozen in place with mode='inherit'"):
        frozen.freeze_to(model, 3)
    assert snapshot(model) == before


def test_freeze_to_refused_by_thaw_changes_nothing():
    # A part stored in low precision thaws whole; freeze_to(1) would thaw all of 'bert' but its embeddings.
    model = frozen.freeze(tiny_bert(), "bert", dtype=torch.bfloat16)
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match="'bert' is frozen in torch.bfloat16"):
        frozen.freeze_to(model, 1)
    assert snapshot(model) == before


def test_freeze_to_refused_after_its_thaw_puts_the_model_back():
    # Block 0 shares its weight with block 2, frozen now: freezing block 0 is refused with
    # tied="error" only once freeze_to has thawed block 2. The thaw is undone.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 4), nn.Linear(4, 4), nn.Linear(4, 6, bias=False))
    model[2].weight = model[0].weight
    with pytest.warns(frozen.TiedParameterWarning):
        frozen.freeze(model, "2", "1")
    before = snapshot(model)
    with pytest.raises(frozen.TiedParameterError, match="'0.weight' and '2.weight'"):
        frozen.freeze_to(model, 1, tied="error")
    assert snapshot(model) == before


def test_freeze_to_refuses_a_model_without_blocks():
    with pytest.raises(frozen.FrozenError, match=r"frozen.freeze_to\(model, 1\): found no repeated blocks"):
        frozen.freeze_to(nn.ModuleDict({"a": nn.Linear(2, 2)}), 1)
