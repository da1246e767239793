"""Byzantine attacks: one registry entry per attack (`REGISTRY`, listed by `gossipfl sim attacks`).

Each `Attack` says what it is and how it acts in each engine:
- model attacks (omniscient, per targeted honest neighbourhood): `rows(stats, params)` is what
  the attacker sends each target, for P (target, attacker) pairs at once. The batched engine calls
  it on the (B, n, d) stack a target aggregates (the Byzantine rows replaced in place); the
  protocol engine calls it for one target as the attacker's transport re-signs the crafted model.
- data attacks poison the attacker's training data (`label_map`); both engines train on it.
- protocol attacks rewrite the attacker's signed bytes (`rewrite`) into messages honest peers
  must reject; only the protocol engine has a wire.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import torch

from gossip.codecs import encode
from gossip.envelope import decode_payload, parse, seal
from gossip.identity import Identity
from gossip.transport import Transport

from .errors import ScenarioError


@dataclass(frozen=True)
class Stats:
    """What an omniscient attacker knows about P targets, one row per (target, attacker) pair:
    mean, std (unbiased=False), mean_without_target (P, d) of each target's honest neighbourhood
    (the target included but in the last); target (P, d) the target's own trained model; own (P, d)
    the attacker's; n, b (P,) the target's aggregation size and Byzantine neighbour count;
    noise() (P, d) standard normal draws."""

    mean: torch.Tensor
    std: torch.Tensor | None
    target: torch.Tensor
    own: torch.Tensor
    mean_without_target: torch.Tensor | None
    n: torch.Tensor
    b: torch.Tensor
    noise: Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    name: str
    family: str  # "none", "model", "data" or "protocol"
    summary: str  # what it sends, one line
    defaults: dict = field(default_factory=dict)
    batched: str = ""  # how it acts in the batched engine
    protocol: str = ""  # how it acts in the protocol engine (on the wire)
    rows: Callable[[Stats, dict], torch.Tensor] | None = None  # model attacks
    label_map: Callable[[int], torch.Tensor] | None = None  # data attacks
    rewrite: Callable[[ProtocolAttacker, bytes], list[bytes]] | None = None  # protocol attacks

    @property
    def engines(self) -> tuple[str, ...]:
        return ("protocol",) if self.family == "protocol" else ("protocol", "batched")


def alie_z(n: int, b: int) -> float:
    """z_max of 'A Little Is Enough': s = floor(n/2 + 1) - b supporters needed; z = Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - b
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def _alie(s: Stats, p: dict) -> torch.Tensor:
    if p.get("z") is None:
        pairs = torch.stack([s.n, s.b], 1)
        uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
        z = torch.tensor([alie_z(int(nn), int(bb)) for nn, bb in uniq.tolist()], dtype=s.mean.dtype)[inv]
    else:
        z = torch.full((len(s.mean),), float(p["z"]), dtype=s.mean.dtype)
    std = s.std if s.std is not None else torch.zeros_like(s.mean)
    return s.mean - z[:, None] * std


def label_flip_map(classes: int) -> torch.Tensor:
    return torch.arange(classes - 1, -1, -1)


def _resealed(**changes) -> Callable:
    return lambda a, data: [reseal(a.identity, data, **{k: v(data) if callable(v) else v for k, v in changes.items()})]


def _non_finite(a: ProtocolAttacker, data: bytes) -> list[bytes]:
    raw = bytearray(parse(data).payload)
    raw[0:4] = b"\x00\x00\xc0\x7f"  # a float32 NaN, little-endian
    return [reseal(a.identity, data, payload=bytes(raw))]


