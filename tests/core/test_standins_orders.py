"""Freeze, cache, lean and low precision on one part, put on and taken off in every order.

Each stands in for the part's ``forward`` (and ``train``, ``_apply``) in its ``__dict__``.
They form one chain with a fixed order of layers, so whatever the order of the calls, the
part computes what it should, every intermediate state copies (``deepcopy``, pickle,
``torch.save``) into a model that computes the same, and once everything is taken off the
modules' ``__dict__`` holds exactly what it held before: the same keys, the same objects.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import frozen

BF16 = torch.bfloat16


def _conv_root() -> nn.Sequential:
    # Every stand-in on one module: the convolution is the frozen root, the cached part and lean.
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))


def _block() -> nn.Sequential:
    # A conv-BN-ReLU block: lean folds the norm into the convolution inside the cached, frozen block.
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2.0)
        block[1].weight.uniform_(0.5, 1.5)
    return nn.Sequential(block, nn.Flatten(), nn.Linear(4 * 36, 2))


# model builder, and the paths frozen, cached and made lean
MODELS: dict[str, tuple[Callable[[], nn.Sequential], dict[str, str]]] = {
    "conv root": (_conv_root, {"freeze": "0", "cache": "0", "lean": "0"}),
    "conv-bn block": (_block, {"freeze": "0", "cache": "0", "lean": "0"}),
    "cached lean convolution": (_block, {"freeze": "0", "cache": "0.0", "lean": "0"}),
}

INSTALL = {
    "freeze": lambda m, p: frozen.freeze(m, p["freeze"]),
    "bf16": lambda m, p: frozen.freeze(m, p["freeze"], dtype=BF16),
    "cache": lambda m, p: frozen.cache(m, p["cache"]),
    "lean": lambda m, p: frozen.lean(m, p["lean"]),
}
REMOVE = {
    "freeze": lambda m, p: frozen.thaw(m, p["freeze"]),
    "bf16": lambda m, p: frozen.thaw(m, p["freeze"]),
    "cache": lambda m, p: frozen.uncache(m, p["cache"]),
    "lean": lambda m, p: frozen.unlean(m, p["lean"]),
}


def _cases() -> list[Any]:
    cases = []
    for name, (build, paths) in MODELS.items():
        for kind in ("freeze", "bf16"):  # cache and lean need a frozen part: it comes first
            for rest in itertools.permutations(("cache", "lean")):
                for removal in itertools.permutations((kind, "cache", "lean")):
                    on, off = (kind, *rest), removal
                    case_id = f"{name}: on {'+'.join(on)}, off {'+'.join(off)}"
                    cases.append(pytest.param(build, paths, on, off, id=case_id))
    return cases


def _dicts(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's ``__dict__``, with the contents of the dicts in it (hooks, parameters) copied."""
    return {
        name: {k: (v, dict(v)) if isinstance(v, dict) else (v, None) for k, v in m.__dict__.items()}
        for name, m in model.named_modules()
    }


def _assert_same_dicts(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    for name, entries in before.items():
        assert set(after[name]) == set(entries), f"module {name!r}: {set(after[name]) ^ set(entries)}"
        for key, (value, contents) in entries.items():
            now, now_contents = after[name][key]
            assert now is value or (type(value) is bool and now == value), f"module {name!r}: {key} changed"
            if key == "_buffers":  # thawing a low-precision part casts buffers into new tensors
                assert [(k, v.dtype) for k, v in now_contents.items()] == [(k, v.dtype) for k, v in contents.items()]
            elif contents is not None:
                assert list(now_contents) == list(contents), f"module {name!r}: {key} has other keys"
                assert all(now_contents[k] is v for k, v in contents.items()), f"module {name!r}: {key} changed"


def _expected(build: Callable[[], nn.Sequential], model: nn.Module, x: torch.Tensor, low: bool) -> torch.Tensor:
    """The model's output computed by hand from its current weights: no frozen, in the part's precision."""
    plain = build().eval()
    plain.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        h = plain[0].to(BF16)(x.to(BF16)).float() if low else plain[0](x)
        return plain[1:](h)


def _copies(model: nn.Module) -> list[nn.Module]:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)]


@pytest.mark.parametrize(("build", "paths", "on", "off"), _cases())
def test_every_order_computes_copies_and_restores_the_modules_exactly(build, paths, on, off) -> None:
    torch.manual_seed(0)
    model = build().eval()
    before = _dicts(model)
    x = torch.randn(3, 3, 6, 6)
    state: set[str] = set()
    steps = [(step, True) for step in on] + [(step, False) for step in off]
    for step, adding in steps:
        (INSTALL if adding else REMOVE)[step](model, paths)
        state = state | {step} if adding else state - {step}
        low = "bf16" in state
        tolerance = {"rtol": 2e-2, "atol": 2e-2} if low else {"rtol": 1e-5, "atol": 1e-5}
        with torch.no_grad():
            out = model(x)
            torch.testing.assert_close(out, _expected(build, model, x, low), **tolerance)
            assert torch.equal(model(x), out)  # a second call (a hit when cached) gives the same
            for copied in _copies(model):
                torch.testing.assert_close(copied(x), out, **tolerance)
        assert set(frozen.cache_stats(model)) == ({paths["cache"]} if "cache" in state else set())
        assert frozen.is_frozen(model, paths["freeze"]) == bool(state & {"freeze", "bf16"})
    _assert_same_dicts(before, _dicts(model))
