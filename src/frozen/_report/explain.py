"""``explain``: why a parameter gets no gradient, in words (docs/freeze.md, "Why no gradient?").

A parameter gets no gradient for one of a few reasons, and each leaves its own trace:
a ``freeze`` mark or a ``Frozen`` wrapper on a use (the record and the walk of
``_core``), a slot frozen on its own (selected, or tied to a frozen part), rows frozen
with ``frozen.Rows``, a ``requires_grad=False`` the library did not write (by hand, or
PEFT), a frozen use of a weight that trains elsewhere (detached there), or nothing at
all, when the forward simply does not use it. ``explain`` reads those traces and
writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._checks import check_model
from .._core import (
    ModuleUse,
    ParamUse,
    frozen_by_other_libraries,
    is_marked,
    iter_module_uses,
    iter_param_uses,
    named_parameters,
    record_of,
    switched_off,
    trainable_ids,
    who_flipped,
)
from .._errors import UnknownPathError, closest
from .._rows import frozen_rows

__all__ = ["Explanation", "explain"]

CAUSES = ("freeze", "wrapper", "param", "tied", "hand", "peft", "flipped", "detached", "rows", "unused")


@dataclass(frozen=True)
class Explanation:
    """Why the parameter at ``path`` does or does not get a gradient; ``str()`` says it in words.

    Attributes:
        path: the parameter path asked about.
        trains: whether it is trainable in the model (``frozen.trainable`` lists it).
        causes: what applies, from ``"freeze"`` (a use frozen in place by ``frozen.freeze``,
            ``frozen.freezing()`` or ``frozen.load_state``), ``"wrapper"`` (a use inside a
            ``frozen.Frozen``), ``"param"`` (the parameter frozen on its own), ``"tied"``
            (frozen at this slot because a part sharing it was frozen, ``tied="freeze"``),
            ``"hand"`` (``requires_grad=False`` set outside ``frozen``), ``"peft"`` (kept
            frozen by a PEFT tuner), ``"flipped"`` (frozen, but its ``requires_grad`` was switched
            back on outside ``frozen``: it gets a gradient and trains), ``"detached"`` (it trains, but a frozen use of it sees
            a constant), ``"rows"`` (rows frozen with ``frozen.Rows``) and ``"unused"`` (it
            trains: no gradient can only mean the forward does not use it).
        reasons: one sentence per cause, in the order of ``causes``.
    """

    path: str
    trains: bool
    causes: tuple[str, ...]
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        verdict = "trains" if self.trains else "gets no gradient"
        return "\n".join([f"{self.path!r} {verdict}:", *(f"  - {reason}" for reason in self.reasons)])


def explain(model: nn.Module, path: str) -> Explanation:
    """Return why the parameter at ``path`` gets (or may get) no gradient in ``model``.

    Reads the freeze records, the model's uses of the parameter and its flags; changes
    nothing. For a parameter that trains, whether the forward uses it is only known
    after a backward: the answer then says so (``"unused"``).

    Args:
        model: the model.
        path: a parameter path as in ``state_dict`` (any path of a tied parameter).

    Returns:
        An :class:`Explanation`; ``print()`` it.

    Raises:
        TypeError: ``model`` is not a module or ``path`` is not a string.
        frozen.UnknownPathError: no parameter has that path (a module path lists its parameters).

    Example:
        >>> import torch, frozen
        >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), "0")
        >>> frozen.explain(net, "0.weight").causes, frozen.explain(net, "1.weight").causes
        (('freeze',), ('unused',))
    """
    check_model(model, "frozen.explain")
    if not isinstance(path, str):
        raise TypeError(
            f"frozen.explain(model, path): expected path to be a parameter path string such as '0.weight', "
            f"received {type(path).__name__} {path!r}."
        )
    modules = {use.path: use for use in iter_module_uses(model)}
    params = list(iter_param_uses(model))
    target = next((use for use in params if use.path == path), None)
    if target is None:
        raise UnknownPathError(_unknown(path, modules, params))
    uses = [use for use in params if use.param is target.param]
    trains = id(target.param) in trainable_ids(model, "frozen.explain")
    found: list[tuple[str, str]] = []
    if trains and all(use.frozen for use in uses):
        # Only frozen uses reach it, yet it trains: its flag was switched back on outside frozen.
        found.append(_flipped(target, uses, modules))
    else:
        for use in uses:
            if use.frozen:
                found += _frozen_use(use, uses, modules, trains)
        if not trains and not any(use.frozen for use in uses):
            found.append(_flag_off(target, model))
        elif not trains and not target.param.requires_grad and not _library_off(uses):
            found.append(_flag_off(target, model))  # frozen here, and off by hand too: thaw alone will not train it
    if trains:
        found += _rows(model, target)
        if not any(use.frozen for use in uses):
            found.append(("unused", _UNUSED.format(flag=target.param.requires_grad)))
    unique = list(dict.fromkeys(found))
    return Explanation(path, trains, tuple(c for c, _ in unique), tuple(r for _, r in unique))


_UNUSED = (
    "no frozen use and requires_grad={flag}: if its .grad is None after backward, the forward does not use it "
    "(or the loss does not depend on it)."
)


def _frozen_use(
    use: ParamUse, uses: list[ParamUse], modules: dict[str, ModuleUse], trains: bool
) -> list[tuple[str, str]]:
    """Why this use of the parameter is frozen (and, if the parameter trains elsewhere, that it is detached)."""
    owner_path = use.path.rpartition(".")[0]
    owner = modules[owner_path]
    reasons: list[tuple[str, str]] = []
    if owner.frozen and is_marked(owner.module):
        part = owner_path
        while part and (above := modules[part.rpartition(".")[0]]).frozen and is_marked(above.module):
            part = above.path
        record = record_of(owner.module)
        mode = record.mode if record is not None else None
        only = f"; only this module: frozen.thaw(model, {owner_path!r})" if owner_path != part else ""
        # freeze, freezing() and load_state leave the same record: the part's outermost path is what is known.
        reasons.append(
            (
                "freeze",
                f"at {use.path!r} it is inside {_name(part)}, frozen in place (mode={mode!r}) by "
                f"frozen.freeze(model, {part!r}) or in a frozen.freezing() block. Thaw it with "
                f"frozen.thaw(model, {part!r}){only}.",
            )
        )
    elif owner.frozen:
        wrapper = owner_path
        while modules[wrapper].wrapper is None and wrapper:
            wrapper = wrapper.rpartition(".")[0]
        reasons.append(
            (
                "wrapper",
                f"at {use.path!r} it is inside the frozen.Frozen wrapper at {_name(wrapper)}, a frozen use by "
                f"construction. To train it, replace the wrapper by its .module (state_dict keys do not change).",
            )
        )
    else:
        record = record_of(use.owner)
        why = record.frozen_slots.get(use.name) if record is not None else None
        if why == "selected":
            reasons.append(
                (
                    "param",
                    f"at {use.path!r} it is frozen on its own, as a parameter target of frozen.freeze "
                    f"(frozen.freeze(model, {use.path!r}) or frozen.params(...)). Thaw it with "
                    f"frozen.thaw(model, {use.path!r}).",
                )
            )
        else:
            holders = [u.path for u in modules.values() if _holds(u, use)]
            holder = holders[0] if holders else "?"
            reasons.append(
                (
                    "tied",
                    f"at {use.path!r} it is frozen because it is shared with the part {_name(holder)}, frozen with "
                    f"tied='freeze' (a shared weight freezes everywhere). Thaw {holder!r}, or freeze it with "
                    f"tied='train' to keep this use training it.",
                )
            )
    if trains:
        others = sorted({u.path for u in uses if not u.frozen})
        reasons.append(
            (
                "detached",
                f"it trains through {', '.join(repr(p) for p in others)}; its frozen use at {use.path!r} detaches "
                f"it there (tied='train', a white box): its gradient is the sum over the other uses only.",
            )
        )
    return reasons


def _flipped(target: ParamUse, uses: list[ParamUse], modules: dict[str, ModuleUse]) -> tuple[str, str]:
    who = who_flipped(target, {path: use.module for path, use in modules.items()})
    likely = "PEFT (set_adapter / enable_adapter_layers)" if who else "your code or another library"
    owner = target.path.rpartition(".")[0]
    where = ", ".join(repr(u.path) for u in uses)
    return (
        "flipped",
        f"frozen froze it (the frozen use at {where}) and turned requires_grad off, but it was switched back on "
        f"outside frozen, likely by {likely}: no frozen use detaches it, so it gets a gradient and trains. "
        f"Re-freeze it with frozen.settle(model) (the next frozen.freeze / thaw / FreezeCallback step does too), "
        f"or keep it training with frozen.thaw(model, {owner!r}).",
    )


def _holds(module_use: ModuleUse, use: ParamUse) -> bool:
    record = record_of(module_use.module)
    return record is not None and any(o is use.owner and n == use.name for o, n in record.tied_slots)


def _library_off(uses: list[ParamUse]) -> bool:
    return any(switched_off(u.param, u.owner, u.name) for u in uses)


def _flag_off(target: ParamUse, model: nn.Module) -> tuple[str, str]:
    """A ``requires_grad=False`` frozen did not write: PEFT's, or the user's."""
    if id(target.param) in frozen_by_other_libraries(model):
        return (
            "peft",
            "PEFT keeps it frozen: it belongs to the base model of a PEFT tuner (LoRA and the others), which "
            "trains only its adapters and modules_to_save; frozen.thaw leaves it off. To train it, add its "
            "module to the tuner's modules_to_save.",
        )
    return (
        "hand",
        "requires_grad=False was set outside frozen (by hand, or by another library), and frozen never turns "
        f"a flag it did not turn off back on. To train it: model.get_parameter({target.path!r}).requires_grad_(True), "
        "then frozen.settle(model).",
    )


def _rows(model: nn.Module, target: ParamUse) -> list[tuple[str, str]]:
    first = next(p for p, q in named_parameters(model) if q is target.param)
    record = frozen_rows(model).get(first)
    if record is None:
        return []
    n, total = int(record.mask.sum()), len(record.mask)
    return [
        (
            "rows",
            f"{n} of its {total} rows are frozen with frozen.Rows (rows {record.frozen.tolist()[:8]}"
            f"{' ...' if n > 8 else ''}): their gradient is zero and no optimizer step moves them; the other "
            f"rows train. Thaw them with frozen.thaw(model, {first!r}).",
        )
    ]


def _name(path: str) -> str:
    return repr(path) if path else "'' (the whole model)"


def _unknown(path: str, modules: dict[str, ModuleUse], params: list[ParamUse]) -> str:
    if path in modules:
        inside = [p.path for p in params if not path or p.path.startswith(path + ".")][:3]
        return (
            f"frozen.explain(model, path={path!r}): that is a module path; expected a parameter path, such as "
            f"{', '.join(repr(p) for p in inside) or 'one of its parameters'}. Ask about each parameter, or use "
            f"frozen.report(model) for modules."
        )
    return (
        f"frozen.explain(model, path={path!r}): no parameter has that path. Expected a state_dict-style parameter "
        f"path; closest existing: {closest(path, [p.path for p in params])}."
    )
