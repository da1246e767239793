"""What a running peer tells its operator: Prometheus metrics and the MQTT status message.

One PeerMetrics per peer, with its own CollectorRegistry (several peers in one process, as
in the simulator and the tests, never share counters). The peer reports what happened
(`round_done`, `bytes_in`, `bytes_out`, `rejected`); the HTTP endpoint (prometheus-client's
own server, on its own thread) and `status()` (the dict the transport publishes) read the
same numbers, so a dashboard and `gossipfl fleet status` never disagree.

Nothing data-dependent leaves a gateway by default: the status and the metrics carry the
round, health, counts and epsilon. The learner's training and evaluation numbers (they are
computed on the gateway's private data, without noise) are published only when the operator
opts in (`[metrics] share_learning_metrics = true`), and never once the privacy budget is spent.

Metric names (every one prefixed `gossipfl_`): see METRIC_NAMES; `gossipfl fleet status`
reads them back (peer.ops.status).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from ..config.parse import split_host_port
from ..errors import PeerError

log = logging.getLogger("gossipfl.metrics")

MAX_METRIC_KEYS = 32  # keys of a learner's train/eval dict exported as labels (bounded cardinality)
MAX_KEY_LEN = 64
MAX_REASONS = 64  # distinct rejection reasons (the verifier's codes are far fewer)
LOOP_LAG_INTERVAL = 0.5
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
STATUS_VERSION = 1

# what peer.ops.status reads back from a scrape (the exposition names, with the _total of counters)
ROUND = "gossipfl_round"
EPSILON = "gossipfl_privacy_epsilon"
BUDGET = "gossipfl_privacy_epsilon_budget"
TRAIN = "gossipfl_train_metric"
EVAL = "gossipfl_eval_metric"
PERSONAL_EVAL = "gossipfl_personal_eval_metric"  # [personalization]: the model the gateway serves
HEARD = "gossipfl_neighbours_heard"
NEIGHBOURS = "gossipfl_neighbours"
SINCE_AGGREGATION = "gossipfl_seconds_since_aggregation"
REJECTED = "gossipfl_updates_rejected_total"
INFO = "gossipfl_peer_info"
LINK = "gossipfl_link"  # {neighbour, kind}: 1 for how each neighbour is connected now
DROPPED = "gossipfl_transport_dropped_total"
REACHABILITY = "gossipfl_reachability"  # {state}: 1 for what the peer knows of its own reachability
LINK_KINDS = ("direct", "hole-punched", "relayed", "down")
REACHABILITY_STATES = ("public", "private", "unknown")
LINKS_INTERVAL = 2.0


def metric_dict(metrics) -> dict[str, float]:
    """A learner's metrics (a dict of floats, or a dataclass of numbers) as {key: float},
    bounded: at most MAX_METRIC_KEYS printable keys of at most MAX_KEY_LEN characters."""
    if metrics is None:
        return {}
    if dataclasses.is_dataclass(metrics) and not isinstance(metrics, type):
        metrics = dataclasses.asdict(metrics)
    out: dict[str, float] = {}
    for key, value in dict(metrics).items():
        if len(out) >= MAX_METRIC_KEYS:
            break
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN or not key.isprintable():
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def learning_status(train: Mapping[str, float], evals: Mapping[str, float],
                    personal: Mapping[str, float] | None = None) -> dict:
    """The status fields that carry the learner's numbers (published only when shared);
    `personal`: the personal model's held-out numbers, where the peer has one."""
    return {"loss": _json_number(train["loss"]) if "loss" in train else None,
            "train": {k: _json_number(v) for k, v in train.items()},
            "eval": {k: _json_number(v) for k, v in evals.items()},
            **({} if personal is None else {"personal_eval": {k: _json_number(v) for k, v in personal.items()}})}


def _json_number(x: float) -> float | None:
    """JSON has no NaN or Infinity: a diverged loss is reported as null."""
    return x if math.isfinite(x) else None


