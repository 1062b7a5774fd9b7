"""A Hugging Face checkpoint written with ``FreezeCallback``, resumed by a Trainer without it.

The callback's ``optimizer.pt`` carries the run's real optimizer state inside the Trainer's
initial layout (so that a fresh Trainer can load it before any callback runs). Resumed
without the callback — even with the same parts frozen by hand — a plain load accepts the
file and every Adam moment would restart from zero, silently. The first step refuses
instead, naming the callback; with the callback the same checkpoint resumes.
"""

from __future__ import annotations

import pytest
from hf_trainers import make_trainer
from tiny_models import tiny_bert
from transformers.trainer_utils import get_last_checkpoint

import frozen
from frozen.integrations.hf import FreezeCallback


def test_resuming_a_callback_checkpoint_without_the_callback_raises_instead_of_resetting_moments(tmp_path):
    make_trainer(tiny_bert(), tmp_path, [FreezeCallback("bert.encoder")], epochs=1, save_strategy="epoch").train()
    checkpoint = get_last_checkpoint(str(tmp_path))

    by_hand = frozen.freeze(tiny_bert(), "bert.encoder")  # the same parts, frozen without the callback
    with pytest.raises(frozen.FrozenError, match="FreezeCallback") as raised:
        make_trainer(by_hand, tmp_path, epochs=2, save_strategy="epoch").train(resume_from_checkpoint=checkpoint)
    assert "frozen_resume" in str(raised.value) and "restart from zero" in str(raised.value)

    make_trainer(tiny_bert(), tmp_path, [FreezeCallback("bert.encoder")], epochs=2, save_strategy="epoch").train(
        resume_from_checkpoint=checkpoint
    )
