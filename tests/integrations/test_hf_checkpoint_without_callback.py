"""A Hugging Face checkpoint written with ``FreezeCallback``, resumed by a Trainer without it.

The callback's ``optimizer.pt`` carries the run's real optimizer state inside the Trainer's
initial layout (so that a fresh Trainer can load it before any callback runs). Resumed
without the callback — even with the same parts frozen by hand — a plain load accepts the
file and every Adam moment would restart from zero, silently. The first step refuses
instead, naming the callback; with the callback the same checkpoint resumes.
"""

from __future__ import annotations

import pytest
from tiny_models import RandomTokens, tiny_bert
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

import frozen
from frozen.integrations.hf import FreezeCallback


def make_trainer(model, out, callbacks=(), epochs: float = 1) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        save_strategy="epoch",
    )
    return Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=list(callbacks))


def test_resuming_a_callback_checkpoint_without_the_callback_raises_instead_of_resetting_moments(tmp_path):
    make_trainer(tiny_bert(), tmp_path, [FreezeCallback("bert.encoder")], epochs=1).train()
    checkpoint = get_last_checkpoint(str(tmp_path))

    by_hand = frozen.freeze(tiny_bert(), "bert.encoder")  # the same parts, frozen without the callback
    with pytest.raises(frozen.FrozenError, match="FreezeCallback") as raised:
        make_trainer(by_hand, tmp_path, epochs=2).train(resume_from_checkpoint=checkpoint)
    assert "frozen_resume" in str(raised.value) and "restart from zero" in str(raised.value)

    make_trainer(tiny_bert(), tmp_path, [FreezeCallback("bert.encoder")], epochs=2).train(
        resume_from_checkpoint=checkpoint
    )
