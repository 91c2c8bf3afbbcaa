"""The checks both coordinators make of their caller's arguments (crest.proto.requests)."""

from __future__ import annotations

import numpy as np
import pytest

from crest.proto import requests
from crest.proto.contract import JobConfig
from crest.proto.errors import InvalidArgument


def test_an_upload_comes_back_as_the_wire_carries_it() -> None:
    indices, embeddings, losses = requests.upload(
        np.array([5, 2], np.int32), np.ones((2, 3)), np.array([0.5, 0.0])
    )
    assert (indices.dtype, embeddings.dtype, losses.dtype) == (np.int64, np.float32, np.float32)
    assert indices.tolist() == [5, 2]  # the caller's order
    half = requests.upload(np.array([1]), np.ones((1, 3)), np.ones(1), np.float16)[1]
    assert half.dtype == np.float16


def test_an_upload_is_checked_whole_and_after_the_cast() -> None:
    with pytest.raises(InvalidArgument, match="duplicates"):
        requests.upload(np.array([1, 2, 3, 1]), np.ones((4, 2)), np.ones(4))
    with pytest.raises(InvalidArgument, match="NaN or Inf"):  # over float16's range
        requests.upload(np.array([1]), np.full((1, 2), 1e6), np.ones(1), np.float16)


def test_job_labels_must_be_n_integers() -> None:
    config = JobConfig(num_examples=4, num_classes=2, batch_size=1)
    _, labels = requests.job(config, np.array([0, 1, 1, 0], np.uint8))
    assert labels.dtype == np.int64
    with pytest.raises(InvalidArgument, match=r"shape \(4,\), got \(3,\)"):
        requests.job(config, np.array([0, 1, 1]))
    with pytest.raises(InvalidArgument, match="must be integers"):
        requests.job(config, np.array([0.0, 1, 1, 0]))
    with pytest.raises(InvalidArgument, match="invalid job config: tau"):
        requests.job(config.model_copy(update={"tau": -1.0}), np.array([0, 1, 1, 0]))
    with pytest.raises(InvalidArgument, match="invalid job config: num_examples"):
        requests.job({"num_examples": -1, "num_classes": 2}, np.array([0, 1, 1, 0]))
    assert requests.job(config.model_dump(), np.array([0, 1, 1, 0]))[0] == config
