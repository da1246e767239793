"""The network lab (tests/netlab.py) with real traffic: Python sockets opened inside the lab's
namespaces, and processes run there. What is blocked is shown by connections that cannot
succeed (dropped SYNs time out, unroutable ones fail at once), never by a sleep."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .netlab import Lab, require_lab, sweep_leftovers

ROOT = Path(__file__).resolve().parents[1]
PORT = 9000
SO_RCVBUFFORCE = 33  # Linux; root may raise the receive buffer past rmem_max


def listener(lab: Lab, node, port: int = PORT, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = lab.socket(node, type=kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        s.listen()
    s.settimeout(20)
    return s


def connect(lab: Lab, node, address: str, port: int = PORT, timeout: float = 10.0) -> socket.socket:
    """A socket of `node` connected to address:port (the connection must succeed)."""
    s = lab.socket(node)
    s.settimeout(timeout)
    s.connect((address, port))
    s.settimeout(20)
    return s


def attempt(lab: Lab, node, address: str, port: int = PORT, timeout: float = 1.0) -> str:
    """What a connection from `node` meets: "connected", "refused" (a RST: somebody answered),
    "unreachable" (an ICMP error: no route) or "timeout" (dropped without a word, as a NAT
    drops what nobody inside asked for)."""
    s = lab.socket(node)
    s.settimeout(timeout)
    try:
        s.connect((address, port))
        return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "unreachable"
        raise
    finally:
        s.close()


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# -- NAT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_a_host_behind_nat_reaches_the_internet_but_nobody_reaches_in(lab, nat):
    relay = lab.public("relay")
    gateway = lab.site("home", nat=nat).host("gw")
    assert gateway.address.startswith("10.") and gateway.public_address.startswith("172.16.")

    server = listener(lab, relay)
    out = connect(lab, gateway, relay.address)
    conn, seen = server.accept()
    assert seen[0] == gateway.public_address  # masqueraded to the router's public address
    out.sendall(b"hello")
    assert recv_exactly(conn, 5) == b"hello"

    listener(lab, gateway, 9001)  # listens behind the NAT; nothing outside can reach it
    assert attempt(lab, relay, gateway.public_address, 9001) == "timeout"  # dropped, not refused
    assert attempt(lab, relay, gateway.address, 9001) == "unreachable"  # 10.x is not routed
    assert out.send(b"!") == 1 and recv_exactly(conn, 1) == b"!"  # the outbound connection lives on


def test_two_hosts_at_two_sites_cannot_connect_directly(lab):
    a = lab.site("a", nat="cone").host("ga")
    b = lab.site("b", nat="cone").host("gb")
    listener(lab, a)
    listener(lab, b)
    for src, dst in ((a, b), (b, a)):
        assert attempt(lab, src, dst.address) == "unreachable"
        assert attempt(lab, src, dst.public_address) == "timeout"


def test_two_hosts_at_one_site_talk_over_their_lan(lab):
    site = lab.site("office")
    one, two = site.host("one"), site.host("two")
    server = listener(lab, two)
    connect(lab, one, two.address)
    assert server.accept()[1][0] == one.address  # not NATed: same LAN


def punch(lab: Lab, relay, gateways, timeout: float):
    """TCP hole punching as DCUtR does it: each gateway learns its public endpoint from a
    rendezvous server on the relay, then both dial each other's observed endpoint at once
    from the same local port (a simultaneous open)."""
    rendezvous = listener(lab, relay, 7000)
    local_ports = [40001, 40002]
    observed, kept = [], []
    for gateway, port in zip(gateways, local_ports, strict=True):
        s = lab.socket(gateway)
        kept.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", port))
        s.connect((relay.address, 7000))
        observed.append(rendezvous.accept()[1])
    results: list[socket.socket | None] = [None, None]

    def dial(i: int) -> None:
        s = lab.socket(gateways[i])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", local_ports[i]))
        s.settimeout(timeout)
        try:
            s.connect(observed[1 - i])
            results[i] = s
        except OSError:
            s.close()

    threads = [threading.Thread(target=dial, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return observed, results


def test_tcp_hole_punching_goes_through_cone_nats(lab):
    relay = lab.public("relay")
    gateways = [lab.site("a", nat="cone").host("ga"), lab.site("b", nat="cone").host("gb")]
    observed, (sa, sb) = punch(lab, relay, gateways, timeout=15.0)
    assert [port for _, port in observed] == [40001, 40002]  # the NAT kept the ports
    assert sa is not None and sb is not None
    sa.sendall(b"punched")
    assert recv_exactly(sb, 7) == b"punched"
    assert sb.getpeername()[0] == gateways[0].public_address


def test_tcp_hole_punching_fails_through_symmetric_nats(lab):
    relay = lab.public("relay")
    gateways = [lab.site("a", nat="symmetric").host("ga"), lab.site("b", nat="symmetric").host("gb")]
    observed, results = punch(lab, relay, gateways, timeout=3.0)
    assert [addr for addr, _ in observed] == [g.public_address for g in gateways]
    assert results == [None, None]  # a fresh random port per connection: no SYN ever matches


# -- link conditions --------------------------------------------------------------------------


def udp_count(lab: Lab, sender, receiver, n: int, lossy) -> int:
    """Send n numbered datagrams from `sender` to `receiver` (paced so that no queue overflows),
    then an end marker once the `lossy` node's link is lossless; returns how many distinct
    datagrams arrived."""
    rx = listener(lab, receiver, 9500, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    tx = lab.socket(sender, type=socket.SOCK_DGRAM)
    for i in range(n):
        tx.sendto(i.to_bytes(4, "big") + bytes(60), (receiver.address, 9500))
        if i % 100 == 99:
            time.sleep(0.002)  # pacing only: the veth queue holds a few hundred packets
    saved = lossy.link.loss
    lab.set_loss(lossy, 0)
    tx.sendto(b"end", (receiver.address, 9500))
    seen = set()
    while (data := rx.recv(100)) != b"end":
        seen.add(int.from_bytes(data[:4], "big"))
    lab.set_loss(lossy, saved)
    rx.close()
    tx.close()
    return len(seen)


def test_loss_drops_about_that_share_of_datagrams(lab):
    a, b = lab.public("a"), lab.public("b")
    n = 2000
    assert udp_count(lab, a, b, n, b) == n  # lossless: every datagram arrives
    lab.set_loss(b, 20)
    for sender, receiver in ((a, b), (b, a)):  # b's link loses 20 % each way
        arrived = udp_count(lab, sender, receiver, n, b)
        # binomial(2000, 0.8): sd 17.9 datagrams; +-120 is 6.7 sd (a false failure ~1e-10)
        assert abs(arrived - 0.8 * n) <= 120, (sender.name, arrived)
    lab.set_loss(b, 0)
    assert udp_count(lab, b, a, n, b) == n


def transfer(lab: Lab, sender, receiver, size: int) -> float:
    """Seconds to push `size` bytes over TCP from sender to receiver (until all were read)."""
    server = listener(lab, receiver, 9600)
    out = connect(lab, sender, receiver.address, 9600)
    conn, _ = server.accept()
    got = [0]

    def read() -> None:
        while got[0] < size and (chunk := conn.recv(1 << 16)):
            got[0] += len(chunk)

    start = time.monotonic()
    reader = threading.Thread(target=read)
    reader.start()
    out.sendall(bytes(size))
    reader.join(120)
    elapsed = time.monotonic() - start
    assert got[0] == size
    for s in (out, conn, server):
        s.close()
    return elapsed


def test_rate_limit_caps_throughput_and_lifts(lab):
    a = lab.public("a")
    gateway = lab.site("farm").host("gw")
    kbps = 2000
    rate = kbps * 125  # bytes per second
    lab.set_rate(gateway.site, kbps)
    size = 3 * rate
    elapsed = transfer(lab, gateway, a, size)
    # a token bucket passes at most its depth (one second of rate, as nft sizes it) plus the
    # rate for the time taken; with half of that again as margin the cap still shows
    assert size <= 1.5 * rate * (elapsed + 1), f"{size} bytes in {elapsed:.2f} s beats {kbps} kbit/s"
    lab.set_rate(gateway.site, None)
    elapsed = transfer(lab, gateway, a, 8 * rate)
    assert elapsed < (8 * rate / rate - 1) / 2, f"{8 * rate} bytes took {elapsed:.2f} s without the cap"


def test_partition_blocks_and_heal_restores(lab):
    relay = lab.public("relay")
    site = lab.site("plant")
    gateway, neighbour = site.host("gw"), site.host("nb")
    server = listener(lab, relay)
    out = connect(lab, gateway, relay.address)
    conn, _ = server.accept()

    lab.partition(site)
    out.sendall(b"during")  # queued and retransmitted by TCP until the site is back
    conn.sendall(b"down")
    assert attempt(lab, gateway, relay.address) == "timeout"
    assert attempt(lab, relay, site.public_address, 22) == "timeout"
    for s in (conn, out):  # two seconds on, nothing crossed in either direction
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(6)
        s.settimeout(20)
    lan = listener(lab, neighbour, 9100)
    connect(lab, gateway, neighbour.address, 9100)  # the LAN still works
    lan.close()

    lab.heal(site)
    assert recv_exactly(conn, 6) == b"during"
    assert recv_exactly(out, 4) == b"down"
    connect(lab, gateway, relay.address)


def test_link_flap_keeps_established_connections(lab):
    relay = lab.public("relay")
    gateway = lab.site("cell").host("gw")
    server = listener(lab, relay)
    out = connect(lab, gateway, relay.address)
    conn, _ = server.accept()

    def carrier(ns: str, ifname: str) -> bool:
        text = subprocess.run(["ip", "-n", ns, "link", "show", ifname], capture_output=True, text=True).stdout
        return "NO-CARRIER" not in text

    lab.link_down(gateway)  # the host's own link: its eth0 loses carrier
    wait_until(lambda: not carrier(gateway.ns, "eth0"), what="eth0 without carrier")
    assert attempt(lab, gateway, relay.address) != "connected"
    out.sendall(b"flap")
    lab.link_up(gateway)
    wait_until(lambda: carrier(gateway.ns, "eth0"), what="eth0 with carrier")
    assert recv_exactly(conn, 4) == b"flap"

    lab.link_down(gateway.site)  # the site's uplink
    assert attempt(lab, gateway, relay.address) != "connected"
    lab.link_up(gateway.site)
    connect(lab, gateway, relay.address)


def addresses(lab: Lab, node) -> list[str]:
    out = lab.exec(node, ["ip", "-4", "-o", "address", "show", "dev", node.link.near[1]]).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_readdress_moves_a_host_and_a_site_to_new_addresses(lab):
    relay = lab.public("relay")
    site = lab.site("mobile")
    gateway = site.host("gw")
    server = listener(lab, relay)

    old = gateway.address
    new = lab.readdress(gateway)
    assert new != old and addresses(lab, gateway) == [new]
    connect(lab, gateway, relay.address)
    assert server.accept()[1][0] == site.public_address

    old_public = site.public_address
    new_public = lab.readdress(site)  # a new cellular session: a new public address
    assert new_public != old_public and addresses(lab, site.router) == [new_public]
    connect(lab, gateway, relay.address)
    assert server.accept()[1][0] == new_public

    old_relay = relay.address
    lab.readdress(relay)
    assert attempt(lab, gateway, old_relay) != "connected"
    connect(lab, gateway, relay.address)


# -- life cycle -------------------------------------------------------------------------------


def test_teardown_removes_everything_when_the_body_raises():
    require_lab()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            relay = lab.public("relay")
            lab.site("home").host("gw")
            sleeper = lab.run(relay, ["sleep", "300"])
            prefix = f"netlab-{lab.id}-"
            assert {f"{prefix}{n}" for n in ("internet", "relay", "home", "gw")} <= netns_names()
            raise RuntimeError("boom")
    assert not [ns for ns in netns_names() if ns.startswith(prefix)]
    assert sleeper.poll() is not None


GRACEFUL = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path(sys.argv[1]).write_text("bye"), sys.exit(0)))
print("ready", flush=True)
time.sleep(300)
"""


