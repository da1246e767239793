"""Deployment plans: from a topology to a ready folder per node (key, peer.toml, systemd
unit) plus one shared trust list, the network's admin key (in its own folder, to be moved
off the machine), the drawing and the analysis with its robustness verdict. Lives in `peer`
because it writes keys (gossip) and the peer's config format; the graph math stays in
`topology`.

A plan is written in steps (PlanWriter): check everything that can be checked before a file
exists (the robustness verdict, the template, the transport's addresses and every port), then
keys and the trust list, then each node's folder, then the transport's plan-wide files, the
manifest, the kept template and the drawing. What differs per transport comes from its
declaration (peer.transports); what every node inherits, from a NodeTemplate.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx

from gossip.identity import Identity, save_key
from gossip.trust import build_trust_list

from ..config.parse import AggregationConfig, DataConfig, ModelConfig, load_config
from ..config.tomlwrite import dumps
from ..errors import ConfigError
from ..learning.classification import TrainConfig
from ..transports import NodeEndpoint, kind_of
from ..transports.mqtt import BROKER_DIR  # noqa: F401  (where an mqtt plan's broker files are)
from .enrol import Request, apply_reachability
from .mosquitto import write_secret
from .pacing import round_table
from .systemd import GatewayLayout, unit_text
from .template import TEMPLATE_DIR, TEMPLATE_FILE, NodeTemplate

ADMIN_DIR = "admin"  # the network admin key: signs membership records, never copied to a gateway
ADMIN_KEY = "admin.key"
ADMIN_README = """\
This folder holds the admin key of network {network!r} (PeerId {peer_id}).

It signs membership records: `gossipfl fleet admit` and `gossipfl fleet revoke` need it,
the peers do not. Every peer trusts it (trust.toml: admin = ...), so whoever holds it
decides who is in the network. Move this folder off this machine (an offline disk, a
password manager) once the plan is copied to the gateways; never copy it to a gateway.
If it leaks (or to retire it), `gossipfl fleet rotate-admin PLAN` replaces it by a fresh key.
"""


class WeakPlanError(ConfigError):
    """Some node's neighbourhood is too small for the aggregation rule at its f."""


@dataclass
class PlannedNode:
    label: str
    peer_id: str
    dir: Path
    config: Path
    port: int | None
    unit: Path | None = None  # the node's systemd unit file (libp2p and mqtt plans)
    metrics_port: int | None = None  # its Prometheus endpoint's port, when the template has [metrics]
    copied: list[str] = field(default_factory=list)  # the template's modules and data copied into its folder
    enrolled: bool = False  # its key was made on the gateway (an enrolment request): none in the plan


@dataclass(frozen=True)
class PlanOptions:
    """What a plan is made of besides its graph. `transport_options` holds values for the
    transports' plan settings by field name (libp2p: host, base_port, ports; mqtt: broker);
    those of other kinds than `transport` are ignored, so a caller may pass both."""

    network_id: str = "gossipfl"
    transport: str = "libp2p"
    transport_options: dict[str, Any] = field(default_factory=dict)
    template: NodeTemplate | None = None  # the tables every node inherits (topology plan --template)
    overrides: dict | None = None  # tables merged over the template's, e.g. {"round": {"deadline": 2.0}}
    gateway: GatewayLayout | None = None  # systemd units of deployed transports (default GatewayLayout())
    identities: dict | None = None  # node label -> Identity instead of fresh keys (the simulator, tests)
    admin: Identity | None = None  # the admin key instead of a fresh one
    requests: dict[str, Request] | None = None  # node name -> enrolment request: the gateway's own key, none written
    force: bool = False  # replace an existing plan folder
    draw: bool = True  # analysis.json and topology.png
    allow_weak: bool = True  # False: WeakPlanError before anything is written (the CLI passes it)


def default_tables() -> dict:
    """The tables a plan writes for every node, from the config dataclasses, so that a planned
    node runs with exactly the defaults parse_config gives a config that leaves them out."""
    model, data, train, agg = ModelConfig(), DataConfig(), TrainConfig(), AggregationConfig()
    return {
        "model": {"name": model.name, "classes": model.classes, "options": dict(model.options)},
        "data": {"source": data.source, "partition": data.partition},
        "train": {"local_steps": train.local_steps, "batch_size": train.batch_size, "lr": train.lr},
        "aggregation": {k: v for k, v in asdict(agg).items() if k != "params"},
        "round": {},
    }


