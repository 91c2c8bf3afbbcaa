"""Selection: facility-location kernels, and the selectors that run them."""

from crest.worker.selection import select_coreset, select_groups

__all__ = ["select_coreset", "select_groups"]
