"""Which waiting selection requests share a kernel call: round-robin across jobs.

A job with many ranks or regions in flight must not starve a small one, so a batch takes one
request per job per round, and the jobs it served go to the back of the order.
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

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` total size of items, one per job per round, jobs in turn.

        The first item is always taken, whatever its size. Jobs served go to the back of the
        order, so the next batch starts with the jobs that waited.
        """
        batch: list[T] = []
        total, served = 0, []
        key = None
        while True:
            took = False
            for job, queue in self._jobs.items():
                if not queue:
                    continue
                item = queue[0]
                if batch and (self.key(item) != key or total + self.size(item) > limit):
                    continue
                queue.popleft()
                key = self.key(item)
                batch.append(item)
                total += self.size(item)
                served.append(job)
                took = True
            if not took:
                break
        for job in dict.fromkeys(served):
            queue = self._jobs.pop(job)
            if queue:
                self._jobs[job] = queue  # to the back of the order
        return batch
