"""What attackers without a trusted key (and one with a neighbour's key) cost a real peer.

Four `gossipfl peer start` processes on a libp2p ring on 127.0.0.1 (a small digits MLP,
rounds paced at one a second), attacking node-0 one attack at a time; then a separate
4-peer MQTT ring through a Mosquitto started here, without and with the plan's ACL. For
every attack, over a fixed window: node-0's rounds per second next to its attack-free rate
measured in the same run, the honest neighbours' updates it accepted per round, and its
peak RSS next to the attack-free peak. Goals (issue 11): at least 80% of the attack-free
rate, every honest neighbour's update accepted in every round, peak RSS within 50 MB.

    python bench/hostile.py [--quick] [--only NAME,...] [--window SECONDS] [--workdir DIR]

Every attack runs in its own process (tests/attackers.py, tests/mqtt_attackers.py), bounded in count and time, and stops by itself; every process
is stopped at the end, also on errors. Prints a table, then one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.netfixtures import PeerProcesses

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN = [32]
NETWORK = "hostile"
SETTINGS = {"model": {"options": {"hidden": HIDDEN}}, "train": {"local_steps": 10, "lr": 0.1},
            "round": {"deadline": 3.0, "interval": 1.0}, "aggregation": {"rule": "median", "f": 1}}
HONEST = 2  # node-0's neighbours on a ring
GOAL_RATIO, GOAL_RSS_MB = 0.8, 50.0
WARM_ROUNDS = 3  # full rounds (every neighbour accepted) before the attack-free window
START_TIMEOUT = 300.0
ATTACKER_READY_TIMEOUT = 90.0
SETTLE = 3.0  # seconds between one attack's end and the next window
BOMB_MB = 4.2
ROUND_LINE = re.compile(r"^round (\d+): .*?(\d+)/(\d+) neighbours accepted")


# --- attacks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One row of the table: `spec(ring)` gives the attacker processes' specs (none: attack-free)."""

    name: str
    ring: str  # "libp2p", "mqtt" (no ACL) or "mqtt+acl"
    spec: Callable[[Ring], list[dict]]
    quick: bool = False


def _key(ring, label="node-1") -> str:
    return str(ring.node(label).dir / "peer.key")


