"""Differential privacy in the peer: noise before sending, the ledger in the provenance log, the
budget that stops a peer from sending, and a ledger that survives kill -9 (issue 15)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.runtime.local import build_memory_network, run_peers
from peer.runtime.privacy_ledger import PeerPrivacy
from privacy.accountant import Accountant, Release
from privacy.settings import PrivacySettings
from sim.virtual_time import run_virtual
from topology import from_spec

from .netfixtures import PeerProcesses

FAST = {"train": {"local_steps": 10, "batch_size": 32, "lr": 0.1}, "round": {"deadline": 5.0, "train_in_thread": False}}


def _plan(tmp_path, spec="ring:4", **privacy):
    over = {k: dict(v) for k, v in FAST.items()}
    over["aggregation"] = {"rule": "mean", "f": 0}
    over["privacy"] = privacy
    return write_plan(from_spec(spec, seed=1), tmp_path, transport="memory", overrides=over, draw=False)


def _events(db, kind):
    return load_events(db, kind=kind)[1]


def _privacy_events(node):
    return _events(node.dir / "data" / "provenance.db", "privacy")


def test_update_mode_noises_what_is_sent_and_logs_the_ledger(tmp_path):
    nodes = _plan(tmp_path, mode="update", noise_multiplier=0.5, clip=5.0)
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=4))
    for n, p in zip(nodes, peers, strict=True):
        events = _privacy_events(n)
        assert [e.round for e in events] == [0, 1, 2, 3]
        expected = Accountant("rdp", 1e-5)
        for e in events:
            assert e.details["mode"] == "update" and e.details["sigma"] == 0.5 and e.details["clip"] == 5.0
            assert e.details["q"] == 1.0 and e.details["steps"] == 1
            assert e.details["epsilon"] == pytest.approx(expected.spend(Release(0.5, 1.0, 1)))
            assert e.details["epsilon_replace"] == pytest.approx(expected.epsilon_replace())
            assert e.details["relation"] == "a gateway's whole data"
        assert p.privacy.epsilon() == pytest.approx(events[-1].details["epsilon"])
        status = p.metrics.status()["privacy"]
        assert status["epsilon"] == pytest.approx(events[-1].details["epsilon"])
        assert status["epsilon_replace"] == pytest.approx(events[-1].details["epsilon_replace"])
        assert status["epsilon_replace"] > status["epsilon"]
        v = verify_log(n.dir / "data" / "provenance.db")
        assert v.ok, v.line()
    # noise of std 2.5 per coordinate on every model sent: the mean of four noised models is far from
    # any model trained without noise, and accuracy shows it
    assert all(p.history[-1].eval.accuracy < 0.9 for p in peers)


def test_the_clipped_change_is_what_leaves_the_peer(tmp_path):
    """sigma small, clip tiny: every model sent is within clip (+ noise) of where the round started."""
    nodes = _plan(tmp_path, "complete:2", mode="update", noise_multiplier=0.01, clip=0.01)
    _, peers = build_memory_network(nodes)
    start = peers[0].model.flat.detach().clone()
    assert torch.equal(start, peers[1].model.flat)  # one model seed for the plan
    run_virtual(run_peers(peers, rounds=1))
    for n, p in zip(nodes, peers, strict=True):
        ev = _privacy_events(n)[0]
        assert ev.details["norm"] > 0.01 and ev.details["clipped"] is True
        # the mean of two models each within 0.01 of the common start, plus noise of std 1e-4 per value
        # (norm ~ 1e-4 * sqrt(d / 2) = 0.0035 for d = 2,410)
        assert float((p.model.flat - start).norm()) <= 0.01 + 0.006


def test_the_budget_stops_training_and_sending_for_good(tmp_path):
    acct = Accountant("rdp", 1e-5)
    acct.spend(Release(1.0, 1.0, 1))
    acct.spend(Release(1.0, 1.0, 1))
    budget = (acct.epsilon() + acct.epsilon_if(Release(1.0, 1.0, 1))) / 2  # room for exactly 2 releases
    nodes = _plan(tmp_path, "complete:3", mode="update", noise_multiplier=1.0, clip=1.0, epsilon=budget)
    _, peers = build_memory_network(nodes)
    for p in peers:
        p.cfg.round.deadline = 0.5
        p.state.cfg.deadline = 0.5
    run_virtual(run_peers(peers, rounds=4))
    for n, p in zip(nodes, peers, strict=True):
        events = _privacy_events(n)
        spent = [e for e in events if not e.details["exhausted"]]
        assert [e.round for e in spent] == [0, 1]
        assert all(e.details["epsilon"] <= budget for e in events)
        assert [e.round for e in events if e.details["exhausted"]] == [2]  # said once
        sent = _events(n.dir / "data" / "provenance.db", "sent")
        assert sorted({e.round for e in sent}) == [0, 1]
        assert p.history[3].train == {}  # no training once the budget is spent
        assert p.metrics.status()["privacy"]["exhausted"] is True
        assert verify_log(n.dir / "data" / "provenance.db").ok


def test_a_spent_budget_stays_spent_after_a_restart_and_is_said_once(tmp_path):
    """The ledger restored from the log keeps `exhausted`: the restarted peer neither trains nor
    logs the budget's end a second time."""
    from gossip.identity import Identity
    from peer.state.provenance import ProvenanceLog

    acct = Accountant("rdp", 1e-5)
    acct.spend(Release(1.0, 1.0, 1))
    budget = (acct.epsilon() + acct.epsilon_if(Release(1.0, 1.0, 1))) / 2  # room for exactly 1 release
    settings = PrivacySettings(mode="update", noise_multiplier=1.0, clip=1.0, epsilon=budget)
    prov = ProvenanceLog(tmp_path / "p.db", Identity.from_seed(b"p" * 32), "net")
    try:
        first, flat = PeerPrivacy(settings, None), torch.zeros(8)
        for r in range(3):
            send, events = first.before_training(r, flat)
            prov.append_many(events + (first.after_training(r, flat + 0.1) if send else []))
        assert [e.details["exhausted"] for e in prov.events("privacy")] == [False, True]
        again = PeerPrivacy(settings, None)
        again.restore(prov)
        assert again.exhausted and again.epsilon() == first.epsilon()
        assert again.before_training(3, flat) == (False, [])
    finally:
        prov.close()


