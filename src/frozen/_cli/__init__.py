"""The frozen command line and its demo.

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .main import main as main

__all__ = [
    "main",
]
