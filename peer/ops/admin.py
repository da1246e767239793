"""The network admin's side of membership: admit a gateway or revoke one, in a plan folder.

`admit` writes the new gateway's folder (key, peer.toml naming its neighbours), adds it to the
plan's trust.toml (for gateways started later) and signs an `admit` record with the next epoch;
`revoke` signs a `revoke` record and takes the PeerId off trust.toml. Records are kept in
PLAN/admin/records/ and delivered to every gateway of the plan (each passes it on to its
neighbours, so reaching a few is enough): over libp2p under the admin key, or over MQTT into
each inbox with the admin's broker login (PLAN/admin/mqtt.password). Running peers apply them
at once: no restart anywhere. On an MQTT plan, admit also gives the gateway a broker login and
its ACL lines in PLAN/broker/ and revoke takes them away; the broker applies that on reload.
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

from ..config.tomlwrite import dumps
from ..errors import ConfigError
from .mosquitto import (
    ADMIN_PASSWORD,
    BrokerPeer,
    add_login,
    new_password,
    remove_login,
    write_secret,
)
from .plan import ADMIN_DIR, ADMIN_KEY, BROKER_DIR, agreement_fields, node_dir_name

RECORDS = "records"


@dataclass
class Outcome:
    epoch: int
    action: str
    peer_id: str
    record: Path
    delivered: dict[str, bool]  # node name -> delivered
    config: Path | None = None  # the admitted gateway's peer.toml
    broker: Path | None = None  # MQTT plans: the broker folder whose passwd and acl changed (reload it)


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
        self.kind = self.manifest.get("transport", "libp2p")
        self.broker = self.dir / BROKER_DIR

    def mqtt_settings(self):
        """The broker and topics of an MQTT plan, as its first node's config has them."""
        from ..config.parse import load_config

        return load_config(self.dir / self.nodes[0]["config"]).transport

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
    if folder_.exists():
        raise ConfigError(f"{folder_} exists already")
    ident = Identity.generate()
    broker = password = None
    if kind == "mqtt" and plan.broker.exists():  # its login first: a refusal leaves nothing behind
        t, password = plan.mqtt_settings(), new_password()
        add_login(plan.broker, BrokerPeer(ident.peer_id, password, tuple(n["peer_id"] for n in nbrs)),
                  prefix=t.topic_prefix, network=plan.trust.network)
        broker = plan.broker
    folder_.mkdir(parents=True)
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
    elif kind == "mqtt":  # its own login; the password beside the key, 0600, as a plan writes it
        password = password or new_password()
        write_secret(folder_ / "mqtt.password", password + "\n")
        doc["transport"] = {k: v for k, v in template["transport"].items() if k != "password"} | {
            "username": ident.peer_id, "password_file": "mqtt.password"}
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
    targets = [n for n in plan.nodes if n["peer_id"] != ident.peer_id and "revoked_epoch" not in n]
    delivered = deliver(plan, data, targets) if send else {}
    return Outcome(epoch, "admit", ident.peer_id, path, delivered, config, broker)


def revoke(folder, who: str, *, send: bool = True) -> Outcome:
    plan = Plan(folder)
    node = plan.node(who)
    epoch, data, path = plan.sign("revoke", node["peer_id"])
    trust = TrustList(plan.trust.network, plan.trust.peers - {node["peer_id"]},
                      {k: v for k, v in plan.trust.names.items() if k != node["peer_id"]}, plan.trust.admin,
                      {k: v for k, v in plan.trust.keys.items() if k != node["peer_id"]})
    node["revoked_epoch"] = epoch
    plan.save(trust)
    broker = None
    if plan.kind == "mqtt" and plan.broker.exists():  # defence in depth: its updates are rejected anyway
        remove_login(plan.broker, node["peer_id"], prefix=plan.mqtt_settings().topic_prefix,
                     network=plan.trust.network)
        broker = plan.broker
    targets = [n for n in plan.nodes if n["peer_id"] != node["peer_id"] and "revoked_epoch" not in n]
    delivered = deliver(plan, data, targets) if send else {}
    return Outcome(epoch, "revoke", node["peer_id"], path, delivered, broker=broker)


def deliver(plan: Plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
    """Send a record to these gateways: over libp2p under the admin key, or (MQTT plans) into
    their inboxes with the admin's broker login."""
    if plan.kind == "mqtt":
        return _publish_all(plan, data, nodes)
    addrs = {n["peer_id"]: plan.address(n) for n in nodes}
    missing = [n["node"] for n in nodes if not addrs[n["peer_id"]]]
    if missing:
        raise ConfigError(f"nodes {', '.join(missing)} have no libp2p address in their peer.toml "
                          "([transport] listen); use --no-send and deliver the record file yourself")
    return asyncio.run(_send_all(plan.admin, addrs, data, {n["peer_id"]: n["node"] for n in nodes}))


def _publish_all(plan: Plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
    from gossip.errors import TransportError
    from gossip.mqtt_transport import publish_to_inboxes

    secret = plan.dir / ADMIN_DIR / ADMIN_PASSWORD
    try:
        password = secret.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{secret}: the admin's broker password is needed to deliver records over MQTT "
                          f"({exc.strerror}); use --no-send and deliver the record file yourself") from None
    t = plan.mqtt_settings()
    try:
        done = asyncio.run(publish_to_inboxes(plan.admin.peer_id, plan.trust.network, data,
                                              [n["peer_id"] for n in nodes], host=t.host, port=t.port,
                                              username=plan.admin.peer_id, password=password, tls=t.tls,
                                              ca_file=t.ca_file, prefix=t.topic_prefix))
    except TransportError as exc:
        raise ConfigError(f"{exc} (the record is kept: {plan.records})") from None
    return {n["node"]: done[n["peer_id"]] for n in nodes}


async def _send_all(admin: Identity, addrs: dict, data: bytes, names: dict) -> dict[str, bool]:
    from gossip.libp2p_transport import Libp2pTransport

    t = Libp2pTransport(admin, ["/ip4/127.0.0.1/tcp/0"], addrs, allowed=set(), max_size=1024)
    await t.start()
    try:
        results = await asyncio.gather(*(t.send(pid, data) for pid in addrs))
    finally:
        await t.close()
    return {names[pid]: ok for pid, ok in zip(addrs, results, strict=True)}
