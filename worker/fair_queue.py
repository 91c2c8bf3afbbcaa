"""Which waiting selection requests share a kernel call: round-robin across jobs.

A job with many ranks, regions or chunks in flight must not starve a small one, so a batch
takes one request per job per round, and the jobs it served go to the back of the order: each
batch starts with the jobs served least recently, a job that just started waiting first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class FairQueue(Generic[T]):
    """Waiting items per job, taken round-robin across jobs.

    Args:
        size: how much an item weighs against the batch limit (e.g. its number of rows).
        key: items with different keys never share a batch (e.g. the embedding dimension).
    """

    size: Callable[[T], int]
    key: Callable[[T], object] = lambda item: None
    _jobs: dict[str, deque[T]] = field(default_factory=dict)
    # The batch that last served each waiting job (a job that starts waiting has none: it
    # goes before every job served already).
    _served: dict[str, int] = field(default_factory=dict)
    _batches: int = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._jobs.values())

    def __iter__(self) -> Iterator[T]:
        for queue in self._jobs.values():
            yield from queue

    def put(self, job: str, item: T, *, front: bool = False) -> None:
        """Queue ``item`` for ``job``; ``front`` for a retry, which keeps its turn."""
        queue = self._jobs.setdefault(job, deque())
        queue.appendleft(item) if front else queue.append(item)

    def discard(self, keep: Callable[[T], bool]) -> None:
        """Drop every item for which ``keep`` is false (e.g. callers that gave up)."""
        for job in list(self._jobs):
            self._jobs[job] = deque(item for item in self._jobs[job] if keep(item))
            if not self._jobs[job]:
                del self._jobs[job]
                self._served.pop(job, None)

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` total size of items, one per job per round, jobs in turn.

        The first item is always taken, whatever its size. Jobs go in the order of the batch
        that last served them, least recent first (a job that just started waiting before any
        other; ties in the order they started waiting), so the next batch starts with the jobs
        that waited.
        """
        batch: list[T] = []
        total = 0
        key = None
        order = sorted(self._jobs.items(), key=lambda job: self._served.get(job[0], -1))
        self._batches += 1
        while True:
            took = False
            for job, queue in order:
                if not queue:
                    continue
                item = queue[0]
                if batch and (self.key(item) != key or total + self.size(item) > limit):
                    continue
                queue.popleft()
                key = self.key(item)
                batch.append(item)
                total += self.size(item)
                self._served[job] = self._batches  # to the back of the order
                took = True
            if not took:
                break
        for job, queue in order:
            if not queue:
                del self._jobs[job]
                self._served.pop(job, None)
        return batch
