"""Load the model a ``frozen`` command names: a factory ``MODULE:FACTORY`` or a file.

A ``state_dict`` file (``--weights``) is read with ``torch.load(weights_only=True)``,
which cannot run code. A whole model saved with ``torch.save(model)`` is a pickle,
and unpickling runs whatever code the file names: it is read only when the caller
passes ``unsafe_load_pickle=True`` (``--unsafe-load-pickle``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import pkgutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CliError", "load_model", "one_line"]


class CliError(Exception):
    """A user mistake: reported as one line on stderr, exit status 2."""


def load_model(target: str, *, weights: str | None = None, unsafe_load_pickle: bool = False) -> Any:
    """Build or load the model named by ``target``.

    Args:
        target: ``MODULE:FACTORY`` (an importable zero-argument function or class; the
            current directory is importable, as with ``python -m``) or a model file.
        weights: a ``state_dict`` file to load into the model (``weights_only=True``).
        unsafe_load_pickle: allow ``target`` to be a whole pickled model (runs its code).

    Returns:
        The model.

    Raises:
        CliError: the factory, module or file does not exist, does not give an
            ``nn.Module``, or the weights do not fit; the message is the fix.

    Example:
        >>> load_model("torch.nn:Identity")
        Identity()
        >>> load_model("torch.nn:Identiy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        frozen._cli.load.CliError: 'torch.nn' has no 'Identiy' (from 'torch.nn:Identiy'); closest names: 'Identity', ...
    """
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
            raise CliError(f"--weights {weights} does not fit the model: {one_line(error)}") from None
    return model


def _call_factory(target: str) -> Any:
    from .._errors import closest

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
        raise CliError(f"importing {module_name!r} failed: {type(error).__name__}: {one_line(error)}") from None
    except Exception as error:
        raise CliError(f"importing {module_name!r} failed: {type(error).__name__}: {one_line(error)}") from None
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
        raise CliError(f"calling {target}() failed: {type(error).__name__}: {one_line(error)}") from None


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
        raise CliError(f"reading {path} failed: {type(error).__name__}: {one_line(error)}") from None


def one_line(error: BaseException | str) -> str:
    """Return ``error``'s message on one line (a command line reports one line per problem)."""
    return " ".join(str(error).split())
