"""Lean frozen middles: frozen.lean / unlean (input-gradient-only convolutions, BatchNorm folding)."""

from __future__ import annotations

import copy

import pytest
import torch
from func_transforms import assert_same_under_transforms, transformed
from quiet_loads import load_quietly
from torch import nn
from torch.nn import functional as F

import frozen
from frozen._lean.api import LeanConv, LeanNorm, lean, unlean
from frozen._lean.fold import InputGradConvJvp

# Folding changes the order of float operations: float32 outputs and input gradients agree
# to ~1e-7 relative (measured max 1.4e-7 / 5.4e-7 on the 6-block middle below); asserted with margin.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _middle() -> nn.Sequential:
    """Trainable stem, frozen middle of 6 conv-BN-ReLU blocks, trainable head."""
    torch.manual_seed(0)
    blocks = []
    for _ in range(6):
        norm = nn.BatchNorm2d(8)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.5, 0.5)
        blocks.append(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=len(blocks) % 2 == 0), norm, nn.ReLU()))
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(*blocks), nn.Flatten(), nn.Linear(8 * 256, 4))


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes saved for backward by one forward, each storage once, the model's own tensors excluded."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own | seen:
            seen.add(storage.data_ptr())
            sizes.append(storage.nbytes())
        return t

    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(sizes), out


