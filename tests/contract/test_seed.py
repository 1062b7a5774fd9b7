"""The seed discussion's "Examples/tests" block, translated.

The discussion: https://github.com/FluxML/Flux.jl/issues/1931

Dense(n, m, tanh) -> Linear + Tanh, Flux.params -> frozen.trainable,
gradient(f, ps) -> torch.autograd.grad over those parameters, nothing -> None,
≈ -> torch.allclose. Each test runs twice: on the models as built, and after
`frozen.settle` over the pair of models (they share l1, l2 and l3, so the pair is
"the model" whose flags must agree).
"""

import pytest
import torch
from torch import nn

import frozen


def by_id(params, grads):
    return {id(p): g for p, g in zip(params, grads)}


@pytest.fixture(params=["as-built", "settled"])
def seed(request):
    torch.manual_seed(0)
    x = torch.rand(2)
    l1 = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    l2 = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    l3 = nn.Linear(4, 2)
    m0 = nn.Sequential(l1, l2, l3)
    m1 = nn.Sequential(l1, frozen.Frozen(l2), l3)  # m0 with the middle layer frozen
    if request.param == "settled":
        with pytest.warns(frozen.TiedParameterWarning, match="still train through"):  # S4, said out loud
            frozen.settle(nn.ModuleList([m0, m1]))
    return dict(
        x=x,
        m0=m0,
        m1=m1,
        p0=frozen.trainable(m0),
        p1=frozen.trainable(m1),
        pfree=[*l1.parameters(), *l3.parameters()],
        pfrozen=list(l2.parameters()),
    )


def test_basics_free_params_present_frozen_absent(seed):
    ids = {id(p) for p in seed["p1"]}
    assert all(id(p) in ids for p in seed["pfree"])
    assert not any(id(p) in ids for p in seed["pfrozen"])


def test_frozen_params_get_no_gradient_even_when_asked_explicitly(seed):
    out = seed["m1"](seed["x"]).sum()
    grads = torch.autograd.grad(out, seed["pfrozen"], allow_unused=True)
    assert all(g is None for g in grads)


def test_free_params_have_gradients_equal_to_the_unfrozen_model(seed):
    x, m0, m1 = seed["x"], seed["m0"], seed["m1"]
    g1 = by_id(seed["p1"], torch.autograd.grad(m1(x).sum(), seed["p1"]))
    assert all(g1.get(id(p)) is not None for p in seed["pfree"])
    assert not any(id(p) in g1 for p in seed["pfrozen"])
    g0 = by_id(seed["p0"], torch.autograd.grad(m0(x).sum(), seed["p0"]))
    assert all(torch.allclose(g0[id(p)], g1[id(p)]) for p in seed["pfree"])


def test_difference_loss_is_constant_in_free_params_but_not_in_frozen_ones(seed):
    x, m0, m1 = seed["x"], seed["m0"], seed["m1"]
    loss = lambda: (m0(x) - m1(x)).sum()  # noqa: E731

    g0 = by_id(seed["p0"], torch.autograd.grad(loss(), seed["p0"]))
    assert all(torch.count_nonzero(g0[id(p)]) == 0 for p in seed["pfree"])
    assert not any(torch.count_nonzero(g0[id(p)]) == 0 for p in seed["pfrozen"])

    g1 = by_id(seed["p1"], torch.autograd.grad(loss(), seed["p1"]))
    assert all(torch.count_nonzero(g1[id(p)]) == 0 for p in seed["pfree"])
    assert not any(id(p) in g1 for p in seed["pfrozen"])
    assert all(torch.allclose(g0[id(p)], g1[id(p)]) for p in seed["pfree"])


def test_frozen_grad_maps_frozen_params_to_none(seed):
    x, m1 = seed["x"], seed["m1"]
    g = frozen.grad(m1(x).sum(), m1)
    assert list(g) == ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    assert g["1.0.weight"] is None and g["1.0.bias"] is None
    assert all(g[k] is not None for k in ("0.0.weight", "0.0.bias", "2.weight", "2.bias"))


def make_maintainers_example():
    """Chain(Frozen(Dense([2.0;;])), Dense([3.0;;])) with zero biases."""
    first, second = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        first.weight.fill_(2.0), first.bias.zero_(), second.weight.fill_(3.0), second.bias.zero_()
    return nn.Sequential(frozen.Frozen(first), second), first, second


@pytest.mark.parametrize("settled", [False, True], ids=["as-built", "settled"])
def test_maintainers_example_one_descent_step(settled):
    model, first, second = make_maintainers_example()
    if settled:
        frozen.settle(model)
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)  # Optimisers.Descent(0.1)
    model(torch.tensor([[1.0]])).sum().backward()
    optimizer.step()
    assert torch.equal(first.weight, torch.tensor([[2.0]]))  # unchanged, bit for bit
    assert first.weight.grad is None and first.bias.grad is None
    assert torch.allclose(second.weight, torch.tensor([[2.8]]))  # 3 - 0.1 * 2


def test_gradient_of_a_frozen_layer_alone_is_nothing():
    # `gradient(m -> sum(m([1])), Frozen(Dense([2.0;;])))` should be `nothing`.
    model = frozen.Frozen(nn.Linear(1, 1))
    g = frozen.grad(model(torch.tensor([[1.0]])).sum(), model)
    assert list(g) == ["weight", "bias"] and all(v is None for v in g.values())
