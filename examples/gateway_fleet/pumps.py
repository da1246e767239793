"""Gateways at different operating points of one process, written as a user would: a data
loader, a model factory and a learner (regression), named in a scenario or peer.toml.

Each gateway watches one pump. All pumps obey the same physics: the bearing temperature rises
with speed and load, and ambient air cools less when it is warm. But each pump runs at its own
operating point (its own range of speed, load and ambient temperature: a feature shift) and
has its own mounting and sensor calibration (its own gain on load and offset: a small concept
shift). A gateway has few readings of its own. Alone it learns its offset but not the physics
outside its narrow range; the fleet's one model learns the physics but averages the offsets
away; a shared body with a gateway's own head (or a personal model pulled towards the fleet's)
gets both.

With few readings per gateway, `local_head` with only "head.*" own still loses to alone
(bench personalization): the shared body's features would do (a least-squares head on them
beats alone), but the head, trained together with a body that each round's aggregation
replaces, lags it (README, Personalization). "body.2.*" kept home too comes close to alone;
`ditto` matches it.

    [model] name = "pumps:body_and_head"       # parameters "body.*" (shared) and "head.*"
    [data]  dataset = "pumps:readings"          # source = "pumps:readings" in peer.toml
    [train] learner = "pumps:temperature"       # squared error, Adam; metric "loss" (MSE)
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from peer.learning.functional import Functional

CONTROLS, SENSORS = 6, 4  # speed, load, ambient, supply pressure, valve, fluid viscosity; four sensors

_RNG = np.random.default_rng(12345)  # the physics every pump obeys (fixed, not per gateway)
_A = _RNG.normal(0.0, 0.6, (4, CONTROLS))
_MIX = _RNG.normal(0.0, 1.0, (CONTROLS, SENSORS))  # how the sensors see the controls


def _site(seed: int, shard: int, spread: float) -> dict:
    """Gateway `shard`'s pump: its operating point (the centre and width of its controls) and
    its calibration (a gain on the load reading and an offset)."""
    rng = np.random.default_rng([seed, shard, 31])
    return {"centre": rng.uniform(-1.0, 1.0, CONTROLS), "width": spread * rng.uniform(0.5, 1.0, CONTROLS),
            "gain": rng.normal(0.0, 0.5), "offset": rng.normal(0.0, 0.5)}


def _physics(c: np.ndarray) -> np.ndarray:
    """The process all pumps share: bearing temperature from the controls (nonlinear)."""
    z = c @ _A.T
    return np.sin(2.0 * z[:, 0]) + 0.5 * z[:, 1] ** 2 + np.tanh(2.0 * z[:, 2]) * z[:, 3]


def readings(shard: int, shards: int, seed: int, samples: int = 320, spread: float = 0.6, noise: float = 0.1):
    """The data loader: (x (samples, 10), y (samples,) float temperatures) of gateway `shard`."""
    site = _site(seed, shard, spread)
    rng = np.random.default_rng([seed, shard, 32])
    c = site["centre"] + site["width"] * rng.uniform(-1.0, 1.0, (samples, CONTROLS))
    sensors = np.tanh(c @ _MIX) + 0.05 * rng.standard_normal((samples, SENSORS))
    x = np.concatenate([c, sensors], axis=1).astype(np.float32)
    y = _physics(c) + site["gain"] * c[:, 1] + site["offset"] + noise * rng.standard_normal(samples)
    return x, y.astype(np.float32)


def body_and_head(in_features: int, hidden: int = 32) -> nn.Module:
    """The model factory: a shared body and a gateway's own linear head ("head.weight", "head.bias")."""
    return nn.Sequential(OrderedDict(
        body=nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()),
        head=nn.Linear(hidden, 1)))


def _squared_error(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    err = out.reshape(out.shape[0], -1)[:, 0] - y.to(out.dtype)
    return {"loss": err * err, "mae": err.abs()}


# squared error, Adam, reported as the held-out MSE ("loss", lower is better): both engines run it
temperature = Functional(_squared_error, optimizer="adam", metric="loss", higher_is_better=False)
