"""RemoteCoordinator arguments (no server needed: nothing connects before the first call)."""

from __future__ import annotations

import pytest

from crest.client.remote import RemoteCoordinator


@pytest.mark.parametrize("name", ["call_timeout_s", "connect_timeout_s", "retry_s"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_timeouts_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        RemoteCoordinator("127.0.0.1:1", **{name: value})
