"""The report: a data object with a deterministic table (README, 'report').

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .render import human_bytes as human_bytes
from .report import Report as Report
from .report import report as report

__all__ = [
    "Report",
    "human_bytes",
    "report",
]
