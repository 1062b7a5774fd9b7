"""Inputs the keys once could not read: an empty batch, conjugate and negative views."""

from __future__ import annotations

import torch
from torch import nn

import frozen


def test_an_empty_batch_returns_the_parts_own_empty_output() -> None:
    # Hashing an empty batch raised; uncached, the part returns an empty output.
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 3)), nn.Linear(3, 1)), "0")
    handle = frozen.cache(model, "0")
    out = model(torch.randn(0, 4))
    assert out.shape == (0, 1)
    assert handle.stats()["0"]["entries"] == 0
    model(torch.randn(2, 4))  # then caches as usual
    assert handle.stats()["0"]["entries"] == 2


class Rotate(nn.Module):
    """A complex part: each sample times a fixed phase."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("phase", torch.polar(torch.ones(3), torch.arange(3.0)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.phase


def test_conjugate_and_negative_views_are_keyed_by_their_values() -> None:
    # A conjugate view (z.conj()) or a negative one (torch._neg_view) refused to be read as bytes: the call raised.
    model = frozen.freeze(nn.Sequential(Rotate()), "0")
    handle = frozen.cache(model, "0")
    z = torch.randn(4, 3, dtype=torch.complex64)
    for view, plain in ((z.conj(), z.conj().resolve_conj()), (torch._neg_view(z), -z)):
        assert view.is_conj() or view.is_neg()
        torch.testing.assert_close(model(view), plain * model[0].phase)
        torch.testing.assert_close(model(plain.clone()), plain * model[0].phase)  # the same values: a hit
    stats = handle.stats()["0"]
    assert (stats["misses"], stats["hits"]) == (8, 8)


def test_a_sample_twice_in_a_batch_is_stored_once_and_answers_both_rows() -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 3)), nn.Linear(3, 1)), "0")
    handle = frozen.cache(model, "0")
    x = torch.randn(3, 4)
    batch = x[[0, 1, 0, 2, 1]]
    want = nn.Linear.forward(model[0][0], batch)
    torch.testing.assert_close(model[0](batch), want)
    assert handle.stats()["0"]["entries"] == 3
    torch.testing.assert_close(model[0](batch), want)  # every row a hit
    assert handle.stats()["0"]["hits"] == 5
