"""The report: a data object with a deterministic table (README, 'report').

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .explain import Explanation as Explanation
from .explain import explain as explain
from .render import human_bytes as human_bytes
from .report import Report as Report
from .report import report as report

__all__ = [
    "Explanation",
    "Report",
    "explain",
    "human_bytes",
    "report",
]
