"""Optimizers that never touch frozen weights (contract S10).

* :func:`param_groups` builds named parameter groups over exactly the trainable set,
  with the usual conventions (no weight decay on biases and norms, per-pattern
  overrides, discriminative / layer-wise learning rates).
* :func:`sync` re-synchronises any ``torch.optim.Optimizer`` after ``freeze`` /
  ``thaw`` mid-training.
* :func:`state_dict` / :func:`load_state_dict` save and restore an optimizer by
  parameter *path*, so a run that froze and thawed parts resumes exactly.

See ``docs/optimizers.md`` for recipes.
"""

from ._checkpoint import load_state_dict as load_state_dict
from ._checkpoint import state_dict as state_dict
from ._groups import param_groups as param_groups
from ._sync import state_nbytes as state_nbytes
from ._sync import sync as sync

__all__ = ["param_groups", "sync", "state_dict", "load_state_dict", "state_nbytes"]

# For frozen's own packages (not public API): checkpoint keys and the parked-group name.
from ._checkpoint import PATHS_KEY as PATHS_KEY  # noqa: E402
from ._checkpoint import STASH as STASH  # noqa: E402
from ._checkpoint import STASH_PREFIX as STASH_PREFIX  # noqa: E402
from ._groups import PARKED as PARKED  # noqa: E402
from ._sync import STATE_POLICIES as STATE_POLICIES  # noqa: E402
from ._sync import paths_by_id as paths_by_id  # noqa: E402
