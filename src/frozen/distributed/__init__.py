"""Freezing and thawing under ``DistributedDataParallel`` and FSDP2 (contract S13).

* :func:`wrap` builds a ``DistributedDataParallel`` wrapper that :func:`rewrap` can
  rebuild with the same arguments, and that raises :class:`frozen.FrozenError` at the
  next forward when freeze/thaw changed its trainable set (:func:`guard`).
* :func:`rewrap` rebuilds the wrapper after ``freeze`` / ``thaw``:
  ``model = frozen.distributed.rewrap(model)`` on every rank.
* :func:`check_ddp_consistent` / :func:`needs_rewrap` check a wrapper without changing it.
* a wrapper built by hand (``DistributedDataParallel(model)``) is checked too: after a
  freeze/thaw, the model's next forward inside it raises :class:`frozen.FrozenError`
  naming :func:`rewrap` (``_watch.py``).
* :func:`local_nbytes` counts what one rank holds of a sharded (FSDP2) tensor.

See ``docs/distributed.md``.
"""

from ._ddp import check_ddp_consistent as check_ddp_consistent
from ._ddp import guard as guard
from ._ddp import local_nbytes as local_nbytes
from ._ddp import needs_rewrap as needs_rewrap
from ._ddp import rewrap as rewrap
from ._ddp import wrap as wrap

__all__ = ["wrap", "rewrap", "guard", "needs_rewrap", "check_ddp_consistent", "local_nbytes"]

# For frozen's own packages (not public API): which FSDP2 unit manages a parameter.
from ._fsdp import manages_parameter as manages_parameter  # noqa: E402
from ._fsdp import sharded_sources as sharded_sources  # noqa: E402
from ._fsdp import watch_loads as watch_loads  # noqa: E402
from ._watch import averaged_elsewhere as averaged_elsewhere  # noqa: E402
from ._watch import watch as watch  # noqa: E402
