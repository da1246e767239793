"""An IoT anomaly detector for gossipfl, written as a user would: a data loader, a model
factory and a learner, named in peer.toml as

    [model] name = "gateway:autoencoder"
    [data]  source = "gateway:sensors"
    [train] learner = "gateway:AnomalyLearner"

Each gateway watches machines with six sensors. A machine runs in one of three operating
modes (different frequencies and couplings between sensors); each gateway sees mostly one
mode. Anomalies (a spike, a stuck sensor, a sensor drifting out of phase) are rare and
unlabelled in training: the autoencoder learns to reconstruct normal windows, and the
reconstruction error is the anomaly score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from peer.learning.functional import Functional

SENSORS, WINDOW, MODES = 6, 16, 3


def _mode_params(mode: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed per mode (the physics of the machine): frequency, per-sensor phase and gain."""
    rng = np.random.default_rng(1000 + mode)
    freq = 0.04 + 0.05 * mode
    return np.full(SENSORS, freq), rng.uniform(0, 2 * np.pi, SENSORS), rng.uniform(0.5, 1.5, SENSORS)


def windows(n: int, modes: np.ndarray, anomaly_rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n windows (n, WINDOW * SENSORS) from the given mode of each, and 0/1 anomaly flags."""
    t = np.arange(WINDOW)[:, None]
    x = np.empty((n, WINDOW, SENSORS), dtype=np.float32)
    flags = (rng.random(n) < anomaly_rate).astype(np.int64)
    for i in range(n):
        freq, phase, gain = _mode_params(int(modes[i]))
        start = rng.uniform(0, 1000)
        x[i] = gain * np.sin(2 * np.pi * freq * (t + start) + phase) + 0.05 * rng.standard_normal((WINDOW, SENSORS))
        if flags[i]:
            s, kind = rng.integers(SENSORS), rng.integers(3)
            if kind == 0:  # a spike
                x[i, rng.integers(WINDOW), s] += rng.choice([-1, 1]) * rng.uniform(2.0, 4.0)
            elif kind == 1:  # a stuck sensor
                x[i, :, s] = x[i, 0, s]
            else:  # out of phase with the rest of the machine
                x[i, :, s] = gain[s] * np.sin(2 * np.pi * freq[s] * (t[:, 0] + start) + phase[s] + np.pi)
    return x.reshape(n, -1), flags


def sensors(shard: int, shards: int, seed: int, samples: int = 600, own_mode: float = 0.9,
            anomaly_rate: float = 0.03):
    """The data loader (data.source): gateway `shard` sees its own mode `own_mode` of the time."""
    rng = np.random.default_rng(seed * 7919 + shard)
    own = shard % MODES
    modes = np.where(rng.random(samples) < own_mode, own, rng.integers(0, MODES, samples))
    return windows(samples, modes, anomaly_rate, rng)


def test_set(samples: int = 1200, anomaly_rate: float = 0.1, seed: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out windows from every mode (any gateway's machines may switch mode)."""
    rng = np.random.default_rng(seed)
    x, y = windows(samples, rng.integers(0, MODES, samples), anomaly_rate, rng)
    return torch.from_numpy(x), torch.from_numpy(y)


def autoencoder(in_features: int, hidden: int = 32, code: int = 8) -> nn.Module:
    """The model factory (model.name): gossipfl passes in_features; options come from model.options."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU(),
                         nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, in_features))


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the chance an anomaly scores above a normal window."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = torch.cat([pos, neg]).argsort().argsort().double() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _reconstruction_error(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per window: the squared reconstruction error (the loss, and the anomaly score)."""
    return {"loss": ((out - x) ** 2).mean(dim=-1)}


# The same learning as AnomalyLearner (MSE reconstruction, Adam), written as pure functions so the
# simulator's batched engine can train thousands of gateways at once (train.learner in scenario.toml).
reconstruction = Functional(_reconstruction_error, optimizer="adam", metric="loss", higher_is_better=False)


class AnomalyLearner:
    """The learner (train.learner): MSE reconstruction, Adam. Labels are ignored in training;
    evaluate() uses them only to report detection quality (AUROC)."""

    def __init__(self, model, flat, data, cfg, seed, weight_decay: float = 0.0):
        self.model, self.data, self.cfg = model, data, cfg
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=weight_decay)
        self.gen = torch.Generator().manual_seed(seed)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ((self.model(x) - x) ** 2).mean(dim=1)

    def train(self, round: int) -> dict[str, float]:
        self.model.train()
        x, total = self.data.x_train, 0.0
        steps = self.cfg.local_steps
        for _ in range(steps):
            xb = x[torch.randint(0, len(x), (min(self.cfg.batch_size, len(x)),), generator=self.gen)]
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.model(xb), xb)
            loss.backward()
            self.opt.step()
            total += float(loss.detach())
        return {"loss": total / steps, "samples": steps * min(self.cfg.batch_size, len(x))}

    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> dict[str, float]:
        if x is None:
            x, y = self.data.x_eval, self.data.y_eval
        self.model.eval()
        s = self.scores(x)
        return {"loss": float(s.mean()), "auroc": auroc(s, y), "samples": len(x)}

    def state(self) -> dict[str, torch.Tensor]:
        from peer.learning.learner import optimizer_state

        return optimizer_state(self.opt)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        from peer.learning.learner import load_optimizer_state

        load_optimizer_state(self.opt, state)
