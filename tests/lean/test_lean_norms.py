"""Lean BatchNorms that no convolution folds: an input-gradient-only per-channel affine map saving its scale."""

from __future__ import annotations

import copy

import pytest
import torch
from func_transforms import assert_same_under_transforms, transformed
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

import frozen
from frozen._lean.norm import InputGradAffineJvp, LeanBatchNorm

# x * s + t instead of (x - mean) * invstd * gamma + beta: float32 outputs and input gradients agree to
# ~1e-7 relative (float64: identical on CPU); asserted with margin, as for the folded norm.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm statistics and affine values that make eval mode differ from the identity."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


class _ConvBlock(nn.Module):
    """Conv-BN-ReLU as attributes called by a custom forward (no nn.Sequential: nothing folds)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x))) + x


def _blocks() -> tuple[nn.Module, str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Sequential(_ConvBlock(6), _ConvBlock(6)), nn.Conv2d(6, 2, 1)
    )
    return _statistics(model), "1", torch.randn(4, 3, 12, 12)


def _resnet() -> tuple[nn.Module, str, torch.Tensor]:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 2, 1], layer_type="bottleneck")
    config.num_labels = 3
    model = _statistics(ResNetForImageClassification(config))
    return _Logits(model), "model.resnet.encoder.stages.1", torch.randn(2, 3, 32, 32)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


MODELS = {"transformers-resnet-bottleneck": _resnet, "conv-bn-relu-attributes": _blocks}


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes saved for backward by one forward, each storage once, the model's own tensors excluded."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(seen.values()), out


def _norms(model: nn.Module, part: str) -> list[nn.Module]:
    return [m for m in model.get_submodule(part).modules() if isinstance(m, nn.BatchNorm2d)]


def _count(monkeypatch, function: type) -> list[int]:
    """Count the calls of ``function.apply`` (the lean norm's autograd function)."""
    applied = [0]
    plain_apply = function.apply
    monkeypatch.setattr(function, "apply", lambda *a: applied.__setitem__(0, applied[0] + 1) or plain_apply(*a))
    return applied


def _forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    saved, out = _saved_bytes(model, x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    return saved, out.detach(), grad


@pytest.mark.parametrize("build", MODELS.values(), ids=MODELS.keys())
def test_lean_norms_match_the_frozen_model_save_less_and_train_the_rest(build) -> None:
    model, part, x = build()
    frozen.freeze(model, part)
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    assert all(isinstance(m.__dict__.get("forward"), LeanBatchNorm) for m in _norms(model, part))
    plain_saved, plain_out, plain_grad = _forward_backward(reference, x)
    saved, out, grad = _forward_backward(model, x)
    torch.testing.assert_close(out, plain_out, **TOL)
    torch.testing.assert_close(grad, plain_grad, **TOL)
    assert saved < plain_saved, (saved, plain_saved)  # the norms' inputs are no longer kept

    frozen_before = copy.deepcopy(model.get_submodule(part).state_dict())
    trainable_before = [p.detach().clone() for p in frozen.trainable(model)]
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()
    for name, value in model.get_submodule(part).state_dict().items():
        assert torch.equal(value, frozen_before[name]), name  # running statistics included
    assert all(p.grad is None for p in model.get_submodule(part).parameters())
    assert all(not torch.equal(p, b) for p, b in zip(frozen.trainable(model), trainable_before, strict=True))


def test_a_folding_norm_called_apart_from_its_sequential_saves_only_its_scale() -> None:
    # A loop over the children (feature taps) calls the convolution outside its Sequential: no fold
    # there, so the norm gets the convolution's own output and normalises it, keeping only its scale.
    torch.manual_seed(0)
    seq = _statistics(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    # After a ReLU (which keeps its output) the convolution saves nothing more: only the norm can save less.
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), seq), "1")
    reference = copy.deepcopy(model)
    frozen.lean(model, "1")

    class Taps(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.net[0](x)
            taps = []
            for child in self.net[1]:
                x = child(x)
                taps.append(x)
            return torch.cat([t.flatten(1) for t in taps], 1)

    x = torch.randn(2, 3, 8, 8)
    plain_saved, plain_out, plain_grad = _forward_backward(Taps(reference), x)
    saved, out, grad = _forward_backward(Taps(model), x)
    torch.testing.assert_close(out, plain_out, **TOL)
    torch.testing.assert_close(grad, plain_grad, **TOL)
    assert saved < plain_saved


def test_a_thawed_norm_runs_plain_and_trains(monkeypatch) -> None:
    applied = _count(monkeypatch, InputGradAffineJvp)
    model, part, x = _blocks()
    frozen.freeze(model, part)
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    for net in (model, reference):
        frozen.thaw(net, part).eval()  # eval statistics, trainable affine: the lean map would drop their gradient
    plain_saved, plain_out, plain_grad = _forward_backward(reference, x)
    saved, out, grad = _forward_backward(model, x)
    assert saved == plain_saved and applied[0] == 0
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)
    norm = _norms(model, part)[0]
    before = norm.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(norm.weight, before)


def test_a_norm_in_train_mode_runs_plain_and_updates_its_statistics(monkeypatch) -> None:
    applied = _count(monkeypatch, InputGradAffineJvp)
    model, part, x = _blocks()
    frozen.freeze(model.train(), part, mode="inherit")  # frozen parameters, batch statistics
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    _, plain_out, _ = _forward_backward(reference, x)
    _, out, _ = _forward_backward(model, x)
    assert applied[0] == 0
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)
    for norm, plain in zip(_norms(model, part), _norms(reference, part), strict=True):
        assert torch.equal(norm.running_mean, plain.running_mean)
        assert not torch.equal(norm.running_var, torch.ones_like(norm.running_var))


