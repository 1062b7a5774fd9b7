"""Compiled, a lean middle still never changes what a module returned to a caller that keeps it.

Under ``torch.compile`` the frame of the caller cannot be read, so whether the parent
``nn.Sequential``'s own forward makes the calls is unknown. Folded anyway, a compiled loop
over the children that keeps taps read BatchNorm's output as the convolution's. Compiled, a
lean convolution now folds nothing: it still computes the input gradient only.
"""

from __future__ import annotations

import copy

import pytest
from test_lean_taps import TOL, _features, _taps

import frozen


# dynamo (torch 2.13) instantiates a custom torch.autograd.Function for its ctx while tracing it
# inlined in a plain function (side_effects.track_object_new) and warns about it itself.
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
def test_taps_kept_from_a_compiled_loop_over_a_lean_middles_children_are_the_modules_own_outputs() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    plain = frozen.freeze(_features(norms=True), "")
    lean = frozen.lean(frozen.freeze(copy.deepcopy(_features(norms=True)), ""))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    got, want = torch.compile(_taps, backend="aot_eager")(lean, x), _taps(plain, x)
    for index, (tap, expected) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(tap, expected, **TOL, msg=f"child {index}")
    grads = [torch.autograd.grad(sum(t.sum() for t in taps), x)[0] for taps in (got, want)]
    torch.testing.assert_close(grads[0], grads[1], **TOL)
    # The compiled Sequential itself gives the plain middle's output and input gradient too.
    y = torch.compile(lean, backend="aot_eager")(x)
    torch.testing.assert_close(y, plain(x), **TOL)
