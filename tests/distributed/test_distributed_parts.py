"""Cached prefixes, lean middles and frozen rows on 2 real ranks: DDP (all three) and FSDP2 (cache, lean).

A perceptual loss whose feature net is cached with ``grad_inputs="pass"`` runs under DDP too.

One spawn (2 processes, gloo, CPU, file-store rendezvous) runs every scenario and saves
what each rank saw. Cache and lean train twice on every rank -- with the speed-up and
without -- and the tests compare the two. Tolerances: the cache replays bit-identical
rows here (TOL is the one of tests/helpers/cached_models.py); folding BatchNorm changes float
rounding (TOL of tests/lean/test_lean.py). Frozen rows are checked against a single-process
run on both ranks' data (1e-6: the all-reduce sums in another order). Under FSDP2 a
cached prefix and a lean middle must follow ``set_model_state_dict`` (FSDP2 writes the
shards with their version counters preserved) and in-place edits of the sharded weights.
"""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import SuperResolution
from torch import nn
from torch.distributed.fsdp import fully_shard

import frozen
import frozen.distributed
from frozen._lean.api import lean
from frozen._rows.rows import frozen_rows

WORLD = 2
CACHE_TOL = {"rtol": 1.3e-6, "atol": 1e-5}
LEAN_TOL = {"rtol": 1e-5, "atol": 1e-5}


def prefix_model() -> nn.Module:
    """A frozen Linear-BatchNorm prefix ("0", buffers DDP broadcasts) under two trainable layers."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU()), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )
    return frozen.freeze(model, "0").train()


def middle_model() -> nn.Module:
    """A trainable stem, a frozen conv-BN-ReLU middle ("1") gradients pass through, a trainable head."""
    torch.manual_seed(0)
    blocks = []
    for stride in (1, 2, 1):
        norm = nn.BatchNorm2d(8)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        blocks += [nn.Conv2d(8, 8, 3, stride=stride, padding=1), norm, nn.ReLU()]
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(*blocks), nn.Flatten(), nn.Linear(8 * 16, 2))
    return frozen.freeze(model, "1").train()


def states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()
    }


def saved_bytes(run, *args) -> int:
    """Bytes saved for backward by ``run(*args)``'s forward, each storage once, parameters excluded."""
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(*args).square().mean().backward()
    return sum(sizes.values())


def cached_prefix_run(rank: int, use_cache: bool) -> dict:
    model = prefix_model()
    start = states(model)
    handle = frozen.cache(model, "0") if use_cache else None
    wrapped = frozen.distributed.wrap(model)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    data = torch.randn(16, 4, generator=torch.Generator().manual_seed(rank))
    losses = []
    for epoch in range(3):
        for rows in torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).split(8):
            loss = wrapped(data[rows]).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {"start": start, "end": states(model), "losses": losses, "stats": handle.stats()["0"] if handle else None}


def lean_middle_run(rank: int, use_lean: bool, sharded: bool) -> dict:
    model = middle_model()
    start = states(model)
    if use_lean:
        lean(model, "1")
    if sharded:
        for child in (model[0], model[1], model[3]):
            fully_shard(child)
        wrapped = fully_shard(model)
    else:
        wrapped = frozen.distributed.wrap(model)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(rank))
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        wrapped(x).square().mean().backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    alone = middle_model()  # the same model in one process, unwrapped: what the wrapper should save
    return {"start": start, "end": states(model), "saved": saved_bytes(wrapped, x),
            "saved_alone": saved_bytes(lean(alone, "1") if use_lean else alone, x)}  # fmt: skip


