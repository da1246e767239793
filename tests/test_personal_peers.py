"""Personalization in running peers: local_head keeps its head off the wire (checked on a real
Mosquitto broker) and in its checkpoint, ditto's personal model survives a restart, export
writes the personal model and says so, and the config refuses what cannot work."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gossip.envelope import decode_payload, max_message_size, parse
from gossip.mqtt_transport import inbox_topic
from peer.audit.verify import load_events
from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.learning.export import export
from peer.learning.personal import Split
from peer.ops.plan import write_plan
from peer.runtime.driver import Peer
from peer.runtime.local import build_memory_network, memory_peer, run_peers
from peer.runtime.parts import build_parts
from peer.state.provenance import EventKind
from sim.virtual_time import run_virtual
from topology import from_spec

from .netfixtures import mosquitto  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
HEAD = ["3.*"]  # the built-in mlp with one hidden layer: Flatten, Linear (1.*), ReLU, Linear (3.*)


def _plan(tmp_path: Path, personalization: dict, transport: str = "memory", rounds: int = 0, spec: str = "ring:3",
          **options):
    over = {"model": {"name": "mlp", "options": {"hidden": [16]}}, "train": {"local_steps": 5, "lr": 0.1},
            "aggregation": {"rule": "mean", "f": 0},
            "round": {"deadline": 5.0, "train_in_thread": False, "rounds": rounds},
            "data": {"partition": "labels", "labels_per_shard": 3},
            "metrics": {"share_learning_metrics": True}, "personalization": personalization}
    return write_plan(from_spec(spec, seed=1), tmp_path / "plan", transport=transport, overrides=over,
                      draw=False, **options)


def _head(peer: Peer) -> torch.Tensor:
    return Split(peer.model.names, peer.model.shapes, HEAD).personal(peer.model.flat.detach()).clone()


def _events(peer: Peer, kind: EventKind) -> list:
    """The peer's provenance events of one kind (read back from its log, closed or not)."""
    return load_events(Path(peer.cfg.data_dir) / "provenance.db", kind=kind.value)[1]


@pytest.mark.timeout(120)
def test_local_head_sends_only_the_shared_part_on_a_real_broker(tmp_path, mosquitto):  # noqa: F811
    import aiomqtt

    nodes = _plan(tmp_path, {"mode": "local_head", "personal": HEAD}, transport="mqtt", spec="complete:2",
                  transport_options={"broker": f"127.0.0.1:{mosquitto}"})
    captured: list[tuple[str, bytes]] = []

    async def main() -> list[Peer]:
        peers = [Peer.from_config(load_config(n.config)) for n in nodes]
        async with aiomqtt.Client("127.0.0.1", mosquitto) as sniffer:
            await sniffer.subscribe(inbox_topic("gossipfl", peers[0].cfg.network, "+", "+"), qos=1)

            async def sniff():
                async for m in sniffer.messages:
                    captured.append((str(m.topic), bytes(m.payload)))

            task = asyncio.create_task(sniff())
            await run_peers(peers, rounds=3)
            async with asyncio.timeout(10):  # QoS 1 to the sniffer: every update arrives
                while len(captured) < 2 * 3:
                    await asyncio.sleep(0.05)
            task.cancel()
        return peers

    peers = asyncio.run(main())
    split = Split(peers[0].model.names, peers[0].model.shapes, HEAD)
    heads = {p.peer_id: set(_head(p).tolist()) for p in peers}
    updates = [(t, parse(data)) for t, data in captured]
    assert len(updates) >= 6 and {env.sender for _, env in updates} == {p.peer_id for p in peers}
    for topic, env in updates:
        assert env.header["schema"] == split.shared_schema and env.header["n"] == split.shared_size < split.size
        values = decode_payload(env)
        assert values.numel() == split.shared_size
        if env.round == 2:  # the last round's update was sent with the head the peer still has
            assert not set(values.tolist()) & heads[env.sender], topic
    for p in peers:  # what the neighbour sent was accepted (same shared schema) and aggregated
        assert _events(p, EventKind.AGGREGATED) and not _events(p, EventKind.REJECTED)


