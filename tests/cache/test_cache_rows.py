"""Row-separability: row i of a cached part's output must depend on row i of its inputs only.

A replayed row was computed in another batch. Batch centring, attention across the batch
dimension or a statistic over the batch make a row depend on its companions, and the cache
replayed rows computed with other companions -- no error, no warning. The first filling call
now runs the part once more on half its batch and refuses the part if those rows differ.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen


class Centred(nn.Module):
    """Batch centring: each row minus the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear(x)
        return hidden - hidden.mean(0, keepdim=True)


class BatchAttention(Centred):
    """Attention whose queries attend to every sample of the batch (the batch dimension as the sequence)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear(x)
        return torch.softmax(hidden @ hidden.T, dim=-1) @ hidden


class BatchStatistic(Centred):
    """A statistic as long as the batch: each row scaled by the batch's standard deviation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear(x)
        return hidden / hidden.std(0, keepdim=True)


@pytest.mark.parametrize("part", [Centred, BatchAttention, BatchStatistic], ids=["centring", "attention", "statistic"])
def test_a_part_whose_rows_depend_on_the_batch_is_refused_on_its_first_fill(part: type) -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(part(), nn.Linear(4, 1)), "0")
    handle = frozen.cache(model, "0")
    x = torch.randn(8, 4)
    with pytest.raises(frozen.CacheError, match=r"part at '0' is not row-separable.*verify=False"):
        model(x)
    assert handle.stats()["0"]["entries"] == 0  # nothing stored
    frozen.uncache(model)
    want = model(x)
    # The opt-out: the caller vouches for the part (the check's one extra run skipped).
    frozen.cache(model, "0", verify=False)
    torch.testing.assert_close(model(x), want)


def test_a_row_separable_part_passes_the_check_once_and_trains_as_uncached() -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), nn.Linear(8, 1)), "0")
    reference = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), nn.Linear(8, 1)), "0")
    reference.load_state_dict(model.state_dict())
    handle = frozen.cache(model, "0")
    optimizers = [torch.optim.SGD(frozen.trainable(m), lr=0.1) for m in (model, reference)]
    data = torch.randn(16, 4)
    for rows in (torch.arange(8), torch.arange(8, 16), torch.randperm(16)[:8]):
        for net, optimizer in zip((model, reference), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            net(data[rows]).square().mean().backward()
            optimizer.step()
    torch.testing.assert_close(model[1].weight, reference[1].weight)
    assert handle.stats()["0"]["misses"] == 16 and handle.stats()["0"]["hits"] == 8
    with pytest.raises(frozen.CacheError, match=r"verify=1\): expected True or False"):
        frozen.cache(frozen.freeze(nn.Sequential(nn.Linear(2, 2)), "0"), "0", verify=1)  # type: ignore[arg-type]
