"""A peer never trusts its own files blindly: the provenance log checks its tail on open, and a
checkpoint is used only when the log's last checkpoint event vouches for it (or its .tmp)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import msgpack
import pytest
import torch
from click.testing import CliRunner

from gossip.identity import Identity
from gossipfl.cli import main
from peer.audit.verify import verify_log
from peer.errors import ProvenanceError
from peer.state import checkpoint as ckpt
from peer.state.provenance import (
    GENESIS,
    BrokenLogError,
    EventKind,
    NewEvent,
    ProvenanceLog,
    signed_head,
)
from peer.state.resume import ResumeError, load_for_resume

SCHEMA = b"\x05" * 32
N = 64
SEED = b"d" * 32


def _log_with_events(path, n=12, ident=None):
    ident = ident or Identity.from_seed(SEED)
    log = ProvenanceLog(path, ident, "net")
    log.append_many([NewEvent(EventKind.TRAINED, i, details={"loss": 1.0 / i}) for i in range(1, n + 1)])
    log.close()
    return ident


def _sql(path, *statements):
    con = sqlite3.connect(path)
    for st, *args in statements:
        con.execute(st, *args)
    con.commit()
    con.close()


def _refused(path, ident, match):
    with pytest.raises(BrokenLogError, match=match) as err:
        ProvenanceLog(path, ident, "net")
    text = str(err.value)
    assert f"gossipfl audit verify {path}" in text and "aside" in text and "\n" not in text
    assert text.count(str(path)) == 2  # once what is broken, once the command that shows it
    return text


# --- the log checks itself on open -----------------------------------------------------


def test_a_new_log_is_born_with_a_signed_genesis_head_and_verifies_as_empty(tmp_path):
    path = tmp_path / "p.db"
    ident = Identity.from_seed(SEED)
    ProvenanceLog(path, ident, "net").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.db"]  # built aside, renamed in, no WAL left
    head = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='head'").fetchone()[0]
    assert head == signed_head(ident, 0, GENESIS)
    v = verify_log(path)
    assert v.status == "EMPTY" and not v.ok and v.events == 0
    r = CliRunner().invoke(main, ["audit", "verify", str(path)])
    assert r.exit_code == 1 and r.output.startswith("EMPTY") and "0 events" in r.output
    log = ProvenanceLog(path, ident, "net")  # an empty log is intact: appending continues it
    assert log.append("started", 0) == 1
    log.close()
    assert verify_log(path).ok


def test_a_creation_interrupted_by_a_crash_leaves_no_log_and_is_redone(tmp_path):
    path = tmp_path / "p.db"
    (tmp_path / "p.db.new").write_bytes(b"half a database")  # killed while building it
    log = ProvenanceLog(path, Identity.from_seed(SEED), "net")
    log.append("started", 0)
    log.close()
    assert verify_log(path).ok and not (tmp_path / "p.db.new").exists()


def test_a_log_with_its_last_five_events_cut_is_refused(tmp_path):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, ("DELETE FROM events WHERE seq > 7",))
    _refused(path, ident, "names event 12 but the log ends at event 7")
    v = verify_log(path)  # and audit verify agrees
    assert not v.ok and v.first_bad == 8 and "cut off the end" in v.problem


def test_a_log_whose_head_was_deleted_is_refused(tmp_path):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, ("DELETE FROM meta WHERE key = 'head'",))
    _refused(path, ident, "signed head is missing")


def test_a_head_re_signed_with_a_bad_signature_is_refused(tmp_path):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    con = sqlite3.connect(path)
    last = con.execute("SELECT seq, hash FROM events WHERE seq = 11").fetchone()
    con.close()
    bad = msgpack.packb([last[0], last[1], b"\x00" * 64], use_bin_type=True)
    _sql(path, ("DELETE FROM events WHERE seq = 12",), ("UPDATE meta SET value = ? WHERE key = 'head'", (bad,)))
    _refused(path, ident, "head's signature does not verify")
    forged = signed_head(Identity.from_seed(b"x" * 32), *last)  # a valid signature, by someone else
    _sql(path, ("UPDATE meta SET value = ? WHERE key = 'head'", (forged,)))
    _refused(path, ident, "head's signature does not verify")


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + b"\x00" * 10, b"hello world" * 100])
def test_an_empty_or_foreign_file_is_refused_and_left_as_it_is(tmp_path, content):
    path = tmp_path / "p.db"
    path.write_bytes(content)
    _refused(path, Identity.from_seed(SEED), "truncated|not a provenance database|not a gossipfl")
    assert path.read_bytes() == content  # never silently recreated


def test_a_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "p.db"
    _sql(path, ("CREATE TABLE t (x)",))
    _refused(path, Identity.from_seed(SEED), "not a gossipfl provenance log")


def test_a_log_with_every_event_and_the_head_deleted_is_refused(tmp_path):
    # the head is the witness: every log has one from creation, so no head means it was deleted
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, ("DELETE FROM events",), ("DELETE FROM meta WHERE key = 'head'",))
    _refused(path, ident, "signed head is missing")
    v = verify_log(path)
    assert v.status == "BROKEN" and "head is missing" in v.problem


def test_every_event_deleted_under_an_intact_head_is_refused(tmp_path):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, ("DELETE FROM events",))
    _refused(path, ident, "event 1: the signed head names event 12 but the log ends at event 0")


@pytest.mark.parametrize("mutation, match", [
    (("UPDATE events SET details = '{\"loss\":9}' WHERE seq = 12",), r"event 12 \(trained\): its hash does not match"),
    (("UPDATE events SET sig = zeroblob(64) WHERE seq = 12",), r"event 12 \(trained\): its signature does not verify"),
    (("DELETE FROM events WHERE seq = 11",), r"event 12 \(trained\): the sequence jumps from 10 to 12"),
    (("UPDATE events SET prev = ? WHERE seq = 12", ("ab" * 32,)), r"event 12 \(trained\): it does not follow"),
])
def test_a_tampered_last_event_is_refused(tmp_path, mutation, match):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, mutation)
    _refused(path, ident, match)


@pytest.mark.parametrize("mutation, match", [
    (("UPDATE events SET details = '{\"loss\":9}' WHERE seq = 3",), r"event 3 \(trained\): its hash does not match"),
    (("UPDATE events SET kind = 'stopped' WHERE seq = 2",), r"event 2 \(stopped\): its hash does not match"),
    (("DELETE FROM events WHERE seq = 4",), r"event 5 \(trained\): the sequence jumps from 3 to 5"),
    (("UPDATE events SET round = 99 WHERE seq = 1",), r"event 1 \(trained\): its hash does not match"),
    (("UPDATE events SET seq = seq + 100 WHERE seq = 6",), r"event 7 \(trained\): the sequence jumps from 5 to 7"),
])
def test_opening_checks_the_whole_chain(tmp_path, mutation, match):
    """A break anywhere in the chain (not only at its end) is refused on open, naming the first
    event that does not fit; `audit verify` agrees on where."""
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    _sql(path, mutation)
    _refused(path, ident, match)
    assert not verify_log(path).ok


def test_a_different_history_of_the_same_length_under_the_old_head_is_broken(tmp_path):
    """The signed head's hash, not only its sequence number, must match the chain's end: the
    events of another history of this peer with the same length under this log's head."""
    ident = _log_with_events(tmp_path / "a.db")
    log = ProvenanceLog(tmp_path / "b.db", ident, "net")
    log.append_many([NewEvent(EventKind.TRAINED, i, details={"loss": 2.0 / i}) for i in range(1, 13)])
    log.close()
    head_a = sqlite3.connect(tmp_path / "a.db").execute("SELECT value FROM meta WHERE key='head'").fetchone()[0]
    _sql(tmp_path / "b.db", ("UPDATE meta SET value = ? WHERE key = 'head'", (head_a,)))
    v = verify_log(tmp_path / "b.db")
    assert v.status == "BROKEN" and "signed head" in v.problem
    _refused(tmp_path / "b.db", ident, "event 12 .*not the one the signed head names")