def test_teardown_stops_processes_with_sigterm_first(tmp_path):
    require_lab()
    with Lab() as lab:
        peer = lab.run(lab.public("peer"), [sys.executable, "-c", GRACEFUL, tmp_path / "said"],
                       stdout=subprocess.PIPE, text=True)
        assert peer.stdout.readline() == "ready\n"
    assert peer.returncode == 0 and (tmp_path / "said").read_text() == "bye"


def test_two_labs_at_once_have_their_own_names_and_networks():
    require_lab()
    with Lab() as one, Lab() as two:
        relays = [one.public("relay"), two.public("relay")]
        gateways = [one.site("home").host("gw"), two.site("home").host("gw")]
        assert relays[0].address == relays[1].address  # same plan, separate internets
        assert not set(one.namespaces) & set(two.namespaces)
        servers = [listener(lab, relay) for lab, relay in zip((one, two), relays, strict=True)]
        for lab, gateway, server, word in zip((one, two), gateways, servers, (b"one", b"two"), strict=True):
            connect(lab, gateway, relays[0].address).sendall(word)
            assert recv_exactly(server.accept()[0], 3) == word


CHILD = """
import sys, time
from tests.netlab import Lab
lab = Lab().__enter__()
node = lab.public("x")
sleeper = lab.run(node, ["sleep", "300"])
print(lab.id, sleeper.pid, flush=True)
time.sleep(300)
"""


