"""Small real models built from transformers configs (no weights downloaded), shared by the tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(*, layers: int = 2, vocab: int = 50) -> BertForSequenceClassification:
    """A seeded two-label BERT classifier, hidden size 16, ``layers`` layers."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


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
