"""A peer's past cannot be rewritten by someone who can write its data folder but lacks its key
(issue 23): a real `gossipfl peer start` re-hashes its whole log on open and refuses, with one
line naming the first broken event and the command that shows it, an edited privacy event
outside the tail, a crafted checkpoint event, a deep deletion and a byte flipped in the file;
the log is left as it was (nothing appended on top of a break)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time

import msgpack
import pytest

from gossip.identity import Identity
from gossip.membership import open_record, seal_record
from peer.audit.verify import load_events, verify_log
from peer.ops.plan import write_plan
from peer.state import checkpoint as ckpt
from peer.state.provenance import EventKind, ProvenanceLog
from topology import from_spec

from .netfixtures import ROOT, free_ports

OVER = {"train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
        "round": {"deadline": 0.2, "train_in_thread": False, "rounds": 4},
        "aggregation": {"rule": "mean", "f": 0}, "privacy": {"mode": "update", "noise_multiplier": 2.0}}


def start(config, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A plan whose first node ran 4 rounds with privacy on and stopped cleanly."""
    base = tmp_path_factory.mktemp("past")
    nodes = write_plan(from_spec("complete:2", seed=1), base / "plan", transport="memory", overrides=OVER,
                       draw=False)
    first = start(nodes[0].config)
    assert first.returncode == 0, first.stderr[-3000:]
    return base / "plan", nodes[0].dir.name


@pytest.fixture
def node(ran, tmp_path):
    """A fresh copy of the plan after the run: (peer.toml, data folder)."""
    plan, name = ran
    shutil.copytree(plan, tmp_path / "plan")
    return tmp_path / "plan" / name / "peer.toml", tmp_path / "plan" / name / "data"


def rows(db, where="", args=()):
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT seq, kind, details FROM events {where} ORDER BY seq", args).fetchall()
    finally:
        con.close()


def sql(db, statement, args=()):
    con = sqlite3.connect(db)
    con.execute(statement, args)
    con.commit()
    con.close()