ATTACKS = [
    Attack("none", "libp2p", lambda r: [], quick=True),
    Attack("stream flood (8 unknown keys x 64 streams)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "streams", "options": {"identities": 8, "per_identity": 64, "declared": 1000}}],
        quick=True),
    Attack("trickle (200 fresh identities x 2 streams)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "streams", "options": {"identities": 200, "per_identity": 2, "declared": 1000}}]),
    Attack("past the yamux window (2 unknown keys, 256 MB each)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "window", "options": {"identities": 2, "megabytes": 256}}]),
    Attack("past the yamux window (node-1's key, 256 MB)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "window", "options": {"identities": 1, "megabytes": 256}, "key": _key(r)}]),
    Attack("connection flood (300 fresh identities)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "conn_flood", "options": {"connections": 300, "parallel": 32}}]),
    Attack("connection churn (250/s TCP connections that never send a byte)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "stall_rate", "options": {"rate": 250.0, "connections": 250 * 30}}]),
    Attack("connection churn (500/s TCP connections that never send a byte)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "stall_rate", "options": {"rate": 500.0, "connections": 500 * 30}}]),
    Attack("connection churn (1500/s TCP connections that never send a byte)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "stall_rate", "options": {"rate": 1500.0, "connections": 1500 * 30}}]),
    Attack(f"msgpack bombs ({BOMB_MB} MB nested, 50 fresh identities)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "junk",
         "options": {"identities": 50, "size": int(BOMB_MB * 2**20), "body": "nested"}}]),
    Attack("msgpack bombs (node-1's key, max message size)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "junk",
         "options": {"size": r.max_message, "body": "nested"}, "key": _key(r)}], quick=True),
    Attack("64 MB junk messages (node-1's key)", "libp2p", lambda r: [
        {"kind": "libp2p", "attack": "junk", "options": {"size": 64 << 20}, "key": _key(r)}], quick=True),
    Attack("none, after the attacks above", "libp2p", lambda r: []),
    Attack("none", "mqtt", lambda r: [], quick=True),
    Attack("topic spoof as node-1 (anonymous, 50 msg/s)", "mqtt", lambda r: [r.spoof()], quick=True),
    Attack("none", "mqtt+acl", lambda r: []),
    Attack("topic spoof as node-1 (anonymous, 50 msg/s)", "mqtt+acl", lambda r: [r.spoof()]),
    Attack("topic spoof as node-1 (node-2's login, 50 msg/s)", "mqtt+acl", lambda r: [r.spoof(login="node-2")]),
]


def attacker_main(spec: dict) -> None:
    """The attacker process: import everything, say READY, attack for `seconds`, print counts."""
    import logging

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # our half-protocols make it complain
    options = dict(spec.get("options", {}))
    if spec["kind"] == "mqtt":
        from tests.mqtt_attackers import spoof

        password = Path(spec["password_file"]).read_text().strip() if spec.get("password_file") else None
        print("READY", flush=True)
        result = spoof("127.0.0.1", spec["port"], spec["topic"], spec["seconds"], password=password, **options)
    else:

        from tests import attackers

        if spec.get("key"):
            from gossip.identity import load_key

            options["seed"] = load_key(spec["key"]).seed
        print("READY", flush=True)
        result = attackers.run(spec["attack"], spec["target"], spec["seconds"], **options)
    print(json.dumps(result), flush=True)


class Attacker:
    """One attacker process; its stdout is read on a thread (READY, then one JSON line)."""

    def __init__(self, spec: dict, log: Path):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, "--attacker", json.dumps(spec)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.ready, self.lines = threading.Event(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.strip() == "READY":
                self.ready.set()
        self.ready.set()

    def result(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"error": f"did not stop within {timeout:.0f} s after its window (killed)"}
        time.sleep(0.1)  # the reader's last line
        for line in reversed(self.lines):
            if line.startswith("{"):
                return json.loads(line)
        return {"error": f"exited with {self.proc.returncode} without counts"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- measuring the victim ------------------------------------------------------------------


class RssSampler:
    """node-0's resident memory every 50 ms from /proc, plus the kernel's high-water mark
    (VmHWM) so that a spike between two samples still counts."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def status_mb(self) -> dict[str, float]:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f
                        if line.startswith(("VmRSS", "VmHWM"))}
        except (OSError, ValueError, IndexError):
            return {}

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            rss = self.status_mb().get("VmRSS")
            if rss is not None:
                self.samples.append((time.time(), rss))

    def peak(self, t0: float, t1: float, hwm_before: float | None) -> float | None:
        inside = [mb for t, mb in self.samples if t0 <= t <= t1]
        hwm = self.status_mb().get("VmHWM")
        if hwm is not None and hwm_before is not None and hwm > hwm_before + 0.5:
            inside.append(hwm)  # the all-time peak rose during this window
        return max(inside) if inside else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def rounds_in(log_text: str, t0: float, t1: float) -> list[tuple[float, int, int]]:
    """(time, round, accepted) of every round a peer's JSON log reports finished in [t0, t1]."""
    out = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        m = ROUND_LINE.match(str(rec.get("msg", "")))
        if m and t0 <= rec.get("ts", 0) <= t1:
            out.append((rec["ts"], int(m.group(1)), int(m.group(2))))
    return out


# --- a ring of peers -----------------------------------------------------------------------


@dataclass
class Ring:
    """Four peer processes on a ring (libp2p, or MQTT through a broker started here)."""

    kind: str
    tmp: Path
    stack: ExitStack
    nodes: list = field(default_factory=list)
    broker_port: int | None = None
    max_message: int = 0
    procs: PeerProcesses | None = None

    def node(self, label: str):
        return next(n for n in self.nodes if n.label == label.removeprefix("node-"))

    @property
    def victim(self):
        return self.nodes[0]

    def target(self) -> str:
        v = self.victim
        return f"/ip4/127.0.0.1/tcp/{v.port}/p2p/{v.peer_id}"

    def spoof(self, login: str | None = None) -> dict:
        """An MQTT client that is not node-1 publishing into node-0's inbox under node-1's id."""
        from gossip.mqtt_transport import inbox_topic
        from peer.config.parse import load_config

        cfg = load_config(self.victim.config)
        spec = {"kind": "mqtt", "port": self.broker_port, "options": {"rate": 50.0, "count": 5_000},
                "topic": inbox_topic(cfg.transport.topic_prefix, NETWORK, self.victim.peer_id, self.node("1").peer_id)}
        if login:
            other = load_config(self.node(login).config).transport
            secret = self.tmp / f"{login}.password"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(other.password)
            spec["options"]["username"] = other.username
            spec["password_file"] = str(secret)
        return spec


def start_ring(kind: str, tmp: Path, stack: ExitStack) -> Ring:
    """Plan, (broker,) start four peers; node-0 last so that it dials neighbours already up."""
    from gossip.envelope import max_message_size
    from peer.learning.model import FlatModel, build_model
    from peer.ops.plan import BROKER_DIR, write_plan
    from tests.netfixtures import PeerProcesses, free_ports, mosquitto_broker
    from topology import from_spec

    tmp.mkdir(parents=True)
    ring = Ring(kind, tmp, stack)
    transport = "libp2p" if kind == "libp2p" else "mqtt"
    if kind == "mqtt":  # an anonymous broker: no password file, no ACL
        ring.broker_port = stack.enter_context(mosquitto_broker(tmp))
        if ring.broker_port is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    elif kind == "mqtt+acl":
        (ring.broker_port,) = free_ports(1)
    ring.nodes = write_plan(from_spec("ring:4"), tmp / "plan", network_id=NETWORK, transport=transport,
                            transport_options={"ports": free_ports(4), "broker": f"127.0.0.1:{ring.broker_port or 1883}"}, overrides=SETTINGS, draw=False)
    if kind == "mqtt+acl":
        conf = tmp / "plan" / BROKER_DIR / "mosquitto.conf"
        if not conf.exists():
            raise RuntimeError(f"the mqtt plan wrote no {conf}")
        if stack.enter_context(mosquitto_broker(tmp, config=conf)) is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    ring.max_message = max_message_size("raw-f32", FlatModel(build_model("mlp", 64, 10, {"hidden": HIDDEN})).size)
    ring.procs = PeerProcesses(tmp)
    stack.callback(ring.procs.stop_all)
    for n in ring.nodes[1:] + ring.nodes[:1]:
        ring.procs.start(n.label, n.config, "--log-format", "json")
    end = time.time() + START_TIMEOUT
    while True:
        full = [a for _, _, a in rounds_in(ring.procs.log(ring.victim.label), 0, float("inf")) if a == HONEST]
        if len(full) >= WARM_ROUNDS:
            return ring
        dead = [name for name, p in ring.procs.procs.items() if p.poll() is not None]
        if dead or time.time() > end:
            why = f"{dead} exited" if dead else f"node-0 had no {WARM_ROUNDS} full rounds in {START_TIMEOUT:.0f} s"
            raise RuntimeError(f"{kind} ring did not start: {why}\n" + ring.procs.log((dead or ["0"])[0])[-2000:])
        time.sleep(0.5)


def measure(ring: Ring, attack: Attack, window: float, sampler: RssSampler) -> dict:
    """Start the attack's processes, wait until all are ready, measure `window` seconds."""
    attackers = []
    try:
        for i, spec in enumerate(attack.spec(ring)):
            spec = {**spec, "seconds": window, "target": ring.target() if ring.kind == "libp2p" else None}
            attackers.append(Attacker(spec, ring.tmp / f"attacker-{len(list(ring.tmp.glob('attacker-*')))}-{i}.log"))
        deadline = time.time() + ATTACKER_READY_TIMEOUT
        for a in attackers:
            if not a.ready.wait(max(0.0, deadline - time.time())):
                raise RuntimeError(f"an attacker of {attack.name!r} did not start")
        hwm = sampler.status_mb().get("VmHWM")
        t0 = time.time()
        time.sleep(window)
        t1 = time.time()
        counts = [a.result(timeout=60.0) for a in attackers]
        t_end = time.time()
    finally:
        for a in attackers:
            a.stop()
    rounds = rounds_in(ring.procs.log(ring.victim.label), t0, t1)
    accepted = [a for _, _, a in rounds]
    neighbours = {n.label: len(rounds_in(ring.procs.log(n.label), t0, t1)) / (t1 - t0) for n in ring.nodes[1:]}
    alive = ring.procs.procs[ring.victim.label].poll() is None
    return {"attack": attack.name, "ring": ring.kind, "seconds": round(t1 - t0, 2), "rounds": len(rounds),
            "rounds_per_s": len(rounds) / (t1 - t0), "accepted_min": min(accepted, default=0),
            "accepted_mean": sum(accepted) / len(accepted) if accepted else 0.0,
            "peak_rss_mb": sampler.peak(t0, t_end, hwm), "victim_alive": alive,
            "neighbours_rounds_per_s": {k: round(v, 3) for k, v in neighbours.items()}, "attacker": counts}


def run_ring(kind: str, attacks: list[Attack], window: float, tmp: Path) -> list[dict]:
    """One ring: its attack-free window first, then each attack; rows relative to that baseline."""
    rows = []
    with ExitStack() as stack:
        ring = start_ring(kind, tmp / kind.replace("+", "-"), stack)
        sampler = RssSampler(ring.procs.procs[ring.victim.label].pid)
        stack.callback(sampler.stop)
        for attack in attacks:
            if rows and not rows[-1]["victim_alive"]:
                rows.append({"attack": attack.name, "ring": kind, "error": "not run: the victim had exited"})
                continue
            try:
                rows.append(measure(ring, attack, window, sampler))
            except RuntimeError as exc:
                rows.append({"attack": attack.name, "ring": kind, "error": str(exc), "victim_alive": True})
            time.sleep(SETTLE)
    base = next((r for r in rows if r["attack"] == "none" and "error" not in r), None)
    for r in rows:
        if "error" in r or base is None:
            continue
        r["ratio"] = r["rounds_per_s"] / base["rounds_per_s"] if base["rounds_per_s"] else None
        if r["peak_rss_mb"] is not None and base["peak_rss_mb"] is not None:
            r["rss_delta_mb"] = r["peak_rss_mb"] - base["peak_rss_mb"]
        r["goal_met"] = (r["victim_alive"] and r["ratio"] is not None and r["ratio"] >= GOAL_RATIO
                         and r["accepted_min"] >= HONEST and r.get("rss_delta_mb") is not None
                         and r["rss_delta_mb"] <= GOAL_RSS_MB)
    return rows


# --- output --------------------------------------------------------------------------------


def attacker_summary(counts: list[dict]) -> str:
    """The attacker's own view in a few words (what the victim let it do)."""
    parts = []
    for c in counts:
        if "error" in c:
            parts.append(c["error"][:40])
        elif "login" in c:
            parts.append(f"{c['published']} sent, {c['acked']} acked, {c['not_authorized']} denied" if c["connected"]
                         else f"login refused ({c['refused']})")
        else:
            keys = ("sessions", "handshakes", "refused", "streams", "messages", "bytes", "closed_by_target")
            parts.append(", ".join(f"{k.replace('_by_target', '')} {c[k]}" for k in keys if k in c))
    return "; ".join(parts) or "-"


def print_rows(rows: list[dict]) -> None:
    from bench._table import print_table

    table = []
    for r in rows:
        if "error" in r:
            table.append([r["ring"], r["attack"], "-", "-", "-", "-", "-", "no", r["error"].splitlines()[0][:60]])
            continue
        rss = r["peak_rss_mb"]
        table.append([r["ring"], r["attack"], f"{r['rounds_per_s']:.2f}",
                      f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-",
                      f"{r['accepted_min']} / {r['accepted_mean']:.2f}",
                      f"{rss:.0f}" if rss is not None else "-",
                      f"{r['rss_delta_mb']:+.0f}" if r.get("rss_delta_mb") is not None else "-",
                      ("yes" if r.get("goal_met") else "no") if r["attack"] != "none" else "(base)",
                      attacker_summary(r["attacker"]) if r["victim_alive"] else "VICTIM EXITED"])
    print_table(["ring", "attack on node-0", "rounds/s", "ratio", "accepted/round min / mean", "peak RSS MB",
                 "delta MB", "goal met?", "attacker's counts"], table,
                title=f"node-0 of a 4-peer ring under attack (goals: ratio >= {GOAL_RATIO}, "
                      f"{HONEST}/{HONEST} honest updates every round, peak RSS within {GOAL_RSS_MB:.0f} MB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows, fewer attacks (about two minutes)")
    p.add_argument("--only", help="comma-separated attack names or prefixes (e.g. none,stream,mqtt:topic)")
    p.add_argument("--window", type=float, help="seconds per attack (default 25, quick 8)")
    p.add_argument("--workdir", help="keep plans and logs here (default: a temporary folder, removed)")
    p.add_argument("--attacker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.attacker:
        attacker_main(json.loads(a.attacker))
        return 0
    window = a.window or (8.0 if a.quick else 25.0)
    if not 1.0 <= window <= 120.0:
        p.error("--window must be between 1 and 120 seconds")
    chosen = [x for x in ATTACKS if x.quick or not a.quick]
    if a.only:
        wanted = [w.strip() for w in a.only.split(",") if w.strip()]
        chosen = [x for x in chosen if x.name == "none" or any(
            x.name.startswith(w) or f"{x.ring}:{x.name}".startswith(w) for w in wanted)]
        if not any(x.name != "none" for x in chosen) and "none" not in wanted:
            p.error(f"--only {a.only}: no such attack; names: {sorted({x.name for x in ATTACKS})}")
        attacked = {x.ring for x in chosen if x.name != "none"} or {"libp2p"}  # `--only none`: libp2p
        chosen = [x for x in chosen if x.ring in attacked]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="hostile-"))
    started, rows = time.time(), []
    try:
        for kind in ("libp2p", "mqtt", "mqtt+acl"):
            attacks = [x for x in chosen if x.ring == kind]
            if not attacks:
                continue
            try:
                rows += run_ring(kind, attacks, window, tmp)
            except RuntimeError as exc:
                rows += [{"attack": x.name, "ring": kind, "error": str(exc)} for x in attacks]
    finally:
        if not a.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    print_rows(rows)
    print(f"  accepted/round: node-0's {HONEST} honest neighbours' updates it accepted per round in the window "
          f"(min over rounds / mean); ratio and delta against the same ring's attack-free window; "
          f"{window:.0f} s windows, {time.time() - started:.0f} s in all.")
    figures = {"window_s": window, "quick": a.quick, "goals": {"ratio": GOAL_RATIO, "accepted_per_round": HONEST,
                                                               "rss_delta_mb": GOAL_RSS_MB},
               "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    from bench._table import emit_json

    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
