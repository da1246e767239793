"""A small internet of Linux network namespaces, built by a test or a benchmark for itself, so
that gossipfl peers can be run behind real NAT, on lossy and narrow links, through partitions.

Six gateways, three of them each behind its own NAT, and one public relay::

    from tests.netlab import Lab

    with Lab() as lab:                       # pytest: the `lab` fixture (skips without root/nft)
        relay = lab.public("relay")
        gateways = [lab.public(f"g{i}") for i in range(3)]
        gateways += [lab.site(f"site{i}", nat="cone").host(f"g{i}") for i in range(3, 6)]
        procs = [lab.run(g, [sys.executable, "-m", "gossipfl", "peer", "start", ...]) for g in gateways]
        relay.address, gateways[4].address, gateways[4].public_address   # 172.16.1.2 10.2.0.2 172.16.6.2
        lab.set_loss(gateways[3], 5)          # 5 % of packets lost each way on g3's access link
        lab.set_rate(gateways[4].site, 1000)  # site4's uplink capped at 1 Mbit/s each way
        lab.partition(gateways[5].site); ...; lab.heal(gateways[5].site)
    # every namespace, link and process of the lab is gone here, also when the body raised

What is built. A namespace `internet` routes between the public links: every public host and
every site router hangs off it on its own veth, in 172.16.K.0/24 (the internet's side is .1,
the node .2). A site is a NAT router namespace (`wan` uplink, a `lan` bridge at 10.S.0.1/24)
with hosts behind it on that LAN (10.S.0.2, .3, ...). All of it lives in namespaces the lab
made: veths are created inside them, so the root namespace's interfaces, routes and nftables
are never touched, and interface names (eth0, wan, lan1, n1...) can never collide between
labs. Namespaces are named `netlab-<id>-<node>` with a fresh random id per lab.

NAT kinds (both masquerade to the router's public address, and both drop every packet from
the WAN that is not part of a connection a LAN host opened, so nobody outside can connect in):
- "cone": masquerade keeps the source port when it can, so a host's public port is its local
  port whatever it dials: the endpoint a rendezvous server observes is the one a peer must
  dial, and a TCP simultaneous open (hole punch) goes through (tests/test_netlab.py shows it);
- "symmetric": masquerade fully-random, a new random public port for every connection, so
  what a rendezvous server observed is useless to anyone else: hole punching fails.

Link conditions act on a node's access link (a public host's or a router's link to the
internet, a NATed host's link to its router; pass a Site for its router's uplink), on both
ends as they receive, and can be switched at any time during a run: set_loss (percent lost
in each direction), set_rate (kbit/s, each direction), partition/heal (drop everything),
link_down/link_up (carrier lost: a flap), readdress (a new address on the same segment, the
old one removed: DHCP or a new cellular session; a router's NAT mappings die with it).

Inside a fresh namespace every port is free: bind any fixed port, no free-port helper needed.
Run things with lab.run (a tracked Popen in its own process group), lab.exec (run to the end),
lab.command (the argv to wrap yourself) or lab.socket (a socket of this process, opened inside
the node's namespace). Bench scripts call `unavailable()` first (None, or why the lab cannot
run here); tests use the `lab` fixture or `require_lab()`, which skip with that reason.
Teardown stops the lab's processes (SIGTERM to each process group, SIGKILL after 5 s and for
anything else still inside), closes its sockets and deletes its namespaces: on exit of the
`with` (also when its body raised), at interpreter exit and on SIGTERM. Namespaces that a
killed run left behind are swept by the next Lab (`python -m tests.netlab` sweeps by hand):
each lab holds a lock file in /run/netlab for as long as it lives, and only labs whose lock
is free are swept, so parallel test processes never touch each other's labs.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import weakref
from dataclasses import dataclass, field

NETNS_DIR = "/run/netns"
LOCK_DIR = "/run/netlab"
NAME_RE = re.compile(r"^netlab-([0-9a-z]{6})-")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
NATS = ("cone", "symmetric")
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and what it printed."""


@dataclass
class Link:
    """A veth between a node (`near`, its side) and what it hangs off (`far`): each end is
    (namespace, interface). Conditions apply on the receiving side of each end."""

    near: tuple[str, str]
    far: tuple[str, str]
    loss: float = 0.0
    up_kbps: float | None = None
    down_kbps: float | None = None
    cut: bool = False


