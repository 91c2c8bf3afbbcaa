"""Selection: facility-location kernels, and the selectors that run them.

Only the problem types (:mod:`crest.worker.problems`, numpy) load with the package: the
kernel, the in-process selector and the exported models of :mod:`crest.worker.model`
(torch) and the Ray pool (Ray) are imported on first use,
so that the coordinator's state machine can use ``crest.worker.problems`` without either.
"""

from importlib import import_module
from typing import Any

from crest.worker.cancel import Cancellation, SelectionCancelled
from crest.worker.problems import (
    EmbedRequest,
    EmbedResult,
    SelectionRequest,
    SelectionResult,
    Selector,
)

__all__ = [
    "Cancellation",
    "EmbedRequest",
    "EmbedResult",
    "InProcessSelector",
    "KernelError",
    "PoolUnavailable",
    "RaySelector",
    "SelectionCancelled",
    "SelectionRequest",
    "SelectionResult",
    "SelectionTimeout",
    "Selector",
    "init_ray",
    "select_coreset",
    "select_groups",
]

_LAZY = {  # name -> module that defines it
    "InProcessSelector": "crest.worker.selector",
    "select_coreset": "crest.worker.selection",
    "select_groups": "crest.worker.selection",
    "KernelError": "crest.worker.ray_pool",
    "PoolUnavailable": "crest.worker.ray_pool",
    "RaySelector": "crest.worker.ray_pool",
    "SelectionTimeout": "crest.worker.ray_pool",
    "init_ray": "crest.worker.ray_pool",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crest.worker' has no attribute {name!r}")