class PeerMetrics:
    """The metrics of one peer. Thread-safe (prometheus-client locks its values); the
    loop-lag task runs on the peer's event loop."""

    def __init__(self, name: str, peer_id: str, *, neighbours: int = 0, names: Mapping[str, str] | None = None,
                 share_learning_metrics: bool = False, personal: bool = False):
        self.name, self.peer_id, self.names = name, peer_id, dict(names or {})
        self.share_learning = share_learning_metrics
        self.registry = r = CollectorRegistry(auto_describe=True)
        Info("gossipfl_peer", "This peer: its plan name and PeerId", registry=r).info(
            {"name": name, "peer_id": peer_id})
        self._round = Gauge(ROUND, "The round this peer last completed", registry=r)
        self._accepted = Counter("gossipfl_updates_accepted", "Neighbour updates verified and kept",
                                 registry=r)
        self._rejected = Counter("gossipfl_updates_rejected", "Messages rejected, by reason (rate limits too)",
                                 ["reason"], registry=r)
        self._bytes_in = Counter("gossipfl_bytes_received", "Bytes of messages received", registry=r)
        self._bytes_out = Counter("gossipfl_bytes_sent", "Bytes of updates delivered to neighbours", registry=r)
        self._round_seconds = Histogram("gossipfl_round_seconds", "Duration of a round, training included",
                                        buckets=ROUND_BUCKETS, registry=r)
        self._lag = Histogram("gossipfl_event_loop_lag_seconds", "How late the event loop woke a sleeping task",
                              buckets=LAG_BUCKETS, registry=r)
        self._lag_last = Gauge("gossipfl_event_loop_lag_last_seconds", "The last event-loop lag sample",
                               registry=r)
        self._train = self._eval = self._personal = None  # registered only when shared: absent names, not empty ones
        self.personal = personal  # [personalization] local_head or ditto: the gateway serves a personal model
        if share_learning_metrics:
            self._train = Gauge(TRAIN, "The learner's training metrics of the last round", ["metric"], registry=r)
            self._eval = Gauge(EVAL, "The learner's held-out metrics of the last round (of the fleet model the peer "
                               "sends from)", ["metric"], registry=r)
            if personal:
                self._personal = Gauge(PERSONAL_EVAL, "The personal model's held-out metrics of the last round (the "
                                       "model the gateway serves)", ["metric"], registry=r)
        self._heard = Gauge(HEARD, "Neighbours whose update was accepted in the last round", registry=r)
        self._neighbours = Gauge(NEIGHBOURS, "Neighbours this peer has", registry=r)
        self._neighbours.set(neighbours)
        self.neighbours = neighbours
        self._aggregations = Counter("gossipfl_aggregations", "Rounds that aggregated (not kept own model)",
                                     registry=r)
        self._epsilon = Gauge(EPSILON, "Differential privacy: epsilon spent so far "
                              "(absent when privacy is off)", registry=r)
        self._budget = Gauge(BUDGET, "Differential privacy: the epsilon budget (+Inf: none; absent when "
                             "privacy is off)", registry=r)
        self._exhausted = Gauge("gossipfl_privacy_budget_exhausted", "1 once the privacy budget is spent and the "
                                "peer stopped training and sending", registry=r)
        self._since = Gauge(SINCE_AGGREGATION, "Seconds since the last aggregation (NaN: none yet)", registry=r)
        self._since.set_function(self.seconds_since_aggregation)
        self._link = Gauge(LINK, "1 for how each neighbour is connected now: direct, hole-punched (a direct "
                           "connection DCUtR upgraded), relayed (a circuit through a fleet relay) or down",
                           ["neighbour", "kind"], registry=r)
        self._reach = Gauge(REACHABILITY, "1 for this peer's reachability: public (others can dial it), private "
                            "(behind NAT: reached through relays) or unknown", ["state"], registry=r)
        self._dropped = Counter("gossipfl_transport_dropped", "Received messages the transport dropped before "
                                "verification, by reason (MQTT: a sender over its share, the inbox over its total)",
                                ["reason"], registry=r)
        self._dropped_seen: dict[str, int] = {}
        self.connectivity: dict = {}  # {"reachability": ..., "links": {neighbour name: kind}} last seen
        self._links_task: asyncio.Task | None = None
        self.last_aggregation: float | None = None  # time.time() of the last aggregation
        self._rejected_seen: dict[str, int] = {}
        self._status: dict = {}
        self._lock = threading.Lock()
        self._server: Any = None  # prometheus-client's WSGI server once started
        self._lag_task: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None

    # --- serving ---------------------------------------------------------------------

    def start(self, listen: str | None, *, loop_lag: bool = True, transport=None) -> None:
        """Serve the metrics on HOST:PORT (None: no HTTP endpoint) and, from inside a running
        event loop, start sampling its lag and (a transport that reports its `connectivity()`,
        libp2p) watching its links. A port in use is a one-line PeerError."""
        if listen is not None and self._server is None:
            host, port = split_host_port(listen)
            try:
                self._server, _thread = start_http_server(port, host, registry=self.registry)
            except OSError as exc:
                raise PeerError(f"metrics.listen = {listen!r}: cannot listen there: {exc.strerror or exc}") from None
            self.address = self._server.server_address[:2]
            log.info("metrics on http://%s:%d/metrics", host, self.address[1])
        if loop_lag and self._lag_task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: no lag to measure
                self._lag_task = asyncio.get_running_loop().create_task(self.watch_loop())
        if transport is not None and self._links_task is None:
            with contextlib.suppress(RuntimeError):
                self._links_task = asyncio.get_running_loop().create_task(self.watch_transport(transport))

    def stop(self) -> None:
        if self._links_task is not None:
            self._links_task.cancel()
            self._links_task = None
        if self._lag_task is not None:
            self._lag_task.cancel()
            self._lag_task = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def watch_loop(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        """Sleep `interval` again and again; how much later than asked the loop woke us is its
        lag (a long verification or a blocking call on the loop shows up here)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - asked - interval)
            self._lag.observe(lag)
            self._lag_last.set(lag)

    async def watch_transport(self, transport, interval: float = LINKS_INTERVAL) -> None:
        """Every `interval` seconds: what the transport dropped before the peer saw it (`dropped`,
        a Counter by reason: MQTT's inbox bounds) and how it reaches each neighbour
        (`connectivity()`: libp2p). A transport with neither is not watched."""
        probe, dropped = getattr(transport, "connectivity", None), getattr(transport, "dropped", None)
        if probe is None and dropped is None:
            return
        while True:
            try:
                if dropped is not None:
                    self.sync_dropped(dropped)
                if probe is not None:
                    self.set_connectivity(await probe())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a transport going away: the next probe says more
                log.debug("connectivity probe failed: %r", exc)
            await asyncio.sleep(interval)

    def sync_dropped(self, totals: Mapping[str, int]) -> None:
        """Bring gossipfl_transport_dropped_total{reason} up to the transport's running totals."""
        for reason, total in sorted(dict(totals).items())[:MAX_REASONS]:
            missing = int(total) - self._dropped_seen.get(reason, 0)
            if missing > 0:
                self._dropped_seen[reason] = int(total)
                self._dropped.labels(reason=str(reason)[:MAX_KEY_LEN]).inc(missing)

    def set_connectivity(self, report: Mapping) -> dict:
        """The transport's report (reachability, links: {PeerId: kind or None}) into the gauges,
        the status and the log (a line whenever the reachability or a neighbour's link changes)."""
        state = report.get("reachability")
        state = state if state in REACHABILITY_STATES else "unknown"
        raw = report.get("links")
        links = raw if isinstance(raw, Mapping) else {}
        named = {self.names.get(p, p): (k if k in LINK_KINDS else "down") for p, k in sorted(links.items())}
        before = self.connectivity
        now = {"reachability": state, "links": named}
        if now == before:
            return now
        if state != before.get("reachability"):
            log.info("reachability: %s", state)
        for n, kind in named.items():
            if kind != before.get("links", {}).get(n):
                log.info("link to %s: %s", n, kind)
        self._reach.clear()
        self._reach.labels(state=state).set(1)
        self._link.clear()
        for n, kind in named.items():
            self._link.labels(neighbour=n, kind=kind).set(1)
        with self._lock:
            self.connectivity = now
        return now

    # --- what the peer reports -------------------------------------------------------

    def set_neighbours(self, n: int) -> None:
        """Membership changed how many neighbours this peer has."""
        self.neighbours = n
        self._neighbours.set(n)

    def bytes_in(self, n: int) -> None:
        self._bytes_in.inc(n)

    def bytes_out(self, n: int) -> None:
        self._bytes_out.inc(n)

    def rejected(self, reason: str, n: int = 1) -> None:
        """Count rejections as they happen (or let round_done sync the totals)."""
        with self._lock:
            if reason not in self._rejected_seen and len(self._rejected_seen) >= MAX_REASONS:
                reason = "other"
            self._rejected_seen[reason] = self._rejected_seen.get(reason, 0) + n
        self._rejected.labels(reason=reason).inc(n)

    def sync_rejected(self, totals: Mapping[str, int]) -> None:
        """Bring the per-reason counters up to running totals (RoundState.total_rejected)."""
        for reason, total in sorted(totals.items()):
            missing = int(total) - self._rejected_seen.get(str(reason), 0)
            if missing > 0:
                self.rejected(str(reason), missing)

    def round_done(self, round: int, *, train=None, eval=None, personal=None, heard: Iterable[str] = (),
                   aggregated: bool = False,
                   seconds: float | None = None, rejected_total: Mapping[str, int] | None = None,
                   note: str = "", privacy: Mapping | None = None) -> dict:
        """One round is over: update every metric; returns the status message (see status()).
        The learner's numbers are kept to the gateway unless shared (and the budget not spent)."""
        share = self.share_learning and not (privacy and privacy.get("exhausted"))
        train_m, eval_m = (metric_dict(train), metric_dict(eval)) if share else ({}, {})
        personal_m = metric_dict(personal) if share and self.personal else {}
        heard = sorted(heard)
        if rejected_total is not None:
            self.sync_rejected(rejected_total)
        self._round.set(round)
        self._accepted.inc(len(heard))
        self._heard.set(len(heard))
        for gauge, values in ((self._train, train_m), (self._eval, eval_m), (self._personal, personal_m)):
            if gauge is None:
                continue
            gauge.clear()  # a key the learner stopped reporting is not shown stale
            for key, value in values.items():
                gauge.labels(metric=key).set(value)
        if seconds is not None:
            self._round_seconds.observe(seconds)
        if aggregated:
            self.last_aggregation = time.time()
            self._aggregations.inc()
        if privacy:
            self._epsilon.set(math.inf if privacy.get("epsilon") is None else privacy["epsilon"])
            self._budget.set(math.inf if privacy.get("budget") is None else privacy["budget"])
            self._exhausted.set(1 if privacy.get("exhausted") else 0)
        status = {
            "v": STATUS_VERSION, "name": self.name, "peer_id": self.peer_id, "online": True, "round": round,
            **(learning_status(train_m, eval_m, personal_m if self.personal else None) if share else {}),
            "neighbours_heard": len(heard), "neighbours": self.neighbours,
            "heard": [self.names.get(p, p) for p in heard], "aggregated": aggregated,
            "last_aggregation": self.last_aggregation, "rejected": self.rejected_counts(), "note": note,
            **({"privacy": dict(privacy)} if privacy else {}), **self.connectivity, "ts": time.time()}
        with self._lock:
            self._status = status
        return dict(status)

    # --- reading ---------------------------------------------------------------------

    def seconds_since_aggregation(self) -> float:
        last = self.last_aggregation
        return math.nan if last is None else max(0.0, time.time() - last)

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected_seen)

    def status(self) -> dict:
        """The status message of the last round (before any: name, PeerId, online)."""
        with self._lock:
            if self._status:
                return {**self._status, "rejected": dict(self._rejected_seen)}
            return {"v": STATUS_VERSION, "name": self.name, "peer_id": self.peer_id, "online": True,
                    "round": None, "ts": time.time()}