def test_events_appended_past_the_signed_head_are_named_from_the_first(tmp_path):
    """An intact chain that runs on past its signed head (events added, the head put back):
    refused, naming the first event past the head."""
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    head = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='head'").fetchone()[0]
    log = ProvenanceLog(path, ident, "net")
    log.append_many([NewEvent(EventKind.TRAINED, i, details={"loss": 0.5}) for i in (13, 14)])
    log.close()
    _sql(path, ("UPDATE meta SET value = ? WHERE key = 'head'", (head,)))
    _refused(path, ident, r"event 13 \(trained\): it lies past the signed head \(event 12\): events added")


def test_a_signature_changed_after_the_log_was_opened_is_refused_when_read_back(tmp_path):
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    log = ProvenanceLog(path, ident, "net")
    try:
        log.append(EventKind.CHECKPOINT, 12, details={"next_round": 12, "params_hash": "ab" * 32})
        _sql(path, ("UPDATE events SET sig = ? WHERE kind = 'checkpoint'", (b"\x01" * 64,)))
        with pytest.raises(BrokenLogError, match=r"event 13 \(checkpoint\): its content does not match its hash or "
                                                 "signature"):
            log.last_event(EventKind.CHECKPOINT)
    finally:
        log.close()


def test_another_peers_log_is_refused_with_its_owner_named(tmp_path):
    path = tmp_path / "p.db"
    _log_with_events(path)
    with pytest.raises(ProvenanceError, match="belongs to peer"):
        ProvenanceLog(path, Identity.from_seed(b"o" * 32), "net")


