"""Benchmarks of ``frozen`` against every other way to freeze (issue 5).

Run ``python -m benchmarks --quick`` (under two minutes on 2 CPU cores) or
``python -m benchmarks`` (full mode, writes ``benchmarks/results/<machine>/``).
See ``benchmarks/README.md`` for what is measured and how.
"""

__all__: list[str] = []
