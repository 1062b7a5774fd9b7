"""Which modules are normalisation layers: the one rule ``train_norms=True`` and weight decay share.

``frozen.freeze(..., train_norms=True)`` keeps these trainable and
``frozen.optim.param_groups(no_decay_bias_and_norm=True)`` exempts their weights from weight
decay; one predicate serves both, so the two can never disagree about a model's norms.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["NORM_TYPES", "is_norm"]

# Every normalisation layer torch ships; is_norm adds the ones models define themselves.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)
# A class named like a norm: LlamaRMSNorm, T5LayerNorm, ScaleNorm, LayerNorm2d. Not
# Wav2Vec2GroupNormConvLayer (a convolution) or Normalize: the name must end in Norm.
_NORM_NAME = re.compile(r"Norm(\d+d)?$")


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer: the one rule of ``train_norms=True`` and of
    ``frozen.optim.param_groups(no_decay_bias_and_norm=True)`` (``docs/selectors.md``).

    An instance of torch's norm classes (:data:`NORM_TYPES`), or of a class whose name (or a
    base class's) ends in ``Norm``, optionally with a dimension (``LayerNorm2d``), that holds
    no parameter below it: Hugging Face's ``LlamaRMSNorm`` and ``T5LayerNorm`` are plain
    ``nn.Module`` subclasses. A module named like a norm that holds layers with weights
    (``PreNorm(dim, fn)``, ``AdaLayerNorm`` and its modulation ``Linear``) wraps a norm
    rather than being one: keeping it trainable would keep ``fn`` trainable, and the norm
    inside it is found on its own.
    """
    if isinstance(module, NORM_TYPES):
        return True
    named = any(_NORM_NAME.search(c.__name__) for c in type(module).__mro__ if c is not nn.Module)
    return named and not any(True for child in module.children() for _ in child.parameters())
