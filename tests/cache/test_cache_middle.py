"""A cached part that gradients also cross: ``grad_inputs="pass"`` (a perceptual loss's feature network)."""

from __future__ import annotations

import pytest
import torch
from counting import count_runs
from tiny_models import SuperResolution
from torch import nn
from torch.utils.checkpoint import checkpoint

import frozen
from frozen._cache.api import CacheError, cache

TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # as in tests/helpers/cached_models.py: replayed rows against a fresh forward
CHECK = 1  # the first filling call runs the net once more on half its batch (the row-separability check)


def _train(
    grad_inputs: str | None, compiled: bool = False, checkpointed: bool = False
) -> tuple[list[float], SuperResolution, list[int], dict]:
    model = frozen.freeze(SuperResolution(), "features")
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    runs = count_runs(model.features[0])
    handle = cache(model, "features", grad_inputs=grad_inputs) if grad_inputs else None
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    low, high = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 8, 8, generator=g)
    losses = []
    for epoch in range(3):
        for rows in torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).split(4):
            loss_fn = torch.compile(model.loss, backend="eager") if compiled else model.loss
            if checkpointed:  # the whole loss recomputed in backward, generator and both feature calls
                loss = checkpoint(loss_fn, low[rows], high[rows], use_reentrant=False)
            else:
                loss = loss_fn(low[rows], high[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert all(p.grad is None for p in model.features.parameters())
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.equal(v, before[k]) for k, v in model.features.state_dict().items())
    return losses, model, runs, handle.stats()["features"] if handle else {}


# torch 2.13's dynamo reads .grad of the generated images (a non-leaf tensor) while resuming after the
# cached net's graph break, and warns about it itself (as in test_lean.py's compiled test); not frozen's.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_perceptual_loss_caches_the_targets_features_and_trains_the_generator_as_uncached(compiled: bool) -> None:
    # Compiled, the cached net is a graph break on each side (torch.compiler.disable): the same runs and hits.
    plain_losses, plain, plain_runs, _ = _train(None)
    losses, model, runs, stats = _train("pass", compiled)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    for name, value in plain.generator.state_dict().items():
        torch.testing.assert_close(model.generator.state_dict()[name], value, **TOL)
    # 12 steps: every generated batch runs the net (a white box), the targets only in epoch 1
    assert plain_runs == [24] and runs == [12 + 4 + CHECK]
    assert (stats["bypassed"], stats["misses"], stats["hits"]) == (12, 16, 32)


def test_by_default_a_call_whose_inputs_require_grad_is_refused_and_names_grad_inputs() -> None:
    with pytest.raises(CacheError, match=r"'features' received argument 0 that requires grad.*grad_inputs='pass'"):
        _train("refuse")
    with pytest.raises(CacheError, match=r"grad_inputs='always'.*expected one of \('refuse', 'pass'\)"):
        cache(frozen.freeze(SuperResolution(), "features"), "features", grad_inputs="always")


def test_checkpointed_the_recompute_runs_the_generated_call_again_and_replays_the_targets() -> None:
    # Non-reentrant checkpointing of the whole loss: backward recomputes both feature calls; the
    # generated images' call runs plainly again (a white box), the targets' call is a hit.
    plain_losses, plain, plain_runs, _ = _train(None, checkpointed=True)
    losses, model, runs, stats = _train("pass", checkpointed=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    for name, value in plain.generator.state_dict().items():
        torch.testing.assert_close(model.generator.state_dict()[name], value, **TOL)
    # 12 steps, each: 2 feature calls forward + 2 in the recompute. Cached: generated 2 per step,
    # targets run in epoch 1's forwards only (4); 12 x 4 recomputed target samples hit as well.
    assert plain_runs == [48] and runs == [24 + 4 + CHECK]
    assert (stats["bypassed"], stats["misses"], stats["hits"]) == (24, 16, 32 + 48)


def test_per_sample_gradients_under_torch_func_equal_the_uncached_ones_and_keep_the_entries() -> None:
    # vmap(grad) over functional_call: inside a transform the net runs plainly (targets included),
    # and the targets stored by training stay for the steps after it.
    from torch.func import functional_call, grad, vmap

    _, model, _, _ = _train("pass")
    uncached = frozen.freeze(SuperResolution(), "features")
    uncached.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    low, high = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 8, 8, generator=g)
    per_sample = []
    for net in (model, uncached):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p: dict, lo: torch.Tensor, hi: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
            return functional_call(net, p, (lo[None], hi[None]))

        per_sample.append(vmap(grad(loss), in_dims=(None, 0, 0))(params, low[:4], high[:4]))
    for name, value in per_sample[1].items():
        torch.testing.assert_close(per_sample[0][name], value, **TOL)
    assert per_sample[0]["generator.1.weight"].abs().sum() > 0
    assert all(per_sample[0][n].abs().sum() == 0 for n in per_sample[0] if n.startswith("features."))
    stats = frozen.cache_stats(model)["features"]
    assert stats["invalidations"] == 0 and stats["entries"] == 16
    runs = count_runs(model.features[0])
    model.loss(low[:4], high[:4])
    assert runs == [1]  # only the generated images' call: the targets still hit