def test_local_head_restart_restores_the_head_and_export_writes_it(tmp_path):
    nodes = _plan(tmp_path, {"mode": "local_head", "personal": HEAD})
    hub, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=3))
    heads = [_head(p) for p in peers]
    assert not torch.equal(heads[0], heads[1])  # the heads are each gateway's own
    assert peers[0].metrics.status()["personal_eval"] == peers[0].history[-1].personal_eval
    trained = _events(peers[0], EventKind.TRAINED)[-1].details
    assert trained["personal_eval_accuracy"] == trained["eval_accuracy"]  # the model sent from is the personal one
    split = Split(peers[0].model.names, peers[0].model.shapes, HEAD)
    started = _events(peers[0], EventKind.STARTED)[0].details
    assert started["personalization"] == "local_head" and started["params"] == split.shared_size
    # what a neighbour may send: the shared part's schema, size and exact message bound
    assert peers[0].verifier.schema == split.shared_schema and peers[0].verifier.n_params == split.shared_size
    assert peers[0].parts.max_message == max_message_size("raw-f32", split.shared_size) < max_message_size(
        "raw-f32", split.size)
    before = peers[0].model.flat.detach().clone()

    again = memory_peer(nodes[0].config, hub)
    again.resume()
    try:
        assert again.resumed_from == 3 and torch.equal(again.model.flat, before)
    finally:
        again.prov.close()
        again.lock.release()
    done = export(load_config(nodes[0].config), tmp_path / "out", ("state_dict",))
    assert done.serves == "personal" and json.loads((tmp_path / "out" / "model.json").read_text())["serves"] == "personal"
    state = torch.load(done.written["state_dict"], weights_only=True)
    assert torch.equal(torch.cat([state["3.weight"].reshape(-1), state["3.bias"]]), heads[0])


@pytest.mark.timeout(180)
def test_ditto_restart_restores_the_personal_model_and_export_names_it(tmp_path):
    nodes = _plan(tmp_path, {"mode": "ditto", "lambda": 0.5})
    hub, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=3))
    p = peers[0]
    assert p.personal.personal is not None
    personal, fleet = p.personal.personal.flat.detach().clone(), p.model.flat.detach().clone()
    assert not torch.equal(personal, fleet)
    state = {k: v.clone() for k, v in p.personal.learner.state().items()}
    rec = p.history[-1]
    assert rec.personal_eval["samples"] > 0 and rec.personal_eval != rec.eval
    assert p.metrics.status()["personal_eval"]["accuracy"] == rec.personal_eval["accuracy"]
    scrape = p.metrics.registry.get_sample_value("gossipfl_personal_eval_metric", {"metric": "accuracy"})
    assert scrape == rec.personal_eval["accuracy"]

    again = memory_peer(nodes[0].config, hub)
    again.resume()
    try:
        assert again.resumed_from == 3 and torch.equal(again.model.flat, fleet)
        assert again.personal.personal is not None and torch.equal(again.personal.personal.flat, personal)
        restored = again.personal.learner.state()
        assert restored.keys() == state.keys() and all(torch.equal(restored[k], state[k]) for k in state)
    finally:
        again.prov.close()
        again.lock.release()

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gossipfl", "peer", "export", "--config", str(nodes[0].config),
                           "--out", str(out), "--format", "state_dict"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("personal model (this gateway's own, [personalization]) of round 3"), done.stdout
    written = torch.load(out / "model.pt", weights_only=True)
    flat = torch.cat([written[n].reshape(-1) for n in p.model.names])
    assert torch.equal(flat, personal) and not torch.equal(flat, fleet)


def test_shared_mode_exports_the_shared_model_and_says_so(tmp_path):
    nodes = _plan(tmp_path, {})
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=1))
    assert peers[0].history[-1].personal_eval == {} and "personal_eval" not in peers[0].metrics.status()
    done = export(load_config(nodes[0].config), tmp_path / "out", ("state_dict",))
    assert done.serves == "shared"


def test_similarity_mixes_neighbours_and_says_so(tmp_path):
    nodes = _plan(tmp_path, {"mode": "local_head", "personal": HEAD, "similarity": True})
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=2))
    for p in peers:
        agg = _events(p, EventKind.AGGREGATED)
        assert agg and all(e.details["report"]["rule"] == "similarity" for e in agg)
        w = agg[-1].details["report"]["details"]["weights"]
        assert len(w) == 3 and abs(sum(w) - 1) < 1e-4 and w[0] == max(w)  # no neighbour outweighs the own model


def _config_error(tmp_path: Path, personalization: dict) -> str:
    """What building node-0's parts (the model is known only then) says."""
    nodes = _plan(tmp_path, personalization)
    with pytest.raises(ConfigError) as err:
        build_parts(load_config(nodes[0].config))
    return str(err.value)


