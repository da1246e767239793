"""The provenance log: chained, signed, atomic under SIGKILL, and every tampering caught."""

from __future__ import annotations

import hashlib
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

import msgpack
import pytest
from click.testing import CliRunner

from gossip.envelope import DOMAIN as ENVELOPE_DOMAIN
from gossip.identity import Identity
from gossipfl.cli import main
from peer.audit.verify import export, load_events, trace, verify_log
from peer.errors import ProvenanceError
from peer.state.provenance import KINDS, EventKind, NewEvent, ProvenanceLog, details_text

from .provenance_fixtures import append_signed_row, write_ring_logs


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
    from peer.state.provenance import ProvenanceLog
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


# --- typed events ------------------------------------------------------------------------


def test_event_kinds_are_one_enum_and_kinds_derives_from_it(tmp_path):
    assert KINDS == tuple(k.value for k in EventKind) and "diverged" in KINDS
    with pytest.raises(ValueError, match="unknown provenance event kind 'bogus'"):
        NewEvent("bogus", 1)
    assert NewEvent("sent", 1).kind is EventKind.SENT
    log = ProvenanceLog(tmp_path / "a.db", Identity.generate())
    with pytest.raises(ValueError, match="unknown provenance event kind"):
        log.append_many([("bogus", 1, None, None, {})])
    seq = log.append_many([NewEvent(EventKind.STARTED, 0, details={"n": 1}),
                           ("trained", 1, None, None, {"loss": 0.5}),  # the old 5-tuples still work
                           NewEvent(EventKind.DIVERGED, 1, details={"restored_round": 1})])
    assert seq == 3 and [e.kind for e in log.events()] == ["started", "trained", "diverged"]
    assert log.last_event(EventKind.TRAINED).details == {"loss": 0.5} and log.last_event("checkpoint") is None
    log.close()
    assert verify_log(tmp_path / "a.db").ok


# --- numbers that go bad ------------------------------------------------------------------