def effective_template(template: NodeTemplate | None, overrides: dict | None) -> NodeTemplate:
    """The defaults, each table the template has replacing the default one, then the overrides."""
    base = NodeTemplate(default_tables())
    if template is not None:
        base = NodeTemplate({**base.tables, **template.tables}, template.folder, template.source,
                            list(template.dropped), template.data_folder)
    return base.with_overrides(overrides)


def node_dir_name(label) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(label))
    return f"node-{safe}"


def aggregation_of(overrides: dict | None, template: NodeTemplate | None = None) -> tuple[str, int]:
    """The rule and f every node of a plan gets (the defaults, the template, then the overrides)."""
    table = effective_template(template, overrides).tables["aggregation"]
    return table["rule"], table["f"]


def check_robustness(graph: nx.Graph, overrides: dict | None = None, template: NodeTemplate | None = None):
    """topology.robustness.check_plan for the rule and f the plan writes; errors name the field."""
    from topology.errors import TopologyError
    from topology.robustness import check_plan

    rule, f = aggregation_of(overrides, template)
    try:
        return check_plan(graph, rule, f)
    except TopologyError as exc:
        raise ConfigError(f"aggregation: {exc}") from None


def weak_plan_message(check, *, refused: bool = True) -> str:
    """Why the plan is refused (or, written anyway, weak) and what would work, in the flags
    of `topology plan`."""
    ideas = check.suggestions()
    fix = f" What would work: {'; '.join(ideas)}." if ideas else ""
    if refused:
        return (f"refusing a plan in which {check.problem()}; they would keep their own model every round.{fix} "
                "Use --allow-weak to write it anyway")
    return f"wrote a plan in which {check.problem()}; they will keep their own model every round.{fix}"


def write_plan(graph: nx.Graph, out: str | os.PathLike, options: PlanOptions | None = None,
               **fields: Any) -> list[PlannedNode]:
    """Write keys (0600), peer.toml per node, trust.toml and the admin key (ADMIN_DIR, whose
    PeerId trust.toml names as the network's admin); refuse an existing folder unless `force`.
    The transport's declaration adds its part: addresses, an mqtt plan's broker logins and
    files. Deployed transports (libp2p, mqtt) get a systemd unit per node and an empty data
    folder (the only one the unit lets the peer write). `fields`: PlanOptions fields, for
    short calls (`write_plan(g, out, transport="memory", draw=False)`).

    `allow_weak=False` refuses (WeakPlanError, before writing anything) a plan in which some
    node's neighbourhood cannot meet its rule's requirement for its f; either way
    analysis.json carries the verdict."""
    options = PlanOptions(**fields) if options is None else replace(options, **fields)
    return PlanWriter(graph, Path(out), options).write()


