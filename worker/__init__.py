"""Selection: facility-location kernels, and the selectors that run them.

The Ray pool's names are imported on first use, so that importing ``crest.worker`` (the
kernel, the in-process selector) does not import Ray.
"""

from typing import Any

from crest.worker.selection import select_coreset, select_groups
from crest.worker.selector import InProcessSelector, SelectionRequest, SelectionResult, Selector

__all__ = [
    "InProcessSelector",
    "PoolUnavailable",
    "RaySelector",
    "SelectionRequest",
    "SelectionResult",
    "SelectionTimeout",
    "Selector",
    "init_ray",
    "select_coreset",
    "select_groups",
]

_RAY_NAMES = {"PoolUnavailable", "RaySelector", "SelectionTimeout", "init_ray"}


def __getattr__(name: str) -> Any:
    if name in _RAY_NAMES:
        from crest.worker import ray_pool

        return getattr(ray_pool, name)
    raise AttributeError(f"module 'crest.worker' has no attribute {name!r}")
