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


def write_synthetic_fleet(folder, peers: int, rounds: int, *, revoke: tuple[int, int] = (1, None),
                          crash: tuple[int, int] = (2, None), down: tuple[int, int, int] = (3, None, None)):
    """Real signed logs of a large fleet without running it (the report's scale test): `peers`
    gateways on a ring, each round trained, sent to both neighbours and aggregated; every 7th
    peer-round rejects a forged message; the admin revokes peer revoke[0] at round revoke[1]
    (default: the middle); peer crash[0] dies after round crash[1] (no `stopped`) and resumes
    from its checkpoint; peer down[0] is down from round down[1] to down[2] and catches up.
    Writes FOLDER/trust.toml (names g0, g1, ...) and FOLDER/gN/data/provenance.db; returns the
    log paths. One transaction per log: 100 peers x 1,000 rounds take about 30 s."""
    import hashlib
    from pathlib import Path

    from gossip.membership import seal_record
    from gossip.trust import build_trust_list
    from peer.state.provenance import NewEvent

    folder = Path(folder)
    net = "synthetic"
    idents = [Identity.from_seed(hashlib.sha256(f"synthetic {i}".encode()).digest()) for i in range(peers)]
    admin = Identity.from_seed(b"\x99" * 32)
    ids = [p.peer_id for p in idents]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trust.toml").write_text(build_trust_list(
        net, [{"id": pid, "name": f"g{i}"} for i, pid in enumerate(ids)], admin=admin.peer_id).to_toml())
    revoked, revoke_round = revoke[0], revoke[1] if revoke[1] is not None else rounds // 2
    crashed, crash_round = crash[0], crash[1] if crash[1] is not None else rounds // 3
    gone, gone_from, gone_to = down[0], down[1] if down[1] is not None else rounds // 4, \
        down[2] if down[2] is not None else rounds // 4 + 5
    record = seal_record(admin, network=net, epoch=1, action="revoke", peer=ids[revoked])
    record_id = hashlib.sha256(record).hexdigest()
    paths = []
    for i, ident in enumerate(idents):
        nbrs = [ids[(i - 1) % peers], ids[(i + 1) % peers]]
        events = [NewEvent("started", 0, details={"neighbours": nbrs, "resumed_from": None})]
        for r in range(rounds):
            if i == gone and gone_from <= r < gone_to:
                continue
            if i == gone and r == gone_to:
                events.append(NewEvent("started", gone_from, details={"neighbours": nbrs, "resumed_from": gone_from}))
            own = hashlib.sha256(f"{i}/{r}".encode()).hexdigest()
            events.append(NewEvent("trained", r, details={"loss": 1.0 / (r + 1), "samples": 10}))
            events += [NewEvent("sent", r, nb, own, {"parents": [], "bytes": 64}) for nb in nbrs]
            if (i + r) % 7 == 0:
                events.append(NewEvent("rejected", r, None, None, {"reason": "bad_signature", "authenticated": False,
                                                                   "claimed": [nbrs[0]], "count": 1}))
            if r == revoke_round and i != revoked:
                events.append(NewEvent("membership", r, ids[revoked], record_id, {
                    "epoch": 1, "action": "revoke", "peer": ids[revoked], "addr": "", "neighbours": [],
                    "record": record_id, "bytes": record.hex()}))
            if (i + r) % 11 == 0:
                events.append(NewEvent("skipped", r, details={"reason": "no neighbour update in time"}))
            else:
                events.append(NewEvent("aggregated", r, None, hashlib.sha256(f"m{i}/{r}".encode()).hexdigest(),
                                       {"rule": "median", "inputs": [own]}))
            if i == crashed and r == crash_round:  # the process dies here: no `stopped`
                events.append(NewEvent("started", r + 1, details={"neighbours": nbrs, "resumed_from": r + 1}))
        events.append(NewEvent("stopped", rounds, details={"reason": "rounds done"}))
        path = folder / f"g{i}" / "data" / "provenance.db"
        path.parent.mkdir(parents=True)
        log = ProvenanceLog(path, ident, net)
        log.append_many(events)
        log.close()
        paths.append(path)
    return paths
