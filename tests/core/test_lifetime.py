"""A model ``frozen`` touched is freed as soon as its last reference goes, like any other model.

Every object the library puts on a module -- its record, the eval stand-in for ``train``,
the white-box guard for ``forward``, a cached part's or a lean convolution's stand-in --
once pointed back at the module, so every frozen module sat in a reference cycle: after
``del model`` its parameters (a frozen backbone's weights, on the card) stayed allocated
until Python's cycle collector happened to run, while the same model frozen by hand with
``requires_grad_(False)`` was freed at once. Here the collector is off: what is not freed
by reference counting alone stays, and the test fails.
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import frozen
from frozen._cache.part import Part
from frozen._lean.api import lean


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()  # what earlier tests left behind
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _convbn() -> nn.Sequential:
    torch.manual_seed(0)
    middle = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(nn.Conv2d(3, 3, 1), middle, nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


def _freeze() -> nn.Module:
    return frozen.freeze(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)), "0")


def _wrapper() -> nn.Module:
    return frozen.settle(nn.Sequential(frozen.Frozen(nn.Linear(4, 4)), nn.Linear(4, 1)))


def _freeze_dtype() -> nn.Module:
    return frozen.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0", dtype=torch.bfloat16)


def _cached() -> nn.Module:
    model = _freeze()
    frozen.cache(model, "0", store="cpu")
    return model


def _lean() -> nn.Module:
    model = frozen.freeze(_convbn(), "1")
    lean(model, "1")
    return model


def _rows() -> nn.Module:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 1))
    return frozen.freeze(model, frozen.Rows("0.weight", trainable=[9]))


def _thawed() -> nn.Module:
    return frozen.thaw(_freeze(), "0")


class _TiedLM(nn.Sequential):
    """An embedding and a head sharing one weight (GPT-2's ``wte`` and ``lm_head``)."""

    def __init__(self) -> None:
        super().__init__(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
        self[2].weight = self[0].weight


def _tied() -> nn.Module:
    with pytest.warns(frozen.TiedParameterWarning):  # tied="freeze": the head's slot is frozen through the record
        return frozen.freeze(_TiedLM(), "0")


def _bert() -> nn.Module:
    from tiny_models import tiny_bert

    model = frozen.freeze(tiny_bert(layers=2), "bert.embeddings", "bert.encoder.layer.0")
    frozen.cache(model, "bert.embeddings", "bert.encoder.layer.0")
    return model


BUILDS: dict[str, Callable[[], nn.Module]] = {
    "freeze": _freeze,
    "Frozen wrapper": _wrapper,
    "freeze(dtype=)": _freeze_dtype,
    "cache": _cached,
    "lean": _lean,
    "rows": _rows,
    "thaw": _thawed,
    "tied": _tied,
    "BERT cached": _bert,
}


def _input(model: nn.Module) -> torch.Tensor:
    if not isinstance(model, nn.Sequential) or isinstance(model[0], nn.Embedding):
        return torch.randint(0, 10, (2, 2))
    return torch.randn(2, 3, 8, 8) if isinstance(model[0], nn.Conv2d) else torch.randn(2, 4)


def _use(model: nn.Module) -> None:
    """A training step and an eval pass: every stand-in has run (stored rows, folded weights)."""
    x = _input(model)
    model.train()
    _output(model, x).float().sum().backward()
    model.eval()
    with torch.no_grad():
        _output(model, x)


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def _weak_refs(model: nn.Module) -> list[weakref.ref]:
    return [weakref.ref(t) for t in (*model.modules(), *model.parameters())]


def _stored_rows(model: nn.Module) -> list[torch.Tensor]:
    """The rows the model's caches hold (read from the stores directly)."""
    parts = [part for m in model.modules() if isinstance(part := m.__dict__.get("forward"), Part)]
    return [buffer for part in parts for buffer in part.handle.store.tensors()]


@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
def test_a_model_is_freed_by_reference_counting_alone(build: Callable[[], nn.Module]) -> None:
    with collector_off():
        model = build()
        _use(model)
        refs = _weak_refs(model)
        del model
        alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == []


@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
def test_copies_still_work_and_are_freed_too(build: Callable[[], nn.Module]) -> None:
    # The stand-ins hold the module weakly, so a copy must point its own at the copy, not the original.
    original = build()
    _use(original)
    for make_copy in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        copied = make_copy(original)
        x = _input(original)
        torch.testing.assert_close(_output(copied, x), _output(original, x))
        with collector_off():
            _use(copied)
            refs = _weak_refs(copied)
            del copied
            alive = [type(r()).__name__ for r in refs if r() is not None]
        assert alive == []
    buffer = io.BytesIO()
    torch.save(original, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    _use(loaded)
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in original.parameters()]


@pytest.mark.parametrize("build", [_cached, _bert], ids=["cache", "BERT cached"])
def test_a_deleted_cached_model_gives_back_its_stored_rows(build: Callable[[], nn.Module]) -> None:
    # The handle and its parts referred to each other: the store outlived the model.
    with collector_off():
        model = build()
        _use(model)
        rows = [weakref.ref(row) for row in _stored_rows(model)]
        assert rows
        del model
        alive = sum(r() is not None for r in rows)
    assert alive == 0
