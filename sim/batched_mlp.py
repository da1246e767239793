"""Local SGD and evaluation of many MLPs at once with batched matmuls.

The batched engine's nodes usually run the built-in MLP (Flatten, then Linear and ReLU
layers, a Linear last). For it, the gradient of the mean cross-entropy is written out by
hand over a batch of nodes: one `bmm` per layer forward and two backward, no autograd graph
and no vmap. That is the same arithmetic as `torch.func.grad` of the module (a test checks
it against autograd) at a fraction of the cost: vmap over `functional_call` spends most of
its time outside the matmuls. Any other model goes through vmap (`sim.batched`).

Each node's weight matrices are copied into buffers whose entries start 64 bytes apart or
more, so a node's numbers never depend on which other nodes share its chunk (BLAS rounding
may depend on alignment); a sharded run gives the single-process run's results.
"""

from __future__ import annotations

import torch

ALIGN = 16  # float32 elements: 64 bytes


class MLPKernel:
    """The layers of a plain MLP as slices of a flat parameter row: `grad` and `logits` for
    a chunk of nodes, parameters (c, d)."""

    def __init__(self, layers: list[tuple[int, int, int, int]], d: int):
        self.layers = layers  # (weight offset, out features, in features, bias offset) per Linear
        self.d = d

    @staticmethod
    def of(module: torch.nn.Module) -> MLPKernel | None:
        """The kernel of `module` if it is Flatten? (Linear ReLU)* Linear with biases, else None."""
        children = list(module.children()) if isinstance(module, torch.nn.Sequential) else []
        if children and isinstance(children[0], torch.nn.Flatten):
            children = children[1:]
        if not children or not isinstance(children[-1], torch.nn.Linear):
            return None
        for i, m in enumerate(children):
            want = torch.nn.Linear if i % 2 == 0 else torch.nn.ReLU
            if type(m) is not want or (want is torch.nn.Linear and m.bias is None):
                return None
        offsets, at = {}, 0
        for name, p in module.named_parameters():
            offsets[name] = at
            at += p.numel()
        layers = []
        for name, m in module.named_children():
            if isinstance(m, torch.nn.Linear):
                layers.append((offsets[f"{name}.weight"], m.out_features, m.in_features, offsets[f"{name}.bias"]))
        return MLPKernel(layers, at)

    def _weights(self, p: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(W (c, out, in), b (c, 1, out)) per layer, W in an aligned buffer of its own."""
        c = p.shape[0]
        out = []
        for w_at, o, i, b_at in self.layers:
            size = o * i
            stride = -(-size // ALIGN) * ALIGN
            w = torch.empty(c * stride, dtype=p.dtype).as_strided((c, o, i), (stride, i, 1))
            w.copy_(p[:, w_at:w_at + size].view(c, o, i))
            out.append((w, p[:, b_at:b_at + o].unsqueeze(1)))
        return out

    def _forward(self, weights, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (c, s, classes) and each layer's input (the activations backward needs)."""
        inputs = []
        h = x
        last = len(weights) - 1
        for k, (w, b) in enumerate(weights):
            inputs.append(h)
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if k < last:
                h = h.clamp_min_(0.0)
        return h, inputs

    def grad(self, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient (c, d) of each node's mean cross-entropy on its batch x (c, s, f), y (c, s)."""
        c, s = y.shape
        weights = self._weights(p)
        z, inputs = self._forward(weights, x.reshape(c, s, -1))
        g = (z - z.amax(dim=2, keepdim=True)).exp_()  # softmax: torch's kernel is slow along 10 classes
        g.div_(g.sum(dim=2, keepdim=True))
        g.scatter_add_(2, y.unsqueeze(2), torch.full((c, s, 1), -1.0, dtype=g.dtype))
        g.mul_(1.0 / s)  # d loss / d logits
        out = torch.empty(c, self.d, dtype=p.dtype)
        for k in range(len(self.layers) - 1, -1, -1):
            w_at, o, i, b_at = self.layers[k]
            h = inputs[k]
            out[:, w_at:w_at + o * i] = torch.bmm(g.transpose(1, 2), h).view(c, o * i)
            out[:, b_at:b_at + o] = g.sum(dim=1)
            if k:
                g = torch.bmm(g, weights[k][0]).mul_(h > 0)  # h is the ReLU output: h > 0 where it passed
        return out

    def logits(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(c, T, classes): each node's logits on x, (T, f) shared by all or (c, T, f) each its own."""
        c = p.shape[0]
        x = x.reshape(x.shape[0], -1) if x.dim() == 2 else x.reshape(c, x.shape[1], -1)
        if x.dim() == 2:
            x = x.expand(c, *x.shape)
        return self._forward(self._weights(p), x)[0]
