"""Placement: which CPU cores the trainer, the coordinator and the selectors run on.

CREST's point is that selection runs beside training, not in its way. On a machine without
GPUs that only holds when the two use different cores: e.g. on two cores, the trainer on
core 0 with one torch thread, the selector (a Ray actor or the in-process selector thread) on
core 1. These helpers pin threads to cores (Linux ``sched_setaffinity``) and set torch's
intra-op thread count to match, so that torch never runs more threads than it has cores.

On Linux a thread's affinity is its own, and threads it starts later inherit it: pin the
main thread first thing and the whole process follows; pin a worker thread in its
initializer and only that worker (and the OpenMP threads it starts) moves. Where
``sched_setaffinity`` does not exist (macOS, Windows) pinning is skipped with a warning and
only the thread count is set. torch is imported by the pinning functions only, so that
``crest serve``'s settings parse core lists without it.

GPUs are not placed here: a process sees the GPUs ``CUDA_VISIBLE_DEVICES`` lists, and Ray
gives each selector actor its own (``gpu_share``); see docs/deployment.md, "Placement".
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "available_cores",
    "format_cores",
    "parse_cores",
    "pin_current_thread",
    "pin_process",
    "pinned",
    "selector_threads",
]

_CAN_PIN = hasattr(os, "sched_setaffinity")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_cores(text: str) -> tuple[int, ...]:
    """Cores written as ``taskset`` and cpusets write them: ``"1"``, ``"0,2-3"``.

    Returns:
        The cores, sorted, each once.

    Raises:
        ValueError: empty, a piece that is not ``N`` or ``N-M`` with ``N <= M``, or a core
            named twice; the message names the piece.
    """
    if not text.strip():
        raise ValueError("empty core list: name at least one core (e.g. 1 or 0,2-3)")
    cores: list[int] = []
    for piece in text.split(","):
        match = _RANGE.fullmatch(piece.strip())
        if match is None:
            what = repr(piece.strip()) if piece.strip() else "an empty piece"
            raise ValueError(f"bad core list {text!r}: {what} is not a core (N) or a range (N-M)")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"bad core list {text!r}: the range {piece.strip()!r} is reversed")
        cores.extend(range(first, last + 1))
    twice = sorted({core for core in cores if cores.count(core) > 1})
    if twice:
        raise ValueError(f"bad core list {text!r}: core(s) {format_cores(twice)} named twice")
    return tuple(sorted(cores))


def format_cores(cores: Collection[int]) -> str:
    """The inverse of :func:`parse_cores`: ``(0, 2, 3)`` -> ``"0,2-3"``."""
    ranges: list[list[int]] = []
    for core in sorted(set(cores)):
        if ranges and core == ranges[-1][1] + 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def available_cores() -> tuple[int, ...]:
    """The cores the calling thread may run on: before anything is pinned, the machine's (or
    its container's) cores; in a pinned thread, its own."""
    if _CAN_PIN:
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def selector_threads(threads: int | None, cores: Collection[int] | None) -> int:
    """Torch threads of a selector: ``threads``, or one per pinned core (default 1).

    Raises:
        ValueError: both given and they disagree (a pinned selector runs one thread per core).
    """
    if cores and threads is not None and threads != len(cores):
        raise ValueError(
            f"threads={threads} but {len(cores)} core(s) {format_cores(cores)}: a pinned "
            "selector runs one torch thread per core (leave threads unset)"
        )
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        return threads
    return len(cores) if cores else 1


def pin_current_thread(cores: Collection[int]) -> None:
    """Run the calling thread (and threads it starts later) on ``cores``, torch on as many
    intra-op threads.

    Raises:
        ValueError: ``cores`` is empty, names cores the machine does not have, or cores this
            process may not use (its cpuset); the thread is left as it was.
    """
    wanted = set(cores)
    if not wanted:
        raise ValueError("no cores given: name at least one")
    count = os.cpu_count() or 1
    missing = sorted(core for core in wanted if not 0 <= core < count)
    if missing:
        raise ValueError(
            f"core(s) {format_cores(missing)} do not exist: this machine has cores "
            f"{format_cores(range(count))}"
        )
    if _CAN_PIN:
        before = os.sched_getaffinity(0)
        error: OSError | None = None
        try:
            os.sched_setaffinity(0, wanted)
            got = os.sched_getaffinity(0)
        except OSError as err:  # EINVAL: none of them is in this process's cpuset
            got, error = set(), err
        if got != wanted:  # the kernel drops cores outside the cpuset when some remain
            os.sched_setaffinity(0, before)
            raise ValueError(
                f"core(s) {format_cores(wanted - got)} not available to this process (its "
                f"cpuset or container limits); this thread runs on {format_cores(before)}"
            ) from error
    else:
        log.warning("this platform cannot pin threads to cores: %d torch thread(s), unpinned",
                    len(wanted))  # fmt: skip
    import torch  # here: parsing and checking core lists (settings, flags) needs no torch

    torch.set_num_threads(len(wanted))


@contextmanager
def pinned(cores: Collection[int]) -> Iterator[None]:
    """:func:`pin_current_thread` for a block; the thread's cores and torch thread count are
    restored after it (threads started inside keep the pinning they inherited)."""
    import torch

    threads = torch.get_num_threads()
    before = available_cores()
    pin_current_thread(cores)
    try:
        yield
    finally:
        if _CAN_PIN:
            os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def pin_process(cores: Collection[int]) -> None:
    """:func:`pin_current_thread`, and every other thread this process runs now.

    For a process that belongs to one role as a whole (the coordinator, a selector actor):
    threads that libraries started before this call (Ray's, gRPC's) move too.
    """
    pin_current_thread(cores)
    if not _CAN_PIN:
        return
    wanted = set(cores)
    try:
        tids = [int(task.name) for task in Path("/proc/self/task").iterdir()]
    except OSError:  # no /proc: threads started later still follow the calling thread
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, wanted)
        except (ProcessLookupError, PermissionError):  # ended meanwhile
            continue
