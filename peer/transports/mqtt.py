"""The MQTT transport: for sites that run a broker. Plans give every peer its own broker login
and write the broker's password file, ACL and mosquitto.conf (peer.ops.mosquitto)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gossip.files import read_limited_text

from ..config import checks
from ..config.settings import TransportConfig, split_host_port
from ..errors import ConfigError
from .base import NodeEndpoint, TransportKind

BROKER_DIR = "broker"  # mqtt plans: mosquitto.conf, passwd and acl for the broker host
PASSWORD_FILE = "mqtt.password"  # a node's broker password, beside its key
TOPIC_CHARS = ("+", "#", "\x00")  # MQTT wildcards and NUL: never inside a topic level of ours


@dataclass
class MqttConfig(TransportConfig):
    kind: str = "mqtt"
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # the password in a file of its own (mode 0600), beside the key
    tls: bool = False
    ca_file: str | None = None
    topic_prefix: str = "gossipfl"
    status: bool = True


@dataclass(frozen=True)
class MqttPlan:
    """`topology plan` on MQTT: the broker every node logs in to."""

    broker: str = field(default="127.0.0.1:1883", metadata={"help": "mqtt: HOST:PORT of the broker"})

    def __post_init__(self):
        try:
            split_host_port(self.broker)
        except ValueError as exc:
            raise ConfigError(f"--broker {exc}, got {self.broker!r}") from None

    @property
    def host(self) -> str:
        return split_host_port(self.broker)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.broker)[1]


def _topic_prefix(v):
    if not v or any(c in v for c in TOPIC_CHARS) or v.startswith("/") or v.endswith("/"):
        return "must be a non-empty MQTT topic without +, # or a leading/trailing /"
    return None


class MqttKind(TransportKind):
    name = "mqtt"
    summary = "through an MQTT broker such as Mosquitto"
    config = MqttConfig
    schema: ClassVar[dict[str, tuple]] = {
        "host": (str, {"check": checks.host_name}), "port": (int, {"check": checks.tcp_port}),
        "username": (str, {}), "password": (str, {}), "password_file": (str, {}), "tls": (bool, {}),
        "ca_file": (str, {}), "topic_prefix": (str, {"check": _topic_prefix}), "status": (bool, {})}
    comments: ClassVar[dict[str, str]] = {
        "host": "the broker", "port": "the broker's port", "username": "its login (plans: the PeerId)",
        "password": "or password_file", "password_file": "the password in a file of mode 0600",
        "tls": "", "ca_file": "CA certificate for TLS", "topic_prefix": "",
        "status": "publish a retained status with a last will"}
    plan_settings = MqttPlan
    per_node = ("host", "port", "username", "password", "password_file")

    def check(self, transport: TransportConfig, network: str, base: Path) -> None:
        assert isinstance(transport, MqttConfig)  # the parser builds this kind's table as its `config` class
        if transport.password_file is not None:
            if transport.password is not None:
                raise ConfigError("transport.password and transport.password_file are both set; keep one")
            transport.password_file = str(base / transport.password_file)
            transport.password = read_limited_text(transport.password_file, 4096,
                                                   "transport.password_file").rstrip("\r\n")
        if any(c in network for c in ("/", *TOPIC_CHARS)):
            raise ConfigError(f"network.id must not contain /, + or # with transport.kind = mqtt, got {network!r}")

    def build(self, cfg, identity, *, hub=None, max_size: int, allowed=None, members=None):
        try:
            from gossip.mqtt_transport import MqttTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = mqtt is not available: {exc}") from None
        t = cfg.transport
        return MqttTransport(identity, cfg.network, host=t.host, port=t.port, username=t.username,
                             password=t.password, tls=t.tls, ca_file=t.ca_file, prefix=t.topic_prefix,
                             status=t.status, max_size=max_size, name=cfg.name, allowed=allowed,
                             neighbours=[n.id for n in cfg.neighbours])

    def describe(self, cfg, peer_id: str) -> list[str]:
        t = cfg.transport
        return [f"mqtt://{t.host}:{t.port} topic {t.topic_prefix}/{cfg.network}/{peer_id}/inbox"]

    # --- plans: a login per node, the broker's files ------------------------------------------

    def endpoint(self, peer_id: str, host: str, port: int) -> NodeEndpoint:
        """Its login: username its PeerId, the password beside its key (0600), not in peer.toml."""
        from ..ops.mosquitto import new_password

        return NodeEndpoint({"kind": self.name, "host": host, "port": port, "username": peer_id,
                             "password_file": PASSWORD_FILE}, secrets={PASSWORD_FILE: new_password() + "\n"})

    def endpoints(self, settings: MqttPlan, peer_ids: list[str]) -> list[NodeEndpoint]:
        return [self.endpoint(pid, settings.host, settings.port) for pid in peer_ids]

    def plan_files(self, out: Path, configs: list, settings: MqttPlan, admin_dir: Path, admin_id: str) -> None:
        """The broker's passwd, ACL and mosquitto.conf in BROKER_DIR for the configs just written
        (their logins, prefix, network and port, so that overrides of those reach the ACL too),
        with the admin's own login (membership records; its password in `admin_dir`)."""
        from ..ops.mosquitto import BrokerPeer, write_admin_login, write_broker_files

        prefixes = {(c.network, c.transport.topic_prefix, c.transport.port) for c in configs}
        if len(prefixes) != 1:
            raise ConfigError(f"an mqtt plan needs one network id, topic_prefix and broker port, got "
                              f"{sorted(prefixes)}")
        ((network, prefix, port),) = prefixes
        for c in configs:
            if not (c.transport.username and c.transport.password):
                raise ConfigError(f"{c.source}: an mqtt plan needs transport.username and transport.password")
        peers = [BrokerPeer(c.transport.username, c.transport.password, tuple(n.id for n in c.neighbours))
                 for c in configs]
        write_broker_files(out / BROKER_DIR, peers, prefix=prefix, network=network, host=settings.host, port=port,
                           admin=write_admin_login(admin_dir, admin_id))

    # --- the network admin ----------------------------------------------------------------

    def admit_endpoint(self, plan, peer_id, neighbours, host, port) -> NodeEndpoint:
        """The plan's broker with a login of its own, added to the broker's files first (a refusal
        leaves nothing behind); what the nodes share (tls, topic_prefix, ...) the admin adds."""
        from ..ops.mosquitto import BrokerPeer, add_login

        t = plan.transport_config()
        ep = self.endpoint(peer_id, t.host, t.port)
        broker = plan.dir / BROKER_DIR
        if broker.exists():
            password = ep.secrets[PASSWORD_FILE].strip()
            add_login(broker, BrokerPeer(peer_id, password, tuple(neighbours)), prefix=t.topic_prefix,
                      network=plan.trust.network)
            ep.changed = broker
        return ep

    def revoked(self, plan, peer_id: str) -> Path | None:
        """Defence in depth (its updates are rejected anyway): its login and ACL lines go."""
        from ..ops.mosquitto import remove_login

        broker = plan.dir / BROKER_DIR
        if not broker.exists():
            return None
        remove_login(broker, peer_id, prefix=plan.transport_config().topic_prefix, network=plan.trust.network)
        return broker

    def rotated_admin(self, plan, admin_id: str) -> Path | None:
        """The retired admin's broker login goes, the successor's comes (its password replaces
        PLAN/admin/mqtt.password); the broker applies it on reload."""
        from ..ops.mosquitto import replace_admin_login, write_admin_login

        broker = plan.dir / BROKER_DIR
        if not broker.exists():
            return None
        replace_admin_login(broker, plan.admin.peer_id, write_admin_login(plan.admin_dir, admin_id),
                            prefix=plan.transport_config().topic_prefix, network=plan.trust.network)
        return broker

    def deliver(self, plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
        """Into each node's inbox with the admin's broker login (PLAN/admin/mqtt.password)."""
        from gossip.errors import TransportError
        from gossip.mqtt_transport import publish_to_inboxes

        from ..ops.mosquitto import ADMIN_PASSWORD

        secret = plan.admin_dir / ADMIN_PASSWORD
        try:
            password = secret.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{secret}: the admin's broker password is needed to deliver records over MQTT "
                              f"({exc.strerror}); use --no-send and deliver the record file yourself") from None
        t = plan.transport_config()
        try:
            done = asyncio.run(publish_to_inboxes(plan.admin.peer_id, plan.trust.network, data,
                                                  [n["peer_id"] for n in nodes], host=t.host, port=t.port,
                                                  username=plan.admin.peer_id, password=password, tls=t.tls,
                                                  ca_file=t.ca_file, prefix=t.topic_prefix))
        except TransportError as exc:
            raise ConfigError(f"{exc} (the record is kept: {plan.records})") from None
        return {n["node"]: done[n["peer_id"]] for n in nodes}


MQTT = MqttKind()
