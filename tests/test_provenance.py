"""The provenance log: chained, signed, atomic under SIGKILL, and every tampering caught."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from gossip.identity import Identity
from gossipfl.cli import main
from peer.audit import export, trace, verify_log
from peer.errors import ProvenanceError
from peer.provenance import ProvenanceLog

from .provenance_fixtures import write_ring_logs


def test_a_real_exchange_verifies(tmp_path):
    paths, idents, _ = write_ring_logs(tmp_path)
    for p in paths:
        v = verify_log(p)
        assert v.ok, v.line()
        assert v.received_headers == 2 * 3
    r = CliRunner().invoke(main, ["audit", "verify", *map(str, paths)])
    assert r.exit_code == 0 and r.output.count("OK") == 3


def test_log_belongs_to_one_peer(tmp_path):
    ProvenanceLog(tmp_path / "a.db", Identity.generate()).close()
    with pytest.raises(ProvenanceError, match="belongs to peer"):
        ProvenanceLog(tmp_path / "a.db", Identity.generate())


def test_reopen_continues_the_chain(tmp_path):
    ident = Identity.generate()
    log = ProvenanceLog(tmp_path / "a.db", ident)
    log.append("started", 0)
    log.close()
    log = ProvenanceLog(tmp_path / "a.db", ident)
    assert log.append("stopped", 0) == 2
    log.close()
    assert verify_log(tmp_path / "a.db").ok


def _tamperings(rng: random.Random, con: sqlite3.Connection):
    """Yield (description, SQL mutation) choices on a copy of a log."""
    rows = con.execute("SELECT seq FROM events").fetchall()
    n = len(rows)
    seq = rng.randint(1, n)
    col = rng.choice(["ts", "kind", "round", "counterpart", "update_hash", "details", "prev", "hash", "sig"])
    return seq, col, n


def _flip_one_byte(value, rng):
    if value is None:
        return "x"
    if isinstance(value, (int, float)):
        return value + rng.choice([1, -1, 0.5])
    data = bytearray(value if isinstance(value, bytes) else value.encode())
    i = rng.randrange(len(data)) if data else 0
    if data:
        data[i] ^= 1 << rng.randrange(8)
    else:
        data = bytearray(b"x")
    return bytes(data) if isinstance(value, bytes) else data.decode("latin-1")


def test_every_random_tampering_is_caught(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path)
    original = paths[0]
    rng = random.Random(1234)
    caught = 0
    for trial in range(120):
        copy = tmp_path / f"copy{trial}.db"
        shutil.copy(original, copy)
        con = sqlite3.connect(copy)
        n = con.execute("SELECT count(*) FROM events").fetchone()[0]
        action = rng.choice(["flip", "flip", "delete", "delete_last", "swap", "head"])
        if action == "flip":
            seq = rng.randint(1, n)
            col = rng.choice(["ts", "kind", "round", "counterpart", "update_hash", "details", "prev", "hash", "sig"])
            value = con.execute(f"SELECT {col} FROM events WHERE seq = ?", (seq,)).fetchone()[0]
            new = _flip_one_byte(value, rng)
            if new == value:
                continue
            con.execute(f"UPDATE events SET {col} = ? WHERE seq = ?", (new, seq))
        elif action == "delete":
            con.execute("DELETE FROM events WHERE seq = ?", (rng.randint(1, n - 1),))
        elif action == "delete_last":
            con.execute("DELETE FROM events WHERE seq = ?", (n,))
        elif action == "swap":
            a, b = rng.sample(range(1, n + 1), 2)
            con.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
            con.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
            con.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))
        else:
            con.execute("DELETE FROM meta WHERE key = 'head'")
        con.commit()
        con.close()
        v = verify_log(copy)
        assert not v.ok, (action, trial)
        caught += 1
        r = CliRunner().invoke(main, ["audit", "verify", str(copy)])
        assert r.exit_code == 1 and "BROKEN" in r.output
    assert caught >= 100


def test_a_received_header_with_a_forged_sender_signature_is_caught(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path, rounds=1)
    # Re-sign a received event with a different header: the owner could do this, but the
    # sender's signature inside no longer verifies.
    con = sqlite3.connect(paths[0])
    seq, details = con.execute("SELECT seq, details FROM events WHERE kind = 'received' LIMIT 1").fetchone()
    con.close()
    from gossip.identity import Identity as I  # noqa: N817
    owner = I.from_seed(b"\x01" * 32)
    d = json.loads(details)
    d["sig"] = "00" * 64
    # rebuild the log up to that event with the forged header, signed by the real owner
    forged = tmp_path / "forged.db"
    log = ProvenanceLog(forged, owner, "net")
    src = sqlite3.connect(paths[0])
    for s, kind, rnd, cp, uh, det in src.execute(
            "SELECT seq, kind, round, counterpart, update_hash, details FROM events ORDER BY seq"):
        log.append(kind, rnd, cp, uh, d if s == seq else json.loads(det))
    log.close()
    v = verify_log(forged)
    assert not v.ok and v.first_bad == seq and "sender's signature" in v.problem


WRITER = textwrap.dedent("""
    import sys
    from gossip.identity import Identity
    from peer.provenance import ProvenanceLog
    log = ProvenanceLog(sys.argv[1], Identity.from_seed(b"k" * 32), "net")
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        if i % 3:
            log.append("trained", i, details={"loss": 0.5, "pad": "x" * (i % 700)})
        else:
            log.append_many([("sent", i, "peer", "aa" * 32, {"n": k}) for k in range(5)])
