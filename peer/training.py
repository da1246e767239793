"""Local training and evaluation: plain SGD (optional momentum) on the peer's own data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import LocalData


@dataclass
class TrainConfig:
    local_steps: int = 10
    epochs: float = 0.0  # > 0: train this many passes instead of local_steps
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class Metrics:
    loss: float
    accuracy: float
    samples: int


class FlatSGD:
    """SGD (momentum, weight decay) as three vector operations on the model's flat buffer.

    Gradients accumulate into one flat buffer too (each parameter's .grad is a view into
    it), so a step costs no per-parameter Python loop and the momentum is one tensor that
    checkpoints as is. (torch.optim also pulls in torch._dynamo: ~100 MB on a gateway.)
    """

    def __init__(self, flat: torch.Tensor, params: list[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.flat, self.lr, self.momentum, self.weight_decay = flat, lr, momentum, weight_decay
        self.grad = torch.zeros_like(flat)
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = self.grad[offset : offset + k].view(p.shape)
            offset += k
        self.buf: torch.Tensor | None = None

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        g = self.grad
        if self.weight_decay:
            g = g.add(self.flat, alpha=self.weight_decay)
        if self.momentum:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(self.momentum).add_(g)
            g = self.buf
        self.flat.add_(g, alpha=-self.lr)


class Trainer:
    def __init__(self, module: nn.Module, flat: torch.Tensor, data: LocalData, cfg: TrainConfig, seed: int = 0):
        self.module, self.data, self.cfg = module, data, cfg
        self.opt = FlatSGD(flat, list(module.parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(seed)
        self.loss_fn = nn.CrossEntropyLoss()

    def steps_per_round(self) -> int:
        n = len(self.data.y_train)
        if self.cfg.epochs > 0:
            return max(1, int(round(self.cfg.epochs * n / self.cfg.batch_size)))
        return self.cfg.local_steps

    def train_round(self) -> Metrics:
        """One round of local SGD on the local data."""
        self.module.train()
        x, y = self.data.x_train, self.data.y_train
        total, correct, seen = 0.0, 0, 0
        for _ in range(self.steps_per_round()):
            idx = torch.randint(0, len(y), (min(self.cfg.batch_size, len(y)),), generator=self.gen)
            xb, yb = x[idx], y[idx]
            self.opt.zero_grad()
            out = self.module(xb)
            loss = self.loss_fn(out, yb)
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        return Metrics(total / max(seen, 1), correct / max(seen, 1), seen)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Metrics:
        if x is None:
            x, y = self.data.x_eval, self.data.y_eval
            if len(y) == 0:
                x, y = self.data.x_train, self.data.y_train
        self.module.eval()
        out = self.module(x)
        return Metrics(float(self.loss_fn(out, y)), float((out.argmax(1) == y).float().mean()), len(y))

    def momentum_state(self) -> torch.Tensor | None:
        return self.opt.buf

    def load_momentum(self, buf: torch.Tensor | None) -> None:
        self.opt.buf = None if buf is None else buf.clone()
