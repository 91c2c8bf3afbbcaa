"""Cooperative cancellation of a selection: a deadline and a flag the kernel checks.

A selection whose caller has given up (its deadline passed, or the caller cancelled it) must
not keep its worker busy: the in-process selector has one thread, a Ray actor one kernel slot.
Threads cannot be interrupted, so the kernel checks a :class:`Cancellation` between units of
bounded work (greedy steps, distance chunks, slices of problems) and raises
:class:`SelectionCancelled` at the first check after it fired. No dependencies, so that every
layer (kernel, selectors, actors) can take one.
"""

from __future__ import annotations

import math
import threading
import time


class SelectionCancelled(TimeoutError):
    """The selection was abandoned: its deadline passed or its caller cancelled it.

    A ``TimeoutError``: callers treat it like any missed deadline (the coordinator falls back
    to random batches for the region)."""


class Cancellation:
    """When an abandoned selection stops: at a ``time.monotonic()`` deadline, or once
    :meth:`cancel` is called (from any thread).

    Args:
        deadline: ``time.monotonic()`` value past which the work is abandoned; None: never
            (only :meth:`cancel` stops it).
    """

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = math.inf if deadline is None else deadline
        self._event = threading.Event()
        self.checks = 0  # how often the work looked (tests count the work done after a cancel)

    @classmethod
    def after(cls, timeout_s: float | None) -> Cancellation:
        """A cancellation ``timeout_s`` seconds from now (None: no deadline)."""
        return cls(None if timeout_s is None else time.monotonic() + timeout_s)

    def cancel(self) -> None:
        """Abandon the work: its next :meth:`check` raises."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether the work is abandoned (cancelled, or past its deadline)."""
        return self._event.is_set() or time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise :class:`SelectionCancelled` if the work is abandoned; called by the work.

        Raises:
            SelectionCancelled: cancelled, or past the deadline.
        """
        self.checks += 1
        if self._event.is_set():
            raise SelectionCancelled("the selection was cancelled by its caller")
        if time.monotonic() >= self.deadline:
            raise SelectionCancelled("the selection ran past its deadline")
