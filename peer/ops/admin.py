"""The network admin's side of membership: admit a gateway or revoke one, in a plan folder.

`admit` writes the new gateway's folder like the plan wrote the others (key, a peer.toml from the
plan's template with free ports, the template's modules, a systemd unit), adds it to the plan's
trust.toml and to its neighbours' peer.toml files (for gateways set up again from the plan) and
signs an `admit` record with the next epoch; `revoke` signs a `revoke` record, takes the PeerId
off trust.toml (a gateway set up again from the plan must not trust the stolen key) and out of
its former neighbours' peer.toml files. Records are kept in
PLAN/admin/records/ and delivered to every gateway of the plan (each passes it on to its
neighbours, so reaching a few is enough) the way the plan's transport declares (peer.transports:
libp2p under the admin key, MQTT into each inbox with the admin's broker login). Running peers
apply them at once: no restart anywhere. What else a transport keeps (an MQTT plan's broker
logins and ACL lines in PLAN/broker/) its declaration changes too; the broker applies that on
reload.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from gossip.identity import Identity, load_key, save_key
from gossip.membership import MembershipError, Record, open_record, seal_record
from gossip.trust import TrustList, load_trust_list

from ..config.parse import load_config
from ..config.tomlwrite import dumps
from ..errors import ConfigError
from ..transports import TransportKind, kind_of
from .enrol import Request, apply_reachability
from .mosquitto import write_secret
from .plan import ADMIN_DIR, ADMIN_KEY, node_dir_name, node_document, write_unit
from .plan_edits import (
    adjacency,
    check_port,
    free_port,
    listen_port,
    ports_in_use,
    rewrite_neighbourhoods,
)
from .systemd import GatewayLayout
from .template import NodeTemplate

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
    unit: Path | None = None  # the admitted gateway's systemd unit
    ports: dict[str, int] = field(default_factory=dict)  # the admitted gateway's: "listen", "metrics"
    copied: list[str] = field(default_factory=list)  # the template's modules and data copied into its folder
    notes: list[str] = field(default_factory=list)  # what the admin must still do by hand
    rewritten: list[Path] = field(default_factory=list)  # the plan's peer.toml files whose neighbours changed


class Plan:
    """A plan folder as the admin sees it: plan.json, trust.toml, the admin key, the records."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        try:
            self.manifest = json.loads((self.dir / "plan.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.dir}: not a plan folder (plan.json: {exc})") from None
        self.trust = load_trust_list(self.dir / "trust.toml")
        self.admin_dir = self.dir / ADMIN_DIR
        key = self.admin_dir / ADMIN_KEY
        if not key.exists():
            raise ConfigError(f"{key} not found: membership records are signed with the plan's admin key "
                              "(copy it back from where you keep it)")
        self.admin: Identity = load_key(key)
        if self.trust.admin != self.admin.peer_id:
            raise ConfigError(f"{key} is not the admin key trust.toml names ({self.trust.admin})")
        self.admins = [*self.trust.retired, self.admin.peer_id]  # every admin key so far, oldest first
        self.records = self.admin_dir / RECORDS
        self.kind: TransportKind = kind_of(self.manifest.get("transport", "libp2p"))

    @property
    def nodes(self) -> list[dict]:
        return self.manifest["nodes"]

    @property
    def live(self) -> list[dict]:
        return [n for n in self.nodes if "revoked_epoch" not in n]

    def node(self, who: str) -> dict:
        """A node by plan name or PeerId (prefix or suffix)."""
        hits = [n for n in self.nodes if who in (n["node"], n["peer_id"])] or \
            [n for n in self.nodes if n["peer_id"].startswith(who) or n["peer_id"].endswith(who)]
        if len(hits) != 1:
            names = ", ".join(n["node"] for n in self.nodes)
            raise ConfigError(f"{who!r} names {'no' if not hits else 'more than one'} node of the plan ({names})")
        return hits[0]

    def config(self, node: dict) -> dict:
        """A node's peer.toml as written (TOML tables)."""
        return tomllib.loads((self.dir / node["config"]).read_text())

    def load(self, node: dict):
        """A node's peer.toml, loaded and checked (a PeerConfig)."""
        return load_config(self.dir / node["config"])

    def transport_config(self):
        """The transport settings the plan's nodes share, as its first live node has them."""
        return self.load(self.live[0] if self.live else self.nodes[0]).transport

    def template(self) -> NodeTemplate | None:
        """The tables the plan's nodes inherit (None: a plan written before plans kept one)."""
        kept = self.manifest.get("template") or {}
        return NodeTemplate.of_plan(self.dir, kept.get("data_from"))

    def gateway(self) -> GatewayLayout:
        return GatewayLayout(**self.manifest.get("gateway", {}))

    def open(self, data: bytes) -> Record:
        """A record of this plan, signed by one of its admin keys (the current one or a retired one)."""
        errors = []
        for key in reversed(self.admins):
            try:
                return open_record(data, admin=key, network=self.trust.network)
            except MembershipError as exc:
                errors.append(exc)
        raise errors[0]

    def next_epoch(self) -> int:
        epochs = [self.open(p.read_bytes()).epoch for p in self.records.glob("*.msgpack")] \
            if self.records.exists() else []
        return max(epochs, default=0) + 1

    def sign(self, action: str, peer_id: str, epoch: int | None = None, **fields) -> tuple[int, bytes, Path]:
        epoch = epoch or self.next_epoch()
        data = seal_record(self.admin, network=self.trust.network, epoch=epoch, action=action, peer=peer_id,
                           **fields)
        self.records.mkdir(parents=True, exist_ok=True)
        path = self.records / f"{epoch:06d}-{action}-{peer_id[-8:]}.msgpack"
        path.write_bytes(data)
        return epoch, data, path

    def save(self, trust: TrustList) -> None:
        (self.dir / "trust.toml").write_text(trust.to_toml())
        (self.dir / "plan.json").write_text(json.dumps(self.manifest, indent=1))

    def rewrite_neighbourhoods(self, graph: dict[str, list[str]], addresses: dict[str, str | None]) -> list[Path]:
        """The live nodes' peer.toml files after a membership change (peer.ops.plan_edits)."""
        template = self.template()
        fixed = None if template is None else set(template.tables.get("round", {}))
        return rewrite_neighbourhoods({n["peer_id"]: self.dir / n["config"] for n in self.live}, graph,
                                      names={n["peer_id"]: n["node"] for n in self.nodes}, addresses=addresses,
                                      deployed=self.kind.deployed, fixed=fixed)


def admit(folder, name: str | None, neighbours: list[str], *, port: int | None = None, host: str | None = None,
          send: bool = True, request: Request | None = None) -> Outcome:
    """A new gateway, set up as the plan set up the others; `port` and `host`: where it listens
    (transports that listen; default: a port no node of the plan uses, on the plan's host).
    With an enrolment `request` (peer.ops.enrol) the gateway keeps the key it generated: no key
    is written, its PeerId, name (unless `name` is given), address and reachability come from
    the request."""
    plan = Plan(folder)
    if request is not None:
        _check_request(plan, request)
        name = name or request.name
        if request.host_port and host is None and port is None:
            host, port = request.host_port
    if not name:
        raise ConfigError("name the new gateway (--name)")
    if any(n["node"] == name for n in plan.nodes):
        raise ConfigError(f"the plan already has a node {name!r}")
    nbrs = [plan.node(n) for n in neighbours]
    if not nbrs:
        raise ConfigError("name at least one neighbour for the new gateway (--neighbours a,b)")
    for n in nbrs:
        if "revoked_epoch" in n:
            raise ConfigError(f"{n['node']} was revoked at epoch {n['revoked_epoch']}: a revoked gateway has no "
                              "neighbours (no section for neighbour rights); name live gateways")
    node_dir = plan.dir / node_dir_name(name)
    if node_dir.exists():
        raise ConfigError(f"{node_dir} exists already")
    docs = {n["node"]: plan.config(n) for n in plan.nodes}
    template, notes = admission_template(plan, nbrs[0])
    template.check_imports()  # before anything is written or a broker login added
    used, index, ports = ports_in_use(docs), len(plan.nodes), {}
    host = host or plan_host(docs) or "127.0.0.1"
    if plan.kind.listens:
        after = max((listen_port(a) or 0 for d in docs.values() for a in (d.get("transport") or {}).get("listen", [])),
                    default=4000) + 1
        ports["listen"] = check_port(used, port, "--port") if port else free_port(used, after, host)
        used[ports["listen"]] = "the new gateway's listening port"
    base = template.metrics_port(index)
    if base is not None:
        metrics_host = template.metrics_listen(base).rpartition(":")[0].strip("[]")
        ports["metrics"] = free_port(used, base, metrics_host)
    ident: Identity | None = None
    if request is None:
        ident = Identity.generate()
        pid = ident.peer_id
    else:
        pid = request.peer_id
    ids = [n["peer_id"] for n in nbrs]
    ep = plan.kind.admit_endpoint(plan, pid, ids, host, ports.get("listen"))  # may refuse: nothing written
    if request is not None:
        apply_reachability(plan.kind, ep, request)
    node_dir.mkdir(parents=True)
    if ident is not None:
        save_key(ident, node_dir / "peer.key")
    else:
        notes.append(f"no key written: the gateway keeps the key it generated (peer.key beside {node_dir.name}/"
                     "peer.toml on the gateway)")
    for file, text in ep.secrets.items():
        write_secret(node_dir / file, text)
    tables = template.for_node(name, index, index + 1, ports.get("metrics"))
    copied = template.copy_into(node_dir, tables)
    notes += [f"module {top!r} is not in the plan's template folder: install it on the new gateway (pip install) "
              f"or copy it into {node_dir.name}/" for top in template.module_files()[1]]
    path, source = template.data_file(tables)
    if isinstance(path, str) and source is None and not (node_dir / path).exists() and not Path(path).is_absolute():
        notes.append(f"put the new gateway's data at {node_dir.name}/{path} (data.path)")
    addresses = {n["peer_id"]: next(iter(plan.kind.addresses(plan.load(n), n["peer_id"])), None) for n in nbrs}
    entries = [{"id": n["peer_id"], "name": n["node"], **({"addr": addresses[n["peer_id"]]}
                                                         if addresses[n["peer_id"]] else {})} for n in nbrs]
    agg = template.tables.get("aggregation", {})
    doc, comments = node_document(name, plan.trust.network, entries, ep, tables, plan.kind, agg.get("rule", "median"),
                                  agg.get("f", 1))
    config = node_dir / "peer.toml"
    config.write_text(f"# gateway {name}, admitted to a running fleet\n" + dumps(doc, comments))
    cfg = load_config(config)  # it loads, with its modules beside it, before the plan changes
    trust = replace(plan.trust, peers=plan.trust.peers | {pid}, names={**plan.trust.names, pid: name})
    entry = {"node": name, "peer_id": pid, **({"enrolled": True} if request is not None else {}), "config": str(config.relative_to(plan.dir)),
             "port": ports.get("listen"), **({"metrics_port": ports["metrics"]} if "metrics" in ports else {})}
    plan.manifest["nodes"].append(entry)
    plan.save(trust)  # before the configs are loaded: the new one's neighbours must be on the trust list
    graph = adjacency({n["peer_id"]: docs[n["node"]] for n in plan.live if n["node"] in docs})
    graph[pid] = ids
    for nb in ids:
        graph[nb] = [*graph[nb], pid]
    rewritten = plan.rewrite_neighbourhoods(graph, {pid: ep.addr, **addresses})
    unit = None
    if plan.kind.deployed:
        unit = write_unit(node_dir, cfg, plan.gateway(), f"gateway {name} of gossipfl network {plan.trust.network}")
        entry["unit"] = str(unit.relative_to(plan.dir))
    epoch, data, record = plan.sign("admit", pid, addr=ep.addr or "", neighbours=ids)
    plan.save(trust)
    targets = [n for n in plan.live if n["peer_id"] != pid]
    delivered = plan.kind.deliver(plan, data, targets) if send else {}
    return Outcome(epoch, "admit", pid, record, delivered, config, ep.changed, unit, ports, copied, notes,
                   [p for p in rewritten if p != config])


def _check_request(plan: Plan, request: Request) -> None:
    if request.network != plan.trust.network:
        raise ConfigError(f"the request is for network {request.network!r}, this plan is {plan.trust.network!r}")
    if request.peer_id in plan.trust.peers or any(n["peer_id"] == request.peer_id for n in plan.nodes):
        raise ConfigError(f"{request.peer_id} is in the plan already (a revoked key is never admitted again)")


def admission_template(plan: Plan, neighbour: dict) -> tuple[NodeTemplate, list[str]]:
    """The plan's kept template; for a plan from before plans kept one, a neighbour's tables
    (and the modules they name, from its folder)."""
    template = plan.template()
    if template is not None:
        return template, []
    tables = {k: v for k, v in plan.config(neighbour).items()
              if isinstance(v, dict) and k not in ("identity", "network", "storage")}
    folder = (plan.dir / neighbour["config"]).parent
    return NodeTemplate(tables, folder), [f"this plan kept no template: the new gateway has {folder.name}'s settings"]


def plan_host(docs: dict[str, dict]) -> str | None:
    """The host the plan's nodes listen on (/ip4/HOST/tcp/PORT), if they do."""
    for doc in docs.values():
        for addr in (doc.get("transport") or {}).get("listen") or []:
            parts = addr.split("/")
            if listen_port(addr) and len(parts) > 2:
                return parts[2]
    return None


def revoke(folder, who: str, *, send: bool = True) -> Outcome:
    plan = Plan(folder)
    node = plan.node(who)
    if "revoked_epoch" in node:
        raise ConfigError(f"{node['node']} was revoked already (epoch {node['revoked_epoch']})")
    pid = node["peer_id"]
    graph = adjacency({n["peer_id"]: plan.config(n) for n in plan.live})
    epoch, data, path = plan.sign("revoke", pid)
    trust = replace(plan.trust, peers=plan.trust.peers - {pid}, names={k: v for k, v in plan.trust.names.items()
                                                                       if k != pid})
    node["revoked_epoch"] = epoch
    plan.save(trust)
    broker = plan.kind.revoked(plan, pid)
    graph.pop(pid, None)
    rewritten = plan.rewrite_neighbourhoods({k: [x for x in v if x != pid] for k, v in graph.items()}, {})
    # the revoked gateway too: it learns it was revoked, says so in its status and stops for good
    targets = [node] + [n for n in plan.live if n["peer_id"] != pid]
    delivered = plan.kind.deliver(plan, data, targets) if send else {}
    return Outcome(epoch, "revoke", pid, path, delivered, broker=broker, rewritten=rewritten)


def rotate_admin(folder, key: Path | None = None, *, epoch: int | None = None) -> Outcome:
    """Replace the plan's admin key by `key` (a fresh one by default): a `rotate` record signed
    by the current key names the successor; the plan's admin.key, trust.toml (`admin`,
    `retired_admins`) and plan.json switch to it, so later admits and revocations are signed by
    it; the record is delivered to every live gateway at once, under the old key (the peers let
    only the current admin connect), and passed on by them. The old key leaves the plan for
    good: nothing it signs counts any more where the record arrived. `epoch`: above the next one
    when a thief signed records with higher epochs (at most MAX_EPOCH_STEP past a peer's)."""
    plan = Plan(folder)
    new = load_key(key) if key is not None else Identity.generate()
    pid = new.peer_id
    if pid in plan.admins:
        raise ConfigError(f"{pid} is {'the' if pid == plan.admin.peer_id else 'a retired'} admin key of this plan: "
                          "rotate to a fresh key")
    if pid in plan.trust.peers or any(n["peer_id"] == pid for n in plan.nodes):
        raise ConfigError(f"{pid} is a gateway's key: the admin key is kept apart from the gateways")
    if epoch is not None and epoch < plan.next_epoch():
        raise ConfigError(f"--epoch {epoch} is not above the plan's records (next: {plan.next_epoch()})")
    epoch, data, record = plan.sign("rotate", pid, epoch)
    old = plan.admin.peer_id
    save_key(new, plan.admin_dir / ADMIN_KEY, force=True)  # atomically: the old key is gone from the plan
    plan.manifest["admin"], plan.manifest["retired_admins"] = pid, [*plan.trust.retired, old]
    plan.save(replace(plan.trust, admin=pid, retired=(*plan.trust.retired, old)))
    delivered = plan.kind.deliver(plan, data, plan.live)  # `plan` still holds the old key
    broker = plan.kind.rotated_admin(plan, pid)
    notes = [f"the old admin key {old} is retired: destroy every copy of it (the plan no longer has one)",
             "gateways set up again from the plan need its new trust.toml (it names the new admin key and the "
             "retired ones); copy it to a gateway that was down now, before it starts"]
    return Outcome(epoch, "rotate", pid, record, delivered, broker=broker, notes=notes)


def deliver(plan: Plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
    """Send a record to these gateways, the way the plan's transport declares."""
    return plan.kind.deliver(plan, data, nodes)
