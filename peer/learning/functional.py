"""A learner written as pure functions: the same math runs per peer and, vectorized over
thousands of nodes, in the simulator's batched engine.

A user defines one function of the model's output on a batch,

    def per_sample(out, x, y) -> {"loss": (s,) tensor, "mae": (s,) tensor, ...}

(every value one number per sample, made of ordinary torch operations so that
`torch.func.vmap` can batch it over nodes), and names

    reconstruction = Functional(per_sample, optimizer="adam", metric="loss", higher_is_better=False)

as `train.learner = "module:reconstruction"` in peer.toml or a scenario. Training minimises
the batch mean of "loss" with the optimizer (SGD with momentum and weight decay, or Adam)
written here as operations on flat (c, d) parameter rows, c nodes at a time: a peer is c = 1.
Evaluation averages each value over the held-out samples. `metric` names the headline
figure the simulator reports per node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .learner import Metrics

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Functional:
    per_sample: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict]
    optimizer: str = "sgd"
    metric: str = "accuracy"
    higher_is_better: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Functional optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")

    def __call__(self, model, flat, data, cfg, seed, **options) -> FunctionalLearner:
        """A learner factory (train.learner): the peer's learner for this function."""
        return FunctionalLearner(self, model, flat, data, cfg, seed)

    # --- the optimizer on (c, d) rows -----------------------------------------------------

    def init_state(self, c: int, d: int) -> dict[str, torch.Tensor]:
        """Optimizer state of c nodes: SGD's momentum buffer, Adam's moments and step count."""
        if self.optimizer == "adam":
            return {"m": torch.zeros(c, d), "v": torch.zeros(c, d), "t": torch.zeros(c)}
        return {"buf": torch.zeros(c, d)}

    def step(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], cfg) -> torch.Tensor:
        """New parameters (c, d) after one step from p with gradients g; updates `state` in place.
        cfg: lr, momentum, weight_decay (a TrainConfig or a scenario)."""
        wd = float(getattr(cfg, "weight_decay", 0.0) or 0.0)
        if wd:
            g = g + wd * p
        if self.optimizer == "adam":
            b1, b2 = self.betas
            state["t"] += 1
            state["m"].mul_(b1).add_(g, alpha=1 - b1)
            state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            t = state["t"][:, None]
            m_hat = state["m"] / (1 - b1 ** t)
            v_hat = state["v"] / (1 - b2 ** t)
            return p - cfg.lr * m_hat / (v_hat.sqrt() + self.eps)
        mom = float(getattr(cfg, "momentum", 0.0) or 0.0)
        if mom:
            state["buf"].mul_(mom).add_(g)
            g = state["buf"]
        return p - cfg.lr * g

    # --- the loss and scores of one node's parameters ------------------------------------

    def batch_loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(out, x, y)["loss"].mean()


def params_of(model: torch.nn.Module) -> Callable[[torch.Tensor], dict]:
    """flat (d,) -> {name: view of flat shaped as that parameter}: for functional_call."""
    named = list(model.named_parameters())
    names, shapes = [n for n, _ in named], [tuple(p.shape) for _, p in named]
    sizes = [math.prod(s) for s in shapes]

    def split(flat: torch.Tensor) -> dict:
        return {n: q.view(s) for n, q, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
    return split


class FunctionalLearner:
    """The peer's learner for a Functional: train() takes local_steps optimizer steps on batches
    of the node's data; evaluate() averages per_sample over the held-out split (or x, y)."""

    def __init__(self, fn: Functional, model, flat: torch.Tensor, data, cfg, seed: int):
        self.fn, self.model, self.flat, self.data, self.cfg = fn, model, flat, data, cfg
        self.gen = torch.Generator().manual_seed(int(seed))
        self.state_ = fn.init_state(1, flat.numel())
        self.params_of = params_of(model)

    def _grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, grad

        def loss(flat):
            return self.fn.batch_loss(functional_call(self.model, self.params_of(flat), (x,)), x, y)

        return grad(loss)(self.flat.detach())

    def train(self, round: int) -> Metrics:
        x, y = self.data.x_train, self.data.y_train
        size = min(self.cfg.batch_size, len(x))
        total = 0.0
        steps = max(1, int(self.cfg.local_steps))
        for _ in range(steps):
            idx = torch.randint(0, len(x), (size,), generator=self.gen)
            g = self._grad(x[idx], y[idx])
            with torch.no_grad():
                new = self.fn.step(self.flat[None], g[None], self.state_, self.cfg)[0]
                self.flat.copy_(new)
                total += float(self.fn.batch_loss(self.model(x[idx]), x[idx], y[idx]))
        return Metrics(loss=total / steps, samples=steps * size)

    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Metrics:
        if x is None:
            x, y = self.data.x_eval, self.data.y_eval
        assert y is not None  # x and y are given together (as in classification.py)
        if len(x) == 0:
            return Metrics(loss=math.nan, samples=0)
        with torch.no_grad():
            scores = self.fn.per_sample(self.model(x), x, y)
        return Metrics({k: float(v.float().mean()) for k, v in scores.items()}, samples=len(x))

    def state(self) -> dict[str, torch.Tensor]:
        return {f"opt.{k}": v.clone() for k, v in self.state_.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.state_:
            v = state.get(f"opt.{k}")
            if v is not None and v.shape == self.state_[k].shape:
                self.state_[k].copy_(v)


def _classification(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    ce = torch.logsumexp(out, dim=-1) - out.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    return {"loss": ce, "accuracy": (out.argmax(dim=-1) == y).to(out.dtype)}


def _squared_error(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    err = out.reshape(out.shape[0], -1).squeeze(-1) - y.to(out.dtype)
    return {"loss": err * err, "mae": err.abs()}


CLASSIFICATION = Functional(_classification)  # cross-entropy, SGD: the built-in learner's math
REGRESSION = Functional(_squared_error, metric="loss", higher_is_better=False)  # MSE to y, SGD
