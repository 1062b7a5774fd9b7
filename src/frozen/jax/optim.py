"""Optimizer state for the trainable arrays only (``docs/jax.md``, "Optimizers").

``init(tx, model)`` builds it, ``update(grads, opt_state, model)`` steps it,
``sync(opt_state, model)`` follows ``fj.freeze`` / ``fj.thaw``, ``state_nbytes`` measures it.
"""

from ._state import OptState as OptState
from ._state import init as init
from ._state import state_nbytes as state_nbytes
from ._state import update as update
from ._sync import sync as sync

__all__ = ["OptState", "init", "state_nbytes", "sync", "update"]
