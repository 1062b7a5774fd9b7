"""A small Hugging Face Trainer over random tokens, for the tests that run the real Trainer."""

from __future__ import annotations

from tiny_models import RandomTokens
from transformers import Trainer, TrainingArguments

__all__ = ["make_trainer"]


def make_trainer(model, tmp_path, callbacks=(), epochs: float = 1, **options) -> Trainer:
    """A CPU Trainer (batch 4, lr 1e-2, no logging); ``options`` override ``TrainingArguments`` (``save_strategy="no"``)."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        **{"save_strategy": "no", **options},
    )
    return Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=list(callbacks))
