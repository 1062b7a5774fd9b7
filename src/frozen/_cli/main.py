"""The ``frozen`` command line: ``frozen report`` and ``frozen demo``.

Both the console script ``frozen`` and ``python -m frozen`` land in :func:`main`.
Bad input exits with status 2 and one line on stderr that says what was wrong and
the closest things that exist; nothing prints a traceback or a usage screen for a
typo. Warnings print as one line each (``frozen report: warning: ...``). How the
model is built or loaded (and why a pickled model needs ``--unsafe-load-pickle``)
is in ``frozen._cli.load``.

Decisions the contract leaves open, taken here:

* ``--freeze-type`` / ``--exclude-type NAME`` take a class name, looked up among the
  classes of the model's own modules (and their base classes) first, then in
  ``torch.nn``; every class of that name counts (``isinstance``). A dotted name
  (``torch.nn.LayerNorm``, ``mypkg.layers.Block``) names exactly one class.
* A pattern that matches nothing, but would as ``'**.PATTERN'`` or as a class name,
  gets those forms suggested instead of a list of paths.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import warnings
from typing import Any, NoReturn

from .._checks import MODES, TIED_POLICIES
from .load import CliError, load_model, one_line

__all__ = ["main", "build_parser", "CliError", "load_model", "resolve_types", "for_the_command_line"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (with the closest option) and exit status 2."""

    options: tuple[str, ...] = ()  # every option of every subcommand, for "did you mean"

    def error(self, message: str) -> NoReturn:
        from .._errors import closest

        unknown = [word for word in message.split() if word.startswith("--")]
        if message.startswith("unrecognized arguments") and unknown:
            message += f"; closest options: {closest(unknown[0], self.options, n=3)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``frozen`` command (subcommands ``report`` and ``demo``).

    Example:
        >>> build_parser().parse_args(["report", "torch.nn:Identity", "--tied", "error"]).tied
        'error'
    """
    from .. import __version__

    parser = _Parser(prog="frozen", description="Freeze parts of PyTorch models with exact, white-box semantics.")
    parser.add_argument("--version", action="version", version=f"frozen {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    rep = commands.add_parser(
        "report",
        help="show what is frozen in a model and what freezing saves",
        description="Build a model, freeze what the options say, print frozen.report: one row per module, "
        "totals, memory saved. Patterns are frozen.select selectors (docs/selectors.md).",
    )
    rep.add_argument(
        "target",
        metavar="MODULE:FACTORY | FILE",
        help="an importable zero-argument factory (e.g. mypkg.models:build), or a file with --unsafe-load-pickle",
    )
    add = rep.add_argument
    add("--freeze", nargs="+", default=[], metavar="PATTERN", help="freeze these parts (e.g. 'encoder.layer.0-5')")
    add("--freeze-type", nargs="+", default=[], metavar="CLASS", help="freeze every module of these classes")
    add("--exclude", nargs="+", default=[], metavar="PATTERN", help="but not these parts (e.g. '**.LayerNorm')")
    add("--exclude-type", nargs="+", default=[], metavar="CLASS", help="but not modules of these classes (LayerNorm)")
    add("--train-norms", action="store_true", help="keep every normalisation layer trainable (fastai, train_bn)")
    add("--tied", choices=TIED_POLICIES, help="parameters shared with unfrozen parts: freeze (default), train, error")
    add("--mode", choices=MODES, help="frozen parts run in eval mode (default), or inherit the model's mode")
    add("--depth", type=int, default=None, metavar="N", help="collapse rows deeper than N dotted segments")
    add("--weights", metavar="FILE", help="load a state_dict file into the model (torch.load weights_only=True)")
    add(
        "--unsafe-load-pickle",
        action="store_true",
        help="allow FILE to be a whole model saved with torch.save(model): unpickling RUNS ARBITRARY CODE from the "
        "file; use only for files you trust",
    )
    output = rep.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON (Report.to_dict())")
    output.add_argument("--plain", action="store_true", help="print the plain-text table even in a terminal")

    demo = commands.add_parser(
        "demo",
        help="transfer learning on scikit-learn's digits: four ways compared",
        description="Pretrain a small CNN on digits 0-4, transfer to 5-9 with 10 labels per class.",
    )
    demo.add_argument("--quick", action="store_true", help="a few epochs only (seconds; for CI)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same numbers")
    demo.add_argument(
        "--out", default="out/frozen-demo.png", metavar="PATH", help="where to write the PNG (default: %(default)s)"
    )
    every = tuple(o for sub in (parser, rep, demo) for action in sub._actions for o in action.option_strings)
    for sub in (parser, rep, demo):
        sub.options = every
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``frozen`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Example:
        >>> main(["report", "torch.nn:Identity", "--depth", "-1"])
        2
    """
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    prog = f"frozen {args.command}"
    with warnings.catch_warnings():
        # Shown once per place, as one line; deprecations are for developers of the libraries.
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = _one_line_warning(prog)
        try:
            return _report(args) if args.command == "report" else _demo(args)
        except CliError as error:
            print(f"{prog}: error: {for_the_command_line(str(error))}", file=sys.stderr)
            return 2