def test_lean_middle_saves_half_and_trains_like_the_ideal() -> None:
    ideal, mine = _middle(), frozen.freeze(_middle(), "1")
    ideal[1].requires_grad_(False)
    lean(mine, "1")
    optimizers = [torch.optim.AdamW(frozen.trainable(m), lr=1e-2) for m in (ideal, mine)]
    frozen_before = copy.deepcopy(mine[1].state_dict())
    x = torch.randn(16, 3, 16, 16)  # activations large against the folded weights (counted: not parameters)
    for _ in range(3):
        results = []
        for model, optimizer in zip((ideal, mine), optimizers, strict=True):
            model.train()
            ideal[1].eval()
            saved, out = _saved_bytes(model, x)
            optimizer.zero_grad(set_to_none=True)
            out.square().mean().backward()
            results.append((saved, out, [p.grad for p in model[0].parameters()]))
            optimizer.step()
        (ideal_saved, ideal_out, ideal_grads), (saved, out, grads) = results
        assert saved <= 0.5 * ideal_saved, (saved, ideal_saved)
        torch.testing.assert_close(out, ideal_out, **TOL)
        for got, want in zip(grads, ideal_grads, strict=True):
            torch.testing.assert_close(got, want, **TOL)  # the stem's gradient flowed through the middle
    assert all(torch.equal(v, frozen_before[k]) for k, v in mine[1].state_dict().items())
    assert all(p.grad is None for p in mine[1].parameters())


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1),
        lambda: nn.Conv2d(4, 6, 3, dilation=2, groups=2, bias=False),
        # stride 3 over 9 columns: the last window ends before the input does (output padding 2)
        lambda: nn.Conv2d(4, 6, 3, stride=(2, 3), padding=1),
        lambda: nn.Conv3d(4, 6, 2, stride=(1, 2, 1)),
    ],
)
def test_input_gradients_of_lean_convolutions_match_torch(conv) -> None:
    torch.manual_seed(0)
    plain = conv()
    model = frozen.freeze(nn.Sequential(copy.deepcopy(plain)), "")
    lean(model)
    shape = {nn.Conv1d: (2, 4, 9), nn.Conv2d: (2, 4, 9, 9), nn.Conv3d: (2, 4, 5, 6, 7)}[type(plain)]
    x = torch.randn(shape, requires_grad=True)
    want = plain(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    saved, got = _saved_bytes(model, x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)
    assert saved == 0  # only the weight (a parameter) is kept for backward


def test_fold_follows_every_change_of_conv_or_norm() -> None:
    model = frozen.freeze(_middle(), "1")
    reference = copy.deepcopy(model)
    lean(model, "1")
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for change in ("load_state_dict", "double", "thaw"):
        if change == "load_state_dict":
            model.load_state_dict(state)
            reference.load_state_dict(state)
        elif change == "double":
            model.double()
            reference.double()
            x = x.detach().double().requires_grad_()
        else:
            frozen.thaw(model, "1.0")
            frozen.thaw(reference, "1.0")
            model.train()
            reference.train()
        torch.testing.assert_close(model[1](x), reference[1](x), **TOL)
    model[1](x).sum().backward()  # thawed: plain convolution and BatchNorm, with weight gradients
    assert model[1][0][0].weight.grad is not None and model[1][0][1].weight.grad is not None


def test_hooks_on_a_convolution_or_its_norm_see_what_they_see_without_lean() -> None:
    # Folded, the convolution returns BatchNorm's output: a feature hook on it captured the normalised
    # values, and a hook that returned a new tensor had the norm applied twice. Hooked, the pair is not folded.
    model, reference = frozen.freeze(_middle(), "1"), frozen.freeze(_middle(), "1")
    lean(model, "1")
    x = torch.randn(2, 3, 16, 16)
    seen: dict[str, list[torch.Tensor]] = {"lean": [], "plain": []}
    for name, net in (("lean", model), ("plain", reference)):
        net[1][0][0].register_forward_hook(lambda _m, _i, out, key=name: seen[key].append(out.detach()))
        net[1][1][1].register_forward_pre_hook(lambda _m, args, key=name: seen[key].append(args[0].detach()))
        net[1][2][0].register_forward_hook(lambda _m, _i, out: out * 2)  # replaces the output
    out = model(x)
    torch.testing.assert_close(out, reference(x), **TOL)
    for got, want in zip(seen["lean"], seen["plain"], strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert [conv.__dict__["forward"].folding for conv in (model[1][0][0], model[1][1][0], model[1][2][0])] == [
        False,
        False,
        False,
    ]
    assert model[1][3][0].__dict__["forward"].folding  # not hooked: folded
    handles = [m._forward_hooks.popitem() for m in (model[1][0][0], model[1][2][0])]
    model[1][1][1]._forward_pre_hooks.clear()
    model(x)  # the hooks are gone: folded at the next call
    assert handles and all(model[1][i][0].__dict__["forward"].folding for i in range(6))


def test_the_relu_after_a_lean_convolution_runs_in_place_unless_a_hook_could_hold_its_input() -> None:
    # Nothing saves a lean convolution's output, so the ReLU after it overwrites it instead of allocating
    # (one allocation and write less per block). A tensor a hook kept must not change.
    model, reference = frozen.freeze(_middle(), "1"), frozen.freeze(_middle(), "1")
    lean(model, "1")
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    kept: dict[str, list[torch.Tensor]] = {"lean": [], "plain": []}
    for name, net in (("lean", model), ("plain", reference)):
        net[1][3][1].register_forward_hook(lambda _m, _i, out, key=name: kept[key].append(out.detach()))
    blocks_out = []
    for i in (2, 3):  # block 2 has no hook, block 3's norm (folded) hands its output to a hook
        model[1][i].register_forward_hook(lambda _m, _i, out: blocks_out.append(out))
    out = model(x)
    torch.testing.assert_close(out, reference(x), **TOL)
    torch.testing.assert_close(kept["lean"][0], kept["plain"][0], **TOL)  # still the norm's output, not ReLU'd
    produced = model[1][2][0].__dict__["forward"].produced[0]()  # alive: it is the block's output
    assert produced is not None and blocks_out[0] is produced  # block 2: the ReLU overwrote the conv's output
    hooked = kept["lean"][0].untyped_storage().data_ptr()  # block 3: the folded conv's output, held by the hook
    assert blocks_out[1].untyped_storage().data_ptr() != hooked
    grads = [torch.autograd.grad(net(x).square().sum(), x)[0] for net in (model, reference)]
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_a_middle_frozen_by_a_frozen_wrapper_folds_once_without_settling_by_hand(monkeypatch) -> None:
    # Unsettled, the Frozen wrapper's per-call detaching gave the convolution new parameter tensors at
    # every call: it refolded (a float64 computation) at every call.
    import frozen._lean.forward as lean_module

    folds = []
    fold = lean_module.fold
    monkeypatch.setattr(lean_module, "fold", lambda *args: folds.append(1) or fold(*args))
    torch.manual_seed(0)
    middle = _middle()[1]
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), frozen.Frozen(middle), nn.Flatten(), nn.Linear(8 * 256, 4))
    reference = copy.deepcopy(model)
    lean(model, "1")
    x = torch.randn(2, 3, 16, 16)
    for _ in range(3):
        torch.testing.assert_close(model(x), reference(x), **TOL)
    assert len(folds) == 6  # each of the 6 pairs once


