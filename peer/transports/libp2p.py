"""The libp2p transport: TCP + Noise + yamux, the peer's own key as host identity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

from ..config import checks
from ..config.settings import TransportConfig
from ..errors import ConfigError
from .base import NodeEndpoint, TransportKind


@dataclass
class Libp2pConfig(TransportConfig):
    kind: str = "libp2p"
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    mdns: bool = False
    # behind NAT (gossip/libp2p_transport.py says what each does)
    relays: list[str] = field(default_factory=list)  # /ip4/HOST/tcp/PORT/p2p/PEERID of the fleet's relays
    reachability: str = "auto"  # auto (the relays dial us back) | public | private
    hole_punch: bool = True  # upgrade relayed links to direct ones where the NATs allow
    serve_relay: bool = False  # relay for the fleet's members (a reachable peer)
    announce: list[str] = field(default_factory=list)  # direct addresses to announce (a port forward)
    min_link_kbps: float = 0.0  # the slowest neighbour's link, kbit/s: sets how long an update may take (0: 8,192)


@dataclass(frozen=True)
class Libp2pPlan:
    """`topology plan` on libp2p: every node listens on `host`, node i on base_port + i (or ports[i])."""

    host: str = field(default="127.0.0.1", metadata={"help": "libp2p: the address every node listens on"})
    base_port: int = field(default=4001, metadata={"help": "libp2p: node i listens on base-port + i",
                                                   "range": (1, 65535)})
    ports: tuple[int, ...] | list[int] | None = field(default=None, metadata={"cli": False})  # per node, in order


REACHABILITY = ("auto", "public", "private")


def _multiaddrs(v):
    return None if all(isinstance(a, str) and not checks.multiaddr(a) for a in v) else "must be a list of multiaddrs"


def _relays(v):
    if all(isinstance(a, str) and not checks.multiaddr(a) and "/p2p/" in a and "/p2p-circuit" not in a for a in v):
        return None
    return "must be a list of relay addresses like /ip4/203.0.113.1/tcp/4001/p2p/12D3KooW..."


def _listen(v):
    if not v or not all(isinstance(a, str) and not checks.multiaddr(a) for a in v):
        return "must be a non-empty list of multiaddrs like /ip4/0.0.0.0/tcp/4001"
    return None


class Libp2pKind(TransportKind):
    name = "libp2p"
    summary = "TCP + Noise + yamux, gateway to gateway"
    config = Libp2pConfig
    schema: ClassVar[dict[str, tuple]] = {
        "listen": (list, {"check": _listen}), "mdns": (bool, {}), "relays": (list, {"check": _relays}),
        "reachability": (str, {"allowed": REACHABILITY}), "hole_punch": (bool, {}), "serve_relay": (bool, {}),
        "announce": (list, {"check": _multiaddrs}), "min_link_kbps": (float, {"check": checks.between(0, 100_000_000)})}
    comments: ClassVar[dict[str, str]] = {
        "listen": "addresses to listen on", "mdns": "also discover neighbours on the LAN",
        "relays": "behind NAT: /ip4/HOST/tcp/PORT/p2p/PEERID of the fleet's relays",
        "reachability": "auto (the relays dial us back) | public | private",
        "hole_punch": "upgrade relayed links to direct ones where the NATs allow",
        "serve_relay": "relay for the fleet's members (a reachable peer)",
        "announce": "direct addresses to announce instead of the listen ones (a port forward)",
        "min_link_kbps": "the slowest neighbour's link in kbit/s: how long a whole update may take to arrive (0: 8192)"}
    plan_settings = Libp2pPlan
    per_node = ("listen",)
    listens = True

    def build(self, cfg, identity, *, hub=None, max_size: int, allowed=None, members=None):
        try:
            from gossip.libp2p_transport import Libp2pTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = libp2p is not available: {exc}") from None
        t = cfg.transport
        return Libp2pTransport(identity, t.listen, {n.id: n.addr for n in cfg.neighbours}, max_size=max_size,
                               mdns=t.mdns, allowed=allowed, relays=t.relays, reachability=t.reachability,
                               hole_punch=t.hole_punch, announce=t.announce, serve_relay=t.serve_relay,
                               relay_for=members, reconnect_cap=cfg.round.interval or cfg.round.deadline,
                               state_dir=cfg.data_dir / "libp2p", min_link_kbps=t.min_link_kbps)

    def addresses(self, cfg, peer_id: str) -> list[str]:
        return [f"{addr}/p2p/{peer_id}" for addr in cfg.transport.listen]

    def endpoint(self, peer_id: str, host: str, port: int) -> NodeEndpoint:
        return NodeEndpoint({"kind": self.name, "listen": [f"/ip4/{host}/tcp/{port}"]},
                            addr=f"/ip4/{host}/tcp/{port}/p2p/{peer_id}", port=port)

    def endpoints(self, settings: Libp2pPlan, peer_ids: list[str]) -> list[NodeEndpoint]:
        ports = list(settings.ports) if settings.ports else [settings.base_port + i for i in range(len(peer_ids))]
        if len(ports) < len(peer_ids):
            raise ConfigError(f"libp2p: {len(ports)} ports given for {len(peer_ids)} nodes")
        if len(set(ports[:len(peer_ids)])) < len(peer_ids) or not all(0 < p < 65536 for p in ports):
            raise ConfigError(f"libp2p: every node needs its own TCP port, got {ports[:len(peer_ids)]}")
        return [self.endpoint(pid, settings.host, port) for pid, port in zip(peer_ids, ports, strict=False)]

    def admit_endpoint(self, plan, peer_id, neighbours, host, port) -> NodeEndpoint:
        return self.endpoint(peer_id, host, port)

    def deliver(self, plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
        """Over libp2p under the admin key: peers let the admin's PeerId connect."""
        addrs = {n["peer_id"]: next(iter(self.addresses(plan.load(n), n["peer_id"])), None) for n in nodes}
        missing = [n["node"] for n in nodes if not addrs[n["peer_id"]]]
        if missing:
            raise ConfigError(f"nodes {', '.join(missing)} have no libp2p address in their peer.toml "
                              "([transport] listen); use --no-send and deliver the record file yourself")
        return asyncio.run(_send_all(plan.admin, addrs, data, {n["peer_id"]: n["node"] for n in nodes}))


async def _send_all(admin, addrs: dict, data: bytes, names: dict) -> dict[str, bool]:
    from gossip.libp2p_transport import Libp2pTransport

    t = Libp2pTransport(admin, ["/ip4/127.0.0.1/tcp/0"], addrs, allowed=set(), max_size=1024)
    await t.start()
    try:
        results = await asyncio.gather(*(t.send(pid, data) for pid in addrs))
    finally:
        await t.close()
    return {names[pid]: ok for pid, ok in zip(addrs, results, strict=True)}


LIBP2P = Libp2pKind()
