"""Caching a frozen part's outputs (docs/cache.md).

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .api import CacheError as CacheError
from .api import CacheHandle as CacheHandle
from .api import cache as cache
from .api import cache_stats as cache_stats
from .api import uncache as uncache
from .features import features as features
from .hooks import observed_globally as observed_globally
from .hooks import watch_steps as watch_steps

__all__ = [
    "CacheError",
    "CacheHandle",
    "cache",
    "cache_stats",
    "features",
    "observed_globally",
    "uncache",
    "watch_steps",
]
