"""The trainer side of crest: embeddings, weighted loss, quadratic-model terms, sessions."""

from crest.client.data import CrestBatchSampler, CrestLoader, dataset_fetch
from crest.client.embeddings import (
    EmbeddingFn,
    LastLayerEmbedding,
    LogitEmbedding,
    gradient_embeddings,
)
from crest.client.loss import weighted_loss
from crest.client.quadratic import QuadraticModel, hutchinson_diagonal
from crest.client.session import SelectionTimings, Session, WeightedBatch, tensor_fetch
from crest.proto.contract import JobConfig

__all__ = [
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
