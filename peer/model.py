"""Models as flat parameters: every parameter is a view into one contiguous float32 vector,
so reading the model for sending and writing the aggregate back are single copies.

The schema (ordered names, shapes, dtypes) is hashed; peers only accept updates whose
schema hash equals theirs.
"""

from __future__ import annotations

import hashlib
import importlib

import msgpack
import torch
from torch import nn

from .errors import ConfigError


def mlp(in_features: int = 64, hidden: list[int] | tuple[int, ...] = (32,), classes: int = 10) -> nn.Module:
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(nn.Flatten(), *layers)


def cnn(in_features: int = 64, channels: int = 16, classes: int = 10, side: int = 8) -> nn.Module:
    """A small CNN for side x side single-channel images (8x8 digits by default)."""
    if side * side != in_features:
        raise ConfigError(f"model.cnn needs square images: side^2 = {side * side} != in_features {in_features}")
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * (side // 2) ** 2, 64), nn.ReLU(), nn.Linear(64, classes))


BUILTIN = {"mlp": mlp, "cnn": cnn}


def load_object(path: str, what: str):
    """'package.module:name' -> the object; errors say what was wrong with the path."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"{what}: expected 'package.module:name', got {path!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {module!r}: {exc}") from None
    obj = getattr(mod, name, None)
    if obj is None:
        raise ConfigError(f"{what}: {module!r} has no {name!r}")
    return obj


def build_model(name: str, in_features: int, classes: int, options: dict | None = None, seed: int = 0) -> nn.Module:
    """A built-in model by name or a user factory by import path, seeded for reproducibility."""
    options = dict(options or {})
    torch.manual_seed(seed)
    if name in BUILTIN:
        try:
            return BUILTIN[name](in_features=in_features, classes=classes, **options)
        except TypeError as exc:
            raise ConfigError(f"model.{name}: bad option ({exc})") from None
    factory = load_object(name, "model.name")
    model = factory(**options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class FlatModel:
    """A module whose parameters live in one flat float32 buffer."""

    def __init__(self, module: nn.Module):
        self.module = module
        params = [(n, p) for n, p in module.named_parameters()]
        if not params:
            raise ConfigError("model has no parameters")
        self.names = [n for n, _ in params]
        self.shapes = [tuple(p.shape) for _, p in params]
        total = sum(p.numel() for _, p in params)
        self.flat = torch.empty(total, dtype=torch.float32)
        offset = 0
        for _, p in params:
            k = p.numel()
            self.flat[offset : offset + k].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + k].view(p.shape)
            offset += k
        self.schema = schema_hash(self.names, self.shapes)

    @property
    def size(self) -> int:
        return self.flat.numel()

    def get(self) -> torch.Tensor:
        """A copy of the parameters (safe to send while training goes on)."""
        return self.flat.clone()

    def set(self, values: torch.Tensor) -> None:
        if values.shape != self.flat.shape:
            raise ValueError(f"expected {self.flat.numel()} values, got {values.numel()}")
        with torch.no_grad():
            self.flat.copy_(values)


def schema_hash(names: list[str], shapes: list[tuple[int, ...]]) -> bytes:
    body = msgpack.packb([["float32", n, list(s)] for n, s in zip(names, shapes, strict=True)])
    return hashlib.sha256(b"gossipfl/schema/v1\x00" + body).digest()