# --- checkpoints tied to the log ---------------------------------------------------------


def _ck(rnd, fill=None):
    params = torch.arange(N, dtype=torch.float32) * 0.5 + rnd if fill is None else torch.full((N,), fill)
    return ckpt.Checkpoint(rnd, SCHEMA, params, torch.zeros(N), [("12D3KooWabc", rnd)], ["ab" * 32])


def _checkpoint_round(path, log, ck, *, rename=True, log_it=True):
    """What the peer does: write .tmp and fsync, log the checkpoint event, rename into place."""
    tmp = ckpt.write(path, ck)
    if log_it:
        log.append_many([NewEvent(EventKind.CHECKPOINT, ck.round, details={
            "next_round": ck.round, "params_hash": ckpt.params_hash(ck.params)})])
    if rename:
        ckpt.commit(tmp, path)
    return tmp


@pytest.fixture
def peer_files(tmp_path):
    log = ProvenanceLog(tmp_path / "provenance.db", Identity.from_seed(SEED), "net")
    yield tmp_path / "checkpoint.msgpack", log
    log.close()


def test_params_hash_is_what_the_peer_logged_all_along():
    t = torch.randn(1000)
    assert ckpt.params_hash(t) == hashlib.sha256(t.numpy()).hexdigest()
    assert ckpt.params_hash(t.double()) == ckpt.params_hash(t)  # always of the float32 values
    wide = torch.randn(10, 4)
    assert ckpt.params_hash(wide.t()) == hashlib.sha256(wide.t().contiguous().numpy()).hexdigest()


def test_no_checkpoint_and_no_checkpoint_event_is_a_fresh_start(peer_files):
    path, log = peer_files
    log.append("started", 0)
    assert load_for_resume(path, log, SCHEMA, N) is None


def test_the_checkpoint_the_log_vouches_for_is_resumed(peer_files):
    path, log = peer_files
    for r in (1, 2, 3):
        _checkpoint_round(path, log, _ck(r))
    ck = load_for_resume(path, log, SCHEMA, N)
    assert ck.round == 3 and torch.equal(ck.params, _ck(3).params)
    assert ck.replay == [("12D3KooWabc", 3)] and ck.parents == ["ab" * 32]


def test_flipped_bytes_in_the_parameters_are_refused(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(4))
    raw = bytearray(path.read_bytes())
    at = raw.index(_ck(4).params.numpy().tobytes())
    for i in range(at + 40, at + 56):  # 16 bytes inside the parameter block
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert ckpt.load(path, SCHEMA, N).round == 4  # still a well-formed checkpoint...
    with pytest.raises(ResumeError, match="says round 4 with params hash"):  # ...that the log does not describe
        load_for_resume(path, log, SCHEMA, N)