def refused(config, data, seq, kind):
    """The peer refuses with one line naming event `seq` (`kind`) and `audit verify`, exit 2, and
    leaves the log exactly as it found it."""
    db = data / "provenance.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = start(config)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-3000:]
    assert f"event {seq} ({kind})" in errors[0] and f"gossipfl audit verify {db}" in errors[0], errors[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    verdict = verify_log(db)
    assert not verdict.ok and verdict.first_bad == seq
    return errors[0]


def test_an_edited_privacy_event_outside_the_tail_is_refused(node):
    """The budget reset of the issue: the last privacy event's accountant rewritten (its stored hash
    left alone), several events before the end of the log."""
    config, data = node
    db = data / "provenance.db"
    seq, _, details = rows(db, "WHERE kind = 'privacy'")[-1]
    last = rows(db)[-1][0]
    assert last - seq >= 3  # outside the tail the old check re-hashed
    doc = json.loads(details)
    assert doc["epsilon"] > 0
    doc["accountant"] = _fewer_releases(doc["accountant"])
    doc["epsilon"] = doc["epsilon"] / 3
    sql(db, "UPDATE events SET details = ? WHERE seq = ?",
        (json.dumps(doc, sort_keys=True, separators=(",", ":")), seq))
    refused(config, data, seq, "privacy")


def _fewer_releases(state):
    """The accountant's state with its releases counted once (what a budget reset writes)."""
    assert state["events"] and state["events"][-1][-1] > 1
    return {**state, "events": [[*e[:-1], 1] for e in state["events"]]}


def test_a_crafted_checkpoint_event_for_crafted_weights_is_refused(node):
    """Weights of all 0.123 written as the checkpoint, their hash written into the log's last
    checkpoint event (the second-to-last row of a clean stop)."""
    config, data = node
    db = data / "provenance.db"
    kinds = [k for _, k, _ in rows(db)]
    assert kinds[-2:] == ["checkpoint", "stopped"]
    path = data / "checkpoint.msgpack"
    ck = ckpt.load(path, _schema(path), _size(path))
    ck.params.fill_(0.123)
    ckpt.save(path, ck)
    seq, _, details = rows(db, "WHERE kind = 'checkpoint'")[-1]
    doc = json.loads(details)
    doc["params_hash"] = ckpt.params_hash(ck.params)
    sql(db, "UPDATE events SET details = ? WHERE seq = ?",
        (json.dumps(doc, sort_keys=True, separators=(",", ":")), seq))
    refused(config, data, seq, "checkpoint")


def _schema(path):
    return ckpt.read_model_info(path).schema


def _size(path):
    return ckpt.read_model_info(path).size


def test_a_deleted_event_deep_in_the_log_is_refused(node):
    config, data = node
    db = data / "provenance.db"
    sql(db, "DELETE FROM events WHERE seq = 3")
    refused(config, data, 4, rows(db, "WHERE seq = 4")[0][1])


def test_a_byte_flipped_in_the_database_file_is_refused(node):
    """One byte of an early event's stored details, flipped in the file itself (not through SQL)."""
    config, data = node
    db = data / "provenance.db"
    seq, kind, details = next(r for r in rows(db) if r[0] >= 2 and len(r[2]) > 40)
    raw = bytearray(db.read_bytes())
    at = raw.find(details.encode())
    assert at > 0 and raw.find(details.encode(), at + 1) < 0
    spot = at + details.index(":") + 2  # inside the first value, a digit or a letter: still valid text
    raw[spot] ^= 0x01
    db.write_bytes(bytes(raw))
    refused(config, data, seq, kind)


# --- the membership is rebuilt from the log --------------------------------------------------

LIBP2P = {"train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
          "round": {"deadline": 1.0, "interval": 0.3, "rounds": 0, "train_in_thread": False},
          "aggregation": {"rule": "mean", "f": 0}}


@pytest.mark.timeout(240)
def test_a_lost_membership_file_forgets_no_revocation(tmp_path, peer_processes):
    """Node 0's log holds the admin's revocation of node 1 (as a peer that applied it logs it);
    its membership.msgpack is gone. Node 1, started on a blank data folder, keeps sending to node
    0: node 0 rejects every update of it as revoked and never aggregates one, and writes the
    membership file again from its log."""
    admin = Identity.from_seed(b"A" * 32)
    ids = {"0": Identity.from_seed(b"0" * 32), "1": Identity.from_seed(b"1" * 32)}
    nodes = write_plan(from_spec("complete:2"), tmp_path / "plan", network_id="lab", overrides=LIBP2P,
                       draw=False, identities={int(k): v for k, v in ids.items()}, admin=admin, transport_options={"ports": free_ports(2)})
    by = {n.label: n for n in nodes}
    revoke = seal_record(admin, network="lab", epoch=1, action="revoke", peer=ids["1"].peer_id)
    rec = open_record(revoke, admin=admin.peer_id, network="lab")
    db = by["0"].dir / "data" / "provenance.db"
    log = ProvenanceLog(db, ids["0"], "lab")
    log.append(EventKind.MEMBERSHIP, 0, rec.peer, rec.record_id, {**rec.summary(), "bytes": revoke.hex()})
    log.close()
    cache = by["0"].dir / "data" / "membership.msgpack"
    assert not cache.exists()
    peer_processes.start("0", by["0"].config)
    peer_processes.start("1", by["1"].config)
    end = time.time() + 150
    while time.time() < end and min(peer_processes.log(k).count(" neighbours accepted") for k in "01") < 4 \
            and peer_processes.procs["0"].poll() is None:
        time.sleep(0.3)
    assert by["0"].peer_id == ids["0"].peer_id
    peer_processes.stop_all()
    assert min(peer_processes.log(k).count(" neighbours accepted") for k in "01") >= 4, peer_processes.log("0")
    _, started = load_events(db, kind="started")
    assert started and started[-1].details["neighbours"] == []  # the revoked one is no neighbour
    _, received = load_events(db, kind="received")  # node 1 kept sending; node 0 never took one
    assert not [e for e in received if e.counterpart == ids["1"].peer_id]
    _, aggregated = load_events(db, kind="aggregated")
    assert not [e for e in aggregated if ids["1"].peer_id in json.dumps(e.details)]
    assert msgpack.unpackb(cache.read_bytes()) == [revoke]  # the cache written again from the log
    assert verify_log(db).ok

