"""The library's promises on a CUDA device: ``python benchmarks/gpu_check.py`` (run by ``gpu.sh``).

The test suite runs on CPU only (CI has no GPU), so this script checks on a lent card
what only a card exercises: cuDNN convolutions in a lean middle (the transposed
convolution as input gradient, output padding included), a bf16 frozen part that keeps
its storage type across ``.to()`` moves between devices, cache stores on the device, on
the host and on disk with a device move invalidating them, autocast switched off inside
a frozen wrapper, a lean middle under autocast and ``torch.func``, a cached part that
draws on the card refused and ``grad_inputs="pass"``, a cached step keyed by sample ids that
never synchronises (``torch.cuda.set_sync_debug_mode("error")``), and a compiled step. Every check
trains with real steps and asserts frozen tensors bit-identical, frozen gradients ``None``
and trainable tensors changed. It prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import frozen  # noqa: E402

# GPU_CHECK_DEVICE=cpu: a dry run of the script itself on a machine without a card.
CUDA = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
CHECKS: list[Callable[[], str]] = []


def _as_if_pretrained(model: nn.Module) -> None:
    """Running statistics that make a BatchNorm fold change the weights (fresh ones are the identity)."""
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert norm.running_mean is not None and norm.running_var is not None
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 2.0)


def check(function: Callable[[], str]) -> Callable[[], str]:
    CHECKS.append(function)
    return function


def _train(model: nn.Module, inputs: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(inputs).float().square().mean().backward()
        optimizer.step()


def _frozen_kept(model: nn.Module, part: str, before: dict[str, torch.Tensor]) -> None:
    module = model.get_submodule(part)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), f"{part}.{key} changed"
    assert all(p.grad is None for p in module.parameters()), f"{part} has gradients"


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


@check
def freeze_and_train_on_cuda() -> str:
    model = frozen.freeze(_mlp().to(CUDA), "0", "2")
    before = {p: copy.deepcopy(model.get_submodule(p).state_dict()) for p in ("0", "2")}
    head = model.get_parameter("4.weight").detach().clone()
    _train(model, torch.randn(8, 16, device=CUDA))
    for part in ("0", "2"):
        _frozen_kept(model, part, before[part])
    assert not torch.equal(model.get_parameter("4.weight"), head), "the trainable head did not change"
    return "frozen parts bit-identical, head trained"


@check
def low_precision_storage_survives_device_moves() -> str:
    model = frozen.freeze(_mlp(), "2", dtype=torch.bfloat16).to(CUDA)
    assert model[2].weight.dtype == torch.bfloat16 and model[2].weight.device.type == CUDA.type
    model.float().cpu().to(CUDA)
    assert model[2].weight.dtype == torch.bfloat16, "the frozen part lost its storage type"
    assert model[0].weight.dtype == torch.float32
    before = copy.deepcopy(model[2].state_dict())
    with torch.autocast(
        CUDA.type, dtype=torch.float16 if CUDA.type == "cuda" else torch.bfloat16
    ):  # the part runs in its own type, autocast off inside
        _train(model, torch.randn(8, 16, device=CUDA))
    _frozen_kept(model, "2", before)
    return "bf16 part kept its type across .float()/.cpu()/.to(cuda) and under autocast"


@check
def lean_middle_matches_torch_with_cudnn() -> str:
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, stride=s, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for s in (1, 2, 3)]
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *blocks).to(CUDA)
    _as_if_pretrained(reference)
    reference.eval()
    model = frozen.lean(frozen.freeze(copy.deepcopy(reference), "1", "2", "3"), "1", "2", "3")
    x = torch.randn(4, 3, 19, 19, device=CUDA)
    grads: list[torch.Tensor | None] = []
    for net in (reference, model):
        net[0].weight.grad = None
        net(x).square().sum().backward()
        grads.append(net[0].weight.grad)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    return "outputs and the stem's gradient equal torch's (strides 1-3, output padding)"


@check
def lean_middle_under_autocast_and_torch_func() -> str:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, stride=s, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for s in (1, 2)]
    _as_if_pretrained(nn.Sequential(*blocks))
    plain = frozen.freeze(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *blocks, nn.Flatten()).to(CUDA), "1", "2")
    model = frozen.lean(copy.deepcopy(plain), "1", "2")
    x = torch.randn(4, 3, 16, 16, device=CUDA)
    kind = CUDA.type
    results = []
    for net in (plain, model):  # bf16 autocast: aten.convolution is not covered, lean casts like conv2d
        net[0].weight.grad = None
        with torch.autocast(kind, dtype=torch.bfloat16):
            out = net(x)
        out.float().square().sum().backward()
        results.append((out.float(), net[0].weight.grad))
    assert results[1][0].dtype == results[0][0].dtype
    # bf16 keeps ~3 significant digits: two orders of rounding differ by ~1e-2 (norm-relative)
    gaps = [((got - want).norm() / want.norm()).item() for got, want in zip(results[1], results[0], strict=True)]
    assert max(gaps) < 5e-2, f"lean under autocast strays from torch's: {gaps}"
    from torch.func import functional_call, grad, vmap

    per_sample = []
    for net in (plain, model):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p: dict, xi: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
            return functional_call(net, {**p, **dict(net.named_buffers())}, (xi[None],)).square().sum()

        per_sample.append(vmap(grad(loss), in_dims=(None, 0))(params, x))
    torch.testing.assert_close(per_sample[1]["0.weight"], per_sample[0]["0.weight"], rtol=1e-3, atol=1e-4)
    assert per_sample[1]["1.0.weight"].abs().sum() == 0, "a frozen weight got a per-sample gradient"
    return f"bf16 autocast {max(gaps):.1e} from torch's (norm-relative); per-sample gradients (vmap of grad) equal, frozen ones zero"


@check
def cache_stores_on_cuda_hit_and_invalidate() -> str:
    results = []
    for store in ("device", "cpu", "disk"):
        model = frozen.freeze(_mlp().to(CUDA), "0")
        with tempfile.TemporaryDirectory() as directory:
            handle = frozen.cache(model, "0", store=store, budget="16MB", path=directory if store == "disk" else None)
            x = torch.randn(8, 16, device=CUDA)
            plain = model[0].__class__.forward(model[0], x)
            first, second = model(x), model(x[torch.randperm(8, device=CUDA)])
            stats = handle.stats()["0"]
            assert stats["hits"] == 8 and stats["misses"] == 8, stats
            torch.testing.assert_close(model[0](x), plain, rtol=0, atol=0)
            # Half seen, half new: stored rows (on the host for "cpu"/"disk") meet rows computed on the card.
            fresh = torch.randn(4, 16, device=CUDA)
            mixed = torch.cat([x[:4], fresh])
            want = torch.cat([plain[:4], model[0].__class__.forward(model[0], fresh)])
            torch.testing.assert_close(model[0](mixed), want)
            assert handle.stats()["0"]["hits"] == 8 + 8 + 4, handle.stats()
            if CUDA.type == "cuda":
                model.cpu().to(CUDA)  # a device move drops the entries: the next call recomputes
            else:
                model.double().float()  # the dry run's stand-in for a move
            model(x)
            assert handle.stats()["0"]["misses"] == 8 + 4 + 8, handle.stats()
            assert first.device.type == second.device.type == CUDA.type
            frozen.uncache(model)
        results.append(store)
    return f"stores {', '.join(results)}: shuffled batch hit, exact, half-seen batch assembled, a move invalidated"


class _Sampling(nn.Module):
    """A frozen part that draws on the card (a posterior sample): not a function of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean(x)
        return mean + 0.1 * torch.randn_like(mean)


