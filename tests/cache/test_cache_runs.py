"""A run of sibling modules cached as one part (``"conv1-layer4"``), storing only the last one's output.

A torchvision-style ResNet has no backbone module: its parent calls ``conv1`` ... ``layer4`` in
sequence. Cached one by one, every intermediate output was stored; as a run, only ``layer4``'s.
The run is replayed only when the parent calls the siblings in sequence and keeps nothing in
between, which the first call checks (a clear ``CacheError`` otherwise).
"""

from __future__ import annotations

import pytest
import torch
from counting import count_runs
from resnet_like import TorchvisionStyleResNet
from torch import nn

import frozen
from frozen._cache.part import Part

TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # as in test_cache.py: replayed rows against a fresh forward
SIBLINGS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _train(parts: tuple[str, ...]) -> tuple[list[float], TorchvisionStyleResNet, list[int], dict]:
    model = frozen.freeze(TorchvisionStyleResNet(), "", exclude="fc")
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    runs = count_runs(model.layer1)
    handle = frozen.cache(model, *parts) if parts else None
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    data, labels = torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 3, (24,), generator=g)
    losses = []
    model.train()
    for epoch in range(3):
        for rows in torch.randperm(24, generator=torch.Generator().manual_seed(epoch)).split(8):
            loss = nn.functional.cross_entropy(model(data[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))
    assert model.fc.weight.grad is not None
    return losses, model, runs, handle.stats() if handle else {}


def test_the_siblings_of_a_torchvision_resnet_cache_as_one_part_storing_only_the_last_output() -> None:
    plain, plain_model, plain_runs, _ = _train(())
    losses, model, runs, stats = _train(("conv1-layer4",))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain), **TOL)
    torch.testing.assert_close(model.fc.weight, plain_model.fc.weight, **TOL)
    # The first call is the checked pass (every sibling runs as itself), the second and third fill, the rows
    # check runs once; then hits.
    assert plain_runs == [9] and runs == [1 + 2 + 1]
    run = stats["conv1-layer4"]
    assert (run["misses"], run["hits"]) == (24, 48)
    layer4_row = 32 * 1 * 1 * 4  # channels x height x width x float32 bytes of layer4's output, one sample
    assert run["bytes"] == 24 * layer4_row
    _, _, _, separately = _train(tuple(n for n in SIBLINGS if n != "relu"))  # in place: a part of its own refused
    assert separately["layer4"]["bytes"] > 10 * run["bytes"]  # every intermediate output stored, before
    frozen.uncache(model)
    assert all("forward" not in getattr(model, name).__dict__ or not isinstance(
        getattr(model, name).__dict__["forward"], Part) for name in SIBLINGS)  # fmt: skip
    assert frozen.cache_stats(model) == {}


class SkipConnection(nn.Module):
    """Siblings a, b, c where the parent adds a's output to c's: not a run that can be replayed."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.a(x)
        return self.head(self.c(self.b(first)) + first)


class InBetween(SkipConnection):
    """The parent scales b's output before c: c's input is not b's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(2 * self.b(self.a(x))))


@pytest.mark.parametrize(
    "build, why",
    [(SkipConnection, r"parent still held the input of 'c' \(the output of 'b'\)|kept the output of 'a'"),
     (InBetween, r"'c' was called on something else than the output of 'b'")],
    ids=["skip connection", "an operation in between"],
)  # fmt: skip
def test_a_parent_that_does_not_call_the_siblings_in_sequence_is_refused(build: type, why: str) -> None:
    torch.manual_seed(0)
    model = frozen.freeze(build(), "a", "b", "c")
    frozen.cache(model, "a-c")
    x = torch.randn(6, 4)
    with pytest.raises(frozen.CacheError, match=rf"run 'a' \.\.\. 'c'.*{why}"):
        for _ in range(2):  # a kept input is seen when the next call starts
            model(x)


def test_a_bert_run_of_layers_gets_their_shared_arguments_and_stores_the_last_layer_only() -> None:
    from tiny_models import tiny_bert

    model = frozen.freeze(tiny_bert(layers=3), "bert.embeddings", "bert.encoder.layer.0-1")
    reference = frozen.freeze(tiny_bert(layers=3), "bert.embeddings", "bert.encoder.layer.0-1")
    handle = frozen.cache(model, "bert.embeddings", "bert.encoder.layer.0-1")
    ids, mask = torch.randint(0, 50, (6, 8)), torch.ones(6, 8, dtype=torch.long)
    mask[0, 5:] = 0
    model.eval()
    reference.eval()
    for rows in (torch.arange(6), torch.arange(6), torch.randperm(6), torch.randperm(6)):
        got = model(input_ids=ids[rows], attention_mask=mask[rows]).logits
        torch.testing.assert_close(got, reference(input_ids=ids[rows], attention_mask=mask[rows]).logits, **TOL)
    stats = handle.stats()["bert.encoder.layer.0-1"]
    assert (stats["misses"], stats["hits"]) == (6, 18)  # the first call (every layer ran, checked) stored them
    row = 8 * 16 * 4  # one sequence of layer 1's output: 8 tokens x hidden 16 x float32
    assert stats["entries"] == 12 and stats["bytes"] == 6 * row + 6 * row  # embeddings' rows + layer 1's rows


def test_features_of_a_run_stop_the_model_after_its_last_sibling() -> None:
    model = TorchvisionStyleResNet()
    data, labels = torch.randn(10, 3, 16, 16), torch.arange(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=4)
    runs = count_runs(model.fc)
    got, got_labels = frozen.features(model, loader, part="conv1-layer4", progress=False)
    with torch.no_grad():
        want = model.eval().backbone(data)
    torch.testing.assert_close(got, want, **TOL)
    assert torch.equal(got_labels, labels) and runs == [0]  # nothing after layer4 ran
    one = frozen.features(model, loader, part="layer2", progress=False)[0]
    assert one.shape == (10, 8, 4, 4)
    with pytest.raises(frozen.UnknownPathError, match="part='conv1-layer9'"):
        frozen.features(model, loader, part="conv1-layer9", progress=False)


def test_a_compiled_model_replays_its_run() -> None:
    # Compiled, each sibling is a graph break and the frames that resume after them hold the values passed
    # along: the order of the calls is still checked, and the run hits as in eager mode.
    model = frozen.freeze(TorchvisionStyleResNet(), "", exclude="fc")
    reference = frozen.freeze(TorchvisionStyleResNet(), "", exclude="fc")
    handle = frozen.cache(model, "conv1-layer4")
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(6, 3, 16, 16)
    for rows in (torch.arange(6), torch.randperm(6), torch.randperm(6)):
        torch.testing.assert_close(compiled(x[rows]), reference(x[rows]), **TOL)
    stats = handle.stats()["conv1-layer4"]
    assert (stats["misses"], stats["hits"]) == (6, 12)