""")


@pytest.mark.timeout(120)
def test_sigkill_mid_stream_leaves_a_verifiable_log(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for attempt in range(3):
        db = tmp_path / f"killed{attempt}.db"
        proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.3 + 0.4 * attempt)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        v = verify_log(db)
        assert v.ok, v.line()
        assert v.events > 10


def test_export_and_show(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path, rounds=2)
    lines = export(paths[0], "jsonl").splitlines()
    assert len(lines) == len(ProvenanceLog(paths[0], Identity.from_seed(b"\x01" * 32)).events())
    assert json.loads(lines[0])["kind"] == "started"
    csv_text = export(paths[0], "csv")
    assert csv_text.splitlines()[0].startswith("peer,seq,ts,kind")
    r = CliRunner().invoke(main, ["audit", "show", str(paths[0]), "--kind", "received", "--json"])
    assert r.exit_code == 0
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert rows and all(x["kind"] == "received" for x in rows)
    r = CliRunner().invoke(main, ["audit", "show", str(paths[0]), "--round", "2"])
    assert r.exit_code == 0 and "aggregated" in r.output
    out = tmp_path / "x.csv"
    r = CliRunner().invoke(main, ["audit", "export", str(paths[0]), "--format", "csv", "--out", str(out)])
    assert r.exit_code == 0 and out.read_text() == csv_text


def test_trace_follows_an_update_back_and_forward(tmp_path):
    paths, idents, updates = write_ring_logs(tmp_path, peers=3, rounds=3)
    target = updates[(0, 2)]  # peer 0's update of round 2
    node = trace(target, paths, depth=2)
    assert node.sender == idents[0].peer_id and node.round == 2
    # its inputs: what peer 0 aggregated in round 1 (own + both neighbours)
    assert {i.update for i in node.inputs} == {updates[(0, 1)], updates[(1, 1)], updates[(2, 1)]}
    # it fed the round-2 aggregations of peer 0 and both neighbours, whose round-3 updates follow
    assert {f["peer"] for f in node.fed} == {p.peer_id for p in idents}
    assert {f["next"].update for f in node.fed} == {updates[(i, 3)] for i in range(3)}
    r = CliRunner().invoke(main, ["audit", "trace", target, *map(str, paths), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["update"] == target
    dot = tmp_path / "l.dot"
    r = CliRunner().invoke(main, ["audit", "trace", target, *map(str, paths), "--dot", str(dot)])
    assert r.exit_code == 0 and "came from" in r.output
    assert dot.read_text().startswith("digraph") and "->" in dot.read_text()


@pytest.mark.parametrize("args", [["audit", "verify", "/nope/x.db"], ["audit", "show", "/nope/x.db"],
                                  ["audit", "export", "/nope/x.db"]])
def test_missing_or_foreign_files_exit_2(tmp_path, args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.startswith("error:")
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    r = CliRunner().invoke(main, args[:2] + [str(foreign)])
    assert r.exit_code == 2 and "not a gossipfl provenance log" in r.output
    text = tmp_path / "text.db"
    text.write_text("hello world" * 100)
    r = CliRunner().invoke(main, args[:2] + [str(text)])
    assert r.exit_code == 2 and "not a provenance database" in r.output


def test_trace_unknown_update_is_an_error(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path, rounds=1)
    r = CliRunner().invoke(main, ["audit", "trace", "ff" * 32, str(paths[0])])
    assert r.exit_code == 2 and "appears in none" in r.output