_MODEL_B = "replaces, in the (B, n, d) stack each honest target aggregates, the Byzantine rows (vectorized over pairs)"
_MODEL_P = "the attacker's transport re-signs, per recipient, the crafted model in place of its own"
_PROTO_B = "not modelled (no wire): runs only in the protocol engine"
_ATTACKS = [
    Attack("none", "none", "no attackers: the honest baseline"),
    Attack("sign_flip", "model", "-scale * mean(H): the negated mean of the target's honest neighbourhood H",
           {"scale": 1.0}, _MODEL_B, _MODEL_P, rows=lambda s, p: -float(p["scale"]) * s.mean),
    Attack("gaussian", "model", "mean(H) + sigma * N(0, I)", {"sigma": 1.0}, _MODEL_B, _MODEL_P,
           rows=lambda s, p: s.mean + float(p["sigma"]) * s.noise()),
    Attack("scaling", "model", "x_t + lam * (x_a - x_t): the attacker's own direction boosted", {"lam": 10.0},
           _MODEL_B, _MODEL_P, rows=lambda s, p: s.target + float(p["lam"]) * (s.own - s.target)),
    Attack("alie", "model", "mean(H) - z * std(H), z from Baruch et al. 2019 for (n, b) unless given", {"z": None},
           _MODEL_B, _MODEL_P, rows=_alie),
    Attack("ipm", "model", "-eps * mean(H): inner-product manipulation (Xie et al. 2020)", {"eps": 0.1},
           _MODEL_B, _MODEL_P, rows=lambda s, p: -float(p["eps"]) * s.mean),
    Attack("dissensus", "model", "x_t - eps * (mean(H without t) - x_t): pushes the target away (He et al. 2022)",
           {"eps": 1.5}, _MODEL_B, _MODEL_P,
           rows=lambda s, p: s.target - float(p["eps"]) * (s.mean_without_target - s.target)),
    Attack("label_flip", "data", "trains on labels y -> classes - 1 - y and sends what it learnt honestly", {},
           "the attackers' rows of the training data are relabelled before the run",
           "the attacker's peer is built with relabelled local data", label_map=label_flip_map),
    Attack("forged", "protocol", "its update with one bit of the signature flipped (bad_signature)", {}, _PROTO_B,
           "every message sent with a corrupted signature", rewrite=lambda a, data: [_corrupt_signature(data)]),
    Attack("replay", "protocol", "every signed update sent twice (the second is a replay)", {}, _PROTO_B,
           "each message sent twice", rewrite=lambda a, data: [data, data]),
    Attack("wrong_round", "protocol", "its update re-signed 50 rounds ahead (future_round)", {}, _PROTO_B,
           "each message re-signed with round + 50", rewrite=_resealed(round=lambda d: parse(d).round + 50)),
    Attack("wrong_network", "protocol", "its update re-signed for another network id (wrong_network)", {},
           _PROTO_B, "each message re-signed with net = \"not-this-network\"",
           rewrite=_resealed(net="not-this-network")),
    Attack("oversized", "protocol", "one byte more than the largest message a peer reads (too_large)", {},
           _PROTO_B, "each message replaced by max_message + 1 zero bytes",
           rewrite=lambda a, data: [b"\x00" * (a.max_bytes + 1)]),
    Attack("non_finite", "protocol", "its update with a NaN in the payload, correctly signed (non_finite)", {},
           _PROTO_B, "the first float of each payload set to NaN and the message re-signed", rewrite=_non_finite),
]
REGISTRY: dict[str, Attack] = {a.name: a for a in _ATTACKS}


def family(name: str) -> tuple[str, ...]:
    return tuple(a.name for a in _ATTACKS if a.family == name)


MODEL_ATTACKS = family("model")
DATA_ATTACKS = family("data")
PROTOCOL_ATTACKS = family("protocol")
ATTACKS = tuple(REGISTRY)
DEFAULTS = {a.name: a.defaults for a in _ATTACKS if a.defaults}


def get(kind: str, want: str | None = None) -> Attack:
    a = REGISTRY.get(kind)
    if a is None:
        raise ScenarioError(f"unknown attack {kind!r}; attacks: {', '.join(REGISTRY)}")
    if want is not None and a.family != want:
        raise ScenarioError(f"attack.kind {kind!r} is not a {want} attack")
    return a


def model_attack_rows(kind: str, *, mean: torch.Tensor, std: torch.Tensor | None, target: torch.Tensor,
                      own: torch.Tensor, mean_without_target: torch.Tensor | None, n: torch.Tensor, b: torch.Tensor,
                      noise, params: dict | None = None) -> torch.Tensor:
    """What the attacker of each (target, attacker) pair sends its target: (P, d) (see Stats)."""
    a = get(kind, "model")
    return a.rows(Stats(mean, std, target, own, mean_without_target, n, b, noise), {**a.defaults, **(params or {})})


def model_attack(kind: str, honest: torch.Tensor, target: torch.Tensor, own: torch.Tensor, *,
                 n: int, b: int, gen: torch.Generator, params: dict | None = None,
                 honest_without_target: torch.Tensor | None = None) -> torch.Tensor:
    """The vector an attacker sends to one target (the protocol engine): `honest` (k, d) trained
    parameters of the target's honest neighbourhood (the target included); n: the target's
    aggregation size. The same registry entry as the batched engine's, on one pair."""
    mu = honest.mean(dim=0)
    std = honest.std(dim=0, unbiased=False) if honest.shape[0] > 1 else torch.zeros_like(mu)
    others = honest_without_target if honest_without_target is not None and len(honest_without_target) else honest
    return model_attack_rows(kind, mean=mu[None], std=std[None], target=target[None], own=own[None],
                             mean_without_target=others.mean(dim=0)[None], n=torch.tensor([n]), b=torch.tensor([b]),
                             noise=lambda: torch.randn((1, *mu.shape), generator=gen), params=params)[0]


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
        self.attack = get(kind, "protocol")
        self.kind, self.identity, self.max_bytes = kind, identity, max_bytes

    def __call__(self, recipient: str, data: bytes) -> list[bytes]:
        return self.attack.rewrite(self, data)


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
