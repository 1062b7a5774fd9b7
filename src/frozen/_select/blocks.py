"""The parts people name without a path: a model's head, and its ordered blocks (docs/freeze.md).

"Everything except the head", fastai's ``freeze_to(-n)`` and BEiT's layer-wise learning
rates all need the same two facts about a model whose paths the user never looked at:
which module is the head, and how the model splits into [stem, block_0 ... block_{L-1},
head]. Both are read from the module tree (and, for the head, from the hooks timm and
Hugging Face give for it), never from a list of model classes, so a new architecture
built the usual way works without a release of ``frozen``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .._checks import check_model
from .._core import ModuleUse
from .._errors import FrozenError
from .patterns import PathTree

__all__ = ["HEAD_NAMES", "Layout", "blocks", "head", "layout"]

# Children of the model that are its head, in this order: Hugging Face's task heads
# (classifier, score, lm_head, qa_outputs, cls, classification_head), then the names
# timm, torchvision and most hand-written models use.
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs", "cls", "classification_head", "head", "heads", "fc")

_NUMBERED = re.compile(r"(.*?)(\d+)")  # "layer3" -> ("layer", "3"), "0" -> ("", "0")


@dataclass(frozen=True)
class Layout:
    """A model cut into stem, repeated blocks and top, each a tuple of paths (see :func:`blocks`)."""

    stem: tuple[str, ...]  # everything before the repeated blocks (embeddings, patch embedding, conv stem)
    trunk: tuple[str, ...]  # one path per repeated block, in order
    top: tuple[str, ...]  # everything after them: final norm, pooler, the head

    def groups(self) -> list[tuple[str, ...]]:
        """The blocks as :func:`blocks` returns them: stem and top left out when empty."""
        return [g for g in (self.stem, *((p,) for p in self.trunk), self.top) if g]


def head(model: nn.Module) -> str:
    """Return the path of ``model``'s head: the module "everything except the head" leaves out.

    The first rule that finds a module wins:

    1. ``model.get_classifier()`` (timm): the module it returns, by identity.
    2. ``model`` is an ``nn.Sequential``: its last child that holds parameters (a trailing
       ``Softmax`` or ``Flatten`` has nothing to train).
    3. A child of ``model`` named, in this order, ``classifier`` (BERT, ViT, RoBERTa ...
       ``ForSequenceClassification`` / ``ForTokenClassification`` / ``ForImageClassification``),
       ``score`` (GPT-2, Llama ``ForSequenceClassification``), ``lm_head`` (``ForCausalLM``),
       ``qa_outputs``, ``cls`` (BERT masked LM), ``classification_head``, ``head``, ``heads``, ``fc``.
    4. ``model.get_output_embeddings()`` (Hugging Face language-model heads of other names).

    "Everything except the head" is then one line:
    ``frozen.freeze(model, "", exclude=frozen.head(model))``. When the head shares its
    weight with the embeddings (GPT-2's ``lm_head``), add ``tied="train"`` to let the head
    train it, or the default ``tied="freeze"`` freezes it at both and warns.

    Raises:
        TypeError: ``model`` is not a module.
        frozen.FrozenError: no rule finds a head; the message lists what was looked for.

    Example:
        >>> import torch, frozen
        >>> frozen.head(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Softmax(-1)))
        '1'
    """
    check_model(model, "frozen.head")
    tree = PathTree(model)
    path = _find_head(model, tree.uses)
    if path is None:
        children = [use.path for use in tree.uses if use.path and "." not in use.path]
        raise FrozenError(
            f"frozen.head(model): found no head in this {type(model).__name__}. Looked for, in order: a "
            f"get_classifier() method (timm) returning one of its modules; for an nn.Sequential, its last child "
            f"with parameters; a child named {', '.join(repr(n) for n in HEAD_NAMES)}; a get_output_embeddings() "
            f"method (Hugging Face) returning one of its modules. Received children {children or '(none)'}. Name "
            f"the head yourself, e.g. frozen.freeze(model, '', exclude='{children[-1] if children else 'head'}')."
        )
    return path


def blocks(model: nn.Module) -> list[tuple[str, ...]]:
    """Return ``model`` cut into ordered blocks: ``[stem, block_0, ..., block_{L-1}, top]``.

    Each block is a tuple of paths (module or parameter) that ``frozen.freeze`` takes
    (``frozen.freeze(model, *blocks[0])``); together they cover every parameter once.

    * An ``nn.Sequential`` model: each child is a block.
    * Otherwise the repeated blocks are the run of sibling modules that holds the most
      parameters, where a run is the children of an ``nn.ModuleList``, or two or more
      consecutive children of one class numbered one after the other (``layer.0``,
      ``layer.1``, ... or ``layer1``, ``layer2``, ...). Ties go to the shallower run, then
      the earlier. So BERT's ``encoder.layer``, GPT-2's ``h``, ViT's ``layers`` and
      ResNet's stages ``layer1``-``layer4`` (not the bottlenecks inside a stage).
    * The stem is everything before the run in model order: at each level from the root
      down to the run, the parameters the module there holds itself (``cls_token``) and
      its children before the one that leads to the run. The top is everything after the
      run, plus the head (:func:`head`) if it was defined before the run. A stem or top
      with nothing in it is left out.

    Raises:
        TypeError: ``model`` is not a module.
        frozen.FrozenError: not an ``nn.Sequential`` and no run of repeated blocks.

    Example:
        >>> import torch, frozen
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = torch.nn.Embedding(10, 4)
        ...         self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        ...         self.norm, self.out = torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)
        >>> frozen.blocks(Net())
        [('embed',), ('layers.0',), ('layers.1',), ('layers.2',), ('norm', 'out')]
    """
    check_model(model, "frozen.blocks")
    return layout(model, "frozen.blocks(model)").groups()


def layout(model: nn.Module, call: str) -> Layout:
    """The :class:`Layout` behind :func:`blocks`; raise naming ``call`` (the user's call) when there is none."""
    tree = PathTree(model)
    children = _children(tree)
    root = tree.uses[0].module  # a Frozen wrapper around the whole model adds nothing
    if isinstance(root, nn.Sequential):
        return Layout((), tuple(tree.uses[i].path for i in children[0]), ())
    trunk = _trunk(tree, children)
    if trunk is None:
        raise FrozenError(
            f"{call}: found no repeated blocks in this {type(root).__name__}. Expected an "
            f"nn.Sequential model, an nn.ModuleList of blocks, or two or more consecutive children of one class "
            f"numbered one after the other ('layer.0', 'layer.1' or 'layer1', 'layer2'), holding parameters; "
            f"received children {[tree.uses[i].path for i in children[0]] or '(none)'}. Name the parts yourself "
            f"instead: frozen.freeze(model, 'embeddings', 'encoder.layer.0-5') or "
            f"frozen.optim.param_groups(model, parts=[...], lr=..., lr_decay=...)."
        )
    stem, top = _around(tree, children, trunk)
    found = _find_head(model, tree.uses)
    if found is not None and found in stem:  # a head defined before the blocks still belongs on top
        stem.remove(found)
        top.append(found)
    return Layout(tuple(stem), tuple(tree.uses[i].path for i in trunk), tuple(top))


def _find_head(model: nn.Module, uses: list[ModuleUse]) -> str | None:
    """The head's path by the rules of :func:`head`, or None."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        path = _path_of(get_classifier(), uses)
        if path is not None:
            return path
    top_level = [use for use in uses if use.path and "." not in use.path]
    if isinstance(uses[0].module, nn.Sequential):
        with_params = [use.path for use in top_level if next(use.module.parameters(), None) is not None]
        return with_params[-1] if with_params else None
    names = {use.path for use in top_level}
    for name in HEAD_NAMES:
        if name in names:
            return name
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    if callable(get_output_embeddings):
        return _path_of(get_output_embeddings(), uses)
    return None


def _path_of(module: object, uses: list[ModuleUse]) -> str | None:
    """The first path where ``module`` (or a ``Frozen`` wrapper of it) is used; None if nowhere."""
    if not isinstance(module, nn.Module):
        return None
    return next((use.path for use in uses if use.module is module or use.wrapper is module), None)


def _children(tree: PathTree) -> dict[int, list[int]]:
    """Each module use's child uses, in order."""
    children: dict[int, list[int]] = {i: [] for i in range(len(tree.uses))}
    for i in range(1, len(tree.uses)):
        children[tree.parent[i]].append(i)
    return children


def _runs(tree: PathTree, children: dict[int, list[int]]) -> Iterator[list[int]]:
    """Every run of repeated blocks: a ModuleList's children, or numbered siblings of one class."""
    for parent, kids in children.items():
        if kids and isinstance(tree.uses[parent].module, nn.ModuleList):
            yield kids
        run: list[int] = []
        for i in kids:
            if run and _follows(tree, run[-1], i):
                run.append(i)
                continue
            if len(run) >= 2:
                yield run
            run = [i] if _NUMBERED.fullmatch(tree.names[i]) else []
        if len(run) >= 2:
            yield run


def _follows(tree: PathTree, before: int, after: int) -> bool:
    """Whether child ``after`` continues the run ending at ``before``: same class, next number."""
    a, b = _NUMBERED.fullmatch(tree.names[before]), _NUMBERED.fullmatch(tree.names[after])
    return (
        a is not None
        and b is not None
        and a.group(1) == b.group(1)
        and int(b.group(2)) == int(a.group(2)) + 1
        and type(tree.uses[before].module) is type(tree.uses[after].module)
    )


def _trunk(tree: PathTree, children: dict[int, list[int]]) -> list[int] | None:
    """The run holding the most parameter elements (ties: shallower, then earlier); None without one."""
    best, best_key = None, None
    for run in _runs(tree, children):
        seen: dict[int, int] = {}
        for i in run:
            for p in tree.uses[i].module.parameters():
                # A lazy parameter has no size yet; it counts as nothing.
                seen[id(p)] = 0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel()
        size = sum(seen.values())
        key = (size, -tree.uses[run[0]].path.count("."), -run[0])
        if size and (best_key is None or key > best_key):
            best, best_key = run, key
    return best


def _around(tree: PathTree, children: dict[int, list[int]], trunk: list[int]) -> tuple[list[str], list[str]]:
    """The paths before the run (stem) and after it (top), level by level from the root down."""
    chain = [tree.parent[trunk[0]]]
    while chain[-1] > 0:
        chain.append(tree.parent[chain[-1]])
    chain.reverse()  # the root, ..., the run's parent
    stem: list[str] = []
    after: list[list[str]] = []
    for level, node in enumerate(chain):
        kids = children[node]
        first, last = (trunk[0], trunk[-1]) if level == len(chain) - 1 else (chain[level + 1],) * 2
        stem += [p.path for p, o in zip(tree.params, tree.owner) if o == node]  # cls_token, pos_embed
        stem += [tree.uses[i].path for i in kids[: kids.index(first)]]
        after.append([tree.uses[i].path for i in kids[kids.index(last) + 1 :]])
    top = [path for level in reversed(after) for path in level]  # model order: inner levels end first
    return stem, top
