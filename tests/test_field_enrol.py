"""Enrolment without shipping private keys: a gateway generates its own key (`gossipfl peer init
--enrol`), the admin admits its request (`gossipfl fleet admit --request`) into a fleet of four
`gossipfl peer start` processes that are running, no private key of it is ever in the plan
folder, and the gateway joins with the folder the admin wrote plus its own key: its neighbours
aggregate its updates and every log verifies. Requests are hostile input: each malformed or
forged one is refused with a reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gossip.identity import Identity, load_key, save_key
from peer.audit.verify import load_events, verify_log
from peer.errors import ConfigError
from peer.ops.admin import Plan
from peer.ops.enrol import make_request, parse_request
from peer.ops.plan import write_plan
from topology import from_spec

from .netfixtures import ROOT, free_ports, rounds_done, wait_until

NET = "field-enrol"
OVERRIDES = {"train": {"local_steps": 5, "lr": 0.1}, "round": {"deadline": 3.0, "interval": 0.5, "rounds": 0},
             "aggregation": {"rule": "mean", "f": 0}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gossipfl", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})





def private_keys(folder) -> list[str]:
    """Files under `folder` that hold a private key (peer.key files: the admin's is kept apart)."""
    return [str(p) for p in folder.rglob("*.key") if "admin" not in p.parts]


@pytest.mark.timeout(240)
def test_a_gateway_enrolled_with_its_own_key_joins_a_running_fleet(tmp_path, peer_processes):
    ports = free_ports(5)
    plan = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:4"), plan, network_id=NET, transport_options={"ports": ports[:4]},
                       overrides=OVERRIDES, draw=False)
    for n in nodes:
        peer_processes.start(n.label, n.config)
    wait_until(peer_processes, [n.label for n in nodes], rounds_done(2))
    keys_before = set(private_keys(plan))

    site = tmp_path / "gateway-site"  # the gateway's own machine
    gw = site / "gw"
    r = cli("peer", "init", "--dir", str(gw), "--enrol", NET, "--name", "g5", "--reachability", "public",
            "--addr", f"/ip4/127.0.0.1/tcp/{ports[4]}")
    assert r.returncode == 0, r.stderr
    own = load_key(gw / "peer.key")
    request = json.loads((gw / "enrolment.json").read_text())
    assert request["peer_id"] == own.peer_id and "seed" not in json.dumps(request)

    r = cli("fleet", "admit", str(plan), "--request", str(gw / "enrolment.json"), "--neighbours", "0,2")
    assert r.returncode == 0 and "delivered to 4 of 4 gateways" in r.stdout, r.stdout + r.stderr
    assert "no key written" in r.stdout
    node = Plan(plan).node("g5")
    assert node["peer_id"] == own.peer_id and node["enrolled"] is True
    assert set(private_keys(plan)) == keys_before  # no private key of the new gateway in the plan folder
    admitted = (plan / node["config"]).parent
    for f in admitted.iterdir():  # what the admin hands the gateway: its folder and the trust list
        if f.is_file():
            shutil.copy(f, gw / f.name)
    shutil.copy(plan / "trust.toml", site / "trust.toml")
    (gw / "data").mkdir(exist_ok=True)
    peer_processes.start("g5", gw / "peer.toml")
    wait_until(peer_processes, ["0", "2"], lambda t: "neighbours now" in t, 60)
    wait_until(peer_processes, ["g5"], rounds_done(3))
    done = {n: peer_processes.log(n).count(" neighbours accepted") for n in ("0", "2")}
    for n, k in done.items():
        wait_until(peer_processes, [n], rounds_done(k + 2))
    peer_processes.stop_all()

    folders = {n.label: n.dir for n in nodes} | {"g5": gw}
    for label, folder in folders.items():
        assert verify_log(folder / "data" / "provenance.db").ok, label
    for label in ("0", "2"):
        _, aggregated = load_events(nodes[int(label)].dir / "data" / "provenance.db", kind="aggregated")
        assert any(own.peer_id in e.details["senders"] for e in aggregated), label
    _, aggregated = load_events(gw / "data" / "provenance.db", kind="aggregated")
    assert any(len(e.details["senders"]) >= 2 for e in aggregated)  # it aggregates its two neighbours


