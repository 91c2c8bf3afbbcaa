import crest.client


def test_client_exports_are_pinned() -> None:
    assert sorted(crest.client.__all__) == [
        "CrestBatchSampler",
        "CrestLoader",
        "EmbeddingFn",
        "JobConfig",
        "LastLayerEmbedding",
        "LogitEmbedding",
        "QuadraticModel",
        "SelectionTimings",
        "Session",
        "WeightedBatch",
        "dataset_fetch",
        "gradient_embeddings",
        "hutchinson_diagonal",
        "tensor_fetch",
        "weighted_loss",
    ]
    for name in crest.client.__all__:
        assert hasattr(crest.client, name)


def test_worker_exports_are_pinned() -> None:
    import crest.worker

    assert sorted(crest.worker.__all__) == [
        "Cancellation",
        "EmbedRequest",
        "EmbedResult",
        "InProcessSelector",
        "KernelError",
        "PoolUnavailable",
        "RaySelector",
        "SelectionCancelled",
        "SelectionRequest",
        "SelectionResult",
        "SelectionTimeout",
        "Selector",
        "init_ray",
        "select_coreset",
        "select_groups",
    ]
    for name in crest.worker.__all__:
        assert hasattr(crest.worker, name)