@pytest.mark.parametrize("rnd, match", [(-7, "'round' must be a non-negative integer"), (100000, "at round 100000")])
def test_an_edited_round_is_refused(peer_files, rnd, match):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(4))
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    doc["round"] = rnd
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ResumeError, match=match):
        load_for_resume(path, log, SCHEMA, N)


def test_a_deleted_checkpoint_is_refused_while_the_log_has_a_checkpoint_event(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(62))
    path.unlink()
    with pytest.raises(ResumeError, match=r"checkpoint.msgpack is missing but .* says round 62"):
        load_for_resume(path, log, SCHEMA, N)


@pytest.mark.parametrize("rnd", [1, 5])
@pytest.mark.parametrize("log_state", ["missing", "empty"])
def test_a_missing_or_empty_log_next_to_a_checkpoint_past_round_zero_is_refused(tmp_path, log_state, rnd):
    path = tmp_path / "checkpoint.msgpack"
    ckpt.save(path, _ck(rnd))
    if log_state == "empty":
        ProvenanceLog(tmp_path / "provenance.db", Identity.from_seed(SEED), "net").close()
    log = ProvenanceLog(tmp_path / "provenance.db", Identity.from_seed(SEED), "net")
    try:
        with pytest.raises(ResumeError, match=f"at round {rnd} .* records no checkpoint"):
            load_for_resume(path, log, SCHEMA, N)
    finally:
        log.close()


@pytest.mark.parametrize("tmp_round, fill", [(3, 0.123), (4, None), (3, None)])
def test_a_deleted_checkpoint_next_to_a_tmp_the_log_never_recorded_is_refused(peer_files, tmp_round, fill):
    """A well-formed `.tmp` is rolled forward only when it is exactly what the log's last
    checkpoint event names (round and params hash), never merely because it is there."""
    path, log = peer_files
    _checkpoint_round(path, log, _ck(3))
    path.unlink()
    odd = _ck(tmp_round, fill)
    if (tmp_round, fill) == (3, None):
        odd.params[0] += 1.0  # the logged round, other weights
    ckpt.write(path, odd)
    with pytest.raises(ResumeError, match="missing but .* says round 3"):
        load_for_resume(path, log, SCHEMA, N)
    assert not path.exists()


def test_a_round_zero_checkpoint_without_an_event_is_a_fresh_start(peer_files):
    path, log = peer_files
    ckpt.save(path, _ck(0))
    assert load_for_resume(path, log, SCHEMA, N) is None


def test_a_checkpoint_logged_but_not_renamed_is_rolled_forward(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(1))
    tmp = _checkpoint_round(path, log, _ck(2), rename=False)  # killed between the event and the rename
    ck = load_for_resume(path, log, SCHEMA, N)
    assert ck.round == 2 and torch.equal(ck.params, _ck(2).params)
    assert not tmp.exists() and ckpt.load(path, SCHEMA, N).round == 2  # now in place


def test_the_first_checkpoint_logged_but_not_renamed_is_rolled_forward(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(1), rename=False)
    assert load_for_resume(path, log, SCHEMA, N).round == 1 and path.exists()


def test_a_checkpoint_written_but_not_logged_is_ignored(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(1))
    tmp = _checkpoint_round(path, log, _ck(2), rename=False, log_it=False)  # killed before the event
    assert load_for_resume(path, log, SCHEMA, N).round == 1
    assert tmp.exists()  # the next checkpoint overwrites it


