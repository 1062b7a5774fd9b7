"""The cached ``forward`` of one part: look up each sample, compute only the misses.

:func:`frozen.cache` makes a :class:`Part` the outermost stand-in for the part's ``forward``
(an instance attribute: no new module, no tree or ``state_dict`` change). It keys each
sample by its inputs (``_cache_key.py``), replays stored rows and runs the part on the
samples it has not seen, as one smaller batch.

Nothing in the core calls this module. Instead, each call compares a snapshot of the
part -- every parameter and buffer (object, storage object, ``_version``, dtype, device,
``requires_grad``; see ``_tensor_state.py``), every submodule's ``training`` flag and
forward hooks -- with the one its entries were computed under (a hook inside the part is
refused, ``_cache_hooks.py``). ``thaw`` (flags), ``load_state_dict`` and
in-place updates (``_version``), ``.to()``/``.half()``/``.cuda()`` (new storage objects)
and ``frozen.load_state`` all change it, and the part's entries are dropped before any
is returned. Under FSDP2 the snapshot also covers the sharded parameters, and a
``load_state_dict`` post-hook drops the entries after any load (``_fsdp_sources.py``).
Writes through ``.data`` into the same storage are invisible to torch itself: call
``handle.clear()`` after those. A computation that advances torch's default generators
or writes into its inputs is refused before anything is stored: a part that samples is
not a function of its inputs, and a hit cannot repeat a write its caller may read.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch import nn

from .._core import ModuleState, StandIn, keeps_training_flag, trainable_ids, under_torch_func
from .._freeze import is_frozen
from ..distributed import sharded_sources, watch_loads
from .hooks import hook_marks, refuse_inner_hooks
from .keys import CacheError, call_keys, derive, forward_parameters, remember
from .out import assemble, flatten, rebuild

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
        self.fingerprint: ModuleState | None = None
        self.hooks: tuple = ()  # the forward hooks on the part's modules at the fingerprint (_cache_hooks.py)
        self.bypass = False
        self.token = os.urandom(16)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.argument_names = forward_parameters(type(module).forward)[0]
        # cache(..., shared=): tensors every sample of a call shares, by keyword and by position
        self.shared = frozenset(handle.shared) | {i for i, n in enumerate(self.argument_names) if n in handle.shared}
        self.load_hooks = watch_loads(list(module.modules()), self.forget)  # removed by uncache
        _disable_compile()

    def forget(self) -> None:
        """Distrust the snapshot: the next call drops this part's entries (after a load; see ``_fsdp_sources.py``)."""
        self.counts["invalidations"] += self.fingerprint is not None
        self.fingerprint = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the part itself: the layers behind the cache."""
        return self.call_previous(*args, **kwargs)

    # Under torch.compile the part runs eagerly, a graph break on each side: a hit is a
    # lookup with nothing to compile, and traced, the keys, the store and the snapshot
    # became guards that recompiled at every batch and never hit. The first Part built
    # applies torch.compiler.disable (see _disable_compile): at import it would load dynamo.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["calls"] += 1
        # grad_inputs="pass": the part used as a frozen middle (a perceptual loss on generated images)
        # runs plainly, a white box; calls on constant inputs (the targets) still use the cache.
        passed = self.handle.grad_inputs == "pass" and _any_requires_grad(args, kwargs)
        if passed or not self._cacheable_now():
            self.counts["bypassed"] += 1
            self.counts["forwards"] += 1
            return self.forward(*args, **kwargs)
        try:
            keys = call_keys(args, kwargs, self.path, self.handle.current_ids(), self.shared)
        except CacheError as error:
            raise CacheError(f"{error}{_input_grads_hint(self.model())}") from None
        store = self.handle.store
        found = [store.get(self.prefix + k) for k in keys.keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.counts["hits"] += keys.batch - len(missing)
        self.counts["misses"] += len(missing)
        if len(missing) == keys.batch:
            output, _, leaves, _ = self._compute(args, kwargs, keys.keys)
        else:
            rows = [f[1] if f is not None else None for f in found]
            spec = next(f[0] for f in found if f is not None)
            if missing:
                sub_args, sub_kwargs = _subset(args, kwargs, keys.batched, missing)
                try:
                    _, spec, _, staged = self._compute(sub_args, sub_kwargs, [keys.keys[i] for i in missing])
                except Exception as error:
                    if not isinstance(error, CacheError) and len(keys.batched) > 1:
                        error.add_note(self._split_hint(keys.batched, len(missing)))
                    raise
                for j, i in enumerate(missing):  # beside the stored rows, on the store's device
                    rows[i] = tuple(leaf[j] for leaf in staged)
            leaves = assemble(spec, rows)  # type: ignore[arg-type]
            output = rebuild(spec, leaves)
        for n, leaf in enumerate(leaves):
            remember(leaf, derive(self.token, keys.keys, n))
        return output

    def _split_hint(self, batched: list[tuple[int | str, torch.Tensor]], missing: int) -> str:
        """Why a run on the missed samples alone may fail: an argument split by sample that all samples share."""
        names = [self.argument_names[n] if isinstance(n, int) and n < len(self.argument_names) else n
                 for n, _ in batched[1:]]  # fmt: skip
        return (
            f"frozen.cache: the part at {self.path!r} ran on the {missing} samples of the batch it had not seen, "
            f"with every tensor argument whose dimension 0 equals the batch size split by sample -- here also "
            f"{', '.join(map(repr, names))}. If one of them is shared by all samples (an attention mask of a "
            f"sequence as long as the batch), name it: frozen.cache(model, {self.path!r}, shared=({names[0]!r},))."
        )

    def _cacheable_now(self) -> bool:
        """Check the part against its snapshot (dropping stale entries); whether this call may use the cache."""
        if under_torch_func():
            # vmap/grad wrap inputs and substituted parameters per transform level: no key or
            # snapshot is meaningful there. Run plainly and leave the stored entries alone.
            return False
        recorded = self.fingerprint.live() if self.fingerprint is not None else None
        modules = recorded if recorded is not None else list(self.module.modules())
        shards = sharded_sources(self.model(), self.path, modules)
        if shards is None:  # FSDP2 state unreadable: no snapshot can be trusted, so never cache
            self.fingerprint = None
            self.handle.store.drop(keep=lambda key: not key.startswith(self.prefix))
            return False
        if (
            self.fingerprint is None
            or recorded is None
            or not self.fingerprint.matches(self.module, shards, recorded)
            or hook_marks(modules) != self.hooks
        ):
            fingerprint = ModuleState(self.module, shards)
            self._revalidate(fingerprint)
            self.hooks = hook_marks(fingerprint.live() or [])  # over the module list the next call compares
        return not self.bypass

    def _compute(self, args: tuple, kwargs: dict, keys: list[bytes]) -> tuple[Any, Any, list, list]:
        """Run the part on (a subset of) the batch and store each sample's rows.

        Returns the output, its spec, its leaves, and the leaves as staged where the store
        keeps rows (moved once per leaf, not once per row: on a GPU with a host store, one
        synchronising copy per leaf instead of one per sample).
        """
        self.counts["forwards"] += 1
        inputs = [(n, a) for n, a in (*enumerate(args), *kwargs.items()) if isinstance(a, torch.Tensor)]
        devices = {a.device for _, a in inputs}
        before = _generator_marks(devices)
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
        if not _same_marks(before, _generator_marks(devices)):
            raise CacheError(
                f"frozen.cache: the part at {self.path!r} drew random numbers in its forward (torch's default "
                f"generator advanced), so its output is not a function of its inputs: a cached output would "
                f"replay one draw forever. Make it deterministic in inference (e.g. return a posterior's mean, not "
                f"a sample), draw the noise outside the part, or do not cache it: frozen.uncache(model, {self.path!r})."
            )
        spec, leaves = flatten(output, len(keys), self.path)
        staged = self.handle.store.stage(leaves)
        for j, key in enumerate(keys):
            self.handle.store.put(self.prefix + key, tuple(leaf[j] for leaf in staged), spec)
        return output, spec, leaves, staged

    def _revalidate(self, fingerprint: ModuleState) -> None:
        """Drop this part's entries; decide whether it may be cached now (thawed: pass through)."""
        self.handle.store.drop(keep=lambda key: not key.startswith(self.prefix))
        self.counts["invalidations"] += self.fingerprint is not None
        self.token = os.urandom(16)  # tensors from the old state get keys that no longer match

        model = self.model()
        if any(p.requires_grad for p in self.module.parameters()) or (
            model is not None and _trainable_inside(model, self.module)
        ):
            self.bypass, self.fingerprint = True, fingerprint
            return
        for name, sub in self.module.named_modules():
            # A Hugging Face layer frozen while checkpointing is on keeps its own training flag, only so
            # that Hugging Face still checkpoints it; its children run in eval (checked here in turn).
            if sub.training and not keeps_training_flag(sub):
                where = f"{self.path}.{name}" if name else self.path
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
            refuse_inner_hooks(self.module, self.path)  # raised again at every call until the hook is gone
        self.bypass, self.fingerprint = False, fingerprint


