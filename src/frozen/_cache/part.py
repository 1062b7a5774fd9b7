"""The cached ``forward`` of one part: look up each sample, compute only the misses.

:func:`frozen.cache` makes a :class:`Part` the outermost stand-in for the part's ``forward``
(an instance attribute: no new module, no tree or ``state_dict`` change). It keys each
sample by its inputs (``keys.py``), replays stored rows (``table.py``, ``store.py``) and runs
the part on the samples it has not seen, as one smaller batch (``fill.py``).

Nothing in the core calls this module. Instead, each call compares a snapshot of the
part -- every parameter and buffer (object, storage object, ``_version``, dtype, device,
``requires_grad``; see ``watch.py``), every submodule's ``training`` flag and
forward hooks -- with the one its entries were computed under (a hook inside the part is
refused, ``hooks.py``). ``thaw`` (flags), ``load_state_dict`` and
in-place updates (``_version``), ``.to()``/``.half()``/``.cuda()`` (new storage objects)
and ``frozen.load_state`` all change it, and the part's entries are dropped before any
is returned. Under FSDP2 the snapshot also covers the sharded parameters, and a
``load_state_dict`` post-hook drops the entries after any load (``distributed/_fsdp.py``);
a fused optimizer step, which bumps no version, is seen by a global step hook.
Writes through ``.data`` into the same storage are invisible to torch itself: call
``handle.clear()`` after those. A computation that advances torch's default generators
or writes into its inputs is refused before anything is stored: a part that samples is
not a function of its inputs, and a hit cannot repeat a write its caller may read.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._core import StandIn, keeps_training_flag, trainable_ids, under_torch_func
from .._freeze import is_frozen
from ..distributed import sharded_sources, watch_loads
from .args import CacheError, any_requires_grad, forward_parameters, input_grads_hint
from .fill import mixed, store_rows
from .hooks import hook_marks, refuse_inner_hooks, refuse_run_hooks, watch_steps
from .keys import call_keys, derive, remember
from .out import flatten, rebuild
from .purity import check_rows, draws_randomly, generator_marks
from .run import RunLink, RunState, finish_check, run_forward, start_check
from .watch import PartWatch

__all__ = ["COUNTERS", "GRAD_INPUTS", "Part"]

COUNTERS = ("calls", "hits", "misses", "forwards", "invalidations", "bypassed")
GRAD_INPUTS = ("refuse", "pass")  # frozen.cache(..., grad_inputs=): a call whose inputs require grad


class Part(StandIn):
    """The ``forward`` of one cached part: look up each sample, compute only the misses.

    The outermost layer of the module's ``forward`` (``_core/standins.py``): a miss calls the
    layers behind it (a lean convolution, frozen's white-box guard, the class's ``forward``).
    Its store is the original's, so a copy of the model gets a pass-through instead: copies
    run uncached.
    """

    attr, layer, serves_copies = "forward", "cache", False

    def __init__(self, handle: Any, model: nn.Module, module: nn.Module, path: str, index: int) -> None:
        super().__init__(module)  # the module weakly: this lives in its __dict__
        self.handle, self.path = handle, path
        self.prefix = index.to_bytes(4, "little")
        self.model = weakref.ref(model)
        self.fingerprint: PartWatch | None = None
        self.hooks: tuple = ()  # the forward hooks on the part's modules at the fingerprint (hooks.py)
        self.bypass = False
        self.token = os.urandom(16)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.argument_names = forward_parameters(type(module).forward)[0]
        # cache(..., shared=): tensors every sample of a call shares, by keyword and by position
        self.shared = frozenset(handle.shared) | {i for i, n in enumerate(self.argument_names) if n in handle.shared}
        self.load_hooks = watch_loads(list(module.modules()), self.forget)  # removed by uncache
        self.verified = False  # rows checked to depend on their own sample only (purity.check_rows)
        self.run: RunState | None = None  # a run of siblings cached as one part (run.py): its state
        self.links: list[RunLink] = []  # the stand-ins on the siblings after the first
        _disable_compile()

    def members(self) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of the part's roots: the module, or every sibling of a run."""
        if self.run is None:
            return [(self.path, self.module)]
        return list(zip(self.run.paths, [self.module, *(link.module_ref() for link in self.links)], strict=True))

    def forget(self) -> None:
        """Distrust the snapshot: the next call drops this part's entries (after a load or a fused step)."""
        self.counts["invalidations"] += self.fingerprint is not None
        self.fingerprint = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The part's computation: the module's own forward, or a run's siblings one after the other."""
        if self.run is not None:
            return run_forward(self.callers(), args, kwargs)
        return self.plain(*args, **kwargs)

    def plain(self, *args: Any, **kwargs: Any) -> Any:
        """This module's own forward: the layers behind the cache (for a run: the first sibling's)."""
        return self.call_previous(*args, **kwargs)

    def callers(self) -> list[Any]:
        """For each root of the part, what runs it uncached: the layers behind its cache stand-in."""
        return [self.call_previous, *(link.call_previous for link in self.links)]

    # Under torch.compile the part runs eagerly, a graph break on each side: a hit is a
    # lookup with nothing to compile, and traced, the keys, the store and the snapshot
    # became guards that recompiled at every batch and never hit. The first Part built
    # applies torch.compiler.disable (see _disable_compile): at import it would load dynamo.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        counts = self.counts
        counts["calls"] += 1
        run = self.run
        if run is not None and not run.checked:
            if not run.passed:  # the first pass of a run: every sibling runs as itself
                if run.trace is not None:
                    raise run.refuse(f"the parent did not call {run.paths[len(run.trace)]!r} after the others")
                return self._check_pass(args, kwargs)
            finish_check(run)
        if run is not None and run.pending is not None:
            raise run.refuse(f"the parent did not call {run.paths[run.pending[2]]!r} after the others")
        # grad_inputs="pass": the part used as a frozen middle (a perceptual loss on generated images)
        # runs plainly, a white box; calls on constant inputs (the targets) still use the cache.
        passed = self.handle.grad_inputs == "pass" and any_requires_grad(args, kwargs)
        if passed or not self._cacheable_now():
            counts["bypassed"] += 1
            counts["forwards"] += 1
            return self.plain(*args, **kwargs)
        try:
            keys = call_keys(args, kwargs, self.path, self.handle.current_ids(), self.shared)
        except CacheError as error:
            raise CacheError(f"{error}{input_grads_hint(self.model())}") from None
        if keys.batch == 0:  # nothing to key or store: the part's own (empty) output
            counts["forwards"] += 1
            return self.plain(*args, **kwargs)
        store = self.handle.store
        table = store.table(self.prefix + keys.context, keys.by_ids)
        slots = table.lookup(keys.rows)
        missing = np.flatnonzero(slots < 0)
        counts["hits"] += keys.batch - len(missing)
        counts["misses"] += len(missing)
        if not len(missing):  # a hit: one gather per output tensor
            leaves = store.read(table, slots)
            output = rebuild(table.signature[0], leaves)
        elif len(missing) == keys.batch:  # a fill: the part on the whole batch, one scatter per output tensor
            output, spec, leaves = self._compute(args, kwargs, keys)
            store_rows(self, table, keys.rows, spec, leaves)
        else:
            output, leaves = mixed(self, args, kwargs, keys, table, slots, missing)
        if not keys.by_ids:
            for n, leaf in enumerate(leaves):
                remember(leaf, derive(self.token, keys, n))
        if run is not None:  # the siblings after the first pass this output on (run.py)
            version = None if not isinstance(output, torch.Tensor) or output.is_inference() else output._version
            run.pending, run.extra = (output, version, 1), (args[1:], dict(kwargs))
        return output

    def _check_pass(self, args: tuple, kwargs: dict) -> Any:
        """A run's first call: every sibling runs as itself, checked (run.py); the last output is stored."""
        run = self.run
        assert run is not None
        self.counts["forwards"] += 1
        passed = self.handle.grad_inputs == "pass" and any_requires_grad(args, kwargs)
        if not passed and self._cacheable_now():
            keys = call_keys(args, kwargs, self.path, self.handle.current_ids(), self.shared)
            run.keys = keys if keys.batch else None
        return start_check(run, self.call_previous, args, kwargs)

    def store_checked(self, output: Any) -> None:
        """Store the output of a run's checked pass under the keys of its first call (``RunLink``)."""
        keys, self.run.keys = self.run.keys, None  # type: ignore[union-attr]
        if keys is None:
            return
        spec, leaves = flatten(output, keys.batch, self.path)
        self.counts["misses"] += keys.batch
        store_rows(self, self.handle.store.table(self.prefix + keys.context, keys.by_ids), keys.rows, spec, leaves)

    def _cacheable_now(self) -> bool:
        """Check the part against its snapshot (dropping stale entries); whether this call may use the cache."""
        if under_torch_func():
            # vmap/grad wrap inputs and substituted parameters per transform level: no key or
            # snapshot is meaningful there. Run plainly and leave the stored entries alone.
            return False
        fingerprint = self.fingerprint
        recorded = fingerprint.live() if fingerprint is not None else None
        roots = [m for _, m in self.members()]
        modules = recorded if recorded is not None else [m for root in roots for m in root.modules()]
        shards = sharded_sources(self.model(), self.members()[0][0], modules)
        if shards is None:  # FSDP2 state unreadable: no snapshot can be trusted, so never cache
            self.fingerprint = None
            self.handle.store.drop(keep=lambda key: not key.startswith(self.prefix))
            return False
        if (
            fingerprint is None
            or recorded is None
            or not fingerprint.matches(self.module, shards, recorded)
            or hook_marks(modules, self.run is not None) != self.hooks
        ):
            fresh = PartWatch(roots, shards)
            self._revalidate(fresh)
            # over the module list the next call compares
            self.hooks = hook_marks(fresh.live() or [], self.run is not None)
        return not self.bypass

    def _compute(self, args: tuple, kwargs: dict, keys: Any, batch: int | None = None) -> tuple[Any, Any, list]:
        """Run the part on (a subset of) the batch; return the output, its spec and its leaves.

        Refused before anything is stored: a part that wrote into its inputs, drew random
        numbers, or (on its first filling call, ``verify``) whose rows depend on each other.
        """
        self.counts["forwards"] += 1
        batch = keys.batch if batch is None else batch
        inputs = [(n, a) for n, a in (*enumerate(args), *kwargs.items()) if isinstance(a, torch.Tensor)]
        devices = {a.device for _, a in inputs}
        before = generator_marks(devices)
        versions = [None if a.is_inference() else a._version for _, a in inputs]
        with torch.no_grad():
            output = self.forward(*args, **kwargs)
        written = [n for (n, a), v in zip(inputs, versions, strict=True) if v is not None and a._version != v]
        if written:
            raise CacheError(
                f"frozen.cache: the part at {self.path!r} modified its input argument {written[0]!r} in place (an "
                f"nn.ReLU(inplace=True) or an in-place op first?): a hit does not, so its caller would see other "
                f"values than without the cache (a residual connection adding that input, say). Make that operation "
                f"out of place, cache a part that starts after it, or do not cache it: "
                f"frozen.uncache(model, {self.path!r})."
            )
        if before != generator_marks(devices) and draws_randomly(self.forward, args, kwargs):
            raise CacheError(
                f"frozen.cache: the part at {self.path!r} drew random numbers in its forward (torch's default "
                f"generator advanced), so its output is not a function of its inputs: a cached output would "
                f"replay one draw forever. Make it deterministic in inference (e.g. return a posterior's mean, not "
                f"a sample), draw the noise outside the part, or do not cache it: frozen.uncache(model, {self.path!r})."
            )
        spec, leaves = flatten(output, batch, self.path)
        if self.handle.verify and not self.verified and batch >= 2:
            self.verified = check_rows(self, args, kwargs, [n for n, _ in keys.batched], leaves)
        return output, spec, leaves

    def _revalidate(self, fingerprint: PartWatch) -> None:
        """Drop this part's entries; decide whether it may be cached now (thawed: pass through)."""
        self.handle.store.drop(keep=lambda key: not key.startswith(self.prefix))
        self.counts["invalidations"] += self.fingerprint is not None
        self.token = os.urandom(16)  # tensors from the old state get keys that no longer match
        members = self.members()
        parameters = [p for _, root in members for p in root.parameters()]
        watch_steps(parameters, self.forget)  # fused optimizer steps bump no version

        model = self.model()
        if any(p.requires_grad for p in parameters) or (
            model is not None and _trainable_inside(self.handle, model, parameters)
        ):
            self.bypass, self.fingerprint = True, fingerprint
            return
        for path, root in members:
            for name, sub in root.named_modules():
                # A Hugging Face layer frozen while checkpointing is on keeps its own training flag, only so
                # that Hugging Face still checkpoints it; its children run in eval (checked here in turn).
                if sub.training and not keeps_training_flag(sub):
                    where = f"{path}.{name}" if name else path
                    if model is not None and not is_frozen(model, where):
                        self.bypass, self.fingerprint = True, fingerprint  # thawed inside: it trains now
                        return
                    raise CacheError(
                        f"frozen.cache: the module at {where!r} ({type(sub).__name__}) inside the cached part "
                        f"{self.path!r} runs in training behaviour (frozen with mode='inherit' in a training model?); "
                        f"a cached part must run in inference behaviour. Freeze it with mode='eval' (the default), "
                        f"or stop caching it: frozen.uncache(model, {self.path!r})."
                    )
        if self.handle.inner_hooks == "refuse":
            # raised again at every call until the hook is gone
            if self.run is None:
                refuse_inner_hooks(self.module, self.path)
            else:
                refuse_run_hooks(members)
        self.bypass, self.fingerprint = False, fingerprint


def _trainable_inside(handle: Any, model: nn.Module, parameters: Sequence[torch.Tensor]) -> bool:
    """Whether one of the part's ``parameters`` trains through another use (one walk of the model per step)."""
    ids = handle.trainable(model, trainable_ids)
    return any(id(p) in ids for p in parameters)


_COMPILE_DISABLED = False


def _disable_compile() -> None:
    """Make ``Part.__call__`` run eagerly under ``torch.compile``, once, when the first part is built.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (~900 modules): as a decorator it would
    run at ``import frozen``. A copy becomes a ``Passthrough``, so no part is called before this.
    """
    global _COMPILE_DISABLED
    if not _COMPILE_DISABLED:
        Part.__call__ = torch.compiler.disable(Part.__call__)  # type: ignore[method-assign]
        _COMPILE_DISABLED = True