def test_record_mode_runs_dp_sgd_and_accounts_its_sampling(tmp_path):
    nodes = _plan(tmp_path, "complete:2", mode="record", noise_multiplier=1.0, clip=1.0)
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=2))
    for n, p in zip(nodes, peers, strict=True):
        ev = _privacy_events(n)[-1]
        q = FAST["train"]["batch_size"] / len(p.learner.data.y_train)
        assert ev.details["mode"] == "record"
        assert ev.details["q"] == pytest.approx(q) and ev.details["steps"] == FAST["train"]["local_steps"]
        expected = Accountant("rdp", 1e-5)
        expected.spend(Release(1.0, q, 10))
        assert ev.details["epsilon"] == pytest.approx(expected.spend(Release(1.0, q, 10)))


def test_record_mode_needs_a_learner_that_supports_it():
    with pytest.raises(ConfigError, match="enable_record_dp"):
        PeerPrivacy(PrivacySettings(mode="record"), object())


def test_privacy_settings_are_checked_with_the_field_named(tmp_path):
    for bad, match in (({"mode": "always"}, "privacy.mode"), ({"mode": "update", "clip": -1.0}, "privacy.clip"),
                       ({"mode": "update", "delta": 2.0}, "privacy.delta"),
                       ({"mode": "update", "noise_multiplier": 0.0}, "privacy.noise_multiplier")):
        with pytest.raises(ConfigError, match=match):
            _plan(tmp_path / match.replace(".", "_") / str(len(bad)), **bad)


@pytest.mark.timeout(240)
def test_the_ledger_survives_kill_9_and_restart(tmp_path):
    """A real `gossipfl peer start` spends, is killed with SIGKILL, restarts: epsilon continues from
    the log (never from less than was released), the log verifies and `audit show` prints the ledger."""
    over = {"train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
            "round": {"deadline": 0.2, "train_in_thread": False, "rounds": 0},
            "aggregation": {"rule": "mean", "f": 0}, "privacy": {"mode": "update", "noise_multiplier": 2.0}}
    nodes = write_plan(from_spec("complete:2", seed=1), tmp_path / "plan", transport="memory", overrides=over,
                       draw=False)
    node = nodes[0]
    db = node.dir / "data" / "provenance.db"
    procs = PeerProcesses(tmp_path)
    try:
        procs.start("a", node.config)
        end = time.time() + 120
        while time.time() < end and (not db.exists() or len(_read_privacy(db)) < 3):
            time.sleep(0.3)
        procs.kill("a")
        before = _read_privacy(db)
        assert len(before) >= 3, procs.log("a")
        procs.start("b", node.config, "--rounds", "2")
        assert procs.wait_all(120)["b"] == 0, procs.log("b")
    finally:
        procs.stop_all()
    after = _read_privacy(db)
    new = after[len(before):]
    assert len(new) == 2
    expected = Accountant("rdp", 1e-5)
    for _ in range(len(after)):
        eps = expected.spend(Release(2.0, 1.0, 1))
    assert after[-1].details["epsilon"] == pytest.approx(eps)  # every release counted, across the kill
    assert new[0].details["epsilon"] > before[-1].details["epsilon"]
    assert verify_log(db).ok
    shown = CliRunner().invoke(main, ["audit", "show", str(db), "--kind", "privacy"])
    assert shown.exit_code == 0, shown.output
    assert "epsilon=" in shown.output and "sigma=2" in shown.output and "accountant" not in shown.output
    assert f"epsilon_replace={after[-1].details['epsilon_replace']:.4g}" in shown.output  # both relations, named
    assert "relation=a gateway's" in shown.output


def _read_privacy(db):
    """The privacy events of a log another process may be writing (SQLite readers see the last commit)."""
    try:
        return _events(db, "privacy")
    except Exception:  # the peer is still creating it
        return []


def test_the_seeded_simulator_noise_is_reproducible_and_a_gateway_is_not():
    a = PeerPrivacy(PrivacySettings(mode="update"), None)
    b = PeerPrivacy(PrivacySettings(mode="update"), None)
    x = torch.zeros(1000)
    y = torch.zeros(1000)
    a.privatize(torch.zeros(1000), x)
    b.privatize(torch.zeros(1000), y)
    assert not torch.equal(x, y)
    assert math.isinf(PrivacySettings().epsilon)
