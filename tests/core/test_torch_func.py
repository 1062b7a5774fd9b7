"""The white box under torch.func (S12): functional_call with either key form, grad, vmap, jacrev.

Frozen parameters get zero, the functional form of ``None``; trainable ones get exactly the plain model's.
"""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import frozen


def _func_models(kind: str) -> tuple[nn.Module, nn.Module, set[str]]:
    """A model frozen the ``kind`` way, the same model unfrozen (for exact trainable grads), the frozen keys."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model = copy.deepcopy(plain)
    if kind == "freeze":
        frozen.freeze(model, "2")
    else:
        model[2] = frozen.Frozen(model[2])
        if kind == "settled Frozen":
            frozen.settle(model)
    return model, plain, {"2.weight", "2.bias"}


def _params(model: nn.Module, keys: str) -> dict[str, torch.Tensor]:
    source = model.state_dict() if keys == "state_dict" else dict(model.named_parameters())
    return {k: v.detach().clone() for k, v in source.items()}


def _canonical(key: str) -> str:
    return key.replace(".module.", ".")


KINDS = ["settled Frozen", "unsettled Frozen", "freeze"]
KEYS = ["state_dict", "named_parameters"]


@pytest.mark.parametrize("keys", KEYS)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_grad_gives_frozen_params_zero(kind, keys):
    model, plain, frozen_keys = _func_models(kind)
    params, x = _params(model, keys), torch.randn(5, 3)

    def loss(params, model):
        return functional_call(model, params, (x,)).square().sum()

    got = torch.func.grad(loss)(params, model)
    want = torch.func.grad(loss)({_canonical(k): v for k, v in params.items()}, plain)
    for key, g in got.items():
        if _canonical(key) in frozen_keys:
            assert torch.equal(g, torch.zeros_like(g)), key
        else:
            assert torch.equal(g, want[_canonical(key)]), key


@pytest.mark.parametrize("keys", KEYS)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_vmap_grad_per_sample_gives_frozen_params_zero(kind, keys):
    model, plain, frozen_keys = _func_models(kind)
    params, xs = _params(model, keys), torch.randn(6, 3)

    def loss(params, x, model):
        return functional_call(model, params, (x.unsqueeze(0),)).square().sum()

    got = vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, xs, model)
    want = vmap(torch.func.grad(loss), in_dims=(None, 0, None))(
        {_canonical(k): v for k, v in params.items()}, xs, plain
    )
    for key, g in got.items():
        assert g.shape[0] == 6
        if _canonical(key) in frozen_keys:
            assert torch.equal(g, torch.zeros_like(g)), key
        else:
            assert torch.allclose(g, want[_canonical(key)], rtol=0, atol=1e-6), key


@pytest.mark.parametrize("keys", KEYS)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_jacrev_gives_frozen_params_zero(kind, keys):
    model, plain, frozen_keys = _func_models(kind)
    params, x = _params(model, keys), torch.randn(2, 3)
    got = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    want = jacrev(lambda p: functional_call(plain, p, (x,)))({_canonical(k): v for k, v in params.items()})
    for key, j in got.items():
        if _canonical(key) in frozen_keys:
            assert torch.equal(j, torch.zeros_like(j)), key
        else:
            assert torch.equal(j, want[_canonical(key)]), key


def test_functional_call_with_state_dict_keys_on_a_wrapper():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    m = nn.Sequential(frozen.Frozen(copy.deepcopy(plain[0])), copy.deepcopy(plain[1]))
    x = torch.randn(3, 4)
    assert torch.equal(functional_call(m, dict(m.state_dict()), (x,)), m(x))
    doubled = {k: 2 * v for k, v in m.state_dict().items()}  # the substituted tensors are the ones used
    assert torch.equal(functional_call(m, doubled, (x,)), functional_call(plain, doubled, (x,)))
    assert torch.equal(m(x), plain(x))  # and put back afterwards
