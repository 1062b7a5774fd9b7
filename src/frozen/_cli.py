"""The ``frozen`` command line: ``frozen report`` and ``frozen demo``.

Both the console script ``frozen`` and ``python -m frozen`` land in :func:`main`.
Bad input exits with status 2 and one line on stderr that says what was wrong
and what exists instead; nothing prints a traceback for a user's typo.

Loading a model from a file: a ``state_dict`` file (``--weights``) is read with
``torch.load(weights_only=True)``, which cannot run code. A whole model saved with
``torch.save(model)`` is a pickle, and unpickling runs whatever code the file
names; ``frozen`` reads one only with ``--unsafe-load-pickle``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import pkgutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "CliError", "load_model"]


class CliError(Exception):
    """A user mistake: reported as one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``frozen`` command (subcommands ``report`` and ``demo``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="frozen", description="Freeze parts of PyTorch models with exact, white-box semantics."
    )
    parser.add_argument("--version", action="version", version=f"frozen {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rep = commands.add_parser(
        "report",
        help="show what is frozen in a model and what freezing saves",
        description="Build a model and print frozen.report: one row per module, totals, memory saved.",
    )
    rep.add_argument(
        "target",
        metavar="MODULE:FACTORY | FILE",
        help="an importable zero-argument factory (e.g. mypkg.models:build), or a file with --unsafe-load-pickle",
    )
    rep.add_argument(
        "--freeze", nargs="+", default=[], metavar="PATTERN", help="freeze these parts first (frozen.freeze patterns)"
    )
    rep.add_argument(
        "--exclude", nargs="+", default=[], metavar="PATTERN", help="but not these parts (frozen.freeze exclude=)"
    )
    rep.add_argument("--depth", type=int, default=None, metavar="N", help="collapse rows deeper than N dotted segments")
    rep.add_argument(
        "--weights", metavar="FILE", help="load a state_dict file into the model (torch.load weights_only=True)"
    )
    rep.add_argument(
        "--unsafe-load-pickle",
        action="store_true",
        help="allow FILE to be a whole model saved with torch.save(model): unpickling RUNS ARBITRARY CODE from the file; use only for files you trust",
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
    demo.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same numbers"
    )
    demo.add_argument(
        "--out",
        default="out/frozen-demo.png",
        metavar="PATH",
        help="where to write the learning-curve PNG (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``frozen`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "report":
            return _report(args)
        return _demo(args)
    except CliError as error:
        print(f"frozen {args.command}: error: {error}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    import frozen

    if args.depth is not None and args.depth < 0:
        raise CliError(f"--depth {args.depth}: expected N >= 0 (0: the model only, 1: its children too)")
    if args.exclude and not args.freeze:
        raise CliError("--exclude only narrows --freeze: add --freeze PATTERN ... (what to freeze) as well")
    model = load_model(args.target, weights=args.weights, unsafe_load_pickle=args.unsafe_load_pickle)
    if args.freeze:
        try:
            frozen.freeze(model, *args.freeze, exclude=tuple(args.exclude))
        except frozen.FrozenError as error:
            raise CliError(_one_line(error)) from None
    result = frozen.report(model, depth=args.depth)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.plain or not sys.stdout.isatty():
        print(result)
    else:
        from rich.console import Console

        Console().print(result)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    result = run_demo(quick=args.quick, seed=args.seed, out=args.out)
    return 0 if result.frozen_bit_identical else 1


def load_model(target: str, *, weights: str | None = None, unsafe_load_pickle: bool = False) -> Any:
    """Build or load the model named by ``target``; raise :class:`CliError` on bad input."""
    from torch import nn

    if ":" in target and not Path(target).is_file():
        model = _call_factory(target)
    elif Path(target).is_file():
        model = _load_file(Path(target), unsafe_load_pickle)
    else:
        raise CliError(
            f"{target!r}: expected MODULE:FACTORY (an importable zero-argument function or class, "
            f"e.g. mypkg.models:build) or an existing model file"
        )
    if not isinstance(model, nn.Module):
        raise CliError(
            f"{target!r} gave a {type(model).__module__}.{type(model).__qualname__}, expected a torch.nn.Module"
        )
    if weights is not None:
        state = _torch_load(Path(weights), weights_only=True)
        if not isinstance(state, Mapping):
            raise CliError(
                f"--weights {weights}: expected a state_dict (a mapping of names to tensors), received {type(state).__name__}"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CliError(f"--weights {weights} does not fit the model: {_one_line(error)}") from None
    return model


def _call_factory(target: str) -> Any:
    from ._errors import closest

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise CliError(f"{target!r}: expected MODULE:FACTORY with both parts, e.g. mypkg.models:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to you are importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            names = [m.name for m in pkgutil.iter_modules()] if "." not in error.name else []
            raise CliError(
                f"no module named {error.name!r} (from {target!r}); closest importable modules: "
                f"{closest(error.name, names)}"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {type(error).__name__}: {_one_line(error)}") from None
    except Exception as error:
        raise CliError(f"importing {module_name!r} failed: {type(error).__name__}: {_one_line(error)}") from None
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            public = [n for n in dir(factory) if not n.startswith("_")]
            raise CliError(
                f"{module_name!r} has no {attribute!r} (from {target!r}); closest names: {closest(part, public)}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise CliError(
            f"{target!r} is a {type(factory).__name__}, expected a zero-argument function or class that returns a model"
        )
    try:
        return factory()
    except Exception as error:
        raise CliError(f"calling {target}() failed: {type(error).__name__}: {_one_line(error)}") from None


def _load_file(path: Path, unsafe_load_pickle: bool) -> Any:
    if unsafe_load_pickle:
        return _torch_load(path, weights_only=False)
    try:
        loaded = _torch_load(path, weights_only=True, passthrough=(pickle.UnpicklingError,))
    except pickle.UnpicklingError:
        raise CliError(
            f"{path} is a whole pickled model: loading it runs arbitrary code stored in the file. "
            f"Only if you trust where it came from, add --unsafe-load-pickle"
        ) from None
    if isinstance(loaded, Mapping):
        raise CliError(
            f"{path} holds a state_dict (weights, no architecture): build the model with a factory and "
            f"load the file into it: frozen report MODULE:FACTORY --weights {path}"
        )
    return loaded


def _torch_load(path: Path, *, weights_only: bool, passthrough: tuple[type[BaseException], ...] = ()) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except passthrough:
        raise
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except Exception as error:
        raise CliError(f"reading {path} failed: {type(error).__name__}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
