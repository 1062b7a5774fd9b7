"""The scenario families: one module per family, each declaring ``SCENARIOS`` (see ``benchmarks/harness``).

``benchmarks/harness/registry.py`` lists every family, in the order of the results.
"""

__all__: list[str] = []