def test_a_torn_tmp_is_not_rolled_forward(peer_files):
    path, log = peer_files
    _checkpoint_round(path, log, _ck(1))
    tmp = _checkpoint_round(path, log, _ck(2), rename=False)
    tmp.write_bytes(tmp.read_bytes()[:100])  # cannot happen with the fsync-then-log order; refused anyway
    with pytest.raises(ResumeError, match="says round 2"):
        load_for_resume(path, log, SCHEMA, N)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from gossip.identity import Identity
    from peer.state import checkpoint as ckpt
    from peer.state.provenance import EventKind, NewEvent, ProvenanceLog
    from peer.state.resume import load_for_resume
    folder, stop_round, stop_at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    path = os.path.join(folder, "checkpoint.msgpack")
    log = ProvenanceLog(os.path.join(folder, "provenance.db"), Identity.from_seed(b"d" * 32), "net")
    ck = load_for_resume(path, log, b"\\x05" * 32, 64)
    start = 1 if ck is None else ck.round + 1
    print("resumed", 0 if ck is None else ck.round, flush=True)
    for r in range(start, 10**6):
        new = ckpt.Checkpoint(r, b"\\x05" * 32, torch.full((64,), float(r)))
        tmp = ckpt.write(path, new)
        if r == stop_round and stop_at == "written":
            os.kill(os.getpid(), signal.SIGKILL)
        fd = os.open(tmp, os.O_RDONLY); os.fsync(fd); os.close(fd)
        log.append_many([NewEvent(EventKind.TRAINED, r, details={"loss": 0.1}),
                         NewEvent(EventKind.CHECKPOINT, r, details={
                             "next_round": r, "params_hash": ckpt.params_hash(new.params)})])
        if r == stop_round and stop_at == "logged":
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.commit(tmp, path)
        if r == stop_round and stop_at == "renamed":
            os.kill(os.getpid(), signal.SIGKILL)
