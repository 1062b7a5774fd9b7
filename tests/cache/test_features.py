"""frozen.features: a frozen backbone computed once over a loader, in eval mode, then restored."""

from __future__ import annotations

import pytest
import torch
from cached_models import TOL, Probe

from frozen import CacheError, features


def test_features_compute_a_backbone_once_over_a_loader() -> None:
    torch.manual_seed(0)
    backbone = Probe().backbone  # features() runs it in eval mode whatever its mode, then restores it
    data, labels = torch.randn(10, 3, 16, 16), torch.arange(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=4)
    with torch.no_grad():
        want = backbone.eval()(pixel_values=data).last_hidden_state
    backbone.train()
    out, got_labels = features(backbone, loader, progress=True)
    torch.testing.assert_close(out.last_hidden_state, want, **TOL)
    assert torch.equal(got_labels, labels) and backbone.training and not out.last_hidden_state.requires_grad
    dict_loader = [{"pixel_values": data[:4]}, {"pixel_values": data[4:]}]
    torch.testing.assert_close(features(backbone, dict_loader, progress=False).last_hidden_state, want, **TOL)
    with pytest.raises(CacheError, match="no batch"):
        features(backbone, [], progress=False)
