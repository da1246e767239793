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

import dataclasses
import math
from statistics import NormalDist

import torch

from gossip.codecs import encode
from gossip.envelope import decode_payload, parse, seal
from gossip.identity import Identity
from gossip.transport import Transport

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


def model_attack_rows(kind: str, *, mean: torch.Tensor, std: torch.Tensor | None, target: torch.Tensor,
                      own: torch.Tensor, mean_without_target: torch.Tensor | None, n: torch.Tensor, b: torch.Tensor,
                      noise, params: dict | None = None) -> torch.Tensor:
    """`model_attack` for P (target, attacker) pairs at once (the batched engine): row p is what
    the attacker sends to the target. mean, std, mean_without_target: (P, d) statistics of each
    target's honest neighbourhood (the target included; std with unbiased=False); target: (P, d)
    the target's own trained model; own: (P, d) the attacker's; n, b: (P,) the target's
    aggregation size and Byzantine neighbour count; noise(): (P, d) standard normal draws."""
    p = {**DEFAULTS.get(kind, {}), **(params or {})}
    if kind == "sign_flip":
        return -float(p["scale"]) * mean
    if kind == "gaussian":
        return mean + float(p["sigma"]) * noise()
    if kind == "scaling":
        return target + float(p["lam"]) * (own - target)
    if kind == "alie":
        if p.get("z") is None:
            pairs = torch.stack([n, b], 1)
            uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
            z = torch.tensor([alie_z(int(nn), int(bb)) for nn, bb in uniq.tolist()], dtype=mean.dtype)[inv]
        else:
            z = torch.full((len(mean),), float(p["z"]), dtype=mean.dtype)
        return mean - z[:, None] * std
    if kind == "ipm":
        return -float(p["eps"]) * mean
    if kind == "dissensus":
        return target - float(p["eps"]) * (mean_without_target - target)
    raise ScenarioError(f"attack.kind {kind!r} is not a model attack")


def label_flip_map(classes: int) -> torch.Tensor:
    return torch.arange(classes - 1, -1, -1)


def reseal(identity: Identity, data: bytes, **changes) -> bytes:
    """The signed message `data` (the attacker's own) signed again with some fields or the payload changed."""
    env = parse(data)
    payload = changes.pop("payload", None)
    payload = bytes(env.payload) if payload is None else payload
    fields = {k: env.header[k] for k in ("net", "round", "schema", "codec", "n", "deg", "eps", "parents", "kind")}
    fields.update(changes)
    return seal(identity, payload=payload, **fields).data


class ProtocolAttacker:
    """Rewrites an attacker's outgoing signed bytes into messages honest peers must reject."""

    def __init__(self, kind: str, identity: Identity, max_bytes: int):
        if kind not in PROTOCOL_ATTACKS:
            raise ScenarioError(f"attack.kind {kind!r} is not a protocol attack")
        self.kind, self.identity, self.max_bytes = kind, identity, max_bytes

    def __call__(self, recipient: str, data: bytes) -> list[bytes]:
        k = self.kind
        if k == "forged":
            return [_corrupt_signature(data)]
        if k == "replay":
            return [data, data]  # the same signed update twice: the second is a replay
        if k == "wrong_round":
            return [reseal(self.identity, data, round=parse(data).round + 50)]
        if k == "wrong_network":
            return [reseal(self.identity, data, net="not-this-network")]
        if k == "oversized":
            return [b"\x00" * (self.max_bytes + 1)]
        if k == "non_finite":
            raw = bytearray(parse(data).payload)
            raw[0:4] = b"\x00\x00\xc0\x7f"  # a float32 NaN, little-endian
            return [reseal(self.identity, data, payload=bytes(raw))]
        raise ScenarioError(f"unknown protocol attack {k!r}")


class ModelAttacker:
    """Replaces the attacker's update, per recipient, with a crafted vector (signed by the attacker)."""

    def __init__(self, identity: Identity, craft):
        self.identity, self.craft = identity, craft  # craft(round, recipient, own params) -> params

    def __call__(self, recipient: str, data: bytes) -> list[bytes]:
        env = parse(data)
        own = decode_payload(env)
        crafted = self.craft(env.round, recipient, own).to(torch.float32).contiguous()
        return [reseal(self.identity, data, payload=encode(crafted, env.header["codec"]))]


class AttackTransport(Transport):
    """An attacker's transport: what its peer sends passes through `rewrite(recipient, data)`,
    which returns the messages really sent. The peer itself has no attack code path."""

    def __init__(self, inner: Transport, rewrite):
        self.inner, self.rewrite, self.peer_id = inner, rewrite, inner.peer_id

    @property
    def on_failure(self):
        return self.inner.on_failure

    @on_failure.setter
    def on_failure(self, callback) -> None:
        self.inner.on_failure = callback

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, peer_id: str, data: bytes) -> bool:
        if bytes(data[:4]) == b"GFLW":  # the witness protocol's asks and answers: not updates
            return await self.inner.send(peer_id, data)
        ok = True
        for message in self.rewrite(peer_id, data):
            ok = await self.inner.send(peer_id, message) and ok
        return ok

    def __aiter__(self):
        return self.inner.__aiter__()

    async def close(self, reason: str = "stopped") -> None:
        await self.inner.close(reason)

    def addresses(self) -> list[str]:
        return self.inner.addresses()

    async def status(self, info: dict) -> None:
        await self.inner.status(info)

    async def set_neighbours(self, addrs: dict) -> None:
        await self.inner.set_neighbours(addrs)


def poison_labels(data, label_map: torch.Tensor):
    """Data poisoning: the local data (peer.learning.data.LocalData) with `label_map[y]` for every
    training label y."""
    return dataclasses.replace(data, y_train=label_map[data.y_train])


def _corrupt_signature(data: bytes) -> bytes:
    """Flip one bit inside the 64-byte signature (its bytes follow the 'sig' key)."""
    i = data.find(b"\xa3sig\xc4\x40")
    if i < 0:
        raise ScenarioError("cannot locate the signature to forge")
    buf = bytearray(data)
    buf[i + 6] ^= 0x01
    return bytes(buf)
