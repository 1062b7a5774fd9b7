"""Gradual unfreezing schedules (ULMFiT, Lightning ``BackboneFinetuning``, fastai ``fine_tune``).

A :class:`GradualUnfreezing` thaws parts of a model in order, on a plan counted in
calls of its :meth:`~GradualUnfreezing.step` (epochs or steps), and keeps the
optimizer in sync with :func:`frozen.optim.sync`. It has ``state_dict()`` /
``load_state_dict()`` for exact resume. See ``docs/optimizers.md``.
"""

from ._plan import GradualUnfreezing as GradualUnfreezing
from ._plan import Stage as Stage

__all__ = ["GradualUnfreezing", "Stage"]
