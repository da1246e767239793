"""Byzantine attacks, computed per targeted honest neighbourhood (omniscient attackers).

Model poisoning (what an attacker sends to target t, given the trained parameters of t's
honest neighbourhood H, t's own x_t and the attacker's own x_a):
- sign_flip:  -scale * mean(H)
- gaussian:   mean(H) + sigma * N(0, I)
- scaling:    x_t + lam * (x_a - x_t)                  (boosting the attacker's own direction)
- alie:       mean(H) - z * std(H), z from Baruch et al. 2019 for (n, b)
- ipm:        -eps * mean(H)                           (Xie et al. 2020, eps = 0.1)
- dissensus:  x_t - eps * (mean(H without t) - x_t)    (He et al. 2022, eps = 1.5)
Data poisoning: label_flip (label y trained as classes - 1 - y).
Protocol attacks rewrite the signed bytes: forged, replay, wrong_round, wrong_network,
oversized, non_finite; honest peers must reject every one.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from gossip.envelope import seal
from gossip.identity import Identity
from gossip.verify import parse

from .errors import ScenarioError

MODEL_ATTACKS = ("sign_flip", "gaussian", "scaling", "alie", "ipm", "dissensus")
DATA_ATTACKS = ("label_flip",)
PROTOCOL_ATTACKS = ("forged", "replay", "wrong_round", "wrong_network", "oversized", "non_finite")
ATTACKS = ("none",) + MODEL_ATTACKS + DATA_ATTACKS + PROTOCOL_ATTACKS
DEFAULTS = {"sign_flip": {"scale": 1.0}, "gaussian": {"sigma": 1.0}, "scaling": {"lam": 10.0},
            "alie": {"z": None}, "ipm": {"eps": 0.1}, "dissensus": {"eps": 1.5}}


def alie_z(n: int, b: int) -> float:
    """z_max of 'A Little Is Enough': s = floor(n/2 + 1) - b supporters needed; z = Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - b
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def model_attack(kind: str, honest: torch.Tensor, target: torch.Tensor, own: torch.Tensor, *,
                 n: int, b: int, gen: torch.Generator, params: dict | None = None,
                 honest_without_target: torch.Tensor | None = None) -> torch.Tensor:
    """The vector an attacker sends to one target. `honest`: (k, d) trained parameters of the
    target's honest neighbourhood (the target included); n: the target's aggregation size."""
    p = {**DEFAULTS.get(kind, {}), **(params or {})}
    mu = honest.mean(dim=0)
    if kind == "sign_flip":
        return -float(p["scale"]) * mu
    if kind == "gaussian":
        return mu + float(p["sigma"]) * torch.randn(mu.shape, generator=gen)
    if kind == "scaling":
        return target + float(p["lam"]) * (own - target)
    if kind == "alie":
        std = honest.std(dim=0, unbiased=False) if honest.shape[0] > 1 else torch.zeros_like(mu)
        z = alie_z(n, b) if p.get("z") is None else float(p["z"])
        return mu - z * std
    if kind == "ipm":
        return -float(p["eps"]) * mu
    if kind == "dissensus":
        others = honest_without_target if honest_without_target is not None and len(honest_without_target) else honest
        return target - float(p["eps"]) * (others.mean(dim=0) - target)
    raise ScenarioError(f"attack.kind {kind!r} is not a model attack")


def label_flip_map(classes: int) -> torch.Tensor:
    return torch.arange(classes - 1, -1, -1)


class ProtocolAttacker:
    """Rewrites an attacker's outgoing signed bytes into a message honest peers must reject."""

    def __init__(self, kind: str, identity: Identity, max_bytes: int):
        if kind not in PROTOCOL_ATTACKS:
            raise ScenarioError(f"attack.kind {kind!r} is not a protocol attack")
        self.kind, self.identity, self.max_bytes = kind, identity, max_bytes
        self.last: dict[str, bytes] = {}

    def _reseal(self, data: bytes, **changes) -> bytes:
        env = parse(data, 1 << 40)
        h = dict(env.header)
        payload = bytes(env.payload)
        if "payload" in changes:
            payload = changes.pop("payload")
        fields = {k: h[k] for k in ("net", "round", "schema", "codec", "n", "deg", "parents", "kind")}
        fields.update(changes)
        return seal(self.identity, payload=payload, **fields).data

    def __call__(self, round_: int, recipient: str, data: bytes) -> list[bytes]:
        k = self.kind
        if k == "forged":
            return [_corrupt_signature(data)]
        if k == "replay":
            return [data, data]  # the same signed update twice: the second is a replay
        if k == "wrong_round":
            return [self._reseal(data, round=round_ + 50)]
        if k == "wrong_network":
            return [self._reseal(data, net="not-this-network")]
        if k == "oversized":
            return [b"\x00" * (self.max_bytes + 1)]
        if k == "non_finite":
            env = parse(data, 1 << 40)
            raw = bytearray(env.payload)
            raw[0:4] = b"\x00\x00\xc0\x7f"  # a float32 NaN, little-endian
            return [self._reseal(data, payload=bytes(raw))]
        raise ScenarioError(f"unknown protocol attack {k!r}")


def _corrupt_signature(data: bytes) -> bytes:
    """Flip one bit inside the 64-byte signature (its bytes follow the 'sig' key)."""
    i = data.find(b"\xa3sig\xc4\x40")
    if i < 0:
        raise ScenarioError("cannot locate the signature to forge")
    buf = bytearray(data)
    buf[i + 6] ^= 0x01
    return bytes(buf)
