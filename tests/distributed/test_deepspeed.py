"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 real ranks (DeepSpeed's CPU accelerator, gloo).

* Parts frozen before ``deepspeed.initialize`` stay bit-identical on every rank and get no
  optimizer state; the trainable ones train, identically on both ranks.
* DeepSpeed chooses what it trains once, at ``initialize``: a thaw after it would be a silent
  no-op. The model's next forward raises ``frozen.FrozenError`` naming the fix; after the fix
  (``engine.destroy()``, ``deepspeed.initialize`` again over ``frozen.trainable``) the thawed
  layer trains and the ranks stay identical.
"""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import frozen

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def initialize(deepspeed, module: nn.Module, stage: int):
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": stage},
        "zero_force_ds_cpu_optimizer": False,
    }
    optimizer = torch.optim.AdamW(frozen.trainable(module), lr=1e-2, weight_decay=0.1)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def train(engine, steps: range, rank: int) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(4, 4, generator=g), torch.randn(4, 2, generator=g)
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()


def full_weights(deepspeed, module: nn.Module) -> dict[str, torch.Tensor]:
    with deepspeed.zero.GatheredParameters(list(module.parameters())):  # ZeRO-3: the whole tensors
        return {n: p.detach().clone() for n, p in module.named_parameters()}


def worker(rank: int, out_dir: str, stage: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ["DS_ACCELERATOR"] = "cpu"
    import warnings

    warnings.simplefilter("ignore")  # DeepSpeed's own deprecation warnings from torch, not frozen's
    import deepspeed

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    result: dict = {}
    try:
        module = frozen.freeze(make_model(), "0-2")
        start = full_weights(deepspeed, module)
        engine = initialize(deepspeed, module, stage)
        result["held"] = sorted(
            n for n, p in module.named_parameters() if any(p is q for g in _groups(engine) for q in g)
        )
        train(engine, range(3), rank)
        result["start"], result["trained"] = start, full_weights(deepspeed, module)

        frozen.thaw(module, "2")
        try:
            train(engine, range(3, 4), rank)
            result["message"] = ""
        except frozen.FrozenError as error:
            result["message"] = str(error)
        at_thaw = full_weights(deepspeed, module)
        engine.destroy()
        engine = initialize(deepspeed, module, stage)  # the fix the message names
        train(engine, range(4, 7), rank)
        result["at_thaw"], result["after"] = at_thaw, full_weights(deepspeed, module)
    except Exception:
        result["error"] = traceback.format_exc()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # a gloo thread alive at interpreter exit can abort the process after the results were written


def _groups(engine):
    optimizer = engine.optimizer
    return getattr(optimizer, "bit16_groups", None) or optimizer.fp16_groups


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def ranks(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"zero{request.param}")
    mp.spawn(worker, args=(str(out_dir), request.param, free_port()), nprocs=WORLD, join=True)
    results = [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r["error"]
    return results


def same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_parts_frozen_before_initialize_stay_bit_identical_and_out_of_the_optimizer(ranks):
    r0, r1 = ranks
    frozen_keys = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert r0["held"] == ["4.bias", "4.weight"]  # only the trainable layer has optimizer state
    assert same(r0["start"], r0["trained"], frozen_keys) and same(r1["start"], r1["trained"], frozen_keys)
    assert not torch.equal(r0["start"]["4.weight"], r0["trained"]["4.weight"])
    assert same(r0["trained"], r1["trained"], r0["trained"])  # the ranks agree


def test_a_thaw_after_initialize_is_refused_then_trains_after_initializing_again(ranks):
    for r in ranks:
        assert "deepspeed.initialize" in r["message"] and "engine.destroy()" in r["message"]
        assert "trainable since: ['2.weight', '2.bias']" in r["message"]
        assert same(r["trained"], r["at_thaw"], r["trained"])  # the refused step changed nothing
        assert not torch.equal(r["at_thaw"]["2.weight"], r["after"]["2.weight"])  # it trains now
        assert same(r["at_thaw"], r["after"], ["0.weight", "0.bias"])
    assert same(ranks[0]["after"], ranks[1]["after"], ranks[0]["after"])