@check
def cache_refuses_card_draws_and_passes_gradient_inputs() -> str:
    model = frozen.freeze(nn.Sequential(_Sampling(), nn.Linear(16, 4)).to(CUDA), "0")
    frozen.cache(model, "0", store="device")
    try:
        model(torch.randn(8, 16, device=CUDA))
    except frozen.CacheError as error:
        assert "drew random numbers" in str(error), error
    else:
        raise AssertionError("a part drawing from the card's generator was cached")
    # A perceptual loss: generated inputs (gradients cross the part) run plainly, targets are replayed.
    model = frozen.freeze(_mlp().to(CUDA), "0")
    before = copy.deepcopy(model[0].state_dict())
    handle = frozen.cache(model, "0", store="device", grad_inputs="pass")
    generator = nn.Linear(16, 16).to(CUDA)
    optimizer = torch.optim.AdamW(generator.parameters(), lr=1e-2)
    z, targets = torch.randn(8, 16, device=CUDA), torch.randn(8, 16, device=CUDA)
    start = generator.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        (model[0](generator(z)) - model[0](targets)).square().mean().backward()
        optimizer.step()
    stats = handle.stats()["0"]
    assert (stats["bypassed"], stats["misses"], stats["hits"]) == (3, 8, 16), stats
    _frozen_kept(model, "0", before)
    assert not torch.equal(generator.weight, start), "the generator did not train through the cached part"
    return "a card draw refused; grad_inputs='pass': generated inputs crossed the part, targets hit"