def test_a_new_storage_at_the_old_address_refolds() -> None:
    # What the allocator does after .half().float(): param.data replaced (``_version`` unchanged) by a
    # storage at the freed address. Built here without the allocator's luck: two storages over one buffer.
    model = frozen.freeze(_middle(), "1")
    lean(model, "1")
    conv = model[1][0][0]
    buffer = conv.weight.detach().numpy().copy()
    conv.weight.data = torch.from_numpy(buffer)
    x = torch.randn(2, 8, 16, 16)
    model[1](x)  # folded from these values
    buffer *= 1.5
    conv.weight.data = torch.from_numpy(buffer)  # another storage object, same address, same _version
    reference = frozen.unlean(copy.deepcopy(model))
    torch.testing.assert_close(model[1](x), reference[1](x), **TOL)


def test_lean_refuses_parts_that_are_not_frozen_and_unlean_restores() -> None:
    model = _middle()
    with pytest.raises(frozen.FrozenError, match="'1' is not frozen"):
        lean(model, "1")
    with pytest.raises(frozen.UnknownPathError, match="'7'"):
        lean(model, "7")
    assert not any("forward" in m.__dict__ for m in model.modules())
    frozen.freeze(model, "1")
    lean(model, "1")
    lean_parts = [m for m in model.modules() if isinstance(m.__dict__.get("forward"), LeanConv | LeanNorm)]
    assert len(lean_parts) == 12  # 6 convolutions, 6 folded norms
    clone = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(clone(x), model(x), **TOL)
    unlean(model)
    assert not any(isinstance(m.__dict__.get("forward"), LeanConv | LeanNorm) for m in model.modules())


def test_a_convolution_that_is_itself_a_frozen_root_is_made_lean_and_its_guard_comes_back() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    frozen.freeze(model, "0")
    guard = model[0].__dict__["forward"]  # frozen's white-box guard at the root of the frozen part
    lean(model, "0")
    assert isinstance(model[0].__dict__["forward"], LeanConv)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and model[0].weight.grad is None and model[2].weight.grad is not None
    unlean(model)
    assert model[0].__dict__["forward"] is guard
    frozen.thaw(model)
    assert "forward" not in model[0].__dict__


def test_a_lean_frozen_root_and_its_copy_keep_frozen_weights_constant_under_functional_call() -> None:
    # Under functional_call frozen's guard at the part's root detaches the substituted weights. The lean
    # convolution replaced the guard and skipped that (the frozen weight got a gradient); a copy runs
    # plain, without lean, and must keep the guard too.
    from torch.func import functional_call, grad

    model = lean(frozen.freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), "0"), "0")
    x = torch.randn(2, 3, 8, 8)
    for net in (model, copy.deepcopy(model)):
        params = {k: v.detach() for k, v in net.named_parameters()}
        grads = grad(lambda p, net=net: functional_call(net, p, (x,)).square().sum())(params)
        assert grads["0.weight"].abs().sum() == 0 and grads["2.weight"].abs().sum() > 0


def test_a_lean_convolution_after_relu_uses_torch_convolution_and_saves_nothing_more() -> None:
    # ReLU keeps its output for backward: a convolution saving that same storage adds no bytes, so the
    # lean path takes torch's own convolution there (no Python autograd function); elsewhere it must not.
    from frozen._lean.fold import kept_by_producer

    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    conv = nn.Conv2d(4, 4, 3)
    assert kept_by_producer(torch.relu(x * 2)) and kept_by_producer((x * 2).relu_())
    assert not kept_by_producer(x) and not kept_by_producer(conv(x)) and not kept_by_producer(x * 2)
    model = frozen.freeze(nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3)), "1")
    reference = copy.deepcopy(model)
    lean(model, "1")
    saved, got = _saved_bytes(model, x * 2)
    ideal_saved, want = _saved_bytes(reference, x * 2)
    assert got.grad_fn is not None and "Convolution" in type(got.grad_fn).__name__
    assert saved == ideal_saved  # the ReLU's output, counted once: nothing added
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(got_grad, want_grad, **TOL)


