"""Embedded mode: the coordinator and selector in the trainer's own process."""

from __future__ import annotations

import os
from collections.abc import Collection

from crest.client.remote import RemoteCoordinator
from crest.proto.contract import Coordinator
from crest.service.local import LocalCoordinator
from crest.service.manager import JobManager
from crest.worker.placement import pin_current_thread
from crest.worker.selector import InProcessSelector


def local_coordinator(
    device: str = "cpu", cores: Collection[int] | None = None
) -> LocalCoordinator:
    """An in-process coordinator with an in-process selector on ``device``.

    ``cores`` pins the coordinator's side, its event-loop thread and its selector's thread,
    to those cores (:func:`crest.worker.placement.pin_current_thread`); pin the training
    thread to others, and the two stop sharing cores.

    ``CREST_STRICT=1`` (as for ``crest serve``'s ``strict`` setting) makes a selection bug fail
    the job's calls instead of falling back to random batches; the test suite sets it.
    """
    strict = os.environ.get("CREST_STRICT", "").lower() in ("1", "true")
    local = LocalCoordinator(JobManager(InProcessSelector(device, cores=cores), strict=strict))
    if cores:
        local.submit(_pin(cores)).result()
    return local


async def _pin(cores: Collection[int]) -> None:
    pin_current_thread(cores)  # on the loop's thread: it and the threads it starts later


def connect(address: str | None = None, **remote_args: object) -> Coordinator:
    """A coordinator for a training script: remote at ``address`` (``host:port``, e.g. a
    ``crest serve``; coordinator replicas' addresses separated by commas), or in this process
    when ``address`` is None.

    The remote coordinator's ``token`` defaults to ``$CREST_TOKEN`` (as for ``crest health``),
    so a script runs unchanged against a coordinator that requires one (docker-compose.yml
    and deploy/k8s give trainers the token that way). ``remote_args`` are
    :class:`RemoteCoordinator`'s keyword arguments (``token``, ``tls_ca``,
    ``connect_timeout_s``, ``retry_s``, ...). Nothing connects here: the first call does, and
    fails with :class:`crest.proto.errors.Unavailable` naming the address when nothing
    answers there within ``connect_timeout_s``.
    """
    if address is None:
        return local_coordinator()
    remote_args.setdefault("token", os.environ.get("CREST_TOKEN") or None)
    return RemoteCoordinator(address, **remote_args)  # type: ignore[arg-type]
