"""Random sequences of freeze / thaw / Rows / copy operations never leave a model unusable.

Property: every call either succeeds or raises a ``frozen.FrozenError`` and leaves the model
exactly as it was; and after every step the model runs forward, answers ``state``,
``trainable`` and ``report``, trains one AdamW step (weight decay) with its frozen rows and
frozen parameters bit-identical, and thaws whole.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_state import assert_same_state, model_state
from torch import nn

import frozen

SETTINGS = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PARTS = ["", "emb", "body", "head"]
PARAMS = ["emb.weight", "body.weight", "head.weight", "head.bias"]
ROWS = 6


class Model(nn.Module):
    def __init__(self, tied: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(ROWS, 3)
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, ROWS)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.emb(ids))))


IDS = torch.arange(ROWS).repeat(2, 1)

rows = st.one_of(st.lists(st.integers(-ROWS - 1, ROWS), max_size=3), st.integers(-ROWS, ROWS - 1))
operations = st.one_of(
    st.tuples(st.just("freeze"), st.sampled_from(PARTS)),
    st.tuples(st.just("freeze_rows"), st.sampled_from(PARAMS), rows, st.booleans()),
    st.tuples(st.just("freeze_part_and_rows"), st.sampled_from(PARTS[1:]), st.sampled_from(PARAMS), rows),
    st.tuples(st.just("thaw_rows"), st.sampled_from(PARAMS), rows, st.booleans()),
    st.tuples(st.just("thaw"), st.sampled_from([None, *PARTS[1:], *PARAMS])),
    st.tuples(st.just("copy"), st.sampled_from(["deepcopy", "torch.save"])),
    st.tuples(st.just("hand_freeze"), st.sampled_from(PARAMS)),
    st.tuples(st.just("reload")),
)


def target(path: str, spec: Any, trainable: bool = False) -> frozen.Rows:
    return frozen.Rows(path, trainable=spec) if trainable else frozen.Rows(path, spec)


def apply(model: nn.Module, op: tuple, tied: bool) -> nn.Module:
    """Run one operation; return the model to continue with (a copy replaces it)."""
    kind = op[0]
    if kind == "freeze":
        frozen.freeze(model, op[1])
    elif kind == "freeze_rows":
        frozen.freeze(model, target(op[1], op[2], op[3]))
    elif kind == "freeze_part_and_rows":
        frozen.freeze(model, op[1], target(op[2], op[3]))
    elif kind == "thaw_rows":
        frozen.thaw(model, target(op[1], op[2], op[3]))
    elif kind == "thaw":
        frozen.thaw(model, *([op[1]] if op[1] else []))
    elif kind == "copy":
        return copied(model, op[1])
    elif kind == "hand_freeze":
        dict(model.named_parameters(remove_duplicate=False))[op[1]].requires_grad_(False)
    elif kind == "reload":
        fresh = Model(tied)
        frozen.load_state(fresh, frozen.state(model))
        fresh.load_state_dict(model.state_dict())
        return fresh
    return model


def copied(model: nn.Module, how: str) -> nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def check_usable(model: nn.Module) -> None:
    """Forward, the queries, a training step that keeps what is frozen, and a full thaw (on a copy)."""
    model(IDS)
    saved = frozen.state(model)
    trainable = frozen.trainable(model)
    frozen.report(model)
    trial = copy.deepcopy(model)
    params = dict(trial.named_parameters())
    moving = {id(p) for p in frozen.trainable(trial)}
    assert len(moving) == len(trainable)
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(trial.parameters(), lr=0.1, weight_decay=0.1)
    loss = trial(IDS).square().mean()
    if loss.requires_grad:  # not when everything is frozen
        loss.backward()
    optimizer.step()
    for name, p in params.items():
        if id(p) not in moving:
            assert torch.equal(p, before[name]), f"{name} is frozen and moved"
    for name, entry in saved["rows"].items():
        for start, stop in entry["frozen"]:
            assert torch.equal(params[name][start:stop], before[name][start:stop]), f"frozen rows of {name} moved"
    frozen.thaw(trial)
    assert frozen.state(trial)["rows"] == {} and frozen.state(trial)["frozen"] == []


@SETTINGS
@given(tied=st.booleans(), ops=st.lists(operations, min_size=1, max_size=7))
def test_every_call_succeeds_or_refuses_unchanged_and_the_model_stays_usable(tied: bool, ops: list) -> None:
    model = Model(tied)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        for op in ops:
            before = model_state(model)
            try:
                model = apply(model, op, tied)
            except frozen.FrozenError:
                assert_same_state(before, model_state(model))
            check_usable(model)