def _input_grads_hint(model: nn.Module | None) -> str:
    """How to undo Hugging Face's ``enable_input_require_grads``, when that is why an input requires grad."""
    if model is None or not getattr(model, "_require_grads_hooks", None):
        return ""
    return (
        " Here Hugging Face's gradient checkpointing made the input embeddings' output require grad "
        "(enable_input_require_grads, called by gradient_checkpointing_enable and by the Trainer with "
        "gradient_checkpointing=True). A cached frozen prefix needs no input gradient, and non-reentrant "
        "checkpointing (the default) works without it: call model.disable_input_require_grads() after "
        "checkpointing is enabled (frozen.integrations.hf.FreezeCallback does it for the Trainer)."
    )


def _trainable_inside(model: nn.Module, module: nn.Module) -> bool:
    ids = trainable_ids(model)
    return any(id(p) in ids for p in module.parameters())


_COMPILE_DISABLED = False


def _disable_compile() -> None:
    """Make ``Part.__call__`` run eagerly under ``torch.compile``, once, when the first part is built.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (about 900 modules, sympy
    included), which a decorator in the class body would do at ``import frozen``.
    Every :class:`Part` comes from ``__init__`` (a copy becomes a :class:`Passthrough`),
    so no part is ever called before this has run.
    """
    global _COMPILE_DISABLED
    if not _COMPILE_DISABLED:
        Part.__call__ = torch.compiler.disable(Part.__call__)  # type: ignore[method-assign]
        _COMPILE_DISABLED = True


def _any_requires_grad(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values()))


def _generator_marks(devices: set[torch.device]) -> list[torch.Tensor]:
    """What a random draw on ``devices`` advances: the CPU generator's state, each CUDA device's (seed, offset).

    Read around a part's computation (~5 us, misses only): a frozen part that samples in
    inference (a VAE encoder returning a posterior sample, noise layers) is not a function
    of its inputs, and cached it would replay one draw forever. Draws from a generator the
    part creates or is given are not seen.
    """
    cuda = sorted(
        {d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"}
    )
    return [torch.default_generator.get_state(), *(torch.cuda.get_rng_state(i) for i in cuda)]  # host reads, no sync


def _same_marks(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _subset(args: tuple, kwargs: dict, batched: list, rows: list[int]) -> tuple[tuple, dict]:
    """The call's arguments restricted to ``rows`` of the batch (split tensors only)."""
    positional, named = list(args), dict(kwargs)
    for name, tensor in batched:
        picked = tensor.index_select(0, torch.tensor(rows, device=tensor.device))
        if isinstance(name, int):
            positional[name] = picked
        else:
            named[name] = picked
    return tuple(positional), named
