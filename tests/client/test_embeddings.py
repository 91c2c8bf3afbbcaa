import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crest.client import LastLayerEmbedding, gradient_embeddings, weighted_loss
from crest.proto.errors import InvalidArgument


def test_logit_embeddings_are_the_loss_gradient_wrt_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (7,), generator=gen)
    embeddings, losses = gradient_embeddings(logits.detach(), labels)
    per_example = F.cross_entropy(logits, labels, reduction="none")
    (grad,) = torch.autograd.grad(per_example.sum(), logits)
    torch.testing.assert_close(embeddings, grad)
    torch.testing.assert_close(losses, per_example.detach())


def test_last_layer_embedding_projects_the_per_example_weight_gradient() -> None:
    torch.manual_seed(0)
    head = nn.Linear(6, 3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), head)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    embed = LastLayerEmbedding(head, dim=8, seed=1)
    embeddings, losses = embed(model, x, y)
    assert embeddings.shape == (5, 8)
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        flat = torch.cat([head.weight.grad, head.bias.grad.unsqueeze(1)], 1).reshape(-1)
        expected = flat @ embed.projection.reshape(-1, 8)
        torch.testing.assert_close(embeddings[i], expected, rtol=1e-4, atol=1e-5)
    assert losses.shape == (5,)


def test_weighted_loss_is_the_weighted_mean() -> None:
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 2.0, 0.5, 0.5])
    expected = (F.cross_entropy(logits, targets, reduction="none") * weights).mean()
    torch.testing.assert_close(weighted_loss(logits, targets, weights), expected)
    ones = weighted_loss(logits, targets, torch.ones(4))
    torch.testing.assert_close(ones, F.cross_entropy(logits, targets))


def test_embeddings_refuse_a_model_of_the_wrong_width() -> None:
    labels = torch.tensor([0, 3, 1])
    for width in (3, 7):  # C - 1 and C + 3 for C = 4
        with pytest.raises(InvalidArgument, match=f"has {width} outputs, but the job has num"):
            gradient_embeddings(torch.randn(3, width), labels, num_classes=4)
    with pytest.raises(InvalidArgument, match="3 outputs, too few for label 3"):
        gradient_embeddings(torch.randn(3, 3), labels)  # C unknown: the labels still tell
    with pytest.raises(InvalidArgument, match="head has 7 outputs, but the job has num"):
        LastLayerEmbedding(nn.Linear(6, 7), num_classes=4)
