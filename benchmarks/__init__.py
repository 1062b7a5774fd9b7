"""Benchmarks of ``frozen`` against every other way to freeze.

Run ``python -m benchmarks --quick`` (about 3 minutes on 2 idle CPU cores) or
``python -m benchmarks`` (full mode, writes ``benchmarks/results/<machine>/``).
Every scenario has an A/A control and reports each bar as met, missed or inconclusive.
See ``benchmarks/README.md`` for what is measured and how. ``harness/`` is the machinery,
``scenarios/`` holds one module per scenario family, and ``harness/registry.py`` lists the families.
"""

__all__: list[str] = []
