"""RemoteCoordinator arguments (no server needed: nothing connects before the first call)."""

from __future__ import annotations

import numpy as np
import pytest

from crest.client.remote import RemoteCoordinator
from crest.proto.contract import JobConfig
from crest.proto.errors import InvalidArgument


@pytest.mark.parametrize("name", ["call_timeout_s", "connect_timeout_s", "retry_s"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_timeouts_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        RemoteCoordinator("127.0.0.1:1", **{name: value})


@pytest.mark.parametrize(
    "labels", [np.array(["cat", "dog"] * 50), np.array([0.0, 1.5] * 50)], ids=["str", "float"]
)
def test_create_job_refuses_labels_that_are_not_integers(labels: np.ndarray) -> None:
    """Checked before anything is sent: casting to the wire's int64 would hide the mistake."""
    config = JobConfig(num_examples=100, num_classes=2, batch_size=4)
    with (
        RemoteCoordinator("127.0.0.1:1") as remote,
        pytest.raises(InvalidArgument, match="must be integers"),
    ):
        remote.create_job(config, labels)
