"""Small real models built from transformers configs (no weights downloaded), and small torch ones, shared by the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import BertConfig, BertForSequenceClassification


def tiny_bert_config(*, layers: int = 2, vocab: int = 50, **extra: object) -> BertConfig:
    """A BERT config of hidden size 16, 2 heads, 16 positions and ``layers`` layers; ``extra`` adds fields."""
    from transformers import BertConfig  # not for the torch-only models below

    return BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        **extra,
    )


def tiny_bert(*, layers: int = 2, vocab: int = 50) -> BertForSequenceClassification:
    """A seeded two-label BERT classifier, hidden size 16, ``layers`` layers."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(layers=layers, vocab=vocab, num_labels=2))


class RandomTokens(torch.utils.data.Dataset):
    """``n`` seeded samples of 8 token ids below 50 with a binary label, as the Trainer takes them."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class SuperResolution(nn.Module):
    """A trained upsampler judged by a frozen VGG-style feature net (``features``) on its output and on the target."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.generator = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, padding=1))
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def loss(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return (self.features(self.generator(low)) - self.features(high)).square().mean()

    forward = loss  # for DDP and torch.func.functional_call


def two_layers() -> nn.Sequential:
    """A seeded ``Linear(4, 4) -> Linear(4, 2)``: the smallest model with a part to freeze and a part to train."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))


class TiedVocabulary(nn.Module):
    """An embedding and an output head sharing one weight (12 x 8), as GPT-2's wte and lm_head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(12, 8)
        self.out = nn.Linear(8, 12, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids)))