@check
def cached_step_with_sample_ids_never_synchronises() -> str:
    """A training step whose cached prefix is keyed by sample ids: no wait for the card, hits, fills or both."""
    model = frozen.freeze(_mlp().to(CUDA), "0")
    handle = frozen.cache(model, "0", store="device")
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    data = torch.randn(32, 16, device=CUDA)
    with torch.no_grad():
        plain = [nn.Linear.forward(cast(nn.Linear, model[0]), data[i : i + 8]) for i in (0, 8, 16)]
    # The batches and their host ids are made first: indexing a card tensor with host ids copies the ids.
    batches = [(torch.arange(i, i + 8), data[i : i + 8]) for i in (0, 8, 0)]
    mixed = torch.cat([torch.arange(4, 8), torch.arange(16, 20)])
    batches.append((mixed, data[mixed.to(CUDA)]))

    def step(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with handle.samples(rows):
            out = model(x)
        out.square().mean().backward()
        optimizer.step()
        return out

    step(*batches[0])  # the first call checks the part and makes the store's buffers (one wait then)
    torch.cuda.synchronize() if CUDA.type == "cuda" else None
    checked = CUDA.type == "cuda"
    if checked:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for rows, x in batches[1:]:  # a fill, a hit, a half-seen batch
            step(rows, x)
    finally:
        if checked:
            torch.cuda.set_sync_debug_mode("default")
    stats = handle.stats()["0"]
    assert (stats["misses"], stats["hits"]) == (8 + 8 + 4, 8 + 4), stats
    with handle.samples(torch.arange(8, 16)):
        torch.testing.assert_close(model[0](data[8:16]), plain[1])
    what = "no synchronisation" if checked else "(dry run: synchronisation not checked on the CPU)"
    return f"fill, hit and half-seen steps with sample ids: {what}; exact rows"


@check
def compiled_step_keeps_frozen_parts() -> str:
    model = frozen.freeze(_mlp().to(CUDA), "0")
    before = copy.deepcopy(model[0].state_dict())
    compiled = cast(nn.Module, torch.compile(model))  # a module: torch.compile types it as a callable
    _train(compiled, torch.randn(8, 16, device=CUDA))
    _frozen_kept(model, "0", before)
    frozen.thaw(model, "0")
    _train(compiled, torch.randn(8, 16, device=CUDA), steps=1)
    assert not torch.equal(model.get_parameter("0.weight"), before["weight"]), (
        "the thawed part did not train after thaw"
    )
    return "compiled steps left the frozen part bit-identical; after thaw it trained"


def main() -> int:
    if CUDA.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 3
    name = torch.cuda.get_device_name() if CUDA.type == "cuda" else "cpu (dry run)"
    print(f"gpu_check: torch {torch.__version__} on {name}", flush=True)
    failed = 0
    for function in CHECKS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", frozen.RecompileWarning)
                print(f"  ok   {function.__name__}: {function()}", flush=True)
        except Exception:  # every check runs; the report names each failure
            failed += 1
            print(f"  FAIL {function.__name__}:\n{traceback.format_exc()}", flush=True)
    print(f"gpu_check: {len(CHECKS) - failed} of {len(CHECKS)} checks passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