@dataclass(repr=False)
class Node:
    """A host or a router: its namespace, its current address on its access link, and the
    address the internet sees it by (its router's for a host behind NAT). `role` is "public",
    "router" or "host" (behind a site's NAT)."""

    name: str
    ns: str
    link: Link
    subnet: ipaddress.IPv4Network
    address: str
    site: Site | None = None
    role: str = "host"
    _next_host: int = 3

    def __repr__(self) -> str:
        where = f" behind {self.site.name}" if self.role == "host" else ""
        return f"<{self.role} {self.name} {self.address}{where}>"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def public_address(self) -> str:
        return self.site.router.address if self.site is not None and self.role == "host" else self.address


@dataclass(repr=False)
class Site:
    """A NAT router and the LAN behind it."""

    lab: Lab
    name: str
    nat: str
    router: Node
    lan: ipaddress.IPv4Network
    hosts: list[Node] = field(default_factory=list)
    _next_host: int = 2

    @property
    def public_address(self) -> str:
        return self.router.address

    def host(self, name: str) -> Node:
        """A new host on this site's LAN, behind its NAT."""
        return self.lab._host(self, name)

    def __repr__(self) -> str:
        return f"<site {self.name} ({self.nat} NAT) {self.public_address} lan {self.lan}>"


_LIVE: weakref.WeakSet[Lab] = weakref.WeakSet()
_SIGTERM_HOOKED: list[bool] = []
_REASON: list[str | None] = []


