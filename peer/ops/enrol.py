"""Enrolment without shipping private keys: a gateway generates its key where it runs and
hands the network admin a small request; the admin admits it (peer.ops.admin.admit with the
request) and writes the config it needs, with no private key in the plan folder.

The request (`enrolment.json`, written by `gossipfl peer init --enrol`) is one JSON object:

    {"v": 1, "type": "gossipfl-enrolment", "network": "...", "name": "gw-7",
     "peer_id": "12D3KooW...", "reachability": "public" | "private" | "auto",
     "addr": "/ip4/203.0.113.7/tcp/4001" or "",    # where it can be dialled ("": nowhere)
     "secagg": "session-keys-signed-by-peer-id", "created": 1765138000,
     "sig": "<hex Ed25519 signature by peer_id's key>"}

`sig` signs the UTF-8 of the canonical JSON (sorted keys, no spaces) of every other field, so
the request proves that its sender holds the key of the PeerId it names (proof of possession:
nobody enrols someone else's key). Secure aggregation needs no long-term key of its own: each
session's X25519 keys are fresh and signed by the PeerId's Ed25519 key, so the PeerId is the
binding (`secagg` says so, and a request naming another scheme is refused). Whatever the file
holds is hostile until checked: bounded size, exact keys, typed values, the signature.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from gossip.errors import PeerIdError
from gossip.files import FileReadError, read_limited_text
from gossip.identity import Identity, check_peer_id, verify_signature

from ..errors import ConfigError

VERSION = 1
TYPE = "gossipfl-enrolment"
SECAGG_BINDING = "session-keys-signed-by-peer-id"
REACHABILITY = ("auto", "public", "private")
MAX_REQUEST = 8 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADDR_RE = re.compile(r"^/(ip4|ip6|dns4|dns6|dns)/[A-Za-z0-9.:_-]{1,253}/tcp/[0-9]{1,5}$")
FIELDS = {"v": int, "type": str, "network": str, "name": str, "peer_id": str, "reachability": str, "addr": str,
          "secagg": str, "created": int, "sig": str}


@dataclass(frozen=True)
class Request:
    network: str
    name: str
    peer_id: str
    reachability: str
    addr: str  # "" when it cannot be dialled
    created: int

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.addr:
            return None
        parts = self.addr.split("/")
        return parts[2], int(parts[4])


def _signed_bytes(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "sig"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def make_request(identity: Identity, network: str, name: str, reachability: str = "auto", addr: str = "") -> str:
    """The request text a gateway hands its admin (checked as the admin will check it)."""
    doc = {"v": VERSION, "type": TYPE, "network": network, "name": name, "peer_id": identity.peer_id,
           "reachability": reachability, "addr": addr, "secagg": SECAGG_BINDING, "created": int(time.time())}
    doc["sig"] = identity.sign(_signed_bytes(doc)).hex()
    text = json.dumps(doc, indent=1) + "\n"
    parse_request(text)
    return text


def parse_request(text: str, where: str = "enrolment request") -> Request:
    """A checked Request, or a ConfigError saying what is wrong with it."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{where}: {why}")

    if len(text.encode()) > MAX_REQUEST:
        raise bad(f"more than {MAX_REQUEST} bytes")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != set(FIELDS):
        raise bad(f"must be an object with exactly the keys {', '.join(sorted(FIELDS))}")
    for key, typ in FIELDS.items():
        if not isinstance(doc[key], typ) or isinstance(doc[key], bool):
            raise bad(f"{key} must be {typ.__name__}")
    if doc["v"] != VERSION or doc["type"] != TYPE:
        raise bad(f"not a version-{VERSION} {TYPE}")
    if not NAME_RE.match(doc["name"]):
        raise bad("name must be 1-64 letters, digits, '.', '_' or '-'")
    if not 0 < len(doc["network"]) <= 128 or not doc["network"].isprintable():
        raise bad("network must be 1-128 printable characters")
    if doc["reachability"] not in REACHABILITY:
        raise bad(f"reachability must be one of {', '.join(REACHABILITY)}")
    if doc["addr"] and (not ADDR_RE.match(doc["addr"]) or not 0 < int(doc["addr"].rsplit("/", 1)[1]) < 65536):
        raise bad("addr must be empty or like /ip4/203.0.113.7/tcp/4001")
    if doc["reachability"] == "private" and doc["addr"]:
        raise bad("a private gateway cannot be dialled: its addr must be empty")
    if doc["secagg"] != SECAGG_BINDING:
        raise bad(f"secagg must be {SECAGG_BINDING!r} (session keys signed by the PeerId's key)")
    try:
        check_peer_id(doc["peer_id"])
        sig = bytes.fromhex(doc["sig"])
    except (PeerIdError, ValueError, TypeError) as exc:
        raise bad(f"peer_id or sig malformed ({exc})") from None
    if not verify_signature(doc["peer_id"], sig, _signed_bytes(doc)):
        raise bad("the signature does not verify: it was not made with the key of the PeerId it names")
    return Request(doc["network"], doc["name"], doc["peer_id"], doc["reachability"], doc["addr"], doc["created"])


def read_request(path: str | Path) -> Request:
    try:
        text = read_limited_text(path, MAX_REQUEST, "enrolment request")
    except FileReadError as exc:
        raise ConfigError(str(exc)) from None
    return parse_request(text, str(path))


MAX_REQUESTS = 10_000  # a plan's folder of requests: bounded like every other input


def read_requests(folder: str | Path) -> dict[str, Request]:
    """Every `*.json` request in `folder`, by the name each asks for; two requests for one name
    or one PeerId are refused (the admin must say which gateway is which)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of enrolment requests (enrolment.json files from "
                          "gossipfl peer init --enrol)")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ConfigError(f"{folder}: no enrolment requests (*.json) in it")
    if len(files) > MAX_REQUESTS:
        raise ConfigError(f"{folder}: more than {MAX_REQUESTS} requests")
    out: dict[str, Request] = {}
    ids: dict[str, str] = {}
    for f in files:
        r = read_request(f)
        if r.name in out:
            raise ConfigError(f"{f}: a second request for the name {r.name!r}; keep one per gateway")
        if r.peer_id in ids:
            raise ConfigError(f"{f}: PeerId {r.peer_id} already asked for by {ids[r.peer_id]!r}")
        out[r.name], ids[r.peer_id] = r, r.name
    return out


def apply_reachability(kind, endpoint, request: Request) -> None:
    """What a request says of how the gateway is reached, on its planned endpoint (the
    transports that know reachability): a private gateway has no address anyone dials - its
    neighbours reach it through the fleet's relays."""
    if request.reachability != "auto" and "reachability" in kind.schema:
        endpoint.transport["reachability"] = request.reachability
        if request.reachability == "private":
            endpoint.addr = None
