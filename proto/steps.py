"""The step rules that trainers and the coordinator share, in one place.

A region serves its batches in turn from ``start_step``; a check is due after every
``check_interval`` steps of it; a failed check after step ``t`` ends the region at
``t + DECISION_LAG``, so that a rank trains step ``t + 1`` while its report travels and never
waits on the network for a check.
"""

from __future__ import annotations

DECISION_LAG = 2  # a failed check after step t starts the next region at step t + 2


def batch_slot(step: int, start_step: int, num_batches: int) -> int:
    """Which of a region's batches serves ``step``: they are used in turn."""
    return (step - start_step) % num_batches


def check_due(step: int, start_step: int, check_interval: int, end_step: int) -> bool:
    """Whether a check follows ``step``: every ``check_interval`` steps of the region, unless
    the region ends before its decision could take effect."""
    in_turn = (step + 1 - start_step) % check_interval == 0
    return in_turn and step + DECISION_LAG < end_step


def end_after_failed_check(step: int) -> int:
    """The exclusive end of a region whose check after ``step`` failed."""
    return step + DECISION_LAG
