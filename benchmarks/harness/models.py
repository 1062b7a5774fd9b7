"""The models and data of the benchmark scenarios, small enough for 2 CPU cores.

Every builder seeds torch first, so every variant of a scenario starts from the same
weights and the same batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "as_if_pretrained",
    "seed_model",
    "TextClassifier",
    "text_classifier",
    "resnet_classifier",
    "Perceptual",
    "perceptual_model",
    "Siamese",
    "siamese_encoder",
    "ConvBNMiddle",
    "convbn_middle",
    "gpt2_lm",
    "mlp_classifier",
]


def seed_model() -> tuple[nn.Sequential, torch.Tensor]:
    """The seed discussion's model, unfrozen: ``Chain(Chain(Dense, Dense), Dense)``, x = rand(100, 100).

    The frozen part is ``"0"`` (the inner chain). Julia's ``rand(Float32, 100, 100)``
    is features x batch; PyTorch's layout is batch x features, the same 100 x 100.
    """
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU())
    return nn.Sequential(inner, nn.Linear(100, 100)), torch.rand(100, 100)


class TextClassifier(nn.Module):
    """A transformer encoder (``backbone``) and a linear ``head`` on the first token."""

    def __init__(self, backbone: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, 0])


def text_classifier(
    batch: int = 8, length: int = 64, hidden: int = 256, layers: int = 4
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A 4-layer BERT built from a config (nothing is downloaded) and a 2-class head.

    Dropout is 0 so that every variant does the same arithmetic in the backbone and
    the comparison measures gradients, not dropout masks.
    """
    from transformers import BertConfig, BertModel  # only this scenario needs transformers

    config = BertConfig(
        vocab_size=2000,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = TextClassifier(BertModel(config, add_pooling_layer=False), config.hidden_size, 2)
    ids = torch.randint(0, config.vocab_size, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    labels = torch.randint(0, 2, (batch,))
    return model, (ids, mask, labels)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, features: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def resnet_classifier(batch: int = 16, size: int = 32) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A small ResNet (conv, BatchNorm, residual blocks) backbone and a 10-class head, 32x32 RGB."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        _conv_bn(3, 16),
        _Residual(16),
        _conv_bn(16, 32, 2),
        _Residual(32),
        _conv_bn(32, 64, 2),
        _Residual(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = _Classifier(backbone, 64, 10)
    return model, (torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,)))


class Perceptual(nn.Module):
    """``features(generator(z))``: a trainable generator judged by a feature network."""

    def __init__(self, generator: nn.Module, features: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.features = features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.features(self.generator(z))


def perceptual_model(batch: int = 8, size: int = 32, widths: tuple[int, int, int] = (32, 64, 128)):
    """A small image generator and a VGG-style feature net; the target features are fixed.

    Gradients must cross the feature net to reach the generator: a frozen *middle*.
    ``size`` and ``widths`` shrink it for the smoke test.
    """
    torch.manual_seed(0)
    half = size // 2
    generator = nn.Sequential(
        nn.Linear(64, 16 * half * half),
        nn.Unflatten(1, (16, half, half)),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 3, 3, padding=1),
        nn.Tanh(),
    )
    a, b, c = widths
    features = nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(a, a, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(a, b, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(b, b, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(b, c, 3, padding=1),
        nn.ReLU(),
    )
    model = Perceptual(generator, features)
    z = torch.randn(batch, 64)
    with torch.no_grad():
        target = features(torch.rand(batch, 3, size, size) * 2 - 1)
    return model, (z, target)


class Siamese(nn.Module):
    """SimSiam-style: ``predictor(encoder(x1))`` regressed onto ``target(x2)``.

    ``target`` is the *same* encoder used another way: plainly (both branches train
    it), through ``Frozen`` (this branch does not), or through a hand-written
    function. It is kept out of the module tree when it is a plain function, so the
    encoder's parameters are listed once.
    """

    def __init__(self, encoder: nn.Module, target: nn.Module | None = None, target_fn=None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = nn.Linear(128, 128)
        if target is not None:
            self.target = target
        self.target_fn = target_fn

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        online = self.predictor(self.encoder(x1))
        target = self.target_fn(x2) if self.target_fn is not None else self.target(x2)
        return F.mse_loss(online, target)


def siamese_encoder(batch: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An MLP encoder (256 -> 512 -> 512 -> 128) and two views of one batch."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 128))
    x = torch.randn(batch, 256)
    return encoder, (x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x))


class ConvBNMiddle(nn.Module):
    """``head(middle(stem(x)))``: a trainable stem, a conv-BN-ReLU ``middle``, a trainable head.

    The middle is what gets frozen: gradients must cross it to reach the stem, so a frozen
    middle still runs a backward pass (input gradients only).
    """

    def __init__(self, channels: int, depth: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.middle = nn.Sequential(*[_conv_bn(channels, channels) for _ in range(depth)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.stem(x)))


def convbn_middle(batch: int = 8, size: int = 32, channels: int = 32, depth: int = 6):
    """A :class:`ConvBNMiddle` whose BatchNorms hold non-trivial running statistics, and a batch."""
    torch.manual_seed(0)
    model = ConvBNMiddle(channels, depth)
    as_if_pretrained(model.middle)
    return model, (torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,)))


def gpt2_lm(batch: int = 4, length: int = 64, hidden: int = 128, layers: int = 2):
    """A GPT-2 LM built from a config (``wte`` tied with ``lm_head``, dropout 0) and token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=2000,
        n_positions=length,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight, "GPT-2 config did not tie wte and lm_head"
    return model, (torch.randint(0, config.vocab_size, (batch, length)),)


def mlp_classifier(batch: int = 64, width: int = 256, depth: int = 4):
    """An MLP ``backbone`` (``depth`` x Linear-ReLU) and a linear head: small enough to compile on 2 cores."""
    torch.manual_seed(0)
    backbone = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])
    model = _Classifier(backbone, width, 10)
    return model, (torch.randn(batch, width), torch.randint(0, 10, (batch,)))


def as_if_pretrained(model: nn.Module) -> None:
    """Give every ``BatchNorm2d`` running statistics away from 0 and 1, as a pretrained network has.

    A fresh BatchNorm in eval mode is the identity, so folding it (lean) or caching behind it
    would be measured on a case no real model has.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None:
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
