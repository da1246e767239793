"""A full disk is a passing condition, not a broken peer (issue 23): a real `gossipfl peer start`
whose data folder is a small tmpfs (mounted by the test) that fills up stops with one line and
exit status 75 (EX_TEMPFAIL: the systemd unit restarts it; 2 would stop it for good), never a
traceback; its log still verifies and its checkpoint is still the one the log vouches for, and
once there is room again it resumes. Symbolic links planted in the data folder are never
written through: their targets stay as they were, and the peer's files are mode 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid

import pytest

from peer.audit.verify import load_events, verify_log
from peer.errors import EXIT_TRANSIENT
from peer.ops.plan import write_plan
from peer.ops.systemd import CONFIG_ERROR_EXIT
from topology import from_spec

from .netfixtures import ROOT

OVER = {"train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
        "round": {"deadline": 0.2, "train_in_thread": False, "rounds": 0},
        "aggregation": {"rule": "mean", "f": 0}}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


def start(config, *extra, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def small_disk(tmp_path):
    """A node of a memory-transport plan whose data folder is a fresh 4 MiB tmpfs."""
    nodes = write_plan(from_spec("complete:2", seed=1), tmp_path / "plan", transport="memory", overrides=OVER,
                       draw=False)
    data = nodes[0].dir / "data"
    data.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700,nr_inodes=64", f"gfl-{uuid.uuid4().hex[:8]}",
                    str(data)], check=True)
    try:
        yield nodes[0].config, data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=True)


def fill(data, leave_kib: int):
    """A filler file leaving `leave_kib` KiB free on the tmpfs."""
    st = os.statvfs(data)
    free = st.f_bavail * st.f_frsize
    size = max(0, free - leave_kib * 1024)
    with open(data / "filler", "wb") as fh:
        try:
            fh.write(b"\xff" * size)
        except OSError:
            pass
    return data / "filler"


def one_transient_line(out: subprocess.CompletedProcess) -> str:
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == EXIT_TRANSIENT, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-3000:]
    return errors[0]


def intact(data) -> int:
    """The log verifies and the checkpoint is the one its last checkpoint event names: its round."""
    db = data / "provenance.db"
    assert verify_log(db).ok
    return load_events(db, kind="checkpoint")[1][-1].details["next_round"]


@pytest.mark.timeout(300)
def test_a_full_disk_stops_the_peer_for_a_restart_and_loses_nothing(small_disk):
    config, data = small_disk
    first = start(config, "--rounds", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    at = intact(data)
    for leave in (4, 16, 32):  # the cases: a traceback at 4-16 KiB, exit 2 at 24-32 KiB
        filler = fill(data, leave)
        line = one_transient_line(start(config, "--rounds", "2"))
        assert "restarted later" in line and "free space" in line, line
        filler.unlink()  # (reading a log in WAL mode needs room for its index too)
        assert intact(data) == at  # nothing half-written: the same checkpoint, the log whole
    again = start(config, "--rounds", "2")  # room again: the unit's restart resumes it
    assert again.returncode == 0, again.stderr[-3000:]
    _, started = load_events(data / "provenance.db", kind="started")
    assert started[-1].details["resumed_from"] == at
    assert intact(data) > at


@pytest.mark.timeout(300)
def test_a_disk_that_fills_while_the_peer_runs_stops_it_for_a_restart(small_disk):
    config, data = small_disk
    proc = subprocess.Popen([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        end = time.time() + 120
        while time.time() < end and not _rounds_logged(data, 2):
            time.sleep(0.2)
        fill(data, 0)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    one_transient_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    (data / "filler").unlink()
    at = intact(data)
    again = start(config, "--rounds", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_events(data / "provenance.db", kind="started")[1][-1].details["resumed_from"] == at


def _rounds_logged(data, n) -> bool:
    try:
        return len(load_events(data / "provenance.db", kind="checkpoint")[1]) > n
    except Exception:  # not there yet
        return False


def test_the_unit_retries_a_transient_stop_and_not_a_configuration_error(tmp_path):
    nodes = write_plan(from_spec("complete:2", seed=1), tmp_path / "plan", overrides=OVER, draw=False)
    text = nodes[0].unit.read_text()
    prevent = next(ln for ln in text.splitlines() if ln.startswith("RestartPreventExitStatus="))
    assert str(CONFIG_ERROR_EXIT) in prevent.split("=")[1].split() and str(EXIT_TRANSIENT) not in prevent
    assert "Restart=on-failure" in text


def test_links_planted_in_the_data_folder_are_never_written_through(tmp_path):
    nodes = write_plan(from_spec("complete:2", seed=1), tmp_path / "plan", transport="memory",
                       overrides={**OVER, "round": {**OVER["round"], "rounds": 2}}, draw=False)
    config, data = nodes[0].config, nodes[0].dir / "data"
    data.mkdir(exist_ok=True)
    precious = {}
    for name in ("checkpoint.msgpack.tmp", "membership.msgpack.tmp", "provenance.db.new", "provenance.db.new-wal"):
        target = tmp_path / f"precious-{name}"
        target.write_bytes(b"precious " + name.encode())
        target.chmod(0o644)
        (data / name).symlink_to(target)
        precious[target] = target.read_bytes()
    out = start(config)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {t: t.read_bytes() for t in precious} == precious
    assert all(stat.S_IMODE(t.stat().st_mode) == 0o644 for t in precious)
    assert not (data / "checkpoint.msgpack.tmp").is_symlink()  # the link was replaced, its target kept
    for f in data.iterdir():
        if f.is_file() and not f.is_symlink():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    lock_target = tmp_path / "precious-lock"
    lock_target.write_bytes(b"precious lock")
    (data / "lock").unlink()
    (data / "lock").symlink_to(lock_target)
    refused = start(config)
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "symbolic link" in errors[0], refused.stderr[-3000:]
    assert lock_target.read_bytes() == b"precious lock"