# torch 2.13's dynamo instantiates the custom autograd.Function it traces and warns about it itself.
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
# ... and reads .grad of a non-leaf tensor while tracing the lean forward (also before this test's fix).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_a_compiled_lean_middle_has_no_graph_break_and_follows_later_changes() -> None:
    # The eager snapshot (weak references, storages) broke dynamo's graph 11 times in this model; compiled,
    # the lean norm's scale is traced from the live parameters instead, so a load_state_dict shows in the
    # next call.
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = frozen.freeze(_middle(), "1")
    reference = copy.deepcopy(model)
    lean(model, "1")
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 16, 16)
    for change in (None, "load_state_dict"):
        if change:
            state = {k: v * 1.5 if v.is_floating_point() else v for k, v in reference.state_dict().items()}
            model.load_state_dict(state)
            reference.load_state_dict(state)
        grads = []
        for net, run in ((reference, reference), (model, compiled)):
            net[0].weight.grad = None
            out = run(x)
            out.square().sum().backward()
            grads.append((out, net[0].weight.grad))
        torch.testing.assert_close(grads[1][0], grads[0][0], **TOL)
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_lean_middle_under_gradient_checkpointing_matches_the_plain_frozen_middle(reentrant: bool) -> None:
    # Non-reentrant checkpointing packs saved tensors through hooks and recomputes the forward: the
    # lean path must choose the same convolutions both times (reading a saved tensor broke that).
    from torch.utils.checkpoint import checkpoint

    model = frozen.freeze(_middle(), "1")
    reference = copy.deepcopy(model)
    lean(model, "1")
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for net in (reference, model):
        hidden = checkpoint(net[1], net[0](x), use_reentrant=reentrant)
        net[3](net[2](hidden)).square().sum().backward()
        grads.append(net[0].weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_lean_middle_under_autocast_is_as_accurate_as_torch_autocast(dtype: torch.dtype) -> None:
    # The input-gradient-only convolution calls aten.convolution, which autocast does not cover: a
    # half-precision activation met a float32 weight and raised. Lean casts the operands as autocast would.
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run(leaned: bool, autocast: bool) -> tuple[int, list[torch.Tensor]]:
        model = frozen.freeze(_middle(), "1")
        if leaned:
            lean(model, "1")
        source = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            saved, out = _saved_bytes(model, source)
        out.float().square().mean().backward()
        assert out.dtype == (dtype if autocast else torch.float32)
        return saved, [out.detach().float(), source.grad, model[0].weight.grad, model[3].weight.grad]

    _, exact = run(leaned=False, autocast=False)
    plain_saved, plain = run(leaned=False, autocast=True)
    lean_saved, leaned = run(leaned=True, autocast=True)
    assert lean_saved < 0.6 * plain_saved  # still lean under autocast
    for got, torch_own, want in zip(leaned, plain, exact, strict=True):
        # norm-relative to float32: lean's error measured 0.67-1.59x torch's own autocast error (bf16, fp16)
        lean_error, torch_error = ((t - want).norm() / want.norm() for t in (got, torch_own))
        assert lean_error <= 2 * torch_error + 1e-4, (lean_error, torch_error)


# torch's own jvp decompositions (imported by the first jacfwd) still use torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_lean_middle_under_torch_func_matches_the_plain_frozen_middle(monkeypatch) -> None:
    # Per-sample gradients (vmap of grad over functional_call), reverse- and forward-mode Jacobians:
    # the input-gradient-only convolution needs the setup_context form, a vmap rule and a jvp for these.
    applied = [0]
    plain_apply = InputGradConvJvp.apply
    monkeypatch.setattr(InputGradConvJvp, "apply", lambda *a: applied.__setitem__(0, applied[0] + 1) or plain_apply(*a))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    results = []
    for leaned in (False, True):
        model = frozen.freeze(_middle(), "1").eval()
        if leaned:
            lean(model, "1")
        results.append(transformed(model, x))  # every parameter, frozen ones too
    assert applied[0] >= 3  # the lean convolution ran under each transform
    assert_same_under_transforms(*results, frozen_prefix="1.", tol=TOL)


def test_a_lean_middle_under_inference_mode_runs_plain_and_then_trains() -> None:
    # The fold passes the norm an output it checks by version counter; inference tensors have none (it
    # raised). Under inference mode nothing is saved for backward, so the middle runs its plain forward.
    model, reference = frozen.freeze(_middle(), "1"), frozen.freeze(_middle(), "1")
    lean(model, "1")
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    saved, out = _saved_bytes(model, x)  # outside inference mode: lean again
    assert saved < 0.6 * _saved_bytes(reference, x)[0]
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_a_load_that_hides_its_writes_from_version_counters_refolds() -> None:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4).eval()
    norm.running_var.uniform_(0.5, 2)
    model = frozen.freeze(nn.Sequential(nn.Conv2d(3, 4, 3), norm), "")
    reference = copy.deepcopy(model)
    lean(model)
    load_quietly(model[0])
    x = torch.randn(2, 3, 8, 8)
    model(x)  # folded once
    assert isinstance(model[0].__dict__["forward"], LeanConv) and model[0].__dict__["forward"].folding
    state = {k: v * 2 for k, v in reference[0].state_dict().items()}
    model[0].load_state_dict(state)  # the convolution alone: the norm's buffers keep their versions
    reference[0].load_state_dict(state)
    torch.testing.assert_close(model(x), reference(x), **TOL)
    unlean(model)
    assert not model[0]._load_state_dict_post_hooks and not model[1]._load_state_dict_post_hooks