def _one_line_warning(prog: str) -> Any:
    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        origin = category.__module__.split(".")[0]
        where = "" if origin == "frozen" else f" ({category.__name__} from {origin})"
        print(f"{prog}: warning: {for_the_command_line(one_line(message))}{where}", file=sys.stderr)

    return show


_PYTHON_SPELLING = [
    (re.compile(r"^frozen\.freeze(\(\.\.\., \w+=[^)]*\))?: "), ""),  # the command, not the function, failed
    (re.compile(r"\btied='(\w+)'"), r"--tied \1"),
    (re.compile(r"\bmode='(\w+)'"), r"--mode \1"),
    (re.compile(r"\btrain_norms=True\b"), "--train-norms"),
]


def for_the_command_line(message: str) -> str:
    """Spell the library's advice as options: ``tied='train'`` becomes ``--tied train``.

    Example:
        >>> for_the_command_line("frozen.freeze: shared ... Pass tied='train' to keep it training.")
        'shared ... Pass --tied train to keep it training.'
    """
    for pattern, replacement in _PYTHON_SPELLING:
        message = pattern.sub(replacement, message)
    return message


def _report(args: argparse.Namespace) -> int:
    import frozen

    if args.depth is not None and args.depth < 0:
        raise CliError(f"--depth {args.depth}: expected N >= 0 (0: the model only, 1: its children too)")
    freezing = bool(args.freeze or args.freeze_type)
    options = {"--exclude": args.exclude, "--exclude-type": args.exclude_type, "--train-norms": args.train_norms}
    for option, value in {**options, "--tied": args.tied, "--mode": args.mode}.items():
        if value and not freezing:
            raise CliError(f"{option} only narrows or tunes --freeze: add --freeze PATTERN (what to freeze) as well")
    model = load_model(args.target, weights=args.weights, unsafe_load_pickle=args.unsafe_load_pickle)
    if freezing:
        targets = [*args.freeze, *resolve_types(model, args.freeze_type, "--freeze-type")]
        exclude = [*args.exclude, *resolve_types(model, args.exclude_type, "--exclude-type")]
        tuning = {name: getattr(args, name) for name in ("tied", "mode") if getattr(args, name) is not None}
        try:
            frozen.freeze(model, *targets, exclude=tuple(exclude), train_norms=args.train_norms, **tuning)
        except frozen.FrozenError as error:
            raise CliError(_explain(model, args, error)) from None
    result = frozen.report(model, depth=args.depth)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.plain or not sys.stdout.isatty():
        print(result)
    else:
        from rich.console import Console

        Console().print(result)
    return 0


def resolve_types(model: Any, names: list[str], option: str = "--freeze-type") -> list[type]:
    """Return the module classes ``names`` stand for in ``model`` (see the module docstring).

    Raises:
        CliError: a name is neither a class of the model's modules nor of ``torch.nn``.

    Example:
        >>> import torch
        >>> resolve_types(torch.nn.Sequential(torch.nn.LayerNorm(2)), ["LayerNorm", "torch.nn.ReLU"])
        [<class 'torch.nn.modules.normalization.LayerNorm'>, <class 'torch.nn.modules.activation.ReLU'>]
    """
    from torch import nn

    from .._errors import closest

    own = _class_index(model)
    library = {name: [c] for name, c in vars(nn).items() if isinstance(c, type) and issubclass(c, nn.Module)}
    found: list[type] = []
    for name in names:
        classes = own.get(name) or library.get(name) or _import_class(name)
        if not classes:
            raise CliError(
                f"{option} {name!r}: no module class of that name in the model or torch.nn; "
                f"closest: {closest(name, {**own, **library}, n=3)} (or a dotted name such as mypkg.layers.Block)"
            )
        found += [c for c in classes if c not in found]
    return found


def _class_index(model: Any) -> dict[str, list[type]]:
    from torch import nn

    index: dict[str, list[type]] = {}
    for module in model.modules():
        for cls in type(module).__mro__:
            if issubclass(cls, nn.Module) and cls not in index.setdefault(cls.__name__, []):
                index[cls.__name__].append(cls)
    return index


def _import_class(name: str) -> list[type]:
    module_name, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attribute) if module_name else None
    except (ImportError, AttributeError, ValueError):
        return []
    return [cls] if isinstance(cls, type) else []


def _explain(model: Any, args: argparse.Namespace, error: BaseException) -> str:
    """Say how to write a pattern that matched nothing, if a working form exists; else the error."""
    for option, patterns in (("--freeze", args.freeze), ("--exclude", args.exclude)):
        for pattern in patterns:
            if _matches(model, pattern):
                continue
            hints = []
            if not pattern.startswith("**") and _matches(model, f"**.{pattern}"):
                hints.append(f"{option} '**.{pattern}' (every module named {pattern}, at any depth)")
            if pattern in _class_index(model):
                hints.append(f"{option}-type {pattern} (every module of class {pattern})")
            if hints:
                return f"{option} {pattern!r} matches no module path of the model; did you mean {' or '.join(hints)}?"
    return one_line(error)


def _matches(model: Any, pattern: str) -> bool:
    import frozen

    try:
        return bool(frozen.select(model, pattern))
    except frozen.FrozenError:
        return False


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(quick=args.quick, seed=args.seed, out=args.out)
    return 0 if result.frozen_bit_identical else 1
