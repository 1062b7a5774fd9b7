"""S4: one module used plainly in one branch and through Frozen in another."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frozen


class Siamese(nn.Module):
    def __init__(self, encoder_first: bool):
        super().__init__()
        encoder = nn.Linear(4, 4)
        # Registration order decides which path named_parameters() reports first.
        if encoder_first:
            self.encoder, self.teacher = encoder, frozen.Frozen(encoder)
        else:
            self.teacher, self.encoder = frozen.Frozen(encoder), encoder
        self.head = nn.Linear(4, 1)

    def forward(self, a, b):
        return self.head(torch.tanh(self.encoder(a)) - torch.tanh(self.teacher(b))).square().sum()


@pytest.mark.parametrize("settled", [False, True], ids=["as-built", "settled"])
@pytest.mark.parametrize("encoder_first", [True, False], ids=["plain-first", "frozen-first"])
def test_gradient_comes_from_the_plain_use_only(settled, encoder_first):
    torch.manual_seed(0)
    model = Siamese(encoder_first)
    if settled:
        with pytest.warns(frozen.TiedParameterWarning, match="'teacher' shares parameters"):
            frozen.settle(model)
    encoder = model.encoder
    assert encoder.weight.requires_grad  # still trainable: a plain use reaches it
    assert {id(p) for p in frozen.trainable(model)} == {
        id(p) for p in [*encoder.parameters(), *model.head.parameters()]
    }
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    model(a, b).backward()

    # Reference: the frozen branch computed with detached copies of the same weights.
    w, c = encoder.weight, encoder.bias
    ref = model.head(torch.tanh(F.linear(a, w, c)) - torch.tanh(F.linear(b, w.detach(), c.detach()))).square().sum()
    ref_w, ref_c = torch.autograd.grad(ref, [w, c])
    assert torch.allclose(encoder.weight.grad, ref_w) and torch.allclose(encoder.bias.grad, ref_c)

    g = frozen.grad(model(a, b), model)
    first = "encoder" if encoder_first else "teacher"
    assert torch.allclose(g[f"{first}.weight"], ref_w)


def test_after_settle_only_the_tied_parameters_are_detached_at_the_frozen_use():
    with pytest.warns(frozen.TiedParameterWarning, match="'teacher' shares parameters"):
        model = frozen.settle(Siamese(encoder_first=True))
    plan = model.teacher._plan
    detached = [
        (owner is model.encoder._parameters, name) for i, (owner, name, _) in enumerate(plan.slots) if i in plan.detach
    ]
    assert detached == [(True, "weight"), (True, "bias")]
    only_frozen = frozen.settle(nn.Sequential(frozen.Frozen(nn.Linear(2, 2)), nn.Linear(2, 1)))
    assert only_frozen[0]._plan.direct and not only_frozen[0]._plan.detach


# -- a tied use that trains is reported as training ----------------------------------------------------------


def test_frozen_gpt2_wte_with_tied_lm_head_warns_at_settle_and_report_says_it_trains():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    model.transformer.wte = frozen.Frozen(model.transformer.wte)
    with pytest.warns(frozen.TiedParameterWarning, match="lm_head"):
        frozen.settle(model)
    assert any(p is model.lm_head.weight for p in frozen.trainable(model))  # per-use semantics (S4)
    row = next(r for r in frozen.report(model).rows if r.path == "transformer.wte")
    assert row.state != "frozen" and "lm_head" in row.state