def child_lab() -> tuple[subprocess.Popen, str, int]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    lab_id, pid = child.stdout.readline().split()
    return child, lab_id, int(pid)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_of_the_test_process_tears_its_labs_down():
    require_lab()
    child, lab_id, sleeper = child_lab()
    try:
        assert f"netlab-{lab_id}-x" in netns_names()
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
        assert not [ns for ns in netns_names() if ns.startswith(f"netlab-{lab_id}-")]
        wait_until(lambda: gone(sleeper), what="the lab's process gone")
    finally:
        child.kill()
        child.wait()


def test_sweeper_removes_what_a_killed_run_left_and_spares_live_labs(lab):
    mine = lab.public("alive")
    child, lab_id, sleeper = child_lab()
    child.send_signal(signal.SIGKILL)  # no chance to clean up
    child.wait()
    assert f"netlab-{lab_id}-x" in netns_names()
    swept = sweep_leftovers()
    assert f"netlab-{lab_id}-x" in swept and f"netlab-{lab_id}-internet" in swept
    assert not [ns for ns in netns_names() if ns.startswith(f"netlab-{lab_id}-")]
    wait_until(lambda: gone(sleeper), what="the leftover process killed")
    assert mine.ns in netns_names() and lab.internet in netns_names()


def test_without_nft_the_lab_says_why_in_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/bin/ip")
    probe = "from tests.netlab import unavailable; print(unavailable())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(bin_dir)}).stdout
    if os.geteuid() != 0:
        assert out.strip() == "the network lab needs root (network namespaces, veth, nftables)"
    else:
        assert out.strip() == "the network lab needs `nft` (apt-get install nftables; .ci/install does it)"
