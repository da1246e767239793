"""The built-in learner: classification with cross-entropy and plain SGD (optional momentum)
on the peer's own data. Other tasks plug in through `train.learner` (see peer.learning.learner).

It also supports `[privacy] mode = "record"`: after enable_record_dp every local step is a
DP-SGD step (privacy.dpsgd) feeding the same FlatSGD."""

from __future__ import annotations

import torch
from torch import nn

from privacy.dpsgd import noisy_mean, per_example_grads, poisson_batch

from ..config.parse import TrainConfig  # noqa: F401  (re-exported: where learners look for it)
from ..errors import ConfigError
from .data import LocalData
from .learner import Metrics


def steps_per_round(cfg: TrainConfig, samples: int) -> int:
    """Local steps in one round: train.epochs passes over the data if set, else train.local_steps."""
    if cfg.epochs > 0:
        return max(1, int(round(cfg.epochs * samples / cfg.batch_size)))
    return cfg.local_steps


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


class ClassificationLearner:
    """Cross-entropy on integer labels, SGD on the flat buffer; metrics loss, accuracy, samples.

    Built like any learner: `ClassificationLearner(model, flat, data, cfg, seed)`."""

    def __init__(self, model: nn.Module, flat: torch.Tensor, data: LocalData, cfg: TrainConfig, seed: int = 0,
                 **options):
        if options:
            raise ConfigError(f"train.options.{sorted(options)[0]}: the built-in classification learner takes "
                              "no options (its settings are train.lr, momentum, weight_decay, batch_size)")
        if data.y_train.is_floating_point():
            y = torch.cat([data.y_train, data.y_eval])
            odd = float(y[y != y.round()][0])
            raise ConfigError(f"found label {odd:g}, not a number in 0..{data.classes - 1}: the classification "
                              "learner needs whole-number class labels; for regression set train.learner "
                              "to your own package.module:factory")
        self.module, self.data, self.cfg = model, data, cfg
        self.opt = FlatSGD(flat, list(model.parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(seed)
        self.loss_fn = nn.CrossEntropyLoss()
        self.record_dp: tuple[float, float, torch.Generator, float] | None = None  # clip, sigma, generator, q

    def steps_per_round(self) -> int:
        return steps_per_round(self.cfg, len(self.data.y_train))

    def enable_record_dp(self, clip: float, sigma: float, generator: torch.Generator) -> tuple[float, int]:
        """Make every later train() run DP-SGD: Poisson batches with q = batch_size / n_train,
        per-example gradients clipped to `clip`, noise std sigma*clip, both drawn from `generator`
        (secret on a gateway). Returns (q, steps per round): the peer accounts
        Release(sigma, q, steps) for each round."""
        n = len(self.data.y_train)
        if n == 0:
            raise ConfigError("privacy.mode = 'record' needs training data; this peer has none")
        q = min(1.0, self.cfg.batch_size / n)
        self.record_dp = (float(clip), float(sigma), generator, q)
        return q, self.steps_per_round()

    def train(self, round: int = 0) -> Metrics:
        """One round of local SGD on the local data (DP-SGD once enable_record_dp was called)."""
        if self.record_dp is not None:
            return self._train_private()
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
        return Metrics(loss=total / max(seen, 1), accuracy=correct / max(seen, 1), samples=seen)

    def _train_private(self) -> Metrics:
        """One round of DP-SGD. The metrics (loss, accuracy on the sampled records) are computed
        from private data without noise: they are for the peer's own log, not a DP release."""
        assert self.record_dp is not None  # train() calls this only once enable_record_dp set it
        clip, sigma, gen, q = self.record_dp
        self.module.train()
        x, y = self.data.x_train, self.data.y_train
        expected = q * len(y)
        total, correct, seen = 0.0, 0, 0
        for _ in range(self.steps_per_round()):
            idx = poisson_batch(len(y), q, gen)
            if len(idx):
                grads, losses, out = per_example_grads(self.module, self.loss_fn, x[idx], y[idx])
                total += float(losses.sum())
                correct += int((out.argmax(1) == y[idx]).sum())
                seen += len(idx)
            else:
                grads = torch.zeros(0, self.opt.flat.numel())
            self.opt.grad.copy_(noisy_mean(grads, clip, sigma, gen, expected, self.opt.flat.numel()))
            self.opt.step()
        return Metrics(loss=total / max(seen, 1), accuracy=correct / max(seen, 1), samples=seen)

    def train_round(self) -> Metrics:
        return self.train()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Metrics:
        if x is None:
            x, y = self.data.x_eval, self.data.y_eval
            if len(y) == 0:
                x, y = self.data.x_train, self.data.y_train
        assert y is not None  # x and y are given together
        self.module.eval()
        out = self.module(x)
        return Metrics(loss=float(self.loss_fn(out, y)), accuracy=float((out.argmax(1) == y).float().mean()),
                       samples=len(y))

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint carries: the momentum buffer, once there is one."""
        return {} if self.opt.buf is None else {"momentum": self.opt.buf}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        buf = state.get("momentum")
        if buf is not None and buf.shape != self.opt.flat.shape:
            raise ValueError(f"momentum has {buf.numel()} values, the model {self.opt.flat.numel()}")
        self.opt.buf = None if buf is None else buf.detach().to(torch.float32).clone()

    def momentum_state(self) -> torch.Tensor | None:
        return self.opt.buf
