"""`gossipfl relay start --config relay.toml`: a fleet relay on a small public host.

relay.toml:

    [identity]
    key = "relay.key"                  # its own Ed25519 key (gossipfl keygen --out relay.key)
    [network]
    trust = "trust.toml"               # the plan's trust list: the fleet's members (epoch 0)
    records = "admin/records"          # optional: a folder of the admin's membership records
    [relay]
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    max_reservations = 128             # and reservation_ttl, max_circuits, max_circuits_per_peer,
    circuit_bytes = 1073741824         # circuit_seconds: gossip/p2p/relay.py RelayLimits
    dial_back = true                   # answer members' reachability requests
    [metrics]
    listen = "127.0.0.1:9465"          # optional: Prometheus gossipfl_relay_* metrics

Who may use the relay follows the fleet: the trust list plus every record of `records` (each
verified against the admin key in the trust list, applied in epoch order; the folder is read
again every MEMBERSHIP_EVERY s, so `gossipfl fleet admit/revoke` apply when the folder is
synced to the relay host). A revoked member loses its reservation, its circuits and its
connection at once. Peers name the relay in `[transport] relays = ["/ip4/HOST/tcp/4001/p2p/ID"]`
(its PeerId is printed at start). Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from gossip.files import FileReadError, read_limited, read_limited_text
from gossip.identity import load_key
from gossip.p2p.relay import RelayLimits
from gossip.trust import load_trust_list

from ..errors import ConfigError

MEMBERSHIP_EVERY = 5.0
REPORT_EVERY = 60.0
LIMITS = tuple(f.name for f in fields(RelayLimits))

log = logging.getLogger("gossipfl.relay")


@dataclass
class RelayConfig:
    key: Path
    trust: Path
    listen: list[str]
    limits: RelayLimits
    records: Path | None = None
    dial_back: bool = True
    metrics: str | None = None


def load_relay_config(path: str | Path) -> RelayConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(read_limited_text(path, 1 << 20, "relay config"))
    except FileReadError as exc:
        raise ConfigError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML ({exc})") from None
    base = path.parent
    known = {"identity": {"key"}, "network": {"trust", "records"}, "relay": {"listen", "dial_back", *LIMITS},
             "metrics": {"listen"}}
    for table, value in doc.items():
        if table not in known or not isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table [{table}] (relay.toml has {', '.join(known)})")
        extra = sorted(set(value) - known[table])
        if extra:
            raise ConfigError(f"{path}: unknown field(s) {', '.join(extra)} in [{table}]")

    def get(table: str, key: str, typ, default=...):
        v = doc.get(table, {}).get(key, default)
        if v is ...:
            raise ConfigError(f"{path}: {table}.{key} is required")
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool) and typ is not bool):
            raise ConfigError(f"{path}: {table}.{key} must be {typ.__name__}, got {v!r:.60}")
        return v

    listen = get("relay", "listen", list, ["/ip4/0.0.0.0/tcp/4001"])
    if not listen or not all(isinstance(a, str) and a.startswith("/") for a in listen):
        raise ConfigError(f"{path}: relay.listen must be a list of multiaddrs like /ip4/0.0.0.0/tcp/4001")
    try:
        limits = RelayLimits(**{k: get("relay", k, int) for k in LIMITS if k in doc.get("relay", {})})
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    records = get("network", "records", str, None)
    return RelayConfig(key=base / get("identity", "key", str), trust=base / get("network", "trust", str),
                       listen=listen, limits=limits, records=base / records if records else None,
                       dial_back=get("relay", "dial_back", bool, True), metrics=get("metrics", "listen", str, None))


class FleetMembers:
    """The fleet's PeerIds: the trust list and the admin's records, read again when they change."""

    def __init__(self, cfg: RelayConfig):
        from ..runtime.membership import Membership

        trust = load_trust_list(cfg.trust)
        self.records = cfg.records
        self.members: set[str] = set(trust.peers)
        first = next(iter(trust.retired), trust.admin)  # the records folder holds the rotations since
        self.membership = Membership("", trust.network, first, self.members, {})
        self._seen: set[str] = set()

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.members

    def __iter__(self) -> Iterator[str]:  # with __len__: a Collection[str], what RelayService's `allowed` takes
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def refresh(self) -> bool:
        """Apply the records not seen yet, in epoch order; True when the members changed."""
        if self.records is None or not self.records.is_dir():
            return False
        before = set(self.members)
        for f in sorted(p for p in self.records.glob("*.msgpack") if p.name not in self._seen):
            try:
                offer = self.membership.offer(read_limited(f, 1 << 16, "membership record"), persist=False)
            except FileReadError as exc:
                log.warning("%s", exc)
                continue
            self._seen.add(f.name)
            if offer.reason in ("bad_membership", "retired_admin", "refused_membership"):
                log.warning("membership record %s refused: %s", f.name, offer.detail)
        return self.members != before


async def run_relay(cfg: RelayConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM), following the fleet's membership."""
    from gossip.p2p.relay_service import RelayService

    members = FleetMembers(cfg)
    members.refresh()
    relay = RelayService(load_key(cfg.key), cfg.listen, members, limits=cfg.limits, dial_back=cfg.dial_back)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller stops us
            pass
    await relay.start()
    exporter = _Exporter(cfg.metrics, relay) if cfg.metrics else None
    for addr in relay.addresses():
        log.info("relay listening on %s (%d members)", addr, len(members.members))
    print(f"relay {relay.identity.peer_id} listening on {', '.join(relay.addresses())}", flush=True)
    waited = 0.0
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            waited += 1.0
            if exporter is not None:
                exporter.update()
            if waited % MEMBERSHIP_EVERY < 1.0 and members.refresh():
                log.info("membership changed: %d members", len(members.members))
                relay.set_allowed(members)
            if waited % REPORT_EVERY < 1.0:
                log.info("relay: %s", relay.metrics())
    finally:
        if exporter is not None:
            exporter.stop()
        await relay.close()


class _Exporter:
    """Prometheus gossipfl_relay_* gauges, refreshed every second from relay.metrics()."""

    def __init__(self, listen: str, relay):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        from ..config.settings import split_host_port

        try:
            host, port = split_host_port(listen)
        except ValueError as exc:
            raise ConfigError(f"metrics.listen {exc}") from None
        self.relay, registry = relay, CollectorRegistry(auto_describe=True)
        names = {"reservations": "Reservations in force", "circuits": "Circuits open",
                 "circuits_total": "Circuits opened since start", "bytes": "Bytes relayed since start",
                 "connected_peers": "Members connected", "refused_connections": "Connections refused (strangers)"}
        self.gauges = {k: Gauge(f"gossipfl_relay_{k}", text, registry=registry) for k, text in names.items()}
        self.refused = Gauge("gossipfl_relay_refused", "Requests refused, by reason", ["reason"], registry=registry)
        self.server, _ = start_http_server(port, host, registry=registry)

    def update(self) -> None:
        m = self.relay.metrics()
        for k, g in self.gauges.items():
            g.set(m.get(k, 0))
        for reason, n in m.get("refused", {}).items():
            self.refused.labels(reason).set(n)

    def stop(self) -> None:
        self.server.shutdown()
