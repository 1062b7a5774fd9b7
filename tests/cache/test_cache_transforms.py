"""The cache under the other ways of running a model.

torch.compile (the part is a graph break: no recompiles), activation checkpointing (the recompute
replays the part), torch.func (the part runs plainly and keeps its entries), Hugging Face checkpointing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cached_models import CHECK, TOL, cached_linear, plain_chain, train_probe
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch.utils.checkpoint import checkpoint

import frozen
from frozen import CacheError, cache, cache_stats


def test_compiled_model_replays_the_cache_without_recompiling() -> None:
    # Traced, the cache's keys, store and snapshot became guards: every batch recompiled
    # (until dynamo's limit) and no sample ever hit. The part is a graph break instead.
    plain_losses, _, _, _ = train_probe(use_cache=False)
    counter = CompileCounter()
    losses, _, calls, stats = train_probe(use_cache=True, compiler=counter)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    assert calls == [3 + CHECK, 0, 0] and stats["backbone"]["hits"] == 48 and stats["backbone"]["invalidations"] == 0
    assert 0 < counter.frame_count <= 3  # the frames around the part, each compiled once


def test_thaw_under_compile_recomputes_with_gradients() -> None:
    model, calls, x = cached_linear()
    compiled = torch.compile(model, backend="eager")
    compiled(x)
    assert calls == [1 + CHECK]  # still a hit through the compiled model
    frozen.thaw(model, "0.1")
    model.train()
    compiled(x).sum().backward()
    assert calls == [2 + CHECK] and model[0][1].weight.grad is not None
    torch.testing.assert_close(compiled(x), plain_chain(model, x))


def test_a_checkpointed_segment_around_a_cached_part_replays_it_in_the_recompute() -> None:
    model, calls, x = cached_linear()
    model.train()

    def segment(inputs: torch.Tensor) -> torch.Tensor:
        return model[1](model[0](inputs))

    out = checkpoint(segment, x, use_reentrant=False)
    out.sum().backward()  # the recompute in backward replays the cached part too
    torch.testing.assert_close(out, plain_chain(model, x))
    assert calls == [1 + CHECK] and model[1].weight.grad is not None and model[0][0].weight.grad is None
    # Reentrant checkpointing makes the segment's input require grad: the prefix refuses it, clearly.
    with pytest.raises(CacheError, match="argument 0 that requires grad"):
        checkpoint(segment, x.clone().requires_grad_(True), use_reentrant=True)
    assert calls == [1 + CHECK]


def test_torch_func_transforms_run_the_part_plainly_and_keep_the_entries() -> None:
    # Per-sample gradients over functional_call: the substituted parameters made every call look like a
    # changed part, so one torch.func evaluation dropped every stored entry. And a copy (uncached) lost
    # frozen's guard in front of the part: its frozen weights got per-sample gradients.
    from torch.func import functional_call, grad, vmap

    model, calls, x = cached_linear()
    uncached = copy.deepcopy(model)  # copies run uncached
    per_sample = []
    for net in (model, uncached):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p: dict, xi: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
            return functional_call(net, p, (xi[None],)).square().sum()

        per_sample.append(vmap(grad(loss), in_dims=(None, 0))(params, x))
    for name, value in per_sample[1].items():
        torch.testing.assert_close(per_sample[0][name], value, **TOL)
    assert per_sample[0]["0.0.weight"].abs().sum() == 0  # frozen: exactly zero
    stats = cache_stats(model)["0"]
    assert stats["bypassed"] == 1 and stats["invalidations"] == 0 and stats["entries"] == 5
    calls_before = calls[0]
    model(x)
    assert calls[0] == calls_before  # still a hit


# transformers 5 deprecates gradient_checkpointing_enable in favour of activation_checkpointing_enable.
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_hugging_face_gradient_checkpointing_needs_its_input_grads_hook_removed_and_then_matches() -> None:
    # Checkpointing turns on enable_input_require_grads: the cached blocks' input then requires grad, which a
    # prefix must refuse (it would cut that gradient). The error says how to remove the hook, and then the
    # cached, checkpointed run trains like the uncached checkpointed one.
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=4, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)  # fmt: skip
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(0))
    runs = []
    for cached in (False, True):
        torch.manual_seed(0)
        parts = ("transformer.wte", "transformer.wpe", "transformer.h.0-1", "lm_head")  # lm_head: tied to wte
        model = frozen.freeze(GPT2LMHeadModel(config), *parts).train()
        model.gradient_checkpointing_enable()
        if cached:
            handle = cache(model, "transformer.h.0", "transformer.h.1")
            with pytest.raises(CacheError, match=r"disable_input_require_grads\(\)"):
                model(ids, labels=ids)
            model.disable_input_require_grads()
        optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
        losses = []
        for _ in range(3):
            loss = model(ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs.append((losses, model.transformer.h[3].mlp.c_fc.weight.detach().clone()))
    torch.testing.assert_close(torch.tensor(runs[1][0]), torch.tensor(runs[0][0]), **TOL)
    torch.testing.assert_close(runs[1][1], runs[0][1], **TOL)
    assert [handle.stats()[p]["forwards"] for p in handle.paths] == [1, 1]  # then hits, checkpointed recompute too
