"""The log formatter names PeerIds for people and never touches an address: a multiaddr's
/p2p/<id>, an MQTT topic or a URL copied from a log line must still be that address."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from gossip.identity import Identity
from peer.runtime.logs import JsonFormatter, PeerNames, TextFormatter

IDS = [Identity.generate().peer_id for _ in range(3)]
NAMES = {pid: f"gw-{i}" for i, pid in enumerate(IDS)}


def shown(msg: str, *args) -> str:
    record = logging.makeLogRecord({"msg": msg, "args": args, "levelno": logging.INFO, "levelname": "INFO"})
    assert PeerNames("gw-0", NAMES).filter(record)
    return record.getMessage()


def test_a_listening_multiaddr_keeps_its_peer_id():
    addr = f"/ip4/127.0.0.1/tcp/21513/p2p/{IDS[0]}"
    assert shown("listening on %s", addr) == f"listening on {addr}"
    for fmt in (TextFormatter(), JsonFormatter()):  # what reaches the terminal or the journal
        record = logging.makeLogRecord({"msg": "listening on %s", "args": (addr,), "levelno": logging.INFO,
                                        "levelname": "INFO"})
        PeerNames("gw-0", NAMES).filter(record)
        assert addr in fmt.format(record)


def test_standalone_peer_ids_get_their_names():
    assert shown("update from %s rejected", IDS[1]) == f"update from gw-1 (..{IDS[1][-8:]}) rejected"
    assert shown("neighbours now %s", f"{IDS[1]}, {IDS[2]}") == \
        f"neighbours now gw-1 (..{IDS[1][-8:]}), gw-2 (..{IDS[2][-8:]})"
    assert shown("peer=%s:", IDS[2]) == f"peer=gw-2 (..{IDS[2][-8:]}):"
    unknown = Identity.generate().peer_id
    assert shown("from %s", unknown) == f"from {unknown}"


ADDRESSES = st.sampled_from([
    "/ip4/{host}/tcp/{port}/p2p/{id}",
    "/ip6/::1/tcp/{port}/p2p/{id}",
    "/dns4/gw.lan/tcp/{port}/p2p/{id}/p2p-circuit/p2p/{other}",
    "/p2p/{id}",
    "gossipfl/lab/{id}/inbox/{other}",
    "mqtt://{host}:{port} topic gossipfl/lab/{id}/inbox",
    "http://{host}:{port}/peers/{id}",
])


@given(ADDRESSES, st.sampled_from(IDS), st.sampled_from(IDS), st.integers(1, 65535),
       st.sampled_from(["127.0.0.1", "10.0.0.2", "gw.lan"]), st.sampled_from(["%s", "dial %s failed", "[%s]"]))
def test_no_address_is_ever_rewritten(template, pid, other, port, host, line):
    addr = template.format(id=pid, other=other, port=port, host=host)
    assert shown(line, addr) == line % addr