def test_config_errors_say_what_to_fix(tmp_path):
    said = _config_error(tmp_path / "a", {"mode": "local_head"})  # the default pattern: head.*
    assert "personalization.personal: pattern 'head.*' matches no parameter of this model; its parameters are: " \
           "1.weight, 1.bias, 3.weight, 3.bias" in said
    said = _config_error(tmp_path / "b", {"mode": "local_head", "personal": ["*"]})
    assert "nothing would be shared" in said
    with pytest.raises(ConfigError, match=r"personalization\.lambda must be a number > 0"):
        nodes = _plan(tmp_path / "c", {"mode": "ditto", "lambda": -1.0})
        load_config(nodes[0].config)
    nodes = _plan(tmp_path / "d", {"mode": "local_head", "personal": HEAD, "similarity": True})
    text = nodes[0].config.read_text().replace('rule = "mean"', 'rule = "nnm+median"')
    nodes[0].config.write_text(text)
    with pytest.raises(ConfigError, match=r"similarity = true .* cannot go with it \(the similarity mix replaces "):
        load_config(nodes[0].config)


def test_fleet_status_shows_the_personal_model_and_the_spread_over_gateways(tmp_path):
    import urllib.request

    import gossipfl.cli  # noqa: F401  (the command modules are loaded through the CLI)
    from gossipfl.cli_fleet import status_table
    from peer.ops.status import Member, PeerRow, per_gateway, row_from_metrics, row_from_status
    from peer.runtime.metrics import PeerMetrics

    from .netfixtures import free_ports

    (port,) = free_ports(1)
    pm = PeerMetrics("gw-1", "12D3KooWp", neighbours=2, share_learning_metrics=True, personal=True)
    pm.start(f"127.0.0.1:{port}", loop_lag=False)
    try:
        status = pm.round_done(4, train={"loss": 0.5}, eval={"accuracy": 0.5}, personal={"accuracy": 0.875})
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        pm.stop()
    member = Member("gw-1", "12D3KooWp", tmp_path / "peer.toml", f"127.0.0.1:{port}", None)
    for row in (row_from_metrics(member, text), row_from_status(member, json.loads(json.dumps(status)))):
        assert (row.metric, row.value, row.personal, row.personal_eval) == ("accuracy", 0.5, 0.875, {"accuracy": 0.875})
    private = PeerMetrics("gw-2", "12D3KooWq", share_learning_metrics=False, personal=True)
    assert "personal_eval" not in private.round_done(1, eval={"accuracy": 0.5}, personal={"accuracy": 0.9})

    rows = [PeerRow(f"gw-{i}", f"p{i}", True, "metrics", 4, "accuracy", 0.5, personal=v)
            for i, v in enumerate([0.9, 0.6, 0.8, 0.7, None])]  # gw-4 is not personalized: its shared model
    assert per_gateway(rows) == {"metric": "accuracy", "gateways": 5, "worst": 0.5, "p10": 0.5, "median": 0.7}
    losses = [PeerRow("a", "p", True, "mqtt", 1, "loss", v) for v in (0.1, 0.4, 0.2)]
    assert per_gateway(losses) == {"metric": "loss", "gateways": 3, "worst": 0.4, "p10": 0.4, "median": 0.2}
    from rich.console import Console

    console = Console(width=80, record=True)  # as `gossipfl fleet status` prints it
    console.print(status_table(rows))
    shown = console.export_text()
    assert "personal" in shown.splitlines()[1] and max(map(len, shown.splitlines())) <= 80, shown
    assert "worst 0.5, 10th percentile 0.5, median 0.7" in " ".join(shown.split()), shown


def test_a_tampered_personal_model_is_refused_on_restart(tmp_path):
    from peer.state.resume import ResumeError

    nodes = _plan(tmp_path, {"mode": "ditto"})
    hub, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=1))
    personal = peers[0].personal.personal
    assert personal is not None
    ck = nodes[0].dir / "data" / "checkpoint.msgpack"
    raw = bytearray(ck.read_bytes())
    body = personal.flat.detach().numpy().tobytes()
    at = raw.find(body[:64])
    assert at > 0 and raw.find(body[:64], at + 1) < 0  # the personal block, distinct from the fleet model's
    raw[at + 9] ^= 0xFF  # one flipped bit of the personal model: the log's hash covers it
    ck.write_bytes(bytes(raw))
    again = memory_peer(nodes[0].config, hub)
    try:
        with pytest.raises(ResumeError, match="refusing to resume from state the log does not describe"):
            again.resume()
    finally:
        again.prov.close()
        again.lock.release()