@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_a_compiled_lean_middle_under_autocast_matches_the_eager_one() -> None:
    # torch.compile and AMP together, as training scripts run them: the autocast casts are traced too.
    import torch._dynamo

    torch._dynamo.reset()
    model, eager = frozen.freeze(_middle(), "1"), frozen.freeze(_middle(), "1")
    lean(model, "1")
    lean(eager, "1")
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 16, 16)
    results = []
    # Compiled, a lean convolution folds nothing (the caller cannot be read while tracing): the eager
    # model computes the same when its children are called one by one, outside the Sequentials' forwards.
    for run, net in ((compiled, model), (lambda t: _children_one_by_one(eager, t), eager)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        results.append((out.detach().float(), net[0].weight.grad))
    # within bfloat16's resolution (torch.testing's default for it); measured bit-identical here
    for compiled_value, eager_value in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(compiled_value, eager_value, rtol=1.6e-2, atol=1e-5)


def _children_one_by_one(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with every ``nn.Sequential`` run as a loop over its children here (no fold in it)."""
    if type(module) is nn.Sequential:
        for child in module:
            x = _children_one_by_one(child, x)
        return x
    return module(x)


def _gan(use_lean: bool) -> tuple[list[float], nn.Module, list[bool]]:
    """Alternating GAN steps: D thawed and trained (BatchNorm in training), then frozen while G trains through it."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(8, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)), nn.Tanh())
    blocks = [nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for c in (3, 8)]
    model = nn.ModuleDict({"G": generator, "D": nn.Sequential(*blocks, nn.Flatten(), nn.Linear(8 * 64, 1))})
    optimizers = {name: torch.optim.SGD(model[name].parameters(), lr=1e-2) for name in ("G", "D")}
    real = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    losses, folded = [], []
    frozen.freeze(model, "D")
    if use_lean:
        lean(model, "D.0", "D.1")
    for step in range(4):
        z = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
        frozen.thaw(model, "D")
        model.train()
        loss_d = F.softplus(-model["D"](real)).mean() + F.softplus(model["D"](model["G"](z).detach())).mean()
        optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        optimizers["D"].step()
        optimizers["D"].zero_grad(set_to_none=True)
        frozen.freeze(model, "D")  # eval: the running statistics the D step just updated, folded anew
        before = copy.deepcopy(model["D"].state_dict())
        loss_g = F.softplus(-model["D"](model["G"](z))).mean()
        optimizers["G"].zero_grad(set_to_none=True)
        loss_g.backward()
        optimizers["G"].step()
        assert all(p.grad is None for p in model["D"].parameters())  # G's backward crossed D: no D gradient
        assert all(torch.equal(v, model["D"].state_dict()[k]) for k, v in before.items())
        folded.append(use_lean and model["D"][0][0].__dict__["forward"].folding)
        losses += [loss_d.item(), loss_g.item()]
    return losses, model, folded


def test_a_lean_discriminator_toggled_every_step_trains_the_generator_as_the_plain_one() -> None:
    # With SGD (Adam's first steps turn float-rounding differences of near-zero gradients into whole steps).
    plain_losses, plain, _ = _gan(False)
    losses, model, folded = _gan(True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, **TOL)
    assert folded == [True] * 4
