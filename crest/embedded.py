"""Embedded mode: the coordinator and selector in the trainer's own process."""

from __future__ import annotations

from crest.service.local import LocalCoordinator
from crest.service.manager import JobManager
from crest.worker.selector import InProcessSelector


def local_coordinator(device: str = "cpu") -> LocalCoordinator:
    """An in-process coordinator with an in-process selector on ``device``."""
    return LocalCoordinator(JobManager(InProcessSelector(device)))
