"""Selectors: the pattern language and the resolution of targets to module and parameter paths (docs/selectors.md).

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .blocks import Layout as Layout
from .blocks import blocks as blocks
from .blocks import head as head
from .blocks import layout as layout
from .norms import NORM_TYPES as NORM_TYPES
from .norms import is_norm as is_norm
from .select import Selection as Selection
from .select import Selector as Selector
from .select import compile_pattern as compile_pattern
from .select import params as params
from .select import resolve as resolve
from .select import select as select

__all__ = [
    "Layout",
    "NORM_TYPES",
    "Selection",
    "Selector",
    "blocks",
    "compile_pattern",
    "is_norm",
    "head",
    "layout",
    "params",
    "resolve",
    "select",
]
