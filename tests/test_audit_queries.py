"""Audit questions on a small real fleet's logs (four peers on a ring, node 3 sending junk to
node 0): hash prefixes, peer names, one command per question, readable and --json output,
and a closed pipe that is not an error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.fleet import AuditLookupError, Fleet, resolve_prefix
from peer.audit.query import model_inputs, rejections, timeline, update_story
from tests.audit_fleet import JUNK_NODE, ROUNDS, build_fleet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return build_fleet(tmp_path_factory.mktemp("audit") / "plan")


@pytest.fixture(scope="module")
def loaded(fleet):
    return Fleet.load([fleet.plan])


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


def sent(loaded, node: int, rnd: int) -> str:
    log = loaded.log_of(loaded.resolve_peer(str(node)))
    return next(e.update_hash for e in log.events if e.kind == "sent" and e.round == rnd)


def test_prefixes_unique_ambiguous_unknown():
    pool = ["abc123" + "0" * 58, "abd999" + "0" * 58, "ffee00" + "1" * 58]
    assert resolve_prefix("ABC", pool, "update") == pool[0]
    assert resolve_prefix(pool[2], pool, "update") == pool[2]
    with pytest.raises(AuditLookupError, match="ambiguous.*abc123.*abd999"):
        resolve_prefix("ab", pool, "update")
    with pytest.raises(AuditLookupError, match="appears in none"):
        resolve_prefix("0123", pool, "update")
    with pytest.raises(AuditLookupError, match="not a hexadecimal"):
        resolve_prefix("xyz", pool, "update")


def test_peers_by_plan_name_prefix_suffix_or_path(fleet, loaded):
    pid = fleet.peer_ids[1]
    assert loaded.names[pid] == fleet.names[1]
    assert loaded.resolve_peer(fleet.names[1]) == pid
    assert loaded.resolve_peer(pid[-10:]) == pid
    assert loaded.resolve_peer(".." + pid[-8:]) == pid
    assert loaded.resolve_peer(pid[:20]) == pid
    assert loaded.resolve_peer(str(fleet.logs[1])) == pid
    assert loaded.resolve_peer(str(fleet.logs[1].parent.parent)) == pid  # the node folder
    with pytest.raises(AuditLookupError, match="ambiguous"):
        loaded.resolve_peer("12D3KooW")
    with pytest.raises(AuditLookupError, match="none of the 4 peers"):
        loaded.resolve_peer("gateway-9")
    # names found without a plan nearby: --plan points at the trust list
    r = cli("audit", "timeline", fleet.logs[1], "--peer", "nobody")
    assert r.exit_code == 2 and r.output.startswith("error: peer 'nobody'")


def test_show_takes_prefixes_and_names_and_refuses_unknown_peers(fleet, loaded):
    db = fleet.logs[0]
    r = cli("audit", "show", db, "--peer", fleet.names[JUNK_NODE], "--kind", "rejected", "--json")
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert r.exit_code == 0 and rows and all(x["counterpart"] == fleet.peer_ids[JUNK_NODE] for x in rows)
    r = cli("audit", "show", db, "--peer", "nobody")
    assert r.exit_code == 2 and "none of the" in r.output
    target = sent(loaded, 1, 2)
    r = cli("audit", "show", db, "--update", target[:7], "--json")
    kinds = {json.loads(line)["kind"] for line in r.output.splitlines()}
    assert r.exit_code == 0 and kinds == {"received", "aggregated"}
    r = cli("audit", "show", db)  # not a terminal: rich's 80 columns, details wrapped, never cut
    assert r.exit_code == 0 and len(r.output.splitlines()) > 35
    assert all(len(line) <= 80 for line in r.output.splitlines())
    assert not re.search(r"[0-9a-f]{20}", r.output)  # short hashes, no full ones
    assert "reason=rounds" in r.output  # the last event's details, wrapped
    assert "parents=[" in r.output and "senders=[0, 1]" in r.output  # lists shown, not eaten as markup


def test_inputs_of_a_model_signers_and_rejections(fleet, loaded):
    p0 = fleet.peer_ids[0]
    ans = model_inputs(loaded, p0, 2)
    assert ans.outcome == "aggregated" and ans.rule == "median" and ans.model
    assert [i["signer"] for i in ans.inputs] == [p0, fleet.peer_ids[1]]  # own, then node 1 (node 3 sent junk)
    assert ans.inputs[0]["own"] and ans.inputs[1]["verified"]
    assert [(r["sender"], r["reason"]) for r in ans.rejected] == [(fleet.peer_ids[JUNK_NODE], "non_finite")]
    assert ans.unauthenticated and all(u["reason"] == "bad_signature" and u["claimed"] == [fleet.peer_ids[JUNK_NODE]]
                                       for u in ans.unauthenticated)
    r = cli("audit", "inputs", fleet.plan, "--peer", "0", "--round", 2)
    assert r.exit_code == 0
    assert "its own update" in r.output and "non_finite" in r.output and "claimed" in r.output
    assert f"{fleet.names[1]} (..{fleet.peer_ids[1][-8:]})" in r.output
    r = cli("audit", "inputs", fleet.plan, "--peer", "0", "--round", 99)
    assert r.exit_code == 2 and "logged nothing for round 99" in r.output


def test_where_an_update_went(fleet, loaded):
    u = sent(loaded, 1, 1)
    s = update_story(loaded, u)
    assert s.origin == fleet.peer_ids[1] and s.round == 1 and s.what == "update"
    assert {a["peer"] for a in s.accepted_by} == {fleet.peer_ids[0], fleet.peer_ids[2]}  # its ring neighbours
    assert {a["peer"] for a in s.aggregated_by} == {fleet.peer_ids[0], fleet.peer_ids[1], fleet.peer_ids[2]}
    r = cli("audit", "where", u[:8], fleet.plan, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["update"] == u
    # a model hash (an aggregated event's) is a model with its inputs, not "unknown sender"
    model = model_inputs(loaded, fleet.peer_ids[0], 1).model
    m = update_story(loaded, model)
    assert m.what == "model" and m.origin == fleet.peer_ids[0] and m.round == 1 and len(m.inputs) == 2
    # a rejected update: who rejected it and why
    bad = model_inputs(loaded, fleet.peer_ids[0], 1).rejected[0]["update"]
    r = cli("audit", "where", bad[:10], fleet.plan)
    assert r.exit_code == 0 and "rejected" in r.output and "non_finite" in r.output


def test_timeline_of_a_peer(fleet, loaded):
    rows = timeline(loaded, fleet.peer_ids[0], 1, 2)
    assert [r.round for r in rows] == [1, 2]
    for r in rows:
        assert r.outcome.startswith("aggregated") and r.sent and r.sent_to == 2
        assert r.rejected == {"non_finite": 1} and r.accepted == [fleet.peer_ids[1]]
    full = timeline(loaded, fleet.peer_ids[2])
    assert [r.round for r in full if r.sent] == list(range(ROUNDS))
    r = cli("audit", "timeline", fleet.plan, "--peer", "0", "--from", 1, "--to", 2, "--json")
    assert r.exit_code == 0 and [x["round"] for x in json.loads(r.output)] == [1, 2]


def test_rejections_by_sender_and_claims_kept_apart(fleet, loaded):
    rj = rejections(loaded)
    assert [(r["sender"], r["reason"], r["count"]) for r in rj.proven] == \
        [(fleet.peer_ids[JUNK_NODE], "non_finite", ROUNDS)]
    assert [u["reason"] for u in rj.unauthenticated] == ["bad_signature"]
    assert rj.unauthenticated[0]["claimed"][0]["peer"] == fleet.peer_ids[JUNK_NODE]
    assert "sender" not in rj.unauthenticated[0]  # a claim is never shown as a proven sender
    r = cli("audit", "rejections", fleet.plan)
    assert r.exit_code == 0 and "proven by their signature" in r.output and "only claimed" in r.output


def test_closing_the_pipe_early_is_not_an_error(fleet):
    cmd = (f"{sys.executable} -m gossipfl audit show {fleet.logs[0]} --json | head -1")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["seq"] == 1
    assert p.stderr == ""


def test_envelope_domain_spelled_in_audit_is_the_envelopes():
    from gossip.envelope import DOMAIN
    from peer.audit.verify import ENVELOPE_DOMAIN

    assert ENVELOPE_DOMAIN == DOMAIN
