"""Reading a running fleet: one row per peer from its metrics endpoint (HTTP scrape of
`[metrics] listen`) or its retained MQTT status. Whatever a peer or broker sends is hostile
input: bounded reads, parsed as numbers or dropped; an unreachable peer is an offline row
with the reason, never an exception."""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gossip.mqtt_transport import status_topic

from ..config.parse import PeerConfig, load_config, split_host_port
from ..errors import ConfigError
from ..runtime import metrics as m
from ..transports.mqtt import MqttConfig
from .mosquitto import DASHBOARD_PASSWORD, DASHBOARD_USER

MAX_SCRAPE = 1 << 20  # bytes of one metrics page
MAX_STATUS = 64 * 1024  # bytes of one MQTT status
MAX_LINKS = 256  # neighbours' links read from one peer
PREFERRED = ("accuracy", "loss")  # the eval metric shown, in this order; else the first one
BROKER_DIR = "broker"  # peer.ops.plan.BROKER_DIR (not imported from there: it imports torch)


@dataclass
class Member:
    """One peer of the fleet as its peer.toml describes it."""

    name: str
    peer_id: str
    config: Path
    metrics: str | None  # HOST:PORT of its Prometheus endpoint
    cfg: PeerConfig
    revoked_epoch: int | None = None  # the plan says the admin revoked it (at this epoch)


@dataclass(frozen=True)
class Login:
    """A broker login that reads statuses: the plan's dashboard login (a peer's own login
    reads only its own status under the plan's ACL)."""

    username: str
    password: str


@dataclass
class PeerRow:
    name: str
    peer_id: str
    online: bool
    source: str  # "metrics", "mqtt" or "" (nothing answered)
    round: int | None = None
    metric: str | None = None  # the eval metric shown ("accuracy", "loss", a learner's own key)
    value: float | None = None
    loss: float | None = None  # training loss of the last round
    heard: int | None = None
    neighbours: int | None = None
    since_aggregation: float | None = None  # seconds
    rejected: int | None = None
    error: str = ""
    eval: dict[str, float] = field(default_factory=dict)
    reachability: str | None = None  # public | private | unknown (libp2p peers)
    links: dict[str, str] = field(default_factory=dict)  # neighbour -> direct | hole-punched | relayed | down
    personal: float | None = None  # [personalization]: the personal model's value of `metric`
    personal_eval: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --- which peers ---------------------------------------------------------------------------


def members(paths: list[str | Path]) -> list[Member]:
    """The peers named by a plan folder (its plan.json), a node folder (its peer.toml) or
    peer.toml files; a file that is not a valid config is a ConfigError naming it."""
    found: list[tuple[Path, str | None, int | None]] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "plan.json").is_file():
            found += _plan_nodes(p)
        elif p.is_dir() and (p / "peer.toml").is_file():
            found.append((p / "peer.toml", None, None))
        elif p.is_dir():
            configs = sorted(p.glob("*/peer.toml"))
            if not configs:
                raise ConfigError(f"{p}: no plan.json, peer.toml or */peer.toml in this folder")
            found += [(c, None, None) for c in configs]
        elif p.is_file():
            found.append((p, None, None))
        else:
            raise ConfigError(f"{p}: no such file or folder (give a plan folder or peer.toml files)")
    out, seen = [], set()
    for path, peer_id, revoked in found:
        cfg = load_config(path)
        pid = peer_id or _peer_id(cfg)
        if pid in seen:
            continue
        seen.add(pid)
        out.append(Member(cfg.name or pid[-8:], pid, path, cfg.metrics.listen, cfg, revoked))
    return out


