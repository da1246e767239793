"""Plans that work: weak neighbourhoods refused with what would work, the robustness verdict
always in analysis.json, "not assessed" without an attack budget, and the network admin key."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gossip.errors import TrustListError
from gossip.identity import Identity, load_key
from gossip.trust import build_trust_list, load_trust_list
from gossipfl.cli import main
from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.ops.plan import ADMIN_DIR, WeakPlanError, write_plan
from topology import from_spec
from topology.robustness import check_plan


def plan_cli(*args):
    return CliRunner().invoke(main, ["topology", "plan", *map(str, args)])


@pytest.mark.parametrize("args, weak, ideas", [
    (["ws:6,2,0.3"], "2 of 6 node(s) cannot aggregate with median at f=1",
     ["degree >= 2 (e.g. regular:6,2)", "--f 0"]),
    (["ring:6", "--rule", "krum", "--f", "1"], "6 of 6 node(s) cannot aggregate with krum at f=1",
     ["krum requires n > 2f + 2", "degree >= 4 (e.g. regular:6,4)", "--f 0", "--rule median or"]),
    (["ring:4", "--rule", "mean"], "mean tolerates no Byzantine neighbour", ["--f 0", "--rule median"]),
])
def test_weak_plans_are_refused_with_what_would_work(tmp_path, args, weak, ideas):
    out = tmp_path / "plan"
    r = plan_cli(*args, "--out", out)
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert line.startswith("error: refusing a plan in which") and len(line.splitlines()) == 1
    assert weak in line and "--allow-weak" in line
    for idea in ideas:
        assert idea in line, (idea, line)
    assert not out.exists()  # refused before any key is written


def test_allow_weak_writes_the_plan_and_records_the_verdict(tmp_path):
    out = tmp_path / "plan"
    r = plan_cli("ring:6", "--rule", "krum", "--f", "1", "--out", out, "--allow-weak")
    assert r.exit_code == 0, r.output
    assert "warning: wrote a plan in which 6 of 6 node(s) cannot aggregate with krum" in r.output
    verdict = json.loads((out / "analysis.json").read_text())["robustness"]
    assert verdict["ok"] is False and verdict["rule"] == "krum" and verdict["f"] == 1
    assert sorted(verdict["at_risk"]) == [str(i) for i in range(6)]
    assert verdict["min_degree"] == 4 and verdict["max_f"] == 0
    assert "median" in verdict["fitting_rules"] and "krum" not in verdict["fitting_rules"]
    assert load_config(out / "node-0" / "peer.toml").aggregation.rule == "krum"


def test_a_sound_plan_carries_its_verdict(tmp_path):
    out = tmp_path / "plan"
    r = plan_cli("regular:8,4", "--rule", "krum", "--f", "1", "--out", out)
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    verdict = json.loads((out / "analysis.json").read_text())["robustness"]
    assert verdict == {**verdict, "ok": True, "at_risk": [], "rule": "krum", "f": 1, "max_f": 1}


def test_write_plan_checks_only_when_asked(tmp_path):
    """Library callers (the simulator, tests) plan weak graphs on purpose; the CLI asks."""
    g = from_spec("star:9")
    over = {"aggregation": {"rule": "median", "f": 1}}
    with pytest.raises(WeakPlanError, match="8 of 9 node"):
        write_plan(g, tmp_path / "strict", transport="memory", overrides=over, allow_weak=False)
    assert not (tmp_path / "strict").exists()
    write_plan(g, tmp_path / "lax", transport="memory", overrides=over)
    verdict = json.loads((tmp_path / "lax" / "analysis.json").read_text())["robustness"]
    assert verdict["ok"] is False and sorted(verdict["at_risk"]) == [str(i) for i in range(1, 9)]
    with pytest.raises(ConfigError, match="aggregation: unknown aggregation rule 'medain'"):
        write_plan(g, tmp_path / "typo", transport="memory", overrides={"aggregation": {"rule": "medain"}})


def test_check_plan_requirements_per_node():
    ring = from_spec("ring:6")
    assert check_plan(ring, "mean", 0).ok  # mean tolerates any n when f = 0
    assert not check_plan(ring, "mean", 1).ok
    assert check_plan(ring, "median", 1).ok  # n = 3 > 2
    c = check_plan(ring, "nnm+krum", 1)
    assert not c.ok and c.min_degree == 4 and c.max_f == 0
    c = check_plan(from_spec("star:9"), "krum", 1)
    assert c.weak == list(range(1, 9)) and c.max_f == -1  # leaves (n = 2) cannot run krum even at f = 0
    assert c.fitting_rules == [] and c.suggestions() == ["a graph in which every node has degree >= 4 "
                                                         "(e.g. regular:9,4)"]
    assert check_plan(from_spec("ring:5"), "bulyan", 2).suggestions()[0].endswith("(so at least 11 nodes)")


def test_show_without_a_budget_says_not_assessed(tmp_path):
    png = tmp_path / "g.png"
    r = CliRunner().invoke(main, ["topology", "show", "ring:6", "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "not assessed" in r.output and "safe" not in r.output and "at risk" not in r.output
    r = CliRunner().invoke(main, ["topology", "show", "ring:6", "--rule", "krum", "--byzantine", "1",
                                  "--png", str(png)])
    assert "not assessed" not in r.output and "at risk" in r.output


def test_plan_writes_the_admin_key_apart_and_trust_names_it(tmp_path):
    out = tmp_path / "plan"
    r = plan_cli("ring:4", "--out", out)
    assert r.exit_code == 0, r.output
    assert "admin key is in" in r.output and "move it off this machine" in r.output
    key = out / ADMIN_DIR / "admin.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600" and oct(key.parent.stat().st_mode & 0o777) == "0o700"
    assert "Move this folder off this machine" in (out / ADMIN_DIR / "README.txt").read_text()
    admin = load_key(key).peer_id
    trust = load_trust_list(out / "trust.toml")
    assert trust.admin == admin and admin not in trust.peers
    assert json.loads((out / "plan.json").read_text())["admin"] == admin
    for i in range(4):  # no node folder holds it
        node = out / f"node-{i}"
        assert not any(p.name == "admin.key" for p in node.rglob("*"))
        assert load_key(node / "peer.key").peer_id != admin


def test_trust_list_admin_is_optional_and_validated(tmp_path):
    peers = [Identity.generate().peer_id for _ in range(2)]
    old = tmp_path / "old.toml"
    old.write_text(build_trust_list("lab", peers).to_toml())
    assert load_trust_list(old).admin is None and "admin" not in old.read_text()
    admin = Identity.generate().peer_id
    round_trip = tmp_path / "new.toml"
    round_trip.write_text(build_trust_list("lab", peers, admin=admin).to_toml())
    assert load_trust_list(round_trip).admin == admin
    bad = tmp_path / "bad.toml"
    bad.write_text(f'network = "lab"\nadmin = "nope"\npeers = ["{peers[0]}"]\n')
    with pytest.raises(TrustListError, match="bad.toml: trust list: `admin`"):
        load_trust_list(bad)
    bad.write_text(f'network = "lab"\nadmin = 3\npeers = ["{peers[0]}"]\n')
    with pytest.raises(TrustListError, match="`admin` must be a PeerId string"):
        load_trust_list(bad)
    with pytest.raises(TrustListError, match="kept apart from the nodes"):
        build_trust_list("lab", peers, admin=peers[1])


def test_overrides_of_the_data_shard_win_over_the_plans_own(tmp_path):
    """Each node gets shard i of n unless the overrides name the shard: then every node has
    what they say (bench/peer_round.py trains its centre on all of digits with shards = 1)."""
    g = from_spec("star:4")
    planned = write_plan(g, tmp_path / "own", transport="memory", draw=False)
    assert [(load_config(p.config).data.shard, load_config(p.config).data.shards) for p in planned] == \
        [(i, 4) for i in range(4)]
    planned = write_plan(g, tmp_path / "all", transport="memory", draw=False,
                         overrides={"data": {"shards": 1, "shard": 0}})
    assert {(load_config(p.config).data.shard, load_config(p.config).data.shards) for p in planned} == {(0, 1)}
    planned = write_plan(g, tmp_path / "some", transport="memory", draw=False, overrides={"data": {"shards": 9}})
    assert [(load_config(p.config).data.shard, load_config(p.config).data.shards) for p in planned] == \
        [(i, 9) for i in range(4)]