class PlanWriter:
    """One plan, written in the steps of `write` (module docstring)."""

    def __init__(self, graph: nx.Graph, out: Path, options: PlanOptions):
        self.graph, self.out, self.opts = graph, out, options
        self.kind = kind_of(options.transport)
        self.settings = self.kind.settings(options.transport_options)
        self.template = effective_template(options.template, options.overrides)
        self.rule, self.f = self.template.tables["aggregation"]["rule"], self.template.tables["aggregation"]["f"]
        self.nodes = sorted(graph.nodes, key=lambda v: (str(type(v)), v))
        self.index = {v: i for i, v in enumerate(self.nodes)}
        self.gateway = (options.gateway or GatewayLayout()) if self.kind.deployed else None
        self.idents: dict = {}  # node -> Identity, for the nodes whose key the plan makes
        self.pids: dict = {}  # node -> PeerId, every node
        self.requests = dict(options.requests or {})
        self.endpoints: dict[Any, NodeEndpoint] = {}

    def write(self) -> list[PlannedNode]:
        robustness = self.check()
        self.prepare_folder()
        admin = self.write_keys()
        planned = [self.write_node(v) for v in self.nodes]
        configs = [load_config(p.config) for p in planned]  # every written config loads (again, all at once)
        self.kind.plan_files(self.out, configs, self.settings, self.out / ADMIN_DIR, admin.peer_id)
        self.write_manifest(planned, admin)
        self.template.save(self.out)
        if self.opts.draw:
            self.draw(robustness)
        return planned

    # --- steps ----------------------------------------------------------------------------

    def check(self):
        """Before anything is written: the verdict, the transport's addresses, every port."""
        robustness = check_robustness(self.graph, self.opts.overrides, self.opts.template)
        if not robustness.ok and not self.opts.allow_weak:
            raise WeakPlanError(weak_plan_message(robustness))
        if self.out.exists() and any(self.out.iterdir()) and not self.opts.force:
            raise ConfigError(f"{self.out} exists and is not empty; refusing to overwrite keys (use --force)")
        self.template.check_imports()
        self.check_requests()
        self.idents = {v: (self.opts.identities or {}).get(v) or Identity.generate() for v in self.nodes
                       if str(v) not in self.requests}
        self.pids = {v: self.requests[str(v)].peer_id if str(v) in self.requests else self.idents[v].peer_id
                     for v in self.nodes}
        eps = self.kind.endpoints(self.settings, [self.pids[v] for v in self.nodes])
        self.endpoints = dict(zip(self.nodes, eps, strict=True))
        for v in self.nodes:
            request = self.requests.get(str(v))
            if request is None:
                continue
            if request.host_port and self.kind.listens:  # where the gateway said it is dialled
                self.endpoints[v] = self.kind.admit_endpoint(None, self.pids[v], [], *request.host_port)
            apply_reachability(self.kind, self.endpoints[v], request)
        check_ports({str(v): (self.endpoints[v].port, self.template.metrics_port(self.index[v])) for v in self.nodes},
                    self.kind.name)
        return robustness

    def check_requests(self) -> None:
        """Each enrolment request names a node of the graph, of this network, with a PeerId of its own."""
        names = {str(v) for v in self.nodes}
        unknown = sorted(set(self.requests) - names)
        if unknown:
            raise ConfigError(f"enrolment requests for {', '.join(map(repr, unknown))}, which the graph has no node "
                              f"of (its nodes: {', '.join(sorted(names)[:10])}{' ...' if len(names) > 10 else ''}); "
                              "name each gateway as its node (peer init --enrol --name)")
        for name, r in self.requests.items():
            if r.network != self.opts.network_id:
                raise ConfigError(f"the enrolment request of {name!r} is for network {r.network!r}, this plan is "
                                  f"{self.opts.network_id!r} (--network-id)")
        if len({r.peer_id for r in self.requests.values()}) < len(self.requests):
            raise ConfigError("two enrolment requests name the same PeerId")

    def prepare_folder(self) -> None:
        if self.out.exists() and any(self.out.iterdir()):
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def write_keys(self) -> Identity:
        """The admin key (apart) and the trust list; returns the admin's identity."""
        admin = self.opts.admin or Identity.generate()
        write_admin_key(self.out / ADMIN_DIR, admin, self.opts.network_id)
        entries = [{"id": self.pids[v], "name": str(v)} for v in self.nodes]
        (self.out / "trust.toml").write_text(build_trust_list(self.opts.network_id, entries,
                                                              admin=admin.peer_id).to_toml())
        return admin

    def neighbours(self, v) -> list[dict]:
        out = []
        for u in sorted(self.graph.neighbors(v), key=lambda x: self.index[x]):
            nb = {"id": self.pids[u], "name": str(u), "degree": self.graph.degree(u)}
            if self.rule == "secure_mean":  # the receiver's group: a sender masks for it with every other member
                nb["group"] = [self.pids[w] for w in sorted(self.graph.neighbors(u), key=lambda x: self.index[x])]
            if self.endpoints[u].addr:
                nb["addr"] = self.endpoints[u].addr
            out.append(nb)
        return out

    def write_node(self, v) -> PlannedNode:
        i, d, ep = self.index[v], self.out / node_dir_name(v), self.endpoints[v]
        d.mkdir()
        if v in self.idents:  # an enrolled gateway keeps the key it made (peer.key beside its peer.toml there)
            save_key(self.idents[v], d / "peer.key")
        for name, text in ep.secrets.items():
            write_secret(d / name, text)
        tables = self.template.for_node(str(v), i, len(self.nodes))
        given = (self.opts.overrides or {}).get("data")
        if isinstance(given, dict):  # an explicit override wins over the node's own shard (overrides come last)
            tables["data"].update({k: given[k] for k in ("shard", "shards") if k in given})
        copied = self.template.copy_into(d, tables)
        doc, comments = node_document(str(v), self.opts.network_id, self.neighbours(v), ep, tables, self.kind,
                                      self.rule, self.f)
        config = d / "peer.toml"
        config.write_text(f"# node {v} of a {len(self.nodes)}-node plan ({self.graph.graph.get('spec', 'graph')})\n"
                          + dumps(doc, comments))
        cfg = load_config(config)  # every written config must load
        unit = None
        if self.gateway is not None:
            unit = write_unit(d, cfg, self.gateway, f"node {v} of gossipfl network {self.opts.network_id}")
        return PlannedNode(str(v), self.pids[v], d, config, ep.port, unit,
                           self.template.metrics_port(i), copied, enrolled=v not in self.idents)

    def write_manifest(self, planned: list[PlannedNode], admin: Identity) -> None:
        nodes = [{"node": p.label, "peer_id": p.peer_id, **({"enrolled": True} if p.enrolled else {}),
                  "config": str(p.config.relative_to(self.out)),
                  "port": p.port, **({"metrics_port": p.metrics_port} if p.metrics_port else {}),
                  **({"unit": str(p.unit.relative_to(self.out))} if p.unit else {})} for p in planned]
        manifest = {"network": self.opts.network_id, "transport": self.kind.name, "admin": admin.peer_id,
                    "template": {"file": f"{TEMPLATE_DIR}/{TEMPLATE_FILE}",
                                 **({"data_from": str(self.template.data_folder or self.template.folder)}
                                    if self.template.folder else {})},
                    **({"gateway": asdict(self.gateway)} if self.gateway else {}), "nodes": nodes}
        (self.out / "plan.json").write_text(json.dumps(manifest, indent=1))

    def draw(self, robustness) -> None:
        from topology.analysis import summarize
        from topology.draw import draw as draw_graph

        summary, _ = summarize(self.graph)
        summary.robustness = robustness.to_dict()
        (self.out / "analysis.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        draw_graph(self.graph, self.out / "topology.png", title=self.graph.graph.get("spec", ""),
                   at_risk=robustness.weak)


