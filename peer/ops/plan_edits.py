"""Edits of a plan folder after it was written, for `fleet admit` and `fleet revoke`: ports
that are still free, and the neighbourhoods in the plan's peer.toml files.

Why: the plan folder is what a gateway is set up from again (a new disk, a wiped data
folder). After a membership change its files must say what the running fleet knows from the
admin's records: an admitted gateway is its neighbours' neighbour, a revoked one nobody's
(and not on trust.toml), and every neighbour entry carries the degree and group the
neighbour has now (Metropolis-Hastings weights and secure_mean's masking groups depend on
them). A new gateway needs ports no other node of the plan uses (nodes may share a host).
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from ..config.tomlwrite import dumps
from ..errors import ConfigError
from .pacing import round_table

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::")


def listen_port(addr: str) -> int | None:
    """/ip4/HOST/tcp/PORT[/...] -> PORT."""
    parts = addr.split("/")
    return int(parts[4]) if len(parts) > 4 and parts[3] == "tcp" and parts[4].isdigit() else None


def ports_in_use(docs: dict[str, dict]) -> dict[int, str]:
    """Every port a plan's configs listen on (libp2p and metrics): port -> what uses it."""
    used: dict[int, str] = {}
    for name, doc in docs.items():
        for addr in (doc.get("transport") or {}).get("listen") or []:
            port = listen_port(addr)
            if port:
                used[port] = f"node {name}'s listening port"
        metrics = (doc.get("metrics") or {}).get("listen")
        if isinstance(metrics, str) and metrics.rpartition(":")[2].isdigit():
            used[int(metrics.rpartition(":")[2])] = f"node {name}'s metrics port"
    return used


def bindable(host: str, port: int) -> bool:
    """Whether this machine could listen there now (only asked for hosts of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1" if host in ("localhost", "0.0.0.0") else "::1" if host == "::" else host, port))
        except OSError:
            return False
    return True


def free_port(used: dict[int, str], start: int, host: str) -> int:
    """The first port from `start` that no node of the plan uses (nor, on this machine's own
    addresses, anything else running here)."""
    for port in range(max(1024, start), 65536):
        if port not in used and (host not in LOOPBACK_HOSTS or bindable(host, port)):
            return port
    raise ConfigError(f"no free TCP port from {start} up for the new gateway")


def check_port(used: dict[int, str], port: int, what: str) -> int:
    if port in used:
        raise ConfigError(f"{what} {port} is {used[port]}: choose another")
    return port


# --- neighbourhoods ---------------------------------------------------------------------------


def adjacency(docs: dict[str, dict]) -> dict[str, list[str]]:
    """PeerId -> its neighbours' PeerIds, from the live nodes' configs (keyed by PeerId)."""
    return {pid: [nb["id"] if isinstance(nb, dict) else nb for nb in doc["network"].get("neighbours", [])]
            for pid, doc in docs.items()}


def rewrite_neighbourhoods(configs: dict[str, Path], graph: dict[str, list[str]], *, names: dict[str, str],
                           addresses: dict[str, str | None], deployed: bool, fixed: set[str] | None) -> list[Path]:
    """Make each live node's peer.toml say `graph` (PeerId -> neighbours): its neighbour list,
    each neighbour's degree and (secure_mean) group, and the [round] values the plan computes
    from the degree (quorum, ...) unless they are in `fixed`, the template's round keys (None:
    a plan that kept no template; its quorum is only lowered to what the neighbours allow).
    Returns the files that changed."""
    changed = []
    for pid, path in configs.items():
        text = path.read_text()
        doc = tomllib.loads(text)
        before = doc["network"].get("neighbours", [])
        old = {(nb["id"] if isinstance(nb, dict) else nb): nb for nb in before}
        secure = (doc.get("aggregation") or {}).get("rule") == "secure_mean"
        entries = []
        for nid in graph[pid]:
            nb = dict(old[nid]) if isinstance(old.get(nid), dict) else {"id": nid}
            if nid not in old:
                nb["name"] = names.get(nid, nid[-8:])
                if addresses.get(nid):
                    nb["addr"] = addresses[nid]
            nb["degree"] = len(graph.get(nid, [])) or nb.get("degree", 1)
            if secure:
                nb["group"] = list(graph.get(nid, nb.get("group", [])))
            entries.append(nb)
        agg = doc.get("aggregation") or {}
        given = dict(doc.get("round") or {})
        if fixed is None:
            given["quorum"] = given.get("quorum", 0) if given.get("quorum", 0) <= len(entries) else 0
        else:
            given = {k: v for k, v in given.items() if k in fixed or k not in ("quorum", "interval")}
        rnd, comments = round_table(given, deployed=deployed, rule=agg.get("rule", "median"), f=agg.get("f", 1),
                                    degree=len(entries))
        if entries == before and rnd == doc.get("round"):
            continue
        doc["network"]["neighbours"] = entries
        doc["round"] = rnd
        path.write_text(_leading_comments(text) + dumps(doc, comments))
        changed.append(path)
    return changed


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    return "".join(lines)