class Lab:
    """A private internet of namespaces; use as a context manager (see the module docstring)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.sites: dict[str, Site] = {}
        self.namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock_fd: int | None = None
        self.id = ""
        self.internet = ""

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        sweep_leftovers()
        os.makedirs(LOCK_DIR, exist_ok=True)
        while self._lock_fd is None:
            self.id = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(6))
            with contextlib.suppress(FileExistsError):
                self._lock_fd = os.open(self._lock_path(), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        _LIVE.add(self)
        _install_sigterm_handler()
        try:
            self.internet = self._namespace("internet")
            _sysctl(self.internet, "net.ipv4.ip_forward", 1)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill the lab's processes, close its sockets, delete its namespaces (idempotent)."""
        for s in list(self._sockets):
            s.close()
        live = [p for p in self._procs if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in live:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in reversed(self.namespaces):
            _delete_namespace(ns)
        self.namespaces.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path())
            os.close(self._lock_fd)
            self._lock_fd = None
        _LIVE.discard(self)

    def _lock_path(self) -> str:
        return f"{LOCK_DIR}/netlab-{self.id}.lock"

    def _namespace(self, node: str) -> str:
        if self._lock_fd is None:
            raise LabError("the lab is not open: build it inside `with Lab() as lab:`")
        if not NODE_NAME_RE.match(node):
            raise ValueError(f"node name {node!r}: use 1-32 of a-z 0-9 _ -, starting with a letter")
        if node in self.nodes or node in self.sites or node == "internet" and self.internet:
            raise ValueError(f"the lab already has a node or site named {node!r}")
        ns = f"netlab-{self.id}-{node}"
        self.namespaces.append(ns)
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    # -- building ----------------------------------------------------------------------------

    def public(self, name: str) -> Node:
        """A host on the public internet, reachable by anyone at node.address."""
        node = self._attach(name, self._namespace(name), "eth0", role="public")
        self.nodes[name] = node
        return node

    def site(self, name: str, nat: str = "cone") -> Site:
        """A NAT router (kind "cone" or "symmetric") with an empty LAN: add hosts with .host()."""
        if nat not in NATS:
            raise ValueError(f"nat={nat!r}: the lab has {', '.join(NATS)}")
        ns = self._namespace(name)
        router = self._attach(name, ns, "wan", role="router")
        lan = ipaddress.ip_network(f"10.{len(self.sites) + 1}.0.0/24")
        _ip_batch(ns, ["link add lan type bridge", f"address add {lan.network_address + 1}/24 dev lan",
                       "link set lan up"])
        _sysctl(ns, "net.ipv4.ip_forward", 1)
        masquerade = "masquerade fully-random" if nat == "symmetric" else "masquerade"
        _nft(ns, f"""table inet netlab_nat {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
}}
table ip netlab_masq {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {masquerade}
  }}
}}
""")
        site = Site(self, name, nat, router, lan)
        router.site = site
        self.sites[name] = site
        self.nodes[name] = router
        return site

    def _attach(self, name: str, ns: str, ifname: str, role: str) -> Node:
        k = sum(1 for n in self.nodes.values() if n.role != "host") + 1
        if k > 250:
            raise ValueError("the lab's internet has room for 250 public hosts and sites")
        subnet = ipaddress.ip_network(f"172.16.{k}.0/24")
        far = f"n{k}"
        _veth(ns, ifname, self.internet, far)
        _ip_batch(self.internet, [f"address add {subnet.network_address + 1}/24 dev {far}", f"link set {far} up"])
        address = str(subnet.network_address + 2)
        _ip_batch(ns, [f"address add {address}/24 dev {ifname}", f"link set {ifname} up",
                       f"route add default via {subnet.network_address + 1}"])
        return Node(name, ns, Link((ns, ifname), (self.internet, far)), subnet, address, role=role)

    def _host(self, site: Site, name: str) -> Node:
        ns = self._namespace(name)
        i = len(site.hosts) + 1
        port = f"lan{i}"
        _veth(ns, "eth0", site.router.ns, port)
        _ip_batch(site.router.ns, [f"link set {port} master lan", f"link set {port} up"])
        address = _next_address(site, site.lan)
        _ip_batch(ns, [f"address add {address}/24 dev eth0", "link set eth0 up",
                       f"route add default via {site.lan.network_address + 1}"])
        node = Node(name, ns, Link((ns, "eth0"), (site.router.ns, port)), site.lan, address, site=site)
        site.hosts.append(node)
        self.nodes[name] = node
        return node

    # -- conditions --------------------------------------------------------------------------

    def set_loss(self, target: Node | Site | str, percent: float) -> None:
        """Lose `percent` (0-100, steps of 0.01) of the packets in each direction of the link."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss {percent}: a percentage from 0 to 100")
        self._link(target).loss = percent
        self._apply(self._link(target))

    def set_rate(self, target: Node | Site | str, kbps: float | None, down_kbps: float | None = None) -> None:
        """Cap the link at `kbps` kbit/s upward and `down_kbps` (default: the same) downward;
        None lifts the cap. Excess packets are dropped (a policer, as a narrow uplink does)."""
        link = self._link(target)
        link.up_kbps, link.down_kbps = kbps, kbps if down_kbps is None else down_kbps
        self._apply(link)

    def partition(self, target: Node | Site | str) -> None:
        """Drop everything crossing the link (its ends stay up: connections time out)."""
        self._link(target).cut = True
        self._apply(self._link(target))

    def heal(self, target: Node | Site | str) -> None:
        self._link(target).cut = False
        self._apply(self._link(target))

    def link_down(self, target: Node | Site | str) -> None:
        """The link loses carrier (its far end goes down); link_up brings it back."""
        ns, ifname = self._link(target).far
        _run(["ip", "-n", ns, "link", "set", ifname, "down"])

    def link_up(self, target: Node | Site | str) -> None:
        ns, ifname = self._link(target).far
        _run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def readdress(self, target: Node | Site | str) -> str:
        """Give the node a new address on its segment and remove the old one; returns it."""
        node = self.node(target)
        new = _next_address(node.site if node.role == "host" else node, node.subnet)
        ns, ifname = node.link.near
        _ip_batch(ns, [f"address del {node.address}/24 dev {ifname}", f"address add {new}/24 dev {ifname}",
                       f"route replace default via {node.gateway}"])
        node.address = new
        return new

    def node(self, target: Node | Site | str) -> Node:
        """The node meant: a Node, a Site (its router) or a name."""
        if isinstance(target, Site):
            return target.router
        if isinstance(target, Node):
            return target
        return self.nodes[target]

    def _link(self, target: Node | Site | str) -> Link:
        return self.node(target).link

    def _apply(self, link: Link) -> None:
        for (ns, ifname), kbps in ((link.near, link.down_kbps), (link.far, link.up_kbps)):
            rules = []
            if link.cut:
                rules.append("drop")
            if link.loss > 0:
                rules.append(f"numgen random mod 10000 < {round(link.loss * 100)} drop")
            if kbps is not None:
                # a token bucket as deep as one second of the rate (as nft sizes a byte limit)
                rules.append(f"limit rate over {max(1, round(kbps * 125))} bytes/second drop")
            chain = f"in_{ifname}"
            script = (f'table netdev netlab_link {{\n  chain {chain} {{\n    type filter hook ingress '
                      f'device "{ifname}" priority filter; policy accept;\n  }}\n}}\n'
                      f"flush chain netdev netlab_link {chain}\n")
            script += "".join(f"add rule netdev netlab_link {chain} {r}\n" for r in rules)
            _nft(ns, script)

    # -- running -----------------------------------------------------------------------------

    def command(self, target: Node | Site | str, argv: list[str]) -> list[str]:
        """`argv` wrapped to run inside the node's namespace (for callers that manage the process)."""
        return ["ip", "netns", "exec", self.node(target).ns, *map(str, argv)]

    def run(self, target: Node | Site | str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv inside the node's namespace, in its own process group, killed at teardown."""
        proc = subprocess.Popen(self.command(target, argv), start_new_session=True, **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec(self, target: Node | Site | str, argv: list[str], timeout: float = 60, check: bool = True,
             **run_kwargs) -> subprocess.CompletedProcess:
        """Run argv inside the node's namespace to its end (output captured as text)."""
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        return subprocess.run(self.command(target, argv), timeout=timeout, check=check, **run_kwargs)

    def socket(self, target: Node | Site | str, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket of this process that lives in the node's namespace (closed at teardown)."""
        s = in_namespace(self.node(target).ns, lambda: socket.socket(family, type))
        self._sockets.add(s)
        return s


def _next_address(owner: Node | Site, subnet: ipaddress.IPv4Network) -> str:
    """The next unused address of `subnet` (each is handed out once: an old one is never reused)."""
    address = subnet.network_address + owner._next_host
    if address >= subnet.broadcast_address:
        raise LabError(f"no addresses left in {subnet}")
    owner._next_host += 1
    return str(address)


def in_namespace(ns: str, fn):
    """fn() called on a fresh thread that has entered namespace `ns`; what it opens stays there."""
    out: dict = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=enter_and_call, name=f"netns {ns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _run(argv: list[str], stdin: str | None = None) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _ip_batch(ns: str, commands: list[str]) -> None:
    _run(["ip", "-n", ns, "-batch", "-"], "\n".join(commands) + "\n")


def _nft(ns: str, script: str) -> None:
    _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], script)


def _sysctl(ns: str, key: str, value: int) -> None:
    _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])


