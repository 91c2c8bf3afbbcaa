import torch
from torch import nn

from crest.client.quadratic import GradientCapture, QuadraticModel, hutchinson_diagonal


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    curvature = torch.tensor([2.0, 5.0, 0.5])
    loss = 0.5 * (curvature * theta**2).sum() + theta.sum()
    g, h = hutchinson_diagonal(loss, [theta], probes=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(g, curvature * theta.detach() + 1)
    torch.testing.assert_close(h, curvature)  # v ⊙ Hv = v² h = h for Rademacher v


def test_hutchinson_is_unbiased_for_a_full_hessian() -> None:
    torch.manual_seed(0)
    a = torch.randn(4, 4)
    hessian = a @ a.T
    theta = nn.Parameter(torch.randn(4))
    loss = 0.5 * theta @ hessian @ theta
    _, h = hutchinson_diagonal(
        loss, [theta], probes=4000, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(h, hessian.diagonal(), atol=0.25, rtol=0.1)


def test_terms_use_the_exact_parameter_delta() -> None:
    model = nn.Linear(2, 1)
    quad = QuadraticModel(list(model.parameters()))
    quad.gradient = torch.tensor([1.0, 2.0, 3.0])
    quad.hessian = torch.tensor([2.0, 0.0, 1.0])
    with torch.no_grad():
        model.weight += torch.tensor([[0.5, -1.0]])
        model.bias += 2.0
    linear, quadratic = quad.terms()
    assert linear == 0.5 - 2.0 + 6.0
    assert quadratic == 2 * 0.25 + 0 + 4.0
    assert quad.curvature() == torch.tensor([2.0, 0.0, 1.0]).norm().item()


def test_gradient_capture_survives_zero_grad_and_ignores_later_passes() -> None:
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    capture = GradientCapture(list(model.parameters()))
    model(x).pow(2).sum().backward()
    expected = torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()  # a second pass must not overwrite the first
    torch.testing.assert_close(capture.result(), expected)
    assert capture.handles == []
    assert GradientCapture(list(model.parameters())).result() is None