def test_new_running_statistics_are_used_at_the_next_call(monkeypatch) -> None:
    applied = _count(monkeypatch, InputGradAffineJvp)
    model, part, x = _blocks()
    frozen.freeze(model, part)
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    model(x.requires_grad_(True)).sum().backward()  # (s, t) worked out once
    x = x.detach()
    state = {k: v * 1.5 if k.endswith(("running_mean", "running_var")) else v for k, v in model.state_dict().items()}
    for change in ("load_state_dict", "in place"):
        if change == "load_state_dict":
            model.load_state_dict(state)
            reference.load_state_dict(state)
        else:
            for net in (model, reference):
                _norms(net, part)[1].running_var.mul_(0.5)
        plain = _forward_backward(reference, x)
        lean = _forward_backward(model, x)
        assert lean[0] < plain[0] and applied[0] > 0
        torch.testing.assert_close(lean[1], plain[1], **TOL)
        torch.testing.assert_close(lean[2], plain[2], **TOL)


def test_a_hook_on_the_norm_makes_it_plain_until_removed() -> None:
    model, part, x = _blocks()
    frozen.freeze(model, part)
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    seen: list[torch.Tensor] = []
    norm = _norms(model, part)[0]
    handle = norm.register_forward_hook(lambda m, a, out: seen.append(out))
    plain = _forward_backward(reference, x)
    hooked = _forward_backward(model, x)
    assert type(seen[0].grad_fn).__name__ == "NativeBatchNormBackward0"  # the norm ran as itself
    torch.testing.assert_close(hooked[1], plain[1], **TOL)
    handle.remove()
    assert _forward_backward(model, x)[0] < hooked[0]  # lean again: the first norm's input is not kept


def test_unlean_leaves_every_module_dict_as_before() -> None:
    model, part, x = _resnet()
    frozen.freeze(model, part)
    before = {path: (dict(m.__dict__), dict(m._load_state_dict_post_hooks)) for path, m in model.named_modules()}
    frozen.unlean(frozen.lean(model, part))
    for path, m in model.named_modules():
        attrs, hooks = before[path]
        assert m.__dict__.keys() == attrs.keys(), path
        assert all(m.__dict__[k] is v for k, v in attrs.items() if k == "forward"), path
        assert m._load_state_dict_post_hooks.keys() == hooks.keys(), path
    frozen.lean(model, part)  # and lean again
    assert all(isinstance(m.__dict__.get("forward"), LeanBatchNorm) for m in _norms(model, part))


# dynamo (torch 2.13) instantiates a custom torch.autograd.Function for its ctx while tracing it
# inlined in a custom forward (side_effects.track_object_new) and warns about it itself.
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
def test_a_compiled_lean_middle_of_custom_blocks_matches_eager_without_graph_break() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs: list[str] = []

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(gm.print_readable(print_output=False))
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    model, part, x = _blocks()
    frozen.freeze(model, part)
    eager = copy.deepcopy(model)
    frozen.lean(model, part)
    frozen.lean(eager, part)
    compiled = torch.compile(model, backend=backend)
    results = []
    for run in (eager, compiled):
        results.append(_forward_backward(run, x)[1:])
    assert any("addcmul" in graph for graph in graphs)  # the lean norms' affine map, traced into the graph
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert not torch._dynamo.utils.counters["graph_break"]


# torch's own jvp decompositions (imported by the first jacfwd) still use torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_lean_norms_under_torch_func_match_the_plain_frozen_model(monkeypatch) -> None:
    applied = _count(monkeypatch, InputGradAffineJvp)
    results = []
    for leaned in (False, True):
        model, part, x = _blocks()
        frozen.freeze(model, part)
        if leaned:
            frozen.lean(model, part)
        results.append(transformed(model, x))
    assert applied[0] >= 2  # the lean norm ran under the transforms
    assert_same_under_transforms(*results, frozen_prefix="1.", tol=TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lean_norms_under_autocast_are_as_accurate_as_torch_autocast(monkeypatch, dtype: torch.dtype) -> None:
    # BatchNorm returns its input's type under autocast: the lean map casts s and t to it (one rounding more).
    applied = _count(monkeypatch, InputGradAffineJvp)
    model, part, x = _blocks()
    frozen.freeze(model, part)
    leaned = frozen.lean(copy.deepcopy(model), part)
    results = []
    for net, autocast in ((model, False), (model, True), (leaned, True)):
        source = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = net(source)
        assert out.dtype == (dtype if autocast else torch.float32)
        (grad,) = torch.autograd.grad(out.float().square().mean(), source)
        results.append([out.detach().float(), grad])
    assert applied[0] > 0
    exact, plain, lean = results
    for got, torch_own, want in zip(lean, plain, exact, strict=True):
        lean_error, torch_error = ((t - want).norm() / want.norm() for t in (got, torch_own))
        assert lean_error <= 2 * torch_error + 1e-4, (lean_error, torch_error)


def test_lean_norms_under_inference_mode_run_plain() -> None:
    model, part, x = _blocks()
    frozen.freeze(model, part)
    reference = copy.deepcopy(model)
    frozen.lean(model, part)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert _forward_backward(model, x)[0] < _forward_backward(reference, x)[0]  # lean again outside it