def node_document(name: str, network_id: str, neighbours: list[dict], ep: NodeEndpoint, tables: dict, kind,
                  rule: str, f: int) -> tuple[dict, dict[str, str]]:
    """One node's peer.toml (as a dict) and its comments: its own tables, the inherited ones,
    the transport's section (the template's shared keys, the endpoint's per-node ones) and an
    explicit, commented [round] (peer.ops.pacing)."""
    inherited = {k: v for k, v in tables.items() if k not in ("transport", "round")}
    shared = {k: v for k, v in (tables.get("transport") or {}).items()  # what the template says of this kind
              if k in kind.schema and k not in kind.per_node}
    rnd, comments = round_table(tables.get("round") or {}, deployed=kind.deployed, rule=rule, f=f,
                                degree=len(neighbours))
    doc = {"name": name, "identity": {"key": "peer.key"},
           "network": {"id": network_id, "trust": "../trust.toml", "neighbours": neighbours},
           "transport": {**ep.transport, **shared}, **inherited, "round": rnd, "storage": {"dir": "data"}}
    return doc, comments


def check_ports(ports: dict[str, tuple[int | None, int | None]], transport: str) -> None:
    """Every listening port and metrics port of a plan is its own (nodes of a plan may share a host)."""
    seen: dict[int, str] = {}
    for node, (listen, metrics) in ports.items():
        for port, what in ((listen, f"node {node}'s {transport} port"), (metrics, f"node {node}'s metrics port")):
            if port is None:
                continue
            if not 0 < port < 65536:
                raise ConfigError(f"{what} would be {port}, not a TCP port: choose a lower base port")
            if port in seen:
                raise ConfigError(f"ports clash: {what} {port} is also {seen[port]}; choose bases whose ranges "
                                  "do not overlap (--base-port, --metrics)")
            seen[port] = what


def write_admin_key(folder: Path, admin: Identity, network_id: str) -> Path:
    """ADMIN_DIR/admin.key (0600, in a 0700 folder) beside a README that says to move it away."""
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    path = save_key(admin, folder / ADMIN_KEY)
    (folder / "README.txt").write_text(ADMIN_README.format(network=network_id, peer_id=admin.peer_id))
    return path


def write_unit(node_dir: Path, cfg, gateway: GatewayLayout, description: str) -> Path:
    """The node's systemd unit, for its folder's place on the gateway; creates the data folder
    it may write when that lies inside the node's folder (the unit needs it to exist)."""
    node, data_dir = node_dir.resolve(), cfg.data_dir.resolve()
    if data_dir.is_relative_to(node):
        data_dir.mkdir(parents=True, exist_ok=True)
        data = data_dir.relative_to(node).as_posix()
    else:  # storage.dir outside the node's folder: the same absolute path on the gateway
        data = data_dir.as_posix()
    label = node_dir.name.removeprefix("node-")
    spec = gateway.unit(label, node_dir.name, data, description)
    path = node_dir / f"{spec.name}.service"
    path.write_text(unit_text(spec))
    return path