def test_a_request_must_be_signed_by_the_key_it_names_and_well_formed(tmp_path):
    me, other = Identity.generate(), Identity.generate()
    good = make_request(me, NET, "gw-1", "private")
    assert parse_request(good).peer_id == me.peer_id
    doc = json.loads(good)
    forged = dict(doc, peer_id=other.peer_id)  # someone else's key, my signature
    cases = {"signature": forged, "exactly the keys": {**doc, "extra": 1}, "reachability": {**doc, "reachability": "x"},
             "name": {**doc, "name": "../etc"}, "addr": {**doc, "addr": "/ip4/1.2.3.4/udp/9"},
             "private gateway": {**doc, "addr": "/ip4/1.2.3.4/tcp/9"}, "secagg": {**doc, "secagg": "none"},
             "v must be int": {**doc, "v": True}}
    for why, bad in cases.items():
        with pytest.raises(ConfigError, match=why):
            parse_request(json.dumps(bad))
    with pytest.raises(ConfigError, match="bytes"):
        parse_request(" " * 10_000)
    with pytest.raises(ConfigError, match="not JSON"):
        parse_request("{")


def _requests(folder, names, ports, private=()):
    """Each gateway makes its key and request on its own machine (`peer init --enrol`); the
    admin collects the requests in `folder`. -> name -> the gateway's own key."""
    folder.mkdir()
    keys = {}
    for name, port in zip(names, ports, strict=True):
        keys[name] = Identity.generate()
        reach, addr = ("private", "") if name in private else ("public", f"/ip4/127.0.0.1/tcp/{port}")
        (folder / f"{name}.json").write_text(make_request(keys[name], NET, name, reach, addr))
    return keys


def test_topology_plan_from_enrolment_requests_writes_no_key_of_theirs(tmp_path):
    ports = [5101, 5102, 5103, 5104]  # written into configs only: nothing listens here
    keys = _requests(tmp_path / "requests", ["0", "2"], [ports[0], ports[2]], private={"2"})
    plan = tmp_path / "plan"
    r = cli("topology", "plan", "ring:4", "--out", str(plan), "--network-id", NET, "--requests",
            str(tmp_path / "requests"), "--base-port", "4701")
    assert r.returncode == 0, r.stderr
    assert "enrolled with their own keys (none written): 0, 2" in r.stdout
    manifest = Plan(plan)
    assert manifest.node("0")["peer_id"] == keys["0"].peer_id and manifest.node("0")["enrolled"] is True
    assert "enrolled" not in manifest.node("1")
    assert not (plan / "node-0" / "peer.key").exists() and not (plan / "node-2" / "peer.key").exists()
    assert (plan / "node-1" / "peer.key").exists()  # the plan still makes keys for the others
    assert {keys["0"].peer_id, keys["2"].peer_id} <= manifest.trust.peers
    cfg1 = (plan / "node-1" / "peer.toml").read_text()
    assert f"/ip4/127.0.0.1/tcp/{ports[0]}/p2p/{keys['0'].peer_id}" in cfg1  # dialled where its request said
    assert keys["2"].peer_id in cfg1 and f"/tcp/{ports[2]}/p2p/{keys['2'].peer_id}" not in cfg1  # private: no address
    assert 'reachability = "private"' in (plan / "node-2" / "peer.toml").read_text()

    def refused(why, *args):
        r = cli("topology", "plan", "ring:4", "--out", str(tmp_path / "bad"), "--requests", str(tmp_path / "requests"),
                *args)
        assert r.returncode != 0 and why in r.stderr, r.stderr

    refused("is for network 'field-enrol'", "--network-id", "other")
    (tmp_path / "requests" / "x.json").write_text(make_request(Identity.generate(), NET, "7"))
    refused("which the graph has no node of", "--network-id", NET)
    (tmp_path / "requests" / "x.json").unlink()
    (tmp_path / "requests" / "dup.json").write_text(make_request(Identity.generate(), NET, "0"))
    refused("a second request for the name '0'", "--network-id", NET)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


@pytest.mark.timeout(180)
def test_a_fleet_planned_from_requests_runs_with_the_keys_its_gateways_made(tmp_path, peer_processes):
    ports = free_ports(3)
    names = ["0", "1", "2"]
    keys = _requests(tmp_path / "requests", names, ports)
    plan = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:3"), plan, network_id=NET, overrides=OVERRIDES, draw=False,
                       requests={r.name: r for r in map(parse_request, (p.read_text() for p in
                                                                        (tmp_path / "requests").glob("*.json")))})
    assert private_keys(plan) == []  # every gateway made its own key: none in the plan folder
    for n in nodes:  # on each gateway: its folder from the admin, beside the key it made
        save_key(keys[n.label], n.dir / "peer.key")
        peer_processes.start(n.label, n.config)
    wait_until(peer_processes, names, rounds_done(2))
    peer_processes.stop_all()
    for n in nodes:
        assert verify_log(n.dir / "data" / "provenance.db").ok, n.label
        _, aggregated = load_events(n.dir / "data" / "provenance.db", kind="aggregated")
        others = {keys[m].peer_id for m in names if m != n.label}
        assert any(set(e.details["senders"]) >= others for e in aggregated), n.label
