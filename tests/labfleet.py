"""Real `gossipfl peer start` processes in the network lab (tests/netlab.py), for the lab tests
and bench/fieldlab.py.

    fleet = LabFleet(lab, tmp_path, "ring:6", {"0": lab.public("g0"), ..., "3": site.host("g3")},
                     relay="0", overrides={...}, hole_punch=False)
    fleet.start()                      # every gateway, each inside its own namespace
    fleet.wait(lambda f: all(f.rounds(n) for n in f.labels), 90)
    fleet.status("3")                  # `gossipfl fleet status --json` run in g3's namespace
    fleet.stop(); fleet.verify()        # SIGTERM, then `gossipfl audit verify` of every log

The plan is written as `gossipfl topology plan` writes it (peer.ops.plan.write_plan, libp2p,
node i on port 4001 + i, metrics on 127.0.0.1:9100 + i), then each peer.toml is pointed at the
lab: it listens on its lab address (0.0.0.0 for those in `listen_any`: gateways whose address
will change), a neighbour on the public internet is named by its address there,
a neighbour behind NAT by its PeerId only (nobody can dial in: it is reached through the
relay), every gateway but the relay names the relay in `[transport] relays`, and the relay
gateway serves the fleet (`serve_relay = true`); or, with `relay_at`, every gateway names
the dedicated relay at `relay_at` (`gossipfl relay start`: start_relay()). Gateways on the public side say
`reachability = "public"`, those behind NAT "private" (what `peer init --enrol
--reachability` records for an enrolled one). Every wait is bounded; the lab kills what is
left at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gossip.identity import Identity, save_key
from peer.config.tomlwrite import dumps
from peer.ops.plan import write_plan
from topology import from_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BASE_PORT = 4001
METRICS_PORT = 9100
ROUND_RE = re.compile(r"round (\d+): .*?; (\d+)/(\d+) neighbours accepted")
# lean rounds: a few local steps of the default model, a short deadline, paced a little
OVERRIDES = {"train": {"local_steps": 3, "lr": 0.1}, "aggregation": {"rule": "mean", "f": 0},
             "round": {"deadline": 8.0, "interval": 1.0, "rounds": 0}, "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}}


@dataclass
class Round:
    round: int
    accepted: int
    neighbours: int


@dataclass
class Gateway:
    label: str
    host: object  # tests.netlab.Node
    dir: Path
    peer_id: str
    port: int
    neighbours: list[str] = field(default_factory=list)  # labels
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def config(self) -> Path:
        return self.dir / "peer.toml"

    @property
    def db(self) -> Path:
        return self.dir / "data" / "provenance.db"

    @property
    def behind_nat(self) -> bool:
        return self.host.role == "host" and self.host.site is not None


class LabFleet:
    def __init__(self, lab, tmp_path: Path, spec: str, hosts: dict[str, object], relay: str | None = None,
                 overrides: dict | None = None, hole_punch: bool = False, network: str = "fieldlab",
                 listen_any: tuple[str, ...] = (), relay_at=None):
        self.lab, self.tmp = lab, Path(tmp_path)
        self.plan = self.tmp / "plan"
        nodes = write_plan(from_spec(spec), self.plan, network_id=network, transport_options={"base_port": BASE_PORT},
                           overrides=overrides or OVERRIDES, draw=False)
        if {n.label for n in nodes} != set(hosts):
            raise ValueError(f"hosts for {sorted(hosts)}, the plan has {sorted(n.label for n in nodes)}")
        self.gateways = {n.label: Gateway(n.label, hosts[n.label], n.dir, n.peer_id, n.port) for n in nodes}
        self.relay, self.hole_punch, self.listen_any = relay, hole_punch, set(listen_any)
        self.network, self.relay_at = network, relay_at
        self.relay_identity = Identity.generate() if relay_at is not None else None
        self.relay_proc: subprocess.Popen | None = None
        self.relay_addr = (f"/ip4/{relay_at.address}/tcp/{BASE_PORT}/p2p/{self.relay_identity.peer_id}"
                           if relay_at is not None and self.relay_identity is not None else None)
        for g in self.gateways.values():
            self._point_at_lab(g)

    @property
    def labels(self) -> list[str]:
        return list(self.gateways)

    def addr(self, label: str) -> str:
        g = self.gateways[label]
        return f"/ip4/{g.host.address}/tcp/{g.port}/p2p/{g.peer_id}"

    def _point_at_lab(self, g: Gateway) -> None:
        doc = tomllib.loads(g.config.read_text())
        t = doc["transport"]
        t["listen"] = [f"/ip4/{'0.0.0.0' if g.label in self.listen_any else g.host.address}/tcp/{g.port}"]
        t["reachability"] = "private" if g.behind_nat else "public"
        t["hole_punch"] = self.hole_punch
        if self.relay_addr is not None:
            t["relays"] = [self.relay_addr]
        elif self.relay is not None:
            if g.label == self.relay:
                t["serve_relay"] = True
            else:
                t["relays"] = [self.addr(self.relay)]
        by_id = {o.peer_id: o for o in self.gateways.values()}
        for nb in doc["network"]["neighbours"]:
            other = by_id[nb["id"]]
            g.neighbours.append(other.label)
            if other.behind_nat:
                nb.pop("addr", None)  # nobody dials in: known by its PeerId, reached through the relay
            else:
                nb["addr"] = self.addr(other.label)
        g.config.write_text(dumps(doc))

    # -- running ---------------------------------------------------------------------------

    def start(self, labels: list[str] | None = None) -> None:
        for label in labels or self.labels:
            g = self.gateways[label]
            g.log = self.tmp / f"{label}.log"
            with open(g.log, "ab") as out:
                g.proc = self.lab.run(g.host, [sys.executable, "-m", "gossipfl", "peer", "start", "--config",
                                               str(g.config)], stdout=out, stderr=out, env=ENV, cwd=str(ROOT))

    def text(self, label: str) -> str:
        log = self.gateways[label].log
        return log.read_text(errors="replace") if log is not None and log.exists() else ""

    def rounds(self, label: str, since: int = 0) -> list[Round]:
        """The rounds the gateway logged (from byte `since` of its log on)."""
        return [Round(*map(int, m.groups())) for m in ROUND_RE.finditer(self.text(label)[since:])]

    def mark(self) -> dict[str, int]:
        """Where each log ends now (pass an entry as `since` to see only what came after)."""
        return {label: len(self.text(label)) for label in self.labels}

    def aborted(self) -> dict[str, int]:
        """Gateways whose process ended, with the exit code."""
        return {label: g.proc.returncode for label, g in self.gateways.items()
                if g.proc is not None and g.proc.poll() is not None}

    def wait(self, predicate: Callable[[LabFleet], bool], timeout: float, what: str = "the fleet") -> None:
        end = time.monotonic() + timeout
        while not predicate(self):
            if self.aborted():
                raise AssertionError(f"gateways ended: {self.aborted()}\n{self.tails()}")
            if time.monotonic() > end:
                raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.tails()}")
            time.sleep(0.5)

    def tails(self, n: int = 1500) -> str:
        return "\n".join(f"--- {label}\n{self.text(label)[-n:]}" for label in self.labels)

    def status(self, label: str) -> dict:
        """The gateway's row of `gossipfl fleet status --json`, run in its namespace."""
        g = self.gateways[label]
        r = self.lab.exec(g.host, [sys.executable, "-m", "gossipfl", "fleet", "status", "--json", str(g.config)],
                          timeout=120, env=ENV, cwd=str(ROOT))
        (row,) = json.loads(r.stdout)
        return row

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every gateway; their exit codes (None: killed after 20 s)."""
        live = [g for g in self.gateways.values() if g.proc is not None and g.proc.poll() is None]
        for g in live:
            os.killpg(g.proc.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for g in self.gateways.values():
            if g.proc is None:
                continue
            try:
                codes[g.label] = g.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(g.proc.pid, signal.SIGKILL)
                g.proc.wait()
                codes[g.label] = None
        return codes

    def verify(self) -> subprocess.CompletedProcess:
        """`gossipfl audit verify` of every gateway's log (run after stop)."""
        return subprocess.run([sys.executable, "-m", "gossipfl", "audit", "verify",
                               *(str(g.db) for g in self.gateways.values())],
                              capture_output=True, text=True, timeout=120, env=ENV, cwd=str(ROOT))

    def start_relay(self) -> subprocess.Popen:
        """The dedicated fleet relay at `relay_at` (`gossipfl relay start`, the plan's trust list)."""
        assert self.relay_at is not None and self.relay_identity is not None, "LabFleet(relay_at=...) has no relay"
        folder = self.tmp / "relay"
        folder.mkdir(exist_ok=True)
        save_key(self.relay_identity, folder / "relay.key")
        (folder / "relay.toml").write_text(f'[identity]\nkey = "relay.key"\n[network]\ntrust = "{self.plan}/trust.toml"\n'
                                           f'[relay]\nlisten = ["/ip4/0.0.0.0/tcp/{BASE_PORT}"]\n')
        with open(self.tmp / "relay.log", "ab") as out:
            self.relay_proc = self.lab.run(self.relay_at, [sys.executable, "-m", "gossipfl", "relay", "start",
                                                           "--config", str(folder / "relay.toml")],
                                           stdout=out, stderr=out, env=ENV, cwd=str(ROOT))
        return self.relay_proc

    # -- enrolment -------------------------------------------------------------------------

    def cli(self, where, *args: str) -> subprocess.CompletedProcess:
        """`gossipfl ARGS` run inside the lab node `where` (to its end)."""
        return self.lab.exec(where, [sys.executable, "-m", "gossipfl", *args], timeout=120, check=False,
                             env=ENV, cwd=str(ROOT))

    def enrol(self, label: str, host, neighbours: list[str], admin_host) -> subprocess.CompletedProcess:
        """A gateway at `host` makes its own key and enrolment request (`peer init --enrol`, its
        reachability as the lab places it); the admin, at `admin_host` on the public side, admits
        it into the running fleet (`fleet admit --request`: the record goes to every gateway it
        can reach, they pass it on); the gateway copies the folder the admin wrote and the trust
        list beside its key, and its operator points it at the lab (the relay). Returns the
        admit's outcome; the gateway is then in `gateways`, not started."""
        site = self.tmp / f"site-{label}"
        own = site / f"gw-{label}"
        behind_nat = host.role == "host" and host.site is not None
        port = BASE_PORT + len(self.gateways)  # no node of the plan has it (the plan checks ports plan-wide)
        r = self.cli(host, "peer", "init", "--dir", str(own), "--enrol", self.network, "--name", label,
                     "--reachability", "private" if behind_nat else "public",
                     *(() if behind_nat else ("--addr", f"/ip4/{host.address}/tcp/{port}")))
        if r.returncode != 0:
            raise AssertionError(f"peer init --enrol: {r.stdout}{r.stderr}")
        admitted = self.cli(admin_host, "fleet", "admit", str(self.plan), "--request", str(own / "enrolment.json"),
                            "--neighbours", ",".join(neighbours),
                            *(("--host", host.address, "--port", str(port)) if behind_nat else ()))
        if admitted.returncode != 0:
            return admitted
        node = json.loads((self.plan / "plan.json").read_text())["nodes"][-1]
        folder = (self.plan / node["config"]).parent
        for f in folder.iterdir():
            if f.is_file():
                shutil.copy(f, own / f.name)
        shutil.copy(self.plan / "trust.toml", site / "trust.toml")
        (own / "data").mkdir(exist_ok=True)
        g = Gateway(label, host, own, node["peer_id"], port)
        self.gateways[label] = g
        self._point_at_lab(g)
        return admitted