def perceptual_run(rank: int, use_cache: bool) -> dict:
    """The loss under DDP; with the cache (``grad_inputs="pass"``) the targets' features are stored."""
    model = frozen.freeze(SuperResolution(), "features")
    start = states(model)
    handle = frozen.cache(model, "features", grad_inputs="pass") if use_cache else None
    wrapped = frozen.distributed.wrap(model)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    g = torch.Generator().manual_seed(rank)
    low, high = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    losses = []
    for epoch in range(3):
        for rows in torch.randperm(8, generator=torch.Generator().manual_seed(epoch)).split(4):
            loss = wrapped(low[rows], high[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {"start": start, "end": states(model), "losses": losses,
            "stats": handle.stats()["features"] if handle else None}  # fmt: skip


def rows_model() -> nn.Module:
    """An embedding whose rows 0-11 are frozen (12-15 train, as new tokens would) under a trainable head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(16, 8), nn.Flatten(), nn.Linear(8 * 4, 2))
    return frozen.freeze(model, frozen.Rows("0.weight", trainable=range(12, 16)))


def rows_run(rank: int, distributed: bool) -> dict:
    """AdamW with weight decay for 3 steps: under DDP on this rank's tokens, or alone on both ranks' tokens."""
    model = rows_model()
    start = states(model)
    wrapped = frozen.distributed.wrap(model) if distributed else model
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        tokens = [
            torch.randint(0, 16, (4, 4), generator=torch.Generator().manual_seed(10 * step + r)) for r in range(WORLD)
        ]
        loss = wrapped(tokens[rank] if distributed else torch.cat(tokens)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"start": start, "end": states(model)}


def rows_sharded_run() -> dict:
    """Frozen rows meet FSDP2: sharded after the freeze, or frozen once sharded. Both refused, clearly."""
    refusals = {}
    model = rows_model()
    fully_shard(model)  # its parameters become DTensor shards, each holding some rows
    for when, action in (("building the optimizer", lambda: frozen.trainable(model)),
                         ("forward", lambda: model(torch.zeros(2, 4, dtype=torch.long)))):  # fmt: skip
        try:
            action()
        except frozen.FrozenError as error:
            refusals[when] = str(error)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Embedding(16, 8), nn.Flatten(), nn.Linear(8 * 4, 2))
    fully_shard(plain)
    try:
        frozen.freeze(plain, frozen.Rows("0.weight", trainable=range(12, 16)))
    except frozen.FrozenError as error:
        refusals["freeze"] = str(error)
    refusals["after the refused freeze"] = str(frozen_rows(plain))
    return refusals


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


def _load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))


def sharded_changes_run(rank: int) -> dict:
    """Cached prefix and lean middle under FSDP2; after each change, the output and an unsharded twin's."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(rank))
    out: dict = {}
    for name, model, inputs, frozen_part in (
        ("cache", prefix_model(), x, "0."),
        ("lean", lean(middle_model(), "1"), images, "1."),
    ):
        handle = frozen.cache(model, "0") if name == "cache" else None
        # the cached prefix holds a unit of its own: FSDP2's hooks inside a cached part are allowed
        for child in ((model[0][0],) if name == "cache" else ()) + (model[0], model[1]):
            fully_shard(child)
        sharded = fully_shard(model)
        twin = prefix_model() if name == "cache" else middle_model()
        with torch.no_grad():
            sharded(inputs)  # stored / folded
            loaded = {k: v * 2 if k.startswith(frozen_part) and k.endswith("weight") else v
                      for k, v in _full_state(sharded).items()}  # fmt: skip
            _load_full_state(sharded, loaded)
            twin.load_state_dict(loaded)
            out[f"{name}_after_load"] = (sharded(inputs), twin(inputs))
            weight = sharded.get_parameter(f"{frozen_part}0.weight")  # a DTensor shard: edited in place
            weight.mul_(0.5)
            twin.get_parameter(f"{frozen_part}0.weight").mul_(0.5)
            out[f"{name}_after_edit"] = (sharded(inputs), twin(inputs))
        if handle is not None:
            out["cache_stats"] = handle.stats()["0"]
    return out


def worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        out = {f"cache_{on}": cached_prefix_run(rank, on) for on in (False, True)}
        out |= {f"rows_{on}": rows_run(rank, on) for on in (False, True)}
        out |= {f"perceptual_{on}": perceptual_run(rank, on) for on in (False, True)}
        out["sharded_changes"] = sharded_changes_run(rank)
        out["rows_sharded"] = rows_sharded_run()
        for sharded in (False, True):
            out |= {f"lean_{sharded}_{on}": lean_middle_run(rank, on, sharded) for on in (False, True)}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("speedups")
    mp.spawn(worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def assert_trained_like(run: dict, plain: dict, frozen_prefix: str, tol: dict) -> None:
    """Tensors under ``frozen_prefix`` bit-identical to the start; every other one changed, and as in ``plain``."""
    for key, value in run["start"].items():
        if key.startswith(frozen_prefix):
            assert torch.equal(run["end"][key], value), key
        else:
            torch.testing.assert_close(run["end"][key], plain["end"][key], **tol)
            assert not torch.equal(run["end"][key], value), key


def test_a_cached_prefix_under_ddp_hits_and_trains_like_no_cache(ranks: list[dict]) -> None:
    for seen in ranks:
        plain, cached = seen["cache_False"], seen["cache_True"]
        torch.testing.assert_close(torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), **CACHE_TOL)
        assert cached["stats"]["hits"] == 32 and cached["stats"]["forwards"] == 2  # epochs 2-3: no forward
        assert cached["stats"]["invalidations"] == 0  # DDP's buffer broadcast left the prefix unchanged
        assert_trained_like(cached, plain, "0.", CACHE_TOL)
    for key in ranks[0]["cache_True"]["end"]:
        assert torch.equal(ranks[0]["cache_True"]["end"][key], ranks[1]["cache_True"]["end"][key]), key


def test_a_perceptual_loss_under_ddp_caches_the_targets_and_trains_the_generator_as_uncached(ranks) -> None:
    # grad_inputs="pass": the generated images cross the net (a white box under DDP's reducer), the
    # targets' features are computed in epoch 1 only.
    for seen in ranks:
        plain, cached = seen["perceptual_False"], seen["perceptual_True"]
        torch.testing.assert_close(torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), **CACHE_TOL)
        stats = cached["stats"]
        assert (stats["bypassed"], stats["misses"], stats["hits"]) == (6, 8, 16)
        assert_trained_like(cached, plain, "features.", CACHE_TOL)
    for key in ranks[0]["perceptual_True"]["end"]:
        assert torch.equal(ranks[0]["perceptual_True"]["end"][key], ranks[1]["perceptual_True"]["end"][key]), key


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp2"])
def test_a_lean_middle_trains_like_the_plain_one_and_saves_less(ranks: list[dict], sharded: bool) -> None:
    for seen in ranks:
        plain, leaned = seen[f"lean_{sharded}_False"], seen[f"lean_{sharded}_True"]
        assert_trained_like(leaned, plain, "1.", LEAN_TOL)
        # The wrapper keeps the lean saving whole: the middle saves only its ReLUs' outputs, as in
        # one process (0.63x of the plain model here, whose stem input and head input stay).
        assert leaned["saved"] == leaned["saved_alone"] <= 0.65 * plain["saved_alone"] <= 0.65 * plain["saved"]


def test_frozen_rows_under_ddp_stay_bit_identical_and_the_rest_trains_like_one_process(ranks: list[dict]) -> None:
    for seen in ranks:
        start, end, alone = seen["rows_True"]["start"], seen["rows_True"]["end"], seen["rows_False"]["end"]
        assert torch.equal(end["0.weight"][:12], start["0.weight"][:12])  # AdamW's decay did not reach them
        assert not torch.equal(end["0.weight"][12:], start["0.weight"][12:])
        for key, value in end.items():
            torch.testing.assert_close(value, alone[key], rtol=1e-6, atol=1e-6)
    for key in ranks[0]["rows_True"]["end"]:
        assert torch.equal(ranks[0]["rows_True"]["end"][key], ranks[1]["rows_True"]["end"][key]), key


def test_frozen_rows_under_fsdp2_are_refused_with_the_fix_not_left_to_fail_in_the_optimizer(ranks) -> None:
    # Before: AdamW's step raised "Sharding propagation failed for aten.lerp_" from inside torch.
    for seen in ranks:
        refusals = seen["rows_sharded"]
        for when in ("building the optimizer", "forward", "freeze"):
            assert "'0.weight' is managed by FSDP2's fully_shard (sharded)" in refusals[when], when
            assert "freeze the whole parameter under FSDP2, or train with DDP" in refusals[when], when
        assert refusals["after the refused freeze"] == "{}"


@pytest.mark.parametrize("part", ["cache", "lean"])
def test_under_fsdp2_a_load_or_an_in_place_edit_of_the_shards_is_seen(ranks: list[dict], part: str) -> None:
    # Before, a cached prefix kept answering with the outputs of the weights before set_model_state_dict.
    for seen in ranks:
        changes = seen["sharded_changes"]
        for change in ("after_load", "after_edit"):
            got, want = changes[f"{part}_{change}"]
            torch.testing.assert_close(got, want, **LEAN_TOL, msg=change)
        if part == "cache":
            assert changes["cache_stats"]["invalidations"] == 2 and changes["cache_stats"]["forwards"] == 3
