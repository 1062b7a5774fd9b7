"""Lean frozen middles: input-gradient-only convolutions and folded norms (docs/cache.md, 'lean').

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .api import lean as lean
from .api import unlean as unlean

__all__ = [
    "lean",
    "unlean",
]
