"""Freezing and thawing under ``DistributedDataParallel`` and FSDP2 (contract S13).

* :func:`wrap` builds a ``DistributedDataParallel`` wrapper that :func:`rewrap` can
  rebuild with the same arguments, and that raises :class:`frozen.FrozenError` at the
  next forward when freeze/thaw changed its trainable set (:func:`guard`).
* :func:`rewrap` rebuilds the wrapper after ``freeze`` / ``thaw``:
  ``model = frozen.distributed.rewrap(model)`` on every rank.
* :func:`check_ddp_consistent` / :func:`needs_rewrap` check a wrapper without changing it.
* :func:`local_nbytes` counts what one rank holds of a sharded (FSDP2) tensor.

See ``docs/distributed.md``.
"""

from ._distributed import check_ddp_consistent as check_ddp_consistent
from ._distributed import guard as guard
from ._distributed import local_nbytes as local_nbytes
from ._distributed import needs_rewrap as needs_rewrap
from ._distributed import rewrap as rewrap
from ._distributed import wrap as wrap

__all__ = ["wrap", "rewrap", "guard", "needs_rewrap", "check_ddp_consistent", "local_nbytes"]
