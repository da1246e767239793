"""The libp2p transport under attack, with real processes: a victim process hosting one
Libp2pTransport (tests/libp2p_target.py) and attack clients (tests/attackers.py) in their own
processes; honest neighbours run in the test process. All on 127.0.0.1, all bounded in time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from gossip.identity import Identity, save_key
from gossip.libp2p_transport import Libp2pTransport

from .netfixtures import ROOT

MAX_SIZE = 10_000  # the victim's exact maximum message size: read deadline about 5 s
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Victim:
    """tests/libp2p_target.py in its own process; `got` collects (sender, size) per delivery."""

    def __init__(self, allow: list[str], port: int = 0):
        self.identity = Identity.generate()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.libp2p_target", "--seed", self.identity.seed.hex(), "--max-size",
             str(MAX_SIZE), "--port", str(port), "--allow", *allow],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, text=True)
        self.got: list[tuple[str, int]] = []
        self.counters: dict | None = None  # the transport's counters, printed when it stops
        self.addr: str | None = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                parts = line.split()
                if parts[:1] == ["ADDR"]:
                    self.addr = parts[1]
                    ready.set()
                elif parts[:1] == ["GOT"]:
                    self.got.append((parts[1], int(parts[2])))
                elif parts[:1] == ["COUNTERS"]:
                    self.counters = json.loads(line.split(" ", 1)[1])
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or self.addr is None:
            self.stop()
            raise RuntimeError("the victim process did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        return kb / 1024

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(15)
        except Exception:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def trusted(tmp_path):
    """Two trusted identities: `a` as a key file for attack processes, `b` for honest sends."""
    a, b = Identity.generate(), Identity.generate()
    save_key(a, tmp_path / "a.key")
    return a, b, tmp_path / "a.key"


@pytest.fixture
def victim_of(request):
    victims = []

    def make(allow, port=0):
        v = Victim([i.peer_id for i in allow], port)
        victims.append(v)
        return v

    yield make
    for v in victims:
        v.stop()


def attack(name: str, target: str, seconds: float, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.attackers", name, "--target", target, "--seconds",
                             str(seconds), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV,
                            text=True)


def result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


class Neighbour:
    """An honest trusted neighbour in this process (its own asyncio loop per `send`)."""

    def __init__(self, identity: Identity, victim: Victim):
        self.identity, self.victim = identity, victim

    def send(self, data: bytes, timeout: float = 10.0) -> bool:
        """Start a transport, send until delivered (the victim reports it) or `timeout`, stop."""

        async def go():
            t = Libp2pTransport(self.identity, ["/ip4/127.0.0.1/tcp/0"],
                                {self.victim.identity.peer_id: self.victim.addr})
            await t.start()
            try:
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    t._backoff.clear()
                    before = len(self.victim.got)
                    if await t.send(self.victim.identity.peer_id, data):
                        for _ in range(40):
                            if len(self.victim.got) > before:
                                return True
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)
                return False
            finally:
                await t.close()

        return asyncio.run(go())


@pytest.mark.timeout(120)
def test_unknown_identities_get_no_stream_and_their_connections_are_closed(trusted, victim_of):
    a, b, key = trusted
    victim = victim_of([a, b])
    # a budget long enough for six handshakes on a loaded machine: refused ones end the attack early
    streams = result(attack("streams", victim.addr, 40, "--identities", "6", "--per-identity", "2"))
    assert streams["refused"] == 6 and streams["sessions"] == 0 and streams["streams"] == 0, streams
    # plaintext would let anyone claim a neighbour's PeerId (its public key is in the PeerId): not offered
    spoof = result(attack("plaintext", victim.addr, 40, "--claim", b.peer_id))
    assert not spoof["secured"] and spoof["streams"] == 0, spoof
    assert victim.got == []
    assert Neighbour(b, victim).send(b"honest")
    assert victim.got == [(b.peer_id, 6)]


@pytest.mark.timeout(120)
def test_a_trickling_neighbour_is_reset_at_the_deadline_without_delaying_another(trusted, victim_of):
    a, b, key = trusted
    victim = victim_of([a, b])
    trickler = attack("streams", victim.addr, 30, "--key", str(key), "--identities", "1", "--per-identity", "3",
                      "--declared", "1000")
    time.sleep(3)  # the trickle is under way: two streams open, the third reset at once
    honest = Neighbour(b, victim)
    for i in range(3):
        assert honest.send(b"update %d" % i, timeout=5)
    out = result(trickler)
    assert out["streams"] + out["stream_failures"] == 3 and out["sessions"] == 1, out
    # both trickling streams were reset by the victim (the read deadline) before the attack's 30 s
    assert out["reset_by_target"] + out["stream_failures"] == 3, out
    assert out["bytes"] < 2 * 30, out
    assert [s for s, _ in victim.got] == [b.peer_id] * 3


@pytest.mark.timeout(120)
def test_a_window_ignoring_sender_is_closed_and_memory_stays_bounded(trusted, victim_of):
    a, b, key = trusted
    victim = victim_of([a, b])
    before = victim.rss_mb()
    trusted_push = attack("window", victim.addr, 20, "--key", str(key), "--identities", "2", "--megabytes", "256")
    stranger_push = attack("window", victim.addr, 20, "--identities", "2", "--megabytes", "256")
    peak = before
    while trusted_push.poll() is None or stranger_push.poll() is None:
        peak = max(peak, victim.rss_mb())
        time.sleep(0.1)
    t, s = result(trusted_push), result(stranger_push)
    assert t["sessions"] == 2 and t["closed_by_target"] == 2, t
    assert s["sessions"] == 0 and s["refused"] == 2, s
    assert peak - before < 50, (before, peak)
    assert Neighbour(a, victim).send(b"still here")  # the offender may reconnect and behave


@pytest.mark.timeout(120)
def test_declaring_or_sending_more_than_max_size_is_reset_and_closed(trusted, victim_of):
    a, b, key = trusted
    victim = victim_of([a, b])
    over = result(attack("oversize", victim.addr, 10, "--key", str(key), "--declared", str(MAX_SIZE + 1),
                         "--send", str(MAX_SIZE + 1)))
    assert over["sessions"] == 1 and over["stream_reset"] and over["closed_by_target"], over
    longer = result(attack("overlong", victim.addr, 10, "--key", str(key), "--size", "1000", "--extra", "100"))
    assert longer["sessions"] == 1 and longer["stream_reset"] and longer["closed_by_target"], longer
    assert victim.got == []  # neither the oversized nor the overlong message was delivered
    exact = result(attack("junk", victim.addr, 2, "--key", str(key), "--size", str(MAX_SIZE), "--messages", "5"))
    assert exact["messages"] == 5 and not exact["closed_by_target"], exact  # exactly max_size is fine
    assert {s for s, n in victim.got} == {a.peer_id} and {n for s, n in victim.got} == {MAX_SIZE}


@pytest.mark.timeout(120)
def test_a_stolen_key_flooding_messages_is_cut_off_and_the_others_are_not(trusted, victim_of):
    from gossip.libp2p_transport import COOLDOWN, MESSAGE_BURST, MESSAGE_RATE

    a, b, key = trusted
    victim = victim_of([a, b])
    flood = result(attack("junk", victim.addr, 8, "--key", str(key), "--size", "1000", "--body", "nested"))
    # a burst (and what the rate refills while a slow machine runs the attack) is read, then the
    # connection is closed: not thousands of messages decrypted
    allowed = MESSAGE_BURST + MESSAGE_RATE * flood["elapsed"] + 4
    assert flood["closed_by_target"] == 1 and flood["messages"] <= allowed, flood
    assert Neighbour(b, victim).send(b"unaffected")
    time.sleep(COOLDOWN)
    assert Neighbour(a, victim).send(b"cooled down")  # the key's owner is not locked out for long


@pytest.mark.timeout(240)
def test_a_restarted_neighbour_reconnects_under_a_connection_flood(trusted, victim_of):
    a, b, key = trusted
    victim = victim_of([a, b])
    honest = Neighbour(b, victim)
    assert honest.send(b"before")  # then its transport stops: the neighbour "restarts"
    # 1,000 fresh identities: long enough that the flood still runs when the neighbour is back
    flood = attack("conn_flood", victim.addr, 40, "--connections", "1000", "--parallel", "32")
    stall = attack("stall", victim.addr, 40, "--connections", "100")
    time.sleep(1)
    assert flood.poll() is None and stall.poll() is None  # the flood is still running
    assert honest.send(b"after restart", timeout=10)
    assert flood.poll() is None  # ... and was still running while the neighbour reconnected
    f, s = result(flood), result(stall)
    assert f["sessions"] == 0 and f["handshakes"] + f["refused"] >= 300, f
    assert s["opened"] == 100 and s["closed_by_target"] == 100, s  # stalled handshakes are dropped
    # after the flood the host still accepts new connections
    assert Neighbour(a, victim).send(b"after the flood")
    assert [m for m in victim.got] == [(b.peer_id, 6), (b.peer_id, 13), (a.peer_id, 15)]


class SteadyNeighbour:
    """An honest neighbour with one long-lived transport, sending a small update every `every` s
    from its own thread and loop until stopped; counts sends that succeeded and failed."""

    def __init__(self, identity: Identity, victim: Victim, every: float = 0.05):
        self.identity, self.victim, self.every = identity, victim, every
        self.ok = self.failed = 0
        self.started, self.stopping = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self.started.wait(60), "the neighbour did not start"

    async def _run(self) -> None:
        t = Libp2pTransport(self.identity, ["/ip4/127.0.0.1/tcp/0"], {self.victim.identity.peer_id: self.victim.addr})
        await t.start()
        try:
            while not await t.send(self.victim.identity.peer_id, b"first"):
                await asyncio.sleep(0.2)
            self.started.set()
            while not self.stopping.is_set():
                if await t.send(self.victim.identity.peer_id, b"steady"):
                    self.ok += 1
                else:
                    self.failed += 1
                await asyncio.sleep(self.every)
        finally:
            self.started.set()
            await t.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)


@pytest.mark.timeout(180)
def test_connection_churn_never_reaches_the_protocol_and_established_neighbours_keep_sending(trusted, victim_of):
    """Issue 21: TCP connections that never send a byte, 500 a second, stalled a peer's established
    neighbours during the flood and for seconds after it. Each one cost a trio task and the start
    of a handshake on the thread that carries every connection, and the listen queue overflowed,
    so the kernel kept completing half-open ones long after the flood. Now they are accepted and
    closed beside trio (gossip/p2p/acceptor.py) and never start a handshake."""
    a, b, key = trusted
    victim = victim_of([a, b])
    neighbour = SteadyNeighbour(b, victim)
    try:
        churn = result(attack("stall_rate", victim.addr, 6, "--rate", "1000", "--connections", "6000",
                              "--linger", "30"))
        during = neighbour.ok
        assert Neighbour(a, victim).send(b"a new connection after the churn")
    finally:
        neighbour.stop()
    victim.stop()
    assert churn["opened"] >= 3000 and churn["still_open"] == 0, churn  # the victim closed every one
    counters = victim.counters
    # only the honest connections started a handshake: b's one or two, a's one
    assert counters is not None and counters["handshakes"] <= 4, counters
    assert counters["dropped_silent"] >= churn["opened"] - 10, (counters, churn)
    assert neighbour.failed == 0 and during > 0, (neighbour.ok, neighbour.failed)
    assert sum(1 for s, _ in victim.got if s == b.peer_id) == neighbour.ok + 1  # every update arrived


@pytest.mark.timeout(240)
def test_the_host_keeps_accepting_after_hundreds_of_closed_connections(trusted, victim_of):
    """py-libp2p's inbound path held one of 250 slots per connection until the host stopped,
    even after the connection closed; then every inbound connection was refused."""
    a, b, key = trusted
    victim = victim_of([a, b])
    churn = result(attack("churn", victim.addr, 180, "--key", str(key), "--connections", "260"), timeout=200)
    assert churn["sessions"] == 260 and churn["refused"] == 0, churn
    assert Neighbour(b, victim).send(b"still accepting")


def test_allowed_defaults_to_the_neighbours_and_may_be_a_live_predicate():
    a, b = Identity.generate(), Identity.generate()
    t = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {b.peer_id: None})
    assert t.is_allowed(b.peer_id) and not t.is_allowed(a.peer_id)
    members: set[str] = set()
    t = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {}, allowed=lambda pid: pid in members)
    assert not t.is_allowed(b.peer_id)
    members.add(b.peer_id)  # read at call time: fleet membership changes are seen
    assert t.is_allowed(b.peer_id)
    t = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {}, allowed=lambda pid: 1 / 0)
    assert not t.is_allowed(b.peer_id)  # a failing predicate trusts nobody
    assert Libp2pTransport(a, [], {}, max_size=10_000).read_deadline < \
        Libp2pTransport(a, [], {}, max_size=10_000_000).read_deadline
