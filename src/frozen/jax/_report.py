"""``fj.report``: what is frozen in a model, as a data object with a table for ``str()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._query import Analysis, analyse

__all__ = ["Report", "Row", "report"]


@dataclass(frozen=True)
class Row:
    """One module or container of the model (wrapper-transparent path)."""

    path: str
    type: str
    status: str  # "frozen" (a frozen use), "trainable", "partial", or "-" (holds no float arrays)
    mode: str  # "eval" / "inherit" for a frozen use, "" otherwise
    trainable: int  # number of trainable elements below
    frozen: int  # number of frozen elements below


@dataclass(frozen=True)
class Report:
    """``rows`` per module, ``totals``, and ``ties`` (arrays ``eqx.nn.Shared`` uses at several paths)."""

    rows: list[Row]
    totals: dict[str, int]
    ties: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-serialisable)."""
        return {"rows": [asdict(r) for r in self.rows], "totals": dict(self.totals), "ties": list(self.ties)}

    def __str__(self) -> str:
        head = ("path", "type", "status", "mode", "trainable", "frozen")
        body = [(r.path or "(model)", r.type, r.status, r.mode, f"{r.trainable:,}", f"{r.frozen:,}") for r in self.rows]
        widths = [max(len(line[k]) for line in [head, *body]) for k in range(len(head))]
        lines = [
            "  ".join(c.rjust(w) if k >= 4 else c.ljust(w) for k, (c, w) in enumerate(zip(line, widths)))
            for line in [head, *body]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        t = self.totals
        lines.append(
            f"trainable {t['trainable']:,} elements ({t['trainable_bytes']:,} bytes), frozen {t['frozen']:,} elements "
            f"({t['frozen_bytes']:,} bytes: no gradient, no optimizer state)"
        )
        lines.extend(f"tied: {tie['array']} also used at {tie['use']} ({tie['status']})" for tie in self.ties)
        return "\n".join(line.rstrip() for line in lines)


def _rows(found: Analysis, depth: int | None) -> list[Row]:
    entries = found.walk.entries
    rows = []
    for i, entry in enumerate(entries):
        if entry.kind not in ("module", "container"):
            continue
        if depth is not None and entry.path and entry.path.count(".") + 1 > depth:
            continue
        arrays = [k for k in range(i, entry.end) if entries[k].kind == "array" and not entries[k].state]
        live = sum(int(entries[k].value.size) for k in arrays if found.trains[k])
        floats = [k for k in arrays if entries[k].value.dtype.kind in "fc"]
        dead = sum(int(entries[k].value.size) for k in floats if not found.trains[k])
        if entry.frozen:
            status = "frozen"
        elif not floats:
            status = "-"
        else:
            status = "trainable" if all(found.trains[k] for k in floats) else "partial"
        rows.append(
            Row(entry.path, type(entry.value).__name__, status, (entry.mode or "") if entry.frozen else "", live, dead)
        )
    return rows


def report(model: Any, *, depth: int | None = None) -> Report:
    """Return what is frozen in ``model``: a row per module (down to ``depth`` segments), totals, ties.

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> print(fj.report(mlp))
        path      type    status     mode  trainable  frozen
        --------  ------  ---------  ----  ---------  ------
        (model)   MLP     partial                 10      12
        layers    tuple   partial                 10      12
        layers.0  Linear  frozen     eval          0      12
        layers.1  Linear  trainable               10       0
        trainable 10 elements (40 bytes), frozen 12 elements (48 bytes: no gradient, no optimizer state)
    """
    found = analyse(model)
    entries = found.walk.entries
    floats = [i for i, e in enumerate(entries) if e.kind == "array" and not e.state and e.value.dtype.kind in "fc"]
    live = [i for i in floats if found.trains[i]]
    dead = [i for i in floats if not found.trains[i]]
    totals = {
        "trainable": sum(int(entries[i].value.size) for i in live),
        "frozen": sum(int(entries[i].value.size) for i in dead),
        "trainable_bytes": sum(int(entries[i].value.nbytes) for i in live),
        "frozen_bytes": sum(int(entries[i].value.nbytes) for i in dead),
    }
    ties = [
        {
            "array": entries[source].path,
            "use": entries[tie.target].path,
            "status": "trains" if found.trains[source] else "frozen at every use",
        }
        for tie in found.ties
        for source in tie.sources
    ]
    return Report(_rows(found, depth), totals, ties)