def _veth(ns: str, ifname: str, peer_ns: str, peer: str) -> None:
    """A veth made inside `ns` with its peer moved straight into `peer_ns` (never the root
    namespace); one MSS per packet (no GSO), so loss and rate act on wire-sized packets."""
    _run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", peer_ns])
    _run(["ip", "-n", ns, "link", "set", ifname, "gso_max_segs", "1"])
    _run(["ip", "-n", peer_ns, "link", "set", peer, "gso_max_segs", "1"])


def _delete_namespace(ns: str) -> None:
    """Kill what still runs inside (by pid), then delete the namespace."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        if int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of labs whose process is gone (their lock file is free or absent);
    returns the namespaces deleted. Labs alive in this or any other process are left alone."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    swept, verdict = [], {}
    for ns in sorted(names):
        m = NAME_RE.match(ns)
        if not m:
            continue
        lab_id = m.group(1)
        if lab_id not in verdict:
            verdict[lab_id] = _owner_gone(f"{LOCK_DIR}/netlab-{lab_id}.lock")
        if verdict[lab_id]:
            _delete_namespace(ns)
            swept.append(ns)
    return swept


def _owner_gone(lock_path: str) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)
    return True


def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


def _install_sigterm_handler() -> None:
    """On SIGTERM: tear down every live lab, then do what SIGTERM did before (main thread only)."""
    if _SIGTERM_HOOKED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return

    def on_sigterm(signum, frame):
        _close_all()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _SIGTERM_HOOKED.append(True)


atexit.register(_close_all)


def unavailable() -> str | None:
    """Why the lab cannot run here (one line), or None; probed once per process."""
    if not _REASON:
        _REASON.append(_probe())
    return _REASON[0]


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (apt-get install {package}; .ci/install does it)"
    try:
        with Lab() as lab:
            site = lab.site("probe", nat="symmetric")
            lab.set_loss(site, 1)
            lab.set_rate(site, 1000)
    except (LabError, OSError) as e:
        return f"the network lab cannot run here: {str(e).splitlines()[0]}"
    return None


def require_lab() -> None:
    """Skip the calling test, with the reason, where the lab cannot run."""
    reason = unavailable()
    if reason is not None:
        import pytest

        pytest.skip(reason)


if __name__ == "__main__":
    print("\n".join(sweep_leftovers()) or "no leftover lab namespaces")
