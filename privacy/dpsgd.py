"""Record mode: DP-SGD steps (Abadi et al. 2016) with torch.func per-example gradients.

A step samples a Poisson batch (each record independently with probability q: what the
accountant's PoissonSampledDpEvent assumes), clips every example's gradient to L2 norm C,
sums, adds N(0, (sigma*C)^2) per coordinate and divides by the expected batch q*n (not the
drawn batch size, which would leak it). Everything after (momentum, weight decay, the model
sent to neighbours) is post-processing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gossip.lazy import lazy

from .dp import clip_rows, gaussian_noise

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")


def poisson_batch(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the records in this step's batch: each of n included with probability q."""
    return (torch.rand(n, generator=generator) < q).nonzero().squeeze(1)


def per_example_grads(module: torch.nn.Module, loss_fn, xb: torch.Tensor,
                      yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grads (b, d) in module.parameters() order, losses (b,), outputs (b, ...)) for a
    non-empty batch; loss_fn(outputs, targets) as for the whole batch (e.g. CrossEntropyLoss)."""
    from torch.func import functional_call, grad, vmap

    names = [name for name, _ in module.named_parameters()]
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}

    def loss_one(p, x, y):
        out = functional_call(module, (p, buffers), (x.unsqueeze(0),))
        loss = loss_fn(out, y.unsqueeze(0))
        return loss, (loss.detach(), out.squeeze(0).detach())

    g, (losses, outputs) = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0, 0))(params, xb, yb)
    flat = torch.cat([g[name].reshape(len(xb), -1) for name in names], dim=1)
    return flat, losses, outputs


def noisy_mean(grads: torch.Tensor, clip: float, sigma: float, generator: torch.Generator,
               expected_batch: float, dim: int | None = None) -> torch.Tensor:
    """Per-example grads (b, d) clipped to `clip`, summed, noised with std sigma*clip and divided
    by expected_batch; b may be 0 (then d must be given): noise only."""
    d = grads.shape[1] if dim is None else dim
    total = clip_rows(grads, clip)[0].sum(0) if len(grads) else torch.zeros(d)
    if sigma > 0:
        total = total + gaussian_noise(d, sigma * clip, generator, total.dtype)
    return total / expected_batch


def private_step_grad(module: torch.nn.Module, loss_fn, xb: torch.Tensor, yb: torch.Tensor, clip: float,
                      sigma: float, generator: torch.Generator, expected_batch: float) -> torch.Tensor:
    """One DP-SGD gradient, flat in module.parameters() order; an empty batch gives noise only."""
    d = sum(p.numel() for p in module.parameters())
    grads = per_example_grads(module, loss_fn, xb, yb)[0] if len(xb) else torch.zeros(0, d)
    return noisy_mean(grads, clip, sigma, generator, expected_batch, d)