def dashboard_login(paths: list[str | Path], username: str | None = None,
                    password_file: str | Path | None = None) -> Login | None:
    """The login that reads every status: `password_file` (with `username`, default the plan's
    DASHBOARD_USER) when given, else the plan's BROKER_DIR/DASHBOARD_PASSWORD found from a plan
    folder, a node folder or a node's peer.toml; None when there is none (each peer's own login
    is used then, which reads only that peer's status)."""
    from gossip.files import FileReadError, read_limited_text

    if password_file is None:
        if username is not None:
            raise ConfigError("--username needs --password-file (the dashboard login's password)")
        for p in map(Path, paths):
            start = p if p.is_dir() else p.parent
            for folder in (start, start.parent):
                if (folder / BROKER_DIR / DASHBOARD_PASSWORD).is_file():
                    password_file = folder / BROKER_DIR / DASHBOARD_PASSWORD
                    break
            if password_file is not None:
                break
        else:
            return None
    try:
        password = read_limited_text(password_file, 4096, "--password-file").rstrip("\r\n")
    except FileReadError as exc:
        raise ConfigError(str(exc)) from None
    if not password:
        raise ConfigError(f"{password_file}: empty (it holds the dashboard login's password)")
    return Login(username or DASHBOARD_USER, password)


def _plan_nodes(plan: Path) -> list[tuple[Path, str | None, int | None]]:
    try:
        doc = json.loads((plan / "plan.json").read_text())
        nodes = [(plan / n["config"], n.get("peer_id"), n.get("revoked_epoch")) for n in doc["nodes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{plan / 'plan.json'}: not a plan manifest ({exc})") from None
    return [(p, pid if isinstance(pid, str) else None, r if isinstance(r, int) else None) for p, pid, r in nodes]


def _peer_id(cfg: PeerConfig) -> str:
    from gossip.identity import load_key

    return load_key(cfg.key).peer_id


# --- rows from what peers publish (pure) ----------------------------------------------------


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error")  # metric names read as "smaller is better"


def per_gateway(rows: list[PeerRow]) -> dict | None:
    """The distribution over gateways of the model each serves (personal where it has one, else
    the shared one) in the metric they all show: worst, 10th percentile (of the worst side),
    median. None unless at least one gateway shows a value and all show the same metric."""
    names = {r.metric for r in rows if r.metric is not None}
    if len(names) != 1:
        return None
    metric = names.pop()
    served = [r.personal if r.personal is not None else r.value for r in rows if r.metric == metric]
    values = sorted(v for v in served if v is not None)
    if not values:
        return None
    if any(word in metric.lower() for word in LOWER_IS_BETTER):
        values.reverse()  # worst first
    k = len(values)
    return {"metric": metric, "gateways": k, "worst": values[0], "p10": values[int(0.1 * (k - 1))],
            "median": values[(k - 1) // 2] if k % 2 else (values[k // 2 - 1] + values[k // 2]) / 2}


def _shown(evals: dict[str, float]) -> tuple[str | None, float | None]:
    for key in PREFERRED:
        if key in evals:
            return key, evals[key]
    for key, value in evals.items():
        return key, value
    return None, None


def row_from_metrics(member: Member, text: str) -> PeerRow:
    """A row from a Prometheus text page (peer.runtime.metrics names)."""
    one: dict[str, float] = {}
    train: dict[str, float] = {}
    evals: dict[str, float] = {}
    personal: dict[str, float] = {}
    rejected = 0.0
    links: dict[str, str] = {}
    reach = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == m.LINK:
                if s.value == 1 and s.labels.get("kind") in m.LINK_KINDS and len(links) < MAX_LINKS:
                    links[s.labels.get("neighbour", "")[:m.MAX_KEY_LEN]] = s.labels["kind"]
            elif s.name == m.REACHABILITY:
                if s.value == 1 and s.labels.get("state") in m.REACHABILITY_STATES:
                    reach = s.labels["state"]
            elif s.name == m.TRAIN and "metric" in s.labels:
                train[s.labels["metric"]] = s.value
            elif s.name == m.EVAL and "metric" in s.labels:
                evals[s.labels["metric"]] = s.value
            elif s.name == m.PERSONAL_EVAL and "metric" in s.labels and len(personal) < m.MAX_METRIC_KEYS:
                personal[s.labels["metric"]] = s.value
            elif s.name == m.REJECTED:
                rejected += s.value if math.isfinite(s.value) else 0
            elif not s.labels:
                one[s.name] = s.value
    evals = {k: v for k, v in evals.items() if math.isfinite(v)}
    personal = {k: v for k, v in personal.items() if math.isfinite(v)}
    metric, value = _shown(evals)
    rnd = _number(one.get(m.ROUND))
    return PeerRow(member.name, member.peer_id, True, "metrics", None if rnd is None else int(rnd), metric, value,
                   _number(train.get("loss")), _int(one.get(m.HEARD)), _int(one.get(m.NEIGHBOURS)),
                   _number(one.get(m.SINCE_AGGREGATION)), int(rejected), eval=evals, reachability=reach,
                   links=links, personal=personal.get(metric) if metric else None, personal_eval=personal)


def _int(x) -> int | None:
    v = _number(x)
    return None if v is None else int(v)


def row_from_status(member: Member, status: dict, now: float | None = None) -> PeerRow:
    """A row from a peer's retained MQTT status (peer.runtime.metrics.PeerMetrics.status())."""
    now = time.time() if now is None else now
    evals = got if isinstance(got := status.get("eval"), dict) else {}
    evals = {str(k): v for k, v in evals.items() if _number(v) is not None}
    personal = got if isinstance(got := status.get("personal_eval"), dict) else {}
    personal = {str(k)[:m.MAX_KEY_LEN]: v for k, v in list(personal.items())[:m.MAX_METRIC_KEYS] if _number(v) is not None}
    metric, value = _shown(evals)
    last = _number(status.get("last_aggregation"))
    rejected = got if isinstance(got := status.get("rejected"), dict) else {}
    online = status.get("online") is True
    reason = got if isinstance(got := status.get("reason"), str) else ""
    links = got if isinstance(got := status.get("links"), dict) else {}
    links = dict(list({str(k)[:m.MAX_KEY_LEN]: v for k, v in links.items() if v in m.LINK_KINDS}.items())[:MAX_LINKS])
    reach = status.get("reachability") if status.get("reachability") in m.REACHABILITY_STATES else None
    return PeerRow(member.name, member.peer_id, online, "mqtt", _int(status.get("round")), metric, value,
                   _number(status.get("loss")), _int(status.get("neighbours_heard")), _int(status.get("neighbours")),
                   None if last is None else max(0.0, now - last),
                   int(sum(v for v in rejected.values() if _number(v) is not None)),
                   error="" if online else (reason[:80] or "offline"), eval=evals, reachability=reach, links=links,
                   personal=personal.get(metric) if metric else None, personal_eval=personal)


def offline(member: Member, error: str) -> PeerRow:
    """A peer that did not answer; one the plan says was revoked is shown as revoked."""
    if member.revoked_epoch is not None:
        error = f"revoked (epoch {member.revoked_epoch})"
    return PeerRow(member.name, member.peer_id, False, "", error=error)


# --- reading (I/O) --------------------------------------------------------------------------


def scrape(listen: str, timeout: float) -> str:
    """GET http://HOST:PORT/metrics, at most MAX_SCRAPE bytes."""
    host, port = split_host_port(listen)
    host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
        body = resp.read(MAX_SCRAPE + 1)
    if len(body) > MAX_SCRAPE:
        raise ValueError(f"more than {MAX_SCRAPE} bytes of metrics")
    return body.decode("utf-8")


def _scrape_row(member: Member, timeout: float) -> PeerRow:
    assert member.metrics is not None  # fleet_status scrapes only members with a metrics endpoint
    try:
        return row_from_metrics(member, scrape(member.metrics, timeout))
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return offline(member, f"metrics {member.metrics}: {getattr(reason, 'strerror', None) or reason}")
    except (ValueError, UnicodeDecodeError) as exc:
        return offline(member, f"metrics {member.metrics}: not a metrics page ({str(exc)[:80]})")


def _mqtt(cfg: PeerConfig) -> MqttConfig:
    assert isinstance(cfg.transport, MqttConfig)  # only peers whose transport.kind is mqtt read a broker
    return cfg.transport


def _broker_key(cfg: PeerConfig, login: Login | None) -> tuple:
    t = _mqtt(cfg)
    return (t.host, t.port, t.tls, t.ca_file) + ((t.username, t.password) if login is None else ())


async def read_statuses(group: list[Member], timeout: float, login: Login | None = None) -> dict[str, dict | str]:
    """The retained statuses of peers that share one broker: peer_id -> status dict, or an
    error string for all of them when the broker cannot be read. `login`: the dashboard's
    (else the first peer's own login, which the plan's ACL lets read only its own status)."""
    import aiomqtt

    t = _mqtt(group[0].cfg)
    username, password = (login.username, login.password) if login else (t.username, t.password)
    topics = {status_topic(_mqtt(mb.cfg).topic_prefix, mb.cfg.network, mb.peer_id): mb.peer_id for mb in group}
    out: dict[str, dict | str] = {}
    tls = ssl.create_default_context(cafile=t.ca_file) if t.tls else None
    try:
        async with asyncio.timeout(timeout):
            async with aiomqtt.Client(t.host, t.port, username=username, password=password, tls_context=tls,
                                      timeout=timeout) as client:
                for topic in topics:
                    await client.subscribe(topic, qos=0)
                async for msg in client.messages:
                    pid = topics.get(str(msg.topic))
                    payload = msg.payload
                    if pid is None or not isinstance(payload, bytes | bytearray) or len(payload) > MAX_STATUS:
                        continue
                    try:
                        status = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(status, dict):
                        out[pid] = status
                    if len(out) == len(topics):
                        break
    except TimeoutError:
        pass  # retained statuses arrive at once: the rest have none
    except aiomqtt.MqttError as exc:
        return {mb.peer_id: f"broker {t.host}:{t.port}: {exc}" for mb in group}
    return out


async def fleet_status(group: list[Member], timeout: float = 3.0, source: str = "auto",
                       login: Login | None = None) -> list[PeerRow]:
    """One row per member, in the members' order. `source`: "metrics" (HTTP), "mqtt"
    (status topics) or "auto" (metrics where a peer has an endpoint, else its MQTT status);
    `login`: the broker login that reads the statuses (dashboard_login)."""
    rows: dict[str, PeerRow] = {}
    by_http = [mb for mb in group if mb.metrics and source in ("auto", "metrics")]
    scrapes = [asyncio.to_thread(_scrape_row, mb, timeout) for mb in by_http]
    rest = [mb for mb in group if mb not in by_http]
    brokers: dict[tuple, list[Member]] = {}
    for mb in rest:
        if mb.cfg.transport.kind == "mqtt" and source in ("auto", "mqtt"):
            brokers.setdefault(_broker_key(mb.cfg, login), []).append(mb)
        else:
            rows[mb.peer_id] = offline(mb, "no [metrics] listen in its peer.toml" if source != "mqtt"
                                       else "not an mqtt peer")
    results = await asyncio.gather(*scrapes, *(read_statuses(g, timeout, login) for g in brokers.values()))
    for row in results[:len(by_http)]:
        assert isinstance(row, PeerRow)  # the first len(by_http) results are _scrape_row's
        rows[row.peer_id] = row
    now = time.time()
    for g, statuses in zip(brokers.values(), results[len(by_http):], strict=True):
        assert isinstance(statuses, dict)  # the rest are read_statuses'
        for mb in g:
            got = statuses.get(mb.peer_id)
            if isinstance(got, dict):
                rows[mb.peer_id] = row_from_status(mb, got, now)
            else:
                rows[mb.peer_id] = offline(mb, got or "no status on the broker")
    return [rows[mb.peer_id] for mb in group]
