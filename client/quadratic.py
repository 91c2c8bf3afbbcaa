"""The quadratic model of the loss around a region's start, on the trainer's side.

``F(δ) = L_0 + gᵀδ + ½ δᵀ diag(h) δ`` with ``δ = θ - θ_0`` taken exactly from the parameters
(never accumulated from learning rates). L_0 comes from the coordinator; this module holds θ_0,
g and h and evaluates the two terms that need the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def hutchinson_diagonal(
    loss: Tensor, params: list[nn.Parameter], probes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Gradient and Hutchinson estimate of the Hessian diagonal, ``h ≈ E[v ⊙ Hv]``.

    Args:
        loss: scalar with a graph to ``params``. probes: Rademacher probes (>= 1).
        generator: CPU generator for the probes (seeded for reproducibility).

    Returns:
        ``(g, h)``: flat float tensors over ``params``.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True)
    diag = [torch.zeros_like(p) for p in params]
    for _ in range(probes):
        vs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
        hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        for d, v, hv in zip(diag, vs, hvs, strict=True):
            d.add_(v * hv)
    g = parameters_to_vector([gr.detach() for gr in grads])
    h = parameters_to_vector(diag) / probes
    return g, h


class QuadraticModel:
    """θ_0, g and (optionally) h of one region.

    Args:
        params: the trainable parameters, at θ_0 when this is built.
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.origin = parameters_to_vector([p.detach() for p in params]).clone()
        self.gradient: Tensor | None = None
        self.hessian: Tensor | None = None

    def delta(self) -> Tensor:
        return parameters_to_vector([p.detach() for p in self.params]) - self.origin

    def terms(self) -> tuple[float, float]:
        """``(gᵀδ, δᵀ diag(h) δ)``; the quadratic term is 0 for a first-order model."""
        if self.gradient is None:
            raise RuntimeError("the region's gradient is not known yet")
        delta = self.delta()
        linear = float(self.gradient @ delta)
        quadratic = float(delta @ (self.hessian * delta)) if self.hessian is not None else 0.0
        return linear, quadratic

    def curvature(self) -> float:
        """‖h‖, or ‖g‖ for a first-order model: what adapts the check interval."""
        source = self.hessian if self.hessian is not None else self.gradient
        return 0.0 if source is None else float(source.norm())


class GradientCapture:
    """Copies the gradient of the next backward pass, without an extra pass.

    Hooks run as each parameter's gradient is accumulated, so the copy is taken even if the
    training loop clears ``.grad`` right after ``optimizer.step()``. Under DDP this is the
    rank's local gradient; the coordinator averages ranks' linear terms, which is the same as
    using the averaged gradient.
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.grads: dict[int, Tensor] = {}
        self.handles = [
            p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(params)
        ]

    def _hook(self, index: int):
        def hook(param: nn.Parameter) -> None:
            if index not in self.grads and param.grad is not None:
                self.grads[index] = param.grad.detach().clone()

        return hook

    def result(self) -> Tensor | None:
        """The flat captured gradient (None if no backward ran); removes the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if not self.grads:
            return None
        return parameters_to_vector(
            [self.grads.get(i, torch.zeros_like(p)) for i, p in enumerate(self.params)]
        )
