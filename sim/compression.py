"""Compressed gossip in the batched engine (scenario table `[round.compression]`).

CHOCO-style gossip (Koloskova et al. 2019) with a robust rule in place of the weighted mean:
every node i has a public copy hat_i of its model that each neighbour holds. A round, after
local training gives x_i:

    send   q_i = C(x_i - hat_i)                 (with error feedback: what C dropped stays in
           hat_i += q_i   (sender and receivers)  x_i - hat_i and is sent later)
    mix    x_i += gamma * (rule(hat_i, hat_j for j in N(i)) - hat_i)

The rule runs on public copies only, the node's own included: with the weighted mean this is
CHOCO's x_i += gamma * sum_j w_ij (hat_j - hat_i), which never pulls a model towards copies
that lag behind it (its own copy lags as much); the part of x_i not yet sent is kept.

Without error feedback a node sends C(x_i - x_i at its last send) and the dropped part is lost.
The compressor C is gossip.sparse's top-k or random-k (fraction or count, values in f32, f16 or
int8) or "none" (every coordinate, quantized by `values`; without error feedback that is
today's dense codec: hat_i = Q(x_i)). gamma = 1 with C = identity is plain gossip.

A Byzantine node keeps a copy per honest neighbour (`bad_hat`, one row per edge) and sends
each the compressed difference towards the model it wants that neighbour to hold
(sim.attacks.model_attack_rows on the neighbour's honest view: its own model and its honest
neighbours' public copies). It obeys the message format (k entries a round) but no bound on
the values, so a poisoned copy moves as far as the attacker wants along k coordinates a round.

All nodes at once: copies are (N, d) and (E_bad, d) tensors, compression is batched over rows,
aggregation is one (B, k, d) call per degree group. Copies per node assume every message
arrives: the scenario check refuses faults (drop-outs, loss, latency, partitions) with
compression, and differential privacy and shards (their copies would need exchanging).

`bytes_sent` counts each message at its real size: a signed envelope with the sender's
parents (its degree + 1 hashes) and the compressed payload (`message_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from aggregation import AggregationError, aggregate
from gossip.envelope import seal
from gossip.identity import Identity
from gossip.sparse import Compression, compress_rows, densify, quantize_rows
from peer.runtime.exchange import rule_params

from . import streams
from .attacks import MODEL_ATTACKS, model_attack_rows
from .batched import STACK_BUDGET, Shard
from .errors import ScenarioError

COMPRESS_STREAM = 16  # sim.streams: random-k's coordinates (far from the engine's own streams)
KEYS = {"compressor", "fraction", "count", "values", "error_feedback", "gamma"}
_DENSE_CODEC = {"f32": "raw-f32", "f16": "f16", "int8": "int8"}
_F16_MAX = 65504.0


@dataclass(frozen=True)
class Settings:
    compressor: str = "topk"  # topk | randk | none
    fraction: float | None = 0.01
    count: int | None = None
    values: str = "f32"
    error_feedback: bool = True
    gamma: float = 1.0

    @property
    def sparse(self) -> Compression | None:
        if self.compressor == "none":
            return None
        return Compression(self.compressor, self.fraction, self.count, self.values)

    def entries(self, d: int) -> int:
        return d if self.sparse is None else self.sparse.k(d)

    def codec(self) -> str:
        return _DENSE_CODEC[self.values] if self.sparse is None else self.sparse.codec

    def label(self) -> str:
        what = "dense" if self.sparse is None else \
            f"{self.compressor} {self.fraction:.3%}" if self.fraction is not None else f"{self.compressor} {self.count}"
        return f"{what} {self.values}{' ef' if self.error_feedback else ''} gamma={self.gamma:g}"


def settings(doc: dict) -> Settings | None:
    """The `[round.compression]` table as Settings (None when empty); ScenarioError naming the
    field otherwise."""
    if not doc:
        return None
    unknown = set(doc) - KEYS
    if unknown:
        raise ScenarioError(f"round.compression: unknown field {sorted(unknown)[0]!r:.40}; known: {', '.join(sorted(KEYS))}")
    types = {"compressor": str, "fraction": (int, float), "count": int, "values": str, "error_feedback": bool,
             "gamma": (int, float)}
    for key, v in doc.items():
        if not isinstance(v, types[key]) or (isinstance(v, bool) and types[key] is not bool):
            raise ScenarioError(f"round.compression.{key} has the wrong type: {v!r:.40}")
    args = dict(doc)
    if "count" in args:
        args.setdefault("fraction", None)
    if "fraction" in args and args["fraction"] is not None:
        args["fraction"] = float(args["fraction"])
    s = Settings(**{"gamma": 1.0, **args})
    s = Settings(**{**s.__dict__, "gamma": float(s.gamma)})
    if s.compressor != "none":
        try:
            s.sparse  # noqa: B018 - validates the compressor's settings
        except ValueError as exc:
            raise ScenarioError(f"round.compression: {exc}") from None
    elif s.values not in _DENSE_CODEC:
        raise ScenarioError(f"round.compression.values must be one of {', '.join(_DENSE_CODEC)}, got {s.values!r:.40}")
    if not 0 < s.gamma <= 1:
        raise ScenarioError(f"round.compression.gamma must be in (0, 1], got {s.gamma}")
    return s


def check(sc) -> None:
    """What compressed gossip needs of a scenario (ScenarioError otherwise)."""
    s = settings(sc.compression)
    if s is None:
        return
    faults = [name for name, on in (("faults.dropout", sc.dropout), ("faults.loss", sc.loss),
                                     ("faults.latency", sc.latency), ("faults.stragglers", sc.stragglers),
                                     ("faults.partition", sc.partition_rounds)) if on]
    if faults:
        raise ScenarioError(f"round.compression with {faults[0]}: the batched engine keeps one public copy per "
                            "node and needs every message to arrive; run compression without faults")
    if sc.privacy != "off":
        raise ScenarioError("round.compression with privacy: not simulated yet")
    if sc.engine == "protocol":
        raise ScenarioError("round.compression runs in the batched engine (engine = \"batched\" or \"auto\")")


@lru_cache(maxsize=256)
def message_bytes(codec: str, entries: int, parents: int, network: str = "sim") -> int:
    """The size of a real signed message: `entries` values (dense) or kept entries (sparse)."""
    ident = Identity.from_seed(bytes(32))
    from gossip.codecs import encoded_size

    return len(seal(ident, net=network, round=1000, schema=bytes(32), payload=bytes(encoded_size(codec, entries)),
                    codec=codec, n=entries, parents=[bytes(32)] * parents, deg=8, ts=0.0,
                    kind="update" if codec in _DENSE_CODEC.values() else "sparse").data)


class CompressedShard(Shard):
    """Every node of a batched run (one shard) gossiping compressed differences."""

    def __init__(self, sc, rule, topo, own, progress=None, workers: int = 1):
        super().__init__(sc, rule, topo, own, progress=progress, workers=workers)
        if len(self.own) != topo.n:
            raise ScenarioError("round.compression runs in one process (no shards)")
        self.cfg = settings(sc.compression)
        self.hat = self.params.clone()  # everyone starts from the same seeded model, and knows it
        self.last = None if self.cfg.error_feedback else self.params.clone()
        self.honest = torch.from_numpy(np.flatnonzero(~topo.byz))
        self.bad_edges = np.flatnonzero(topo.byz[self.e_src] & ~topo.byz[self.e_dst])
        self.bad_row = np.full(len(self.e_src), -1, dtype=np.int64)
        self.bad_row[self.bad_edges] = np.arange(len(self.bad_edges))
        self.bad_hat = self.params[:1].repeat(len(self.bad_edges), 1)

    def bytes_sent(self) -> int:
        """Bytes every node sends a round: its degree x the size of its message."""
        codec, k = self.cfg.codec(), self.cfg.entries(self.d)
        degrees, count = np.unique(self.topo.degree, return_counts=True)
        return int(sum(int(g) * int(c) * message_bytes(codec, k, int(g) + 1) for g, c in zip(degrees, count, strict=True)))

    # --- sending ------------------------------------------------------------------------

    def _compress(self, diff: torch.Tensor, r: int, senders: np.ndarray, receivers: np.ndarray) -> torch.Tensor:
        """What receivers reconstruct of `diff` (B, d): dense rows of the kept, quantized values."""
        comp = self.cfg.sparse
        if comp is None:
            return quantize_rows(diff, "sparse-" + self.cfg.values)
        seeds = torch.from_numpy(streams.bits(self.sc.seed, COMPRESS_STREAM, r, senders, receivers).astype(np.int64))
        idx, vals = compress_rows(diff, comp, seeds)
        return densify(idx, vals, self.d)

    def _send_honest(self, r: int) -> None:
        h = self.honest
        x = self.params.index_select(0, h)
        hat = self.hat.index_select(0, h)
        nodes = h.numpy()
        if self.cfg.sparse is None and not self.cfg.error_feedback:  # the dense codec: the model itself
            self.hat.index_copy_(0, h, quantize_rows(x, "sparse-" + self.cfg.values))
            return
        ref = hat if self.cfg.error_feedback else self.last.index_select(0, h)
        self.hat.index_copy_(0, h, hat + self._compress(x - ref, r, nodes, nodes))
        if self.last is not None:
            self.last.index_copy_(0, h, x)

    def _send_byzantine(self, r: int) -> None:
        """Each Byzantine node moves the copy each honest neighbour holds of it towards what it
        wants that neighbour to aggregate."""
        e = self.bad_edges
        if not len(e):
            return
        src, dst = self.e_src[e], self.e_dst[e]
        if self.sc.attack in MODEL_ATTACKS:
            want = self._crafted(r, src, dst)
        else:  # a data attack (label flip) follows the protocol with its own poisoned model
            want = self.params[torch.from_numpy(src)]
        diff = want - self.bad_hat
        if self.cfg.values == "f16":
            diff = diff.clamp(-_F16_MAX, _F16_MAX)  # the largest finite f16: what a valid message can carry
        if self.cfg.sparse is None and not self.cfg.error_feedback:
            self.bad_hat = quantize_rows(want.clamp(-_F16_MAX, _F16_MAX), "sparse-" + self.cfg.values)
        else:
            self.bad_hat = self.bad_hat + self._compress(diff, r, src, dst)

    def _crafted(self, r: int, src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
        """(P, d) what Byzantine src wants honest dst to hold, from dst's honest view: its own
        model and its honest neighbours' public copies."""
        topo, d = self.topo, self.d
        targets, inv = np.unique(dst, return_inverse=True)
        deg = topo.degree[targets]
        width = int(deg.max())
        j = np.arange(width)[None, :]
        nb = topo.nbr[np.minimum(topo.ptr[targets][:, None] + j, len(topo.nbr) - 1)]
        ok = (j < deg[:, None]) & ~topo.byz[nb]
        rows = torch.cat([self.hat.index_select(0, torch.from_numpy(targets))[:, None],
                          self.hat[torch.from_numpy(nb)]], 1)  # (U, 1 + width, d)
        mask = torch.from_numpy(np.concatenate([np.ones((len(targets), 1), dtype=bool), ok], 1))
        m = mask[..., None].to(rows.dtype)
        cnt = m.sum(1)
        mean = (rows * m).sum(1) / cnt
        std = ((((rows - mean[:, None]) * m) ** 2).sum(1) / cnt).sqrt()
        others = torch.where(cnt > 1, ((rows * m).sum(1) - rows[:, 0]) / (cnt - 1).clamp(min=1), mean)
        bad = (topo.byz[nb] & (j < deg[:, None])).sum(1)
        at = torch.from_numpy(inv)

        def noise() -> torch.Tensor:
            return streams.normal(self.sc.seed, streams.NOISE, r, dst[:, None], src[:, None], np.arange(d)[None, :])

        return model_attack_rows(self.sc.attack, mean=mean[at], std=std[at], target=rows[at, 0],
                                 own=self.params[torch.from_numpy(src)], mean_without_target=others[at],
                                 n=torch.from_numpy(deg[inv] + 1), b=torch.from_numpy(bad[inv]), noise=noise,
                                 params=self.sc.attack_params)

    # --- a round ------------------------------------------------------------------------

    def aggregate(self, r: int) -> int:
        """Send, then every honest node mixes its model towards the rule's value over its own
        model and its neighbours' public copies; returns messages delivered."""
        self._send_honest(r)
        self._send_byzantine(r)
        topo = self.topo
        topo_n = topo.n
        table = torch.cat([self.params, self.hat, self.bad_hat])
        honest = np.flatnonzero(~topo.byz)
        new = self.params.clone()
        tasks = []
        for k in np.unique(topo.degree[honest]):
            targets = honest[topo.degree[honest] == k]
            chunk = max(1, STACK_BUDGET // ((int(k) + 1) * self.d * 4))
            tasks += [(int(k), targets[lo:lo + chunk]) for lo in range(0, len(targets), chunk)]

        def run(task) -> None:
            k, t = task
            e = topo.ptr[t][:, None] + np.arange(k)[None, :]
            src = self.e_src[e]
            rows = np.concatenate([topo_n + t[:, None], np.where(topo.byz[src], 2 * topo_n + self.bad_row[e],
                                                                  topo_n + src)], 1)
            stack = table[torch.from_numpy(rows)]
            weights = self._weights(t, src) if self.sc.weights == "metropolis_hastings" else None
            try:
                value = aggregate(self.rule, stack, weights, f=self.sc.f,
                                  **rule_params(self.rule, self.sc.rule_params)).value
            except AggregationError:
                return  # kept own model, as a peer skips
            at = torch.from_numpy(t)
            x = self.params.index_select(0, at)
            new.index_copy_(0, at, x + self.cfg.gamma * (value - stack[:, 0]))

        self._each(run, tasks)
        self.params = new
        return int(topo.degree.sum())

    def _weights(self, t: np.ndarray, src: np.ndarray) -> torch.Tensor:
        deg = self.topo.degree
        w = 1.0 / (1.0 + np.maximum(deg[t][:, None], deg[src]))
        return torch.from_numpy(np.concatenate([1.0 - w.sum(1, keepdims=True), w], 1).astype(np.float32))
