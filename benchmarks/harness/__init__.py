"""The benchmark machinery: how a scenario is declared, built, timed, judged and written down.

Scenario families (``benchmarks/scenarios/``) import from this face only. Inside, one module per
job: ``declare`` (Setup, Bar, Scenario), ``registry`` (the families), ``timing`` (Workload,
interleaved rounds, bytes), ``run`` (one scenario), ``verdict`` (met / missed / inconclusive),
``report`` (tables, chart), ``memory`` (the peak-RSS worker), ``variants`` (how each variant
freezes), ``models`` and ``epochs`` (what the scenarios train on), ``once`` (measured-once
scenarios).
"""

from . import models, report
from .declare import AA, Bar, Scenario, Setup
from .epochs import Epochs, replay
from .once import measured
from .registry import FAMILIES, MissingRequirement, missing, scenarios
from .run import Row, ScenarioResult, Settings, run_scenario
from .timing import Timing, Workload
from .variants import (
    BASE,
    LOW_PRECISION,
    SETTLED,
    VARIANTS,
    apply_variant,
    classify,
    fine_tune,
    frozen_keys,
    settled_bars,
    speedup_bars,
)
from .verdict import VERDICTS, judge, median_interval

__all__ = [
    "AA",
    "BASE",
    "Bar",
    "Epochs",
    "FAMILIES",
    "LOW_PRECISION",
    "MissingRequirement",
    "Row",
    "SETTLED",
    "Scenario",
    "ScenarioResult",
    "Settings",
    "Setup",
    "Timing",
    "VARIANTS",
    "VERDICTS",
    "Workload",
    "apply_variant",
    "classify",
    "fine_tune",
    "frozen_keys",
    "judge",
    "measured",
    "median_interval",
    "missing",
    "models",
    "replay",
    "report",
    "run_scenario",
    "scenarios",
    "settled_bars",
    "speedup_bars",
]
