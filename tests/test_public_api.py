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
