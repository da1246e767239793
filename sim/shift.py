"""Gateways that see different worlds, beyond label skew (scenario table [data.shift]):

- feature shift: node i's inputs x (flattened) become rotate_i(x * gain_i + offset_i), with
  offset_i ~ N(0, offset^2) and log gain_i ~ N(0, scale^2) per feature, and rotate_i a
  rotation by an angle in [-rotation, rotation] in each of disjoint random planes (pairs of
  features): each gateway at its own operating point, its own sensor calibration;
- concept shift: the nodes fall into `concept` groups (node i in group i mod concept), and
  group k relabels class y as (y + k) mod classes: the same inputs mean different things.

Every number is drawn from (seed, node), so the protocol and the batched engine transform a
node's data alike, whichever process loads it. Applied to the training and the held-out
split alike (after the split, so the split itself never depends on the shift); the shared
test set (data.test, a built-in test split) stays as it is: the world's view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ScenarioError

SHIFT_STREAM = 4243


@dataclass(frozen=True)
class Shift:
    offset: float = 0.0  # std of each node's per-feature offset
    scale: float = 0.0  # std of the log of each node's per-feature gain
    rotation: float = 0.0  # largest rotation angle (radians) in each random plane
    concept: int = 0  # groups with their own label map (0 or 1: none)

    @property
    def features(self) -> bool:
        return bool(self.offset or self.scale or self.rotation)

    @property
    def active(self) -> bool:
        return self.features or self.concept > 1


def of(sc) -> Shift:
    return Shift(sc.shift_offset, sc.shift_scale, sc.shift_rotation, sc.shift_concept)


@dataclass(frozen=True)
class NodeTransform:
    offset: torch.Tensor  # (f,)
    gain: torch.Tensor  # (f,)
    first: torch.Tensor  # (p,) feature indices of each plane
    second: torch.Tensor  # (p,)
    cos: torch.Tensor  # (p,)
    sin: torch.Tensor  # (p,)


def node_transform(shift: Shift, seed: int, node: int, features: int) -> NodeTransform:
    """Node `node`'s (plan index) feature transform, drawn from (seed, node) alone."""
    rng = np.random.default_rng([int(seed), int(node), SHIFT_STREAM])
    offset = rng.normal(0.0, 1.0, features) * shift.offset
    gain = np.exp(rng.normal(0.0, 1.0, features) * shift.scale)
    order = rng.permutation(features)
    planes = features // 2
    angle = rng.uniform(-1.0, 1.0, planes) * shift.rotation
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return NodeTransform(t(offset.astype(np.float32)), t(gain.astype(np.float32)), t(order[:planes]),
                         t(order[planes:2 * planes]), t(np.cos(angle).astype(np.float32)),
                         t(np.sin(angle).astype(np.float32)))


def transform_x(x: torch.Tensor, tr: NodeTransform) -> torch.Tensor:
    """rotate(x * gain + offset) for every sample of x (N, ...), vectorized over samples and planes."""
    shape = x.shape
    flat = x.reshape(len(x), -1).to(torch.float32) * tr.gain + tr.offset
    a, b = flat[:, tr.first], flat[:, tr.second]
    flat[:, tr.first] = a * tr.cos - b * tr.sin
    flat[:, tr.second] = a * tr.sin + b * tr.cos
    return flat.reshape(shape)


def relabel(y: torch.Tensor, shift: Shift, node: int, classes: int) -> torch.Tensor:
    """Concept shift: class y of node `node` becomes (y + node mod concept) mod classes."""
    if shift.concept <= 1:
        return y
    if y.is_floating_point():
        raise ScenarioError("data.shift.concept relabels classes, but this data set has regression targets "
                            "(float labels): leave concept at 0 for it")
    return (y + int(node) % shift.concept) % classes


def apply(shift: Shift, seed: int, node: int, x: torch.Tensor, y: torch.Tensor,
          classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node `node`'s samples as that gateway sees them."""
    if shift.features and len(x):
        x = transform_x(x, node_transform(shift, seed, node, int(math.prod(x.shape[1:]))))
    return x, relabel(y, shift, node, classes)


def apply_local(shift: Shift, seed: int, node: int, data):
    """A peer's LocalData (peer.learning.data) with both splits shifted."""
    import dataclasses

    if not shift.active:
        return data
    xt, yt = apply(shift, seed, node, data.x_train, data.y_train, data.classes)
    xe, ye = apply(shift, seed, node, data.x_eval, data.y_eval, data.classes)
    return dataclasses.replace(data, x_train=xt, y_train=yt, x_eval=xe, y_eval=ye)
