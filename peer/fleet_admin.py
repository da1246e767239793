"""The network admin's side of membership: admit a gateway or revoke one, in a plan folder.

`admit` writes the new gateway's folder (key, peer.toml naming its neighbours), adds it to the
plan's trust.toml (for gateways started later) and signs an `admit` record with the next epoch;
`revoke` signs a `revoke` record and takes the PeerId off trust.toml. Records are kept in
PLAN/admin/records/ and delivered over libp2p under the admin key to every gateway of the plan
(each passes it on to its neighbours, so reaching a few is enough). Running peers apply them at
once: no restart anywhere.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gossip.identity import Identity, load_key, save_key
from gossip.membership import open_record, seal_record
from gossip.trust import TrustList, load_trust_list

from .errors import ConfigError
from .plan import ADMIN_DIR, ADMIN_KEY, agreement_fields, node_dir_name
from .tomlwrite import dumps

RECORDS = "records"


@dataclass
class Outcome:
    epoch: int
    action: str
    peer_id: str
    record: Path
    delivered: dict[str, bool]  # node name -> delivered
    config: Path | None = None  # the admitted gateway's peer.toml


class Plan:
    """A plan folder as the admin sees it: plan.json, trust.toml, the admin key, the records."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        try:
            self.manifest = json.loads((self.dir / "plan.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.dir}: not a plan folder (plan.json: {exc})") from None
        self.trust = load_trust_list(self.dir / "trust.toml")
        key = self.dir / ADMIN_DIR / ADMIN_KEY
        if not key.exists():
            raise ConfigError(f"{key} not found: membership records are signed with the plan's admin key "
                              "(copy it back from where you keep it)")
        self.admin: Identity = load_key(key)
        if self.trust.admin != self.admin.peer_id:
            raise ConfigError(f"{key} is not the admin key trust.toml names ({self.trust.admin})")
        self.records = self.dir / ADMIN_DIR / RECORDS

    @property
    def nodes(self) -> list[dict]:
        return self.manifest["nodes"]

    def node(self, who: str) -> dict:
        """A node by plan name or PeerId (prefix or suffix)."""
        hits = [n for n in self.nodes if who in (n["node"], n["peer_id"])] or \
            [n for n in self.nodes if n["peer_id"].startswith(who) or n["peer_id"].endswith(who)]
        if len(hits) != 1:
            names = ", ".join(n["node"] for n in self.nodes)
            raise ConfigError(f"{who!r} names {'no' if not hits else 'more than one'} node of the plan ({names})")
        return hits[0]

    def config(self, node: dict) -> dict:
        return tomllib.loads((self.dir / node["config"]).read_text())

    def address(self, node: dict) -> str | None:
        listen = self.config(node).get("transport", {}).get("listen") or []
        return f"{listen[0]}/p2p/{node['peer_id']}" if listen and node.get("port") else None

    def next_epoch(self) -> int:
        epochs = [open_record(p.read_bytes(), admin=self.admin.peer_id, network=self.trust.network).epoch
                  for p in self.records.glob("*.msgpack")] if self.records.exists() else []
        return max(epochs, default=0) + 1

    def sign(self, action: str, peer_id: str, **fields) -> tuple[int, bytes, Path]:
        epoch = self.next_epoch()
        data = seal_record(self.admin, network=self.trust.network, epoch=epoch, action=action, peer=peer_id,
                           **fields)
        self.records.mkdir(parents=True, exist_ok=True)
        path = self.records / f"{epoch:06d}-{action}-{peer_id[-8:]}.msgpack"
        path.write_bytes(data)
        return epoch, data, path

    def save(self, trust: TrustList) -> None:
        (self.dir / "trust.toml").write_text(trust.to_toml())
        (self.dir / "plan.json").write_text(json.dumps(self.manifest, indent=1))


def admit(folder, name: str, neighbours: list[str], *, port: int | None = None, host: str = "127.0.0.1",
          send: bool = True) -> Outcome:
    plan = Plan(folder)
    if any(n["node"] == name for n in plan.nodes):
        raise ConfigError(f"the plan already has a node {name!r}")
    nbrs = [plan.node(n) for n in neighbours]
    if not nbrs:
        raise ConfigError("name at least one neighbour for the new gateway (--neighbours a,b)")
    template = plan.config(nbrs[0])
    kind = template.get("transport", {}).get("kind", "libp2p")
    if kind == "libp2p" and port is None:
        port = max((n.get("port") or 0 for n in plan.nodes), default=4000) + 1
    folder_ = plan.dir / node_dir_name(name)
    folder_.mkdir(parents=True)
    ident = Identity.generate()
    save_key(ident, folder_ / "peer.key")
    doc = dict(template)
    doc["name"] = name
    doc["network"] = {**template["network"], "neighbours": [
        {"id": n["peer_id"], "name": n["node"], **({"addr": plan.address(n)} if plan.address(n) else {})}
        for n in nbrs]}
    addr = ""
    if kind == "libp2p":
        doc["transport"] = {**template["transport"], "listen": [f"/ip4/{host}/tcp/{port}"]}
        addr = f"/ip4/{host}/tcp/{port}/p2p/{ident.peer_id}"
    config = folder_ / "peer.toml"
    config.write_text(f"# gateway {name}, admitted to a running fleet\n" + dumps(doc))
    fields = agreement_fields(ident, plan.trust.network)  # its secure-aggregation key, like every node's
    trust = TrustList(plan.trust.network, plan.trust.peers | {ident.peer_id},
                      {**plan.trust.names, ident.peer_id: name}, plan.trust.admin,
                      {**plan.trust.keys, ident.peer_id: (bytes.fromhex(fields["x25519"]),
                                                          bytes.fromhex(fields["binding"]))})
    epoch, data, path = plan.sign("admit", ident.peer_id, addr=addr, neighbours=[n["peer_id"] for n in nbrs])
    plan.manifest["nodes"].append({"node": name, "peer_id": ident.peer_id,
                                   "config": str(config.relative_to(plan.dir)), "port": port})
    plan.save(trust)
    delivered = deliver(plan, data, [n for n in plan.nodes if n["peer_id"] != ident.peer_id]) if send else {}
    return Outcome(epoch, "admit", ident.peer_id, path, delivered, config)


def revoke(folder, who: str, *, send: bool = True) -> Outcome:
    plan = Plan(folder)
    node = plan.node(who)
    epoch, data, path = plan.sign("revoke", node["peer_id"])
    trust = TrustList(plan.trust.network, plan.trust.peers - {node["peer_id"]},
                      {k: v for k, v in plan.trust.names.items() if k != node["peer_id"]}, plan.trust.admin,
                      {k: v for k, v in plan.trust.keys.items() if k != node["peer_id"]})
    node["revoked_epoch"] = epoch
    plan.save(trust)
    targets = [n for n in plan.nodes if n["peer_id"] != node["peer_id"] and "revoked_epoch" not in n]
    delivered = deliver(plan, data, targets) if send else {}
    return Outcome(epoch, "revoke", node["peer_id"], path, delivered)


def deliver(plan: Plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
    """Send a record to these gateways over libp2p under the admin key (MQTT plans: not yet)."""
    addrs = {n["peer_id"]: plan.address(n) for n in nodes}
    missing = [n["node"] for n in nodes if not addrs[n["peer_id"]]]
    if missing:
        raise ConfigError(f"nodes {', '.join(missing)} have no libp2p address: delivering records over MQTT is "
                          "not supported yet (use --no-send and give the record file to one peer's neighbours)")
    return asyncio.run(_send_all(plan.admin, addrs, data, {n["peer_id"]: n["node"] for n in nodes}))


async def _send_all(admin: Identity, addrs: dict, data: bytes, names: dict) -> dict[str, bool]:
    from gossip.libp2p_transport import Libp2pTransport

    t = Libp2pTransport(admin, ["/ip4/127.0.0.1/tcp/0"], addrs, allowed=set(), max_size=1024)
    await t.start()
    try:
        results = await asyncio.gather(*(t.send(pid, data) for pid in addrs))
    finally:
        await t.close()
    return {names[pid]: ok for pid, ok in zip(addrs, results, strict=True)}