""")


def _run_killer(script, folder, stop_round, stop_at, timeout=60):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(stop_round), stop_at],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(240)
def test_kill_9_at_every_step_of_a_checkpoint_still_resumes(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    folder = tmp_path / "peer"
    folder.mkdir()
    expected = 0
    # each run resumes where the last one's log says, then is killed at the next step
    for stop_round, stop_at, resumes_at in [(3, "written", 0), (5, "logged", 2), (7, "renamed", 5),
                                            (9, "logged", 7), (10, "written", 9)]:
        code, out, err = _run_killer(script, folder, stop_round, stop_at)
        assert code == -signal.SIGKILL, err
        assert out.split() == ["resumed", str(resumes_at)], err
        expected = stop_round if stop_at != "written" else stop_round - 1
    log = ProvenanceLog(folder / "provenance.db", Identity.from_seed(SEED), "net")
    try:
        ck = load_for_resume(folder / "checkpoint.msgpack", log, SCHEMA, N)
        assert ck.round == expected == 9 and torch.equal(ck.params, torch.full((N,), 9.0))
    finally:
        log.close()
    assert verify_log(folder / "provenance.db").ok


# --- checkpoint.load checks every field ----------------------------------------------------


def _doc(**changes):
    doc = {"format": ckpt.FORMAT, "round": 3, "schema": SCHEMA, "params": b"\x00" * (4 * N),
           "momentum": None, "replay": [["12D3KooWabc", 2]], "parents": ["ab" * 32]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


@pytest.mark.parametrize("doc, match", [
    (_doc(round=-7), "'round' must be a non-negative integer"),
    (_doc(round=2.5), "'round'"),
    (_doc(round=True), "'round'"),
    (_doc(round="3"), "'round'"),
    (_doc(round=...), "missing or unexpected"),
    (_doc(extra=1), "missing or unexpected"),
    (_doc(params=b"\x00" * 8), "'params' must be"),
    (_doc(params=None), "'params' must be"),
    (_doc(momentum="x" * 8), "'momentum' must be"),
    (_doc(replay=[["a", -1]]), "'replay'"),
    (_doc(replay=[["a", 1, 2]]), "'replay'"),
    (_doc(replay={"a": 1}), "'replay'"),
    (_doc(replay=[["x" * 65, 1]]), "'replay'"),
    (_doc(parents=["ab" * 33]), "'parents'"),
    (_doc(parents=["zz" * 32]), "'parents'"),
    (_doc(parents=["ab" * 32] * 5000), "'parents'"),
    (_doc(parents="ab" * 32), "'parents'"),
    (_doc(schema=b"\x06" * 32), "different model"),
    (_doc(format="other"), "not a gossipfl checkpoint"),
    ([1, 2, 3], "not a gossipfl checkpoint"),
])
def test_load_refuses_every_malformed_field(tmp_path, doc, match):
    path = tmp_path / "c"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(path, SCHEMA, N)


def test_load_refuses_garbage_a_directory_and_an_oversized_file(tmp_path):
    (tmp_path / "g").write_bytes(b"\xc1" * 100)
    with pytest.raises(ckpt.CheckpointError, match="unreadable checkpoint"):
        ckpt.load(tmp_path / "g", SCHEMA, N)
    (tmp_path / "d").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="not a file"):
        ckpt.load(tmp_path / "d", SCHEMA, N)
    with open(tmp_path / "big", "wb") as fh:
        fh.truncate(ckpt.max_file_size(N) + 1)
    with pytest.raises(ckpt.CheckpointError, match="larger than"):
        ckpt.load(tmp_path / "big", SCHEMA, N)


def test_a_well_formed_checkpoint_loads(tmp_path):
    path = tmp_path / "c"
    path.write_bytes(msgpack.packb(_doc(), use_bin_type=True))
    ck = ckpt.load(path, SCHEMA, N)
    assert ck.round == 3 and ck.momentum is None and ck.replay == [("12D3KooWabc", 2)]


def _start(config, *extra):
    from .netfixtures import ROOT

    return subprocess.run([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("damage", ["cut the log's tail", "empty the log", "delete the checkpoint",
                                    "flip checkpoint bytes"])
def test_a_real_peer_refuses_to_start_on_damaged_files_with_one_line(tmp_path, damage):
    from peer.ops.plan import write_plan
    from topology import from_spec

    over = {"round": {"deadline": 0.2, "rounds": 3}, "train": {"local_steps": 2}}
    (node, *_) = write_plan(from_spec("ring:3"), tmp_path / "plan", transport="memory", overrides=over,
                            draw=False)
    first = _start(node.config)
    assert first.returncode == 0, first.stderr[-2000:]
    data = node.dir / "data"
    if damage == "cut the log's tail":
        con = sqlite3.connect(data / "provenance.db")
        con.execute("DELETE FROM events WHERE seq > (SELECT MAX(seq) - 5 FROM events)")
        con.commit()
        con.close()
    elif damage == "empty the log":
        (data / "provenance.db").write_bytes(b"")
        for side in data.glob("provenance.db-*"):
            side.unlink()
    elif damage == "delete the checkpoint":
        (data / "checkpoint.msgpack").unlink()
    else:
        raw = bytearray((data / "checkpoint.msgpack").read_bytes())
        raw[-40:-24] = bytes(16)  # 16 bytes of the parameters
        (data / "checkpoint.msgpack").write_bytes(bytes(raw))
    again = _start(node.config)
    assert again.returncode == 2, (damage, again.stderr[-2000:])
    lines = [ln for ln in again.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in again.stderr and len([ln for ln in lines if ln.startswith("error:")]) == 1, lines


def test_an_event_changed_after_the_log_was_opened_is_refused_when_read_back(tmp_path):
    """The chain is verified on open; what start-up then reads is checked again (a row changed
    by another process meanwhile is not believed)."""
    path = tmp_path / "p.db"
    ident = _log_with_events(path)
    log = ProvenanceLog(path, ident, "net")
    try:
        log.append(EventKind.CHECKPOINT, 12, details={"next_round": 12, "params_hash": "ab" * 32})
        assert log.last_event(EventKind.CHECKPOINT).details["next_round"] == 12
        _sql(path, ("UPDATE events SET details = ? WHERE kind = 'checkpoint'",
                    ('{"next_round":2,"params_hash":"' + "cd" * 32 + '"}',)))
        with pytest.raises(BrokenLogError, match=r"event 13 \(checkpoint\): its content does not match"):
            log.last_event(EventKind.CHECKPOINT)
    finally:
        log.close()
