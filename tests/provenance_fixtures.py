"""Build real provenance logs of a few peers exchanging signed updates (no network)."""

from __future__ import annotations

import torch

from gossip.envelope import seal_update
from gossip.identity import Identity
from gossip.verify import Accepted, Verifier
from peer.state.provenance import ProvenanceLog

SCHEMA = b"\x07" * 32


def write_ring_logs(tmp_path, peers: int = 3, rounds: int = 3, d: int = 16):
    """Peers on a ring send, receive, verify and aggregate for `rounds` rounds; returns paths, idents,
    and update ids per (peer index, round)."""
    idents = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(peers)]
    logs = [ProvenanceLog(tmp_path / f"p{i}.db", idents[i], "net") for i in range(peers)]
    ids = [p.peer_id for p in idents]
    verifiers = [Verifier("net", set(ids), SCHEMA, d, neighbours={ids[(i - 1) % peers], ids[(i + 1) % peers]})
                 for i in range(peers)]
    updates: dict[tuple[int, int], str] = {}
    parents = {i: [] for i in range(peers)}
    for log in logs:
        log.append("started", 0, details={"neighbours": 2})
    for r in range(1, rounds + 1):
        msgs = {}
        for i in range(peers):
            x = torch.full((d,), float(i + r))
            sealed = seal_update(idents[i], x, net="net", round=r, schema=SCHEMA,
                                 parents=[bytes.fromhex(p) for p in parents[i]])
            msgs[i] = sealed.data
            updates[(i, r)] = sealed.update_id
            logs[i].append("trained", r, details={"loss": 1.0 / r, "samples": 10})
            for j in ((i - 1) % peers, (i + 1) % peers):
                logs[i].append("sent", r, ids[j], sealed.update_id,
                               {"parents": parents[i], "bytes": len(msgs[i])})
        for i in range(peers):
            inputs = [updates[(i, r)]]
            for j in ((i - 1) % peers, (i + 1) % peers):
                res = verifiers[i].verify(msgs[j], r)
                assert isinstance(res, Accepted)
                sh = res.envelope.signed_header()
                logs[i].append("received", r, ids[j], res.update_id,
                               {"header": sh["header"].hex(), "sig": sh["sig"].hex(), "bytes": len(msgs[j])})
                inputs.append(res.update_id)
            logs[i].append("aggregated", r, None, "ab" * 32,
                           {"rule": "median", "inputs": inputs, "report": {"rule": "median", "n": 3, "f": 0}})
            parents[i] = inputs
    for log in logs:
        log.append("stopped", rounds)
        log.close()
    return [tmp_path / f"p{i}.db" for i in range(peers)], idents, updates


def append_signed_row(path, ident: Identity, kind: str, round_, counterpart, update_hash, details: str,
                      prev: str | None = None) -> None:
    """Append a row the owner signed, with details text as given (what a log writer with the key
    but without ProvenanceLog's checks could store), and move the signed head to it."""
    import sqlite3
    import time

    from peer.state.provenance import event_hash, signed_head

    con = sqlite3.connect(path)
    seq, last = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    prev = last if prev is None else prev
    ts = time.time()
    h = event_hash(ident.peer_id, seq + 1, ts, kind, round_, counterpart, update_hash, details, prev)
    con.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                (seq + 1, ts, kind, round_, counterpart, update_hash, details, prev, h,
                 ident.sign(bytes.fromhex(h))))
    con.execute("UPDATE meta SET value = ? WHERE key = 'head'", (signed_head(ident, seq + 1, h),))
    con.commit()
    con.close()
