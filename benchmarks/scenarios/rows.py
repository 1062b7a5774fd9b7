"""Row freezing on a GPT-2-sized tied embedding: new-token rows train, every other row is frozen.

A ``GPT2LMHeadModel`` from ``GPT2Config(n_layer=1)`` (vocab 50257 x 768, ``wte`` tied with
``lm_head``), AdamW with weight decay, 1 % of the embedding rows trainable (the last 503
rows, as after adding tokens). Variants:

* ``whole``: the whole embedding trains (what users do today, moving every row);
* ``rows``: ``freeze_rows(model, Rows("transformer.wte.weight", trainable=new))`` -- the
  optimizer steps over a view of the trainable rows;
* ``rows-scattered``: the same number of rows, scattered (a gathered copy each step);
* ``separate``: the separate-tensor reference of ``tests/rows/test_rows.py`` -- the trainable
  rows are their own parameter, the rest a constant, the weight assembled each forward.

Tiny mode (smoke test) shrinks the vocabulary and width.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

import frozen
from frozen._rows.rows import Rows, freeze_rows

from ..harness import Bar, Scenario, Setup, Workload

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

__all__ = ["SCENARIOS"]

WTE = "transformer.wte.weight"


def _model(setup: Setup) -> GPT2LMHeadModel:
    from transformers import GPT2Config, GPT2LMHeadModel  # declared in `requires`: imported when it runs

    torch.manual_seed(0)
    sizes: dict[str, Any] = (
        dict(vocab_size=1000, n_embd=32, n_head=2, bos_token_id=0, eos_token_id=0)
        if setup.tiny
        else dict(vocab_size=50257, n_embd=768, n_head=12)
    )
    config = GPT2Config(n_layer=1, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **sizes)
    model = GPT2LMHeadModel(config)
    model.to(setup.device)  # type: ignore[arg-type]  # transformers types its decorated .to as unbound
    return model


def _rows(vocab: int, variant: str) -> torch.Tensor:
    k = max(1, vocab // 100)  # 1 % of the rows train
    if variant == "rows-scattered":
        return torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:k].sort().values
    return torch.arange(vocab - k, vocab)


def _separate(model: GPT2LMHeadModel, index: torch.Tensor):
    """The reference: trainable rows as their own parameter; forward with the assembled weight."""
    weight = model.transformer.wte.weight
    constant = weight.detach().clone()
    rows = torch.nn.Parameter(constant[index].clone())
    others = [p for name, p in model.named_parameters() if name != WTE]

    def loss(ids: torch.Tensor) -> torch.Tensor:
        assembled = constant.index_copy(0, index, rows)  # ties lm_head too (functional_call keeps ties)
        return torch.func.functional_call(model, {WTE: assembled}, (ids,), {"labels": ids}).loss

    return [rows, *others], loss, constant, rows


def _build(variant: str, setup: Setup) -> Workload:
    model = _model(setup)
    vocab = model.config.vocab_size
    index = _rows(vocab, variant).to(setup.device)
    ids = torch.randint(0, vocab, (2, 16) if not setup.tiny else (1, 8), generator=torch.Generator().manual_seed(1))
    ids = ids.to(setup.device)
    weight = model.transformer.wte.weight
    frozen_mask = torch.ones(vocab, dtype=torch.bool, device=setup.device)
    frozen_mask[index] = False
    frozen_state: Callable[[], dict[str, Any]] = dict
    if variant == "separate":
        params, loss, constant, rows = _separate(model, index)
        frozen_state = lambda: {"wte (constant rows)": constant}  # noqa: E731
    else:
        params, rows = list(model.parameters()), None
        loss = lambda ids: model(ids, labels=ids).loss  # noqa: E731
        if variant != "whole":
            freeze_rows(model, Rows(WTE, trainable=index.cpu()))
            frozen_state = lambda: {"wte (frozen rows)": weight.detach()[frozen_mask]}  # noqa: E731
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(ids).backward()
        optimizer.step()

    def figures() -> dict[str, float | int | str]:
        # optimizer.step() alone, the part row freezing changes, without the forward/backward that
        # dominate the step. Measured once per variant, not interleaved like the suite's timings, so
        # no bar is judged on it (a figure bar would be judged as if exact).
        times = []
        for _ in range(5):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        trained = rows if rows is not None else weight[index]
        return {
            "optimizer state bytes": frozen.optim.state_nbytes(optimizer),
            "optimizer.step ms": round(1000 * statistics.median(times), 2),
            "trainable rows": int(trained.shape[0]),
        }

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(ids).logits

    return Workload(
        step=step, model=model, optimizer=optimizer, frozen_state=frozen_state, probe=probe, figures=figures
    )


SCENARIOS = (
    Scenario(
        key="rows-gpt2",
        title="Row freezing: 1 % of a GPT-2 tied embedding trains",
        about=(
            "GPT2LMHeadModel(GPT2Config(n_layer=1)): vocab 50257 x 768, wte tied with lm_head; a batch of 2 x 16 "
            "tokens; AdamW(lr=1e-3, weight_decay=0.01). `rows`: the last 502 rows (1 %) train, the rest are frozen "
            "with frozen.Rows (optimizer steps see a view of the trainable rows); `rows-scattered`: 502 scattered "
            "rows (a gathered copy); `separate`: the trainable rows as their own parameter, the weight assembled "
            "with index_copy each forward (the exactness reference of tests/rows/test_rows.py); `whole`: every row trains."
        ),
        build=_build,
        variants=("whole", "rows", "rows-scattered", "separate"),
        reference="whole",
        bars=(
            Bar("rows step time / whole embedding", "rows", "whole", 1.0, "<="),
            Bar("rows step time / separate-tensor reference", "rows", "separate", 1.10, "<="),
            Bar("scattered rows step time / separate-tensor reference", "rows-scattered", "separate", 1.10, "<="),
            Bar("rows optimizer state / separate", "rows", "separate", 1.0, "<=", "optimizer state bytes"),
        ),
        inner=1,
        rounds=(6, 20),  # 6: the fewest rounds the verdict rule judges
        rss=False,
        requires=("transformers",),  # the model is built from a transformers config
    ),
)
