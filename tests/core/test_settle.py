"""S8: settle makes the flags agree with the contract, and that is what DDP needs."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import frozen


def backbone_model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
    return nn.Sequential(frozen.Frozen(backbone), nn.Linear(8, 2))


def test_flags_equal_trainability_after_settle():
    model = frozen.settle(backbone_model())
    trainable = {id(p) for p in frozen.trainable(model)}
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight", "1.bias"]


def test_settle_never_turns_on_a_parameter_the_user_froze():
    model = backbone_model()
    model[1].bias.requires_grad_(False)
    frozen.settle(model)
    assert not model[1].bias.requires_grad
    model[0] = model[0].module  # unwrap: the backbone is trainable again ...
    frozen.settle(model)
    assert model[0][0].weight.requires_grad  # ... so settle turns back on what it turned off
    assert not model[1].bias.requires_grad  # but never what the user turned off


def test_settle_is_idempotent_and_keeps_semantics():
    model = backbone_model()
    frozen.settle(model)
    flags = [p.requires_grad for p in model.parameters()]
    frozen.settle(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    model.train()
    model(torch.randn(6, 4)).sum().backward()
    assert all(p.grad is None for p in model[0].module.parameters())
    assert model[1].weight.grad is not None


def init_process_group(rank, world_size, out_dir):
    # A file store, not a TCP port: no port can be taken by another process meanwhile.
    store = os.path.join(out_dir, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)


def ddp_worker(rank, world_size, out_dir):
    init_process_group(rank, world_size, out_dir)
    try:
        torch.set_num_threads(1)
        model = frozen.settle(backbone_model())
        frozen_before = {k: v.clone() for k, v in model[0].state_dict().items()}
        head_before = model[1].weight.detach().clone()
        ddp = nn.parallel.DistributedDataParallel(model)  # no find_unused_parameters
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        torch.manual_seed(100 + rank)  # different data on each rank
        ddp.train()
        for _ in range(4):
            optimizer.zero_grad()
            ddp(torch.randn(16, 4)).square().mean().backward()
            optimizer.step()
        torch.save(
            {
                "frozen_unchanged": all(torch.equal(v, model[0].state_dict()[k]) for k, v in frozen_before.items()),
                "head_moved": not torch.equal(head_before, model[1].weight),
                "head": model[1].weight.detach().clone(),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # both ranks done before either tears gloo down (else the peer may abort)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still alive at exit makes C++ call
    # std::terminate now and then (SIGABRT after the results were written). Errors still propagate.
    os._exit(0)


def test_ddp_over_a_settled_frozen_backbone_without_find_unused_parameters(tmp_path):
    mp.spawn(ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["frozen_unchanged"] for r in results)  # weights and BatchNorm statistics
    assert all(r["head_moved"] for r in results)
    assert torch.equal(results[0]["head"], results[1]["head"])  # DDP kept the ranks in sync


def ddp_unsettled_worker(rank, world_size, out_dir):
    init_process_group(rank, world_size, out_dir)
    try:
        torch.set_num_threads(1)
        ddp = nn.parallel.DistributedDataParallel(backbone_model())  # NOT settled
        message = ""
        try:
            for _ in range(2):
                ddp(torch.randn(16, 4)).square().mean().backward()
        except RuntimeError as error:
            message = str(error)
        torch.save(message, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (else the peer may abort)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still alive at exit makes C++ call
    # std::terminate now and then (SIGABRT after the results were written). Errors still propagate.
    os._exit(0)


def test_the_point_of_settle_without_it_ddp_needs_find_unused_parameters(tmp_path):
    mp.spawn(ddp_unsettled_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    messages = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all("find_unused_parameters" in m for m in messages)