def test_non_finite_details_are_recorded_as_strings_and_never_crash(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "a.db"
    log = ProvenanceLog(path, ident)
    nan, inf = float("nan"), float("inf")
    log.append("trained", 1, details={"loss": nan, "lr": inf, "grad": -inf, "per_batch": [1.0, nan, (inf,)]})
    log.close()
    log = ProvenanceLog(path, ident)  # a restart opens and continues it
    log.append("stopped", 1)
    assert log.events("trained")[0].details == {"loss": "NaN", "lr": "Infinity", "grad": "-Infinity",
                                                "per_batch": [1.0, "NaN", ["Infinity"]]}
    log.close()
    assert verify_log(path).ok

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    r = CliRunner().invoke(main, ["audit", "show", str(path), "--json"])
    assert r.exit_code == 0 and strict(r.output.splitlines()[0])["details"]["lr"] == "Infinity"
    r = CliRunner().invoke(main, ["audit", "show", str(path)])
    assert r.exit_code == 0 and "NaN" in r.output
    assert strict(export(path, "jsonl").splitlines()[0])["details"]["grad"] == "-Infinity"


def test_a_nan_literal_written_with_the_key_is_not_canonical_and_shows_as_a_string(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "a.db"
    log = ProvenanceLog(path, ident)
    log.append("started", 0)
    log.close()
    append_signed_row(path, ident, "trained", 1, None, None, '{"loss":NaN}')
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and "canonical" in v.problem
    _, events = load_events(path)
    assert events[1].details == {"loss": "NaN"}


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
def test_deeply_nested_details_are_reported_not_a_recursion_error(tmp_path, depth):
    ident = Identity.generate()
    path = tmp_path / "a.db"
    log = ProvenanceLog(path, ident)
    log.append("started", 0)
    log.close()
    append_signed_row(path, ident, "trained", 1, None, None, '{"a":' + "[" * depth + "]" * depth + "}")
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and "nest deeper than 32" in v.problem
    for args in (["audit", "show", str(path)], ["audit", "show", str(path), "--json"],
                 ["audit", "export", str(path)], ["audit", "verify", str(path)]):
        r = CliRunner().invoke(main, args)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    assert "nest deeper" in CliRunner().invoke(main, ["audit", "show", str(path), "--json"]).output


def test_details_nested_past_the_limit_are_refused_on_append(tmp_path):
    log = ProvenanceLog(tmp_path / "a.db", Identity.generate())
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ValueError, match="nest deeper than 32"):
        log.append("trained", 1, details={"x": deep})
    ok: list = []
    for _ in range(30):
        ok = [ok]
    log.append("trained", 1, details={"x": ok})  # 32 levels with the details object itself
    log.close()
    assert verify_log(tmp_path / "a.db").ok


def test_non_object_details_are_broken_and_shown(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "a.db"
    log = ProvenanceLog(path, ident)
    log.append("started", 0)
    log.close()
    append_signed_row(path, ident, "trained", 1, None, None, "[1,2]")
    v = verify_log(path)
    assert not v.ok and "not a JSON object" in v.problem
    assert CliRunner().invoke(main, ["audit", "show", str(path)]).exit_code == 0


# --- audit verify: the mutants named in the issue -------------------------------------------------


def test_an_empty_log_is_reported_as_empty_not_ok(tmp_path):
    path = tmp_path / "a.db"
    ProvenanceLog(path, Identity.generate()).close()
    v = verify_log(path)
    assert v.status == "EMPTY" and not v.ok and v.line().startswith("EMPTY") and "0 events" in v.line()
    r = CliRunner().invoke(main, ["audit", "verify", str(path)])
    assert r.exit_code == 1 and "EMPTY" in r.output and "OK" not in r.output


def test_a_cut_log_with_a_head_rewritten_under_a_bad_signature_is_broken(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path, rounds=1)
    con = sqlite3.connect(paths[0])
    n = con.execute("SELECT max(seq) FROM events").fetchone()[0]
    last = con.execute("SELECT seq, hash FROM events WHERE seq = ?", (n - 1,)).fetchone()
    con.execute("DELETE FROM events WHERE seq = ?", (n,))
    con.execute("UPDATE meta SET value = ? WHERE key = 'head'",
                (msgpack.packb([last[0], last[1], b"\x01" * 64], use_bin_type=True),))
    con.commit()
    con.close()
    v = verify_log(paths[0])
    assert not v.ok and v.first_bad == n - 1 and "head's signature" in v.problem


def test_a_received_event_whose_update_hash_is_not_the_stored_header_is_broken(tmp_path):
    # the owner logs a real sender header under another update's hash: lineage misattributed
    paths, idents, updates = write_ring_logs(tmp_path, rounds=2)
    src = sqlite3.connect(paths[0])
    rows = src.execute("SELECT kind, round, counterpart, update_hash, details FROM events ORDER BY seq").fetchall()
    src.close()
    forged = tmp_path / "forged.db"
    log = ProvenanceLog(forged, idents[0], "net")
    first_received = next(i for i, r in enumerate(rows) if r[0] == "received")
    for i, (kind, rnd, cp, uh, details) in enumerate(rows):
        log.append(kind, rnd, cp, updates[(1, 2)] if i == first_received else uh, json.loads(details))
    log.close()
    v = verify_log(forged)
    assert not v.ok and v.first_bad == first_received + 1 and "update hash does not match" in v.problem


def test_an_event_spliced_from_a_fork_of_the_same_peer_is_broken(tmp_path):
    # two histories signed by one key: event 3 of fork B, its prev rewritten to follow fork A,
    # with B's (validly signed) head. Only the event hash covering prev catches this.
    ident = Identity.from_seed(b"f" * 32)
    for name, loss in (("a.db", 0.1), ("b.db", 0.2)):
        log = ProvenanceLog(tmp_path / name, ident, "net")
        for r in (1, 2, 3):
            log.append("trained", r, details={"loss": loss})
        log.close()
    b = sqlite3.connect(tmp_path / "b.db")
    row3 = b.execute("SELECT * FROM events WHERE seq = 3").fetchone()
    head_b = b.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()[0]
    b.close()
    con = sqlite3.connect(tmp_path / "a.db")
    prev_a = con.execute("SELECT hash FROM events WHERE seq = 2").fetchone()[0]
    con.execute("DELETE FROM events WHERE seq = 3")
    con.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", row3[:7] + (prev_a,) + row3[8:])
    con.execute("UPDATE meta SET value = ? WHERE key = 'head'", (head_b,))
    con.commit()
    con.close()
    v = verify_log(tmp_path / "a.db")
    assert not v.ok and v.first_bad == 3 and "hash does not match" in v.problem
    with pytest.raises(ProvenanceError, match="hash does not match"):
        ProvenanceLog(tmp_path / "a.db", ident, "net")


def _owner_log_with(tmp_path, *rows):
    """A log (owner-signed throughout) of `started` and then `rows` as given."""
    ident = Identity.from_seed(b"\x01" * 32)
    path = tmp_path / "owned.db"
    log = ProvenanceLog(path, ident, "net")
    log.append("started", 0)
    log.close()
    for row in rows:
        append_signed_row(path, ident, *row)
    return path


def _a_received_row(tmp_path):
    """(counterpart, update hash, details) of a real received event of peer 0."""
    paths, idents, _ = write_ring_logs(tmp_path, rounds=1)
    con = sqlite3.connect(paths[0])
    row = con.execute("SELECT counterpart, update_hash, details FROM events WHERE kind = 'received'").fetchone()
    con.close()
    return row, idents


def test_a_received_event_naming_another_sender_than_its_header_is_broken(tmp_path):
    (cp, uh, details), idents = _a_received_row(tmp_path)
    other = next(i.peer_id for i in idents if i.peer_id not in (cp, idents[0].peer_id))
    path = _owner_log_with(tmp_path, ("received", 1, other, uh, details))
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and "sender differs" in v.problem


@pytest.mark.parametrize("change, problem", [
    (lambda d: {k: v for k, v in d.items() if k != "header"}, "lacks the sender's signed header"),
    (lambda d: {**d, "sig": "zz"}, "lacks the sender's signed header"),
    (lambda d: {**d, "header": "c1"}, "update hash does not match"),
])
def test_a_received_event_with_a_missing_or_bad_header_is_broken(tmp_path, change, problem):
    (cp, uh, details), _ = _a_received_row(tmp_path)
    path = _owner_log_with(tmp_path, ("received", 1, cp, uh, details_text(change(json.loads(details)))))
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and problem in v.problem


def test_a_stored_header_that_does_not_decode_is_broken(tmp_path):
    header = b"\xc1\xc1"  # not msgpack, hashed as the update id so only decoding fails
    uh = hashlib.sha256(ENVELOPE_DOMAIN + header).hexdigest()
    path = _owner_log_with(tmp_path, ("received", 1, "x", uh, details_text({"header": header.hex(), "sig": "00"})))
    v = verify_log(path)
    assert not v.ok and "does not decode" in v.problem


def test_an_owner_signed_event_of_an_unknown_kind_is_broken(tmp_path):
    path = _owner_log_with(tmp_path, ("bogus", 1, None, None, "{}"))
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and "unknown kind 'bogus'" in v.problem


def test_a_verdict_counts_events_and_received_headers(tmp_path):
    paths, _, _ = write_ring_logs(tmp_path, peers=3, rounds=2)
    v = verify_log(paths[0])
    n = sqlite3.connect(paths[0]).execute("SELECT count(*) FROM events").fetchone()[0]
    assert v.ok and v.status == "OK" and v.events == n and v.received_headers == 4
    assert v.line().startswith(f"OK      {paths[0]}: {n} events") and "4 sender headers" in v.line()


def test_a_deleted_middle_event_is_named_as_a_sequence_jump(tmp_path):
    path = _owner_log_with(tmp_path, *[("trained", r, None, None, "{}") for r in range(1, 6)])
    con = sqlite3.connect(path)
    con.execute("DELETE FROM events WHERE seq = 4")
    con.commit()
    con.close()
    v = verify_log(path)
    assert not v.ok and v.first_bad == 5 and "sequence jumps from 3 to 5" in v.problem


def test_details_stored_as_a_blob_are_broken_not_a_crash(tmp_path):
    path = _owner_log_with(tmp_path, ("trained", 1, None, None, "{}"))
    con = sqlite3.connect(path)
    con.execute("UPDATE events SET details = x'7b7d' WHERE seq = 2")
    con.commit()
    con.close()
    v = verify_log(path)
    assert not v.ok and v.first_bad == 2 and "wrong type" in v.problem
    assert CliRunner().invoke(main, ["audit", "show", str(path)]).exit_code == 0
