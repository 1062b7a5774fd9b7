"""Command line entry point (placeholder until the demo/report commands land)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch import nn

    import frozen

    argv = sys.argv[1:] if argv is None else argv
    torch.manual_seed(0)
    model = nn.Sequential(frozen.Frozen(nn.Sequential(nn.Linear(4, 8), nn.ReLU())), nn.Linear(8, 1))
    frozen.settle(model)
    before = model[0].module[0].weight.clone()
    opt = torch.optim.AdamW(frozen.trainable(model), lr=0.1)
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    print("trainable:", [name for name, _ in frozen.named_trainable(model)])
    print("frozen weight bit-identical after a step:", torch.equal(before, model[0].module[0].weight))
    return 0
