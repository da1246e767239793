"""Seeing one peer: Prometheus metrics scraped over real HTTP, the [metrics] table, and the
MQTT status with its last will read by a real subscriber on the test's own Mosquitto."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gossip.identity import Identity
from peer.config.parse import parse_config
from peer.errors import ConfigError, PeerError
from peer.runtime.metrics import MAX_METRIC_KEYS, PeerMetrics, metric_dict

from .netfixtures import ROOT, free_ports


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_are_served_over_http_with_what_the_peer_reported():
    (port,) = free_ports(1)

    async def run():
        m = PeerMetrics("gw-1", "12D3KooWpeer", neighbours=3, names={"12D3KooWb": "gw-2"},
                        share_learning_metrics=True)
        m.start(f"127.0.0.1:{port}")
        try:
            before = scrape(port)
            m.bytes_in(1000)
            m.bytes_out(400)
            m.rejected("bad_signature")
            status = m.round_done(4, train={"loss": 0.25, "accuracy": 0.9}, eval={"mse": 0.125, "auc": 0.75},
                                  heard=["12D3KooWb", "12D3KooWc"], aggregated=True, seconds=1.5,
                                  rejected_total={"bad_signature": 3, "rate_limited": 2})
            await asyncio.sleep(1.2)  # the loop-lag task samples twice a second
            return before, scrape(port), status
        finally:
            m.stop()

    before, after, status = asyncio.run(run())
    assert math.isnan(before[("gossipfl_seconds_since_aggregation", ())])  # no aggregation yet
    assert before[("gossipfl_peer_info", (("name", "gw-1"), ("peer_id", "12D3KooWpeer")))] == 1
    assert after[("gossipfl_round", ())] == 4
    assert after[("gossipfl_updates_accepted_total", ())] == 2
    assert after[("gossipfl_updates_rejected_total", (("reason", "bad_signature"),))] == 3  # 1 live + synced
    assert after[("gossipfl_updates_rejected_total", (("reason", "rate_limited"),))] == 2
    assert after[("gossipfl_bytes_received_total", ())] == 1000
    assert after[("gossipfl_bytes_sent_total", ())] == 400
    assert after[("gossipfl_round_seconds_count", ())] == 1 and after[("gossipfl_round_seconds_sum", ())] == 1.5
    assert after[("gossipfl_event_loop_lag_seconds_count", ())] >= 1
    assert after[("gossipfl_train_metric", (("metric", "loss"),))] == 0.25
    assert after[("gossipfl_eval_metric", (("metric", "mse"),))] == 0.125
    assert after[("gossipfl_eval_metric", (("metric", "auc"),))] == 0.75
    assert after[("gossipfl_neighbours_heard", ())] == 2 and after[("gossipfl_neighbours", ())] == 3
    assert 0 <= after[("gossipfl_seconds_since_aggregation", ())] < 600
    assert status["heard"] == ["gw-2", "12D3KooWc"] and status["rejected"] == {"bad_signature": 3, "rate_limited": 2}
    assert status["name"] == "gw-1" and status["loss"] == 0.25 and status["online"] is True
    json.dumps(status, allow_nan=False)  # publishable as is


def test_two_peers_in_one_process_keep_separate_metrics():
    ports = free_ports(2)
    a, b = PeerMetrics("a", "pa"), PeerMetrics("b", "pb")
    a.start(f"127.0.0.1:{ports[0]}", loop_lag=False)
    b.start(f"127.0.0.1:{ports[1]}", loop_lag=False)
    try:
        a.round_done(7, heard=["x"])
        b.round_done(2)
        assert scrape(ports[0])[("gossipfl_round", ())] == 7
        assert scrape(ports[1])[("gossipfl_round", ())] == 2
    finally:
        a.stop()
        b.stop()


def test_a_port_in_use_is_a_one_line_error():
    (port,) = free_ports(1)
    a, b = PeerMetrics("a", "pa"), PeerMetrics("b", "pb")
    a.start(f"127.0.0.1:{port}", loop_lag=False)
    try:
        with pytest.raises(PeerError, match=r"metrics.listen = '127.0.0.1:\d+': cannot listen there"):
            b.start(f"127.0.0.1:{port}", loop_lag=False)
    finally:
        a.stop()


def test_learner_metrics_are_bounded_and_numbers_only():
    many = {f"k{i}": float(i) for i in range(100)}
    assert len(metric_dict(many)) == MAX_METRIC_KEYS
    assert metric_dict({"ok": 1, "flag": True, "text": "x", "": 2.0, "x" * 500: 1.0, 3: 1.0}) == {"ok": 1.0}
    status = PeerMetrics("a", "p", share_learning_metrics=True).round_done(1, train={"loss": float("nan")})
    assert status["loss"] is None  # JSON has no NaN
    json.dumps(status, allow_nan=False)


def _cfg(tmp_path, metrics: dict | None):
    doc = {"identity": {"key": "k"}, "network": {"id": "n", "trust": "t"}}
    if metrics is not None:
        doc["metrics"] = metrics
    return parse_config(doc, tmp_path)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "::1:9464", "a b:1", ":9464"])
def test_metrics_listen_is_validated(tmp_path, listen):
    with pytest.raises(ConfigError, match="metrics.listen must be HOST:PORT"):
        _cfg(tmp_path, {"listen": listen})


def test_metrics_table_is_optional_and_closed(tmp_path):
    assert _cfg(tmp_path, None).metrics.listen is None
    assert _cfg(tmp_path, None).metrics.share_learning_metrics is False
    assert _cfg(tmp_path, {"share_learning_metrics": True}).metrics.share_learning_metrics is True
    with pytest.raises(ConfigError, match="share_learning_metrics"):
        _cfg(tmp_path, {"share_learning_metrics": "yes"})
    assert _cfg(tmp_path, {"listen": "[::1]:9464"}).metrics.listen == "[::1]:9464"
    with pytest.raises(ConfigError, match=r"unknown field\(s\) port in \[metrics\]"):
        _cfg(tmp_path, {"port": 9464})


# --- nothing data-dependent leaves a gateway unless the operator opts in ---------------------

LEARNING_NAMES = ("gossipfl_train_metric", "gossipfl_eval_metric")
LEARNING_KEYS = ("loss", "train", "eval")


def _learning_numbers(page: dict, status: dict) -> dict:
    """Every training or evaluation number in a scrape and a status message."""
    found = {f"{name}{dict(labels)}": v for (name, labels), v in page.items() if name in LEARNING_NAMES}
    found.update({k: status[k] for k in LEARNING_KEYS if k in status})
    return found


@pytest.mark.timeout(180)
def test_real_peers_publish_learning_metrics_only_when_opted_in_and_never_past_the_budget(tmp_path):
    """Three real peers over the memory transport, each serving /metrics: node 0 opts in,
    node 1 keeps the default, node 2 opts in but its privacy budget runs out after round 0."""
    import torch

    from peer.ops.plan import write_plan
    from peer.runtime.local import build_memory_network
    from tests.audit_fleet import FAST
    from topology import from_spec

    torch.set_num_threads(1)
    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", transport="memory", overrides=FAST, draw=False)
    ports = free_ports(3)
    extra = ['share_learning_metrics = true\n', '', 'share_learning_metrics = true\n'
             '[privacy]\nmode = "update"\nnoise_multiplier = 2.0\nepsilon = 2.5\n']  # one release fits
    for node, port, more in zip(nodes, ports, extra, strict=True):
        with open(node.config, "a") as f:
            f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n{more}')
    _, peers = build_memory_network(nodes)

    async def run():
        for p in peers:
            await p.start()
        seen = []
        try:
            for _ in range(3):
                await asyncio.gather(*(p.run_round() for p in peers))
                pages = await asyncio.gather(*(asyncio.to_thread(scrape, port) for port in ports))
                seen.append([(page, p.metrics.status(), p.round) for page, p in zip(pages, peers, strict=True)])
            raw = await asyncio.to_thread(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{ports[1]}/metrics", timeout=10).read().decode())
        finally:
            for p in peers:
                await p.close()
        return seen, raw

    seen, raw = asyncio.run(run())
    for r, by_peer in enumerate(seen):
        (page0, status0, _), (page1, status1, _), (page2, status2, _) = by_peer
        assert page0[("gossipfl_train_metric", (("metric", "loss"),))] == status0["loss"]
        assert ("gossipfl_eval_metric", (("metric", "accuracy"),)) in page0 and "accuracy" in status0["eval"]
        assert _learning_numbers(page1, status1) == {}, r  # the default: round, health, counts only
        assert status1["round"] == status0["round"] and page1[("gossipfl_round", ())] == status1["round"]
        assert status2["privacy"]["budget"] == 2.5 and page2[("gossipfl_privacy_epsilon_budget", ())] == 2.5
        if r == 0:  # one release within the budget: opted in, so shared
            assert status2["privacy"]["exhausted"] is False and "accuracy" in status2["eval"]
        else:  # spent: nothing data-dependent, although opted in
            assert status2["privacy"]["exhausted"] is True, status2
            assert _learning_numbers(page2, status2) == {}, r
            assert page2[("gossipfl_privacy_budget_exhausted", ())] == 1
    assert not any(name in raw for name in LEARNING_NAMES), raw  # the default peer does not even name them


# --- MQTT status and last will ----------------------------------------------------------------

STATUS_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from gossip.identity import Identity
    from gossip.mqtt_transport import MqttTransport

    async def main():
        t = MqttTransport(Identity.generate(), "lab", port=int(sys.argv[1]), name="gw-7")
        await t.start()
        await t.status({"round": 3, "loss": 0.5, "rejected": {"bad_signature": 1}, "neighbours_heard": 2})
        print(t.peer_id, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
""")


async def _statuses(port: int, topic: str, until, timeout: float = 30.0) -> dict:
    """Read the status topic with a real aiomqtt subscriber until `until(status)` holds."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                status = json.loads(msg.payload)
                if until(status):
                    return status
    raise AssertionError("unreachable")


@pytest.mark.timeout(120)
def test_a_killed_peer_is_marked_offline_by_its_last_will(tmp_path, mosquitto):
    proc = subprocess.Popen([sys.executable, "-c", STATUS_PROCESS, str(mosquitto)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        peer_id = proc.stdout.readline().strip()
        assert peer_id, proc.stderr.read()
        topic = f"gossipfl/lab/{peer_id}/status"
        online = asyncio.run(_statuses(mosquitto, topic, lambda s: s.get("round") == 3))
        assert online["online"] is True and online["name"] == "gw-7" and online["peer_id"] == peer_id
        assert online["loss"] == 0.5 and online["rejected"] == {"bad_signature": 1}
        proc.kill()
        proc.wait(30)
        offline = asyncio.run(_statuses(mosquitto, topic, lambda s: s.get("online") is False))
        # the broker published the will set at connect time: who, and why (not the later rounds)
        assert offline["reason"] == "connection lost" and offline["name"] == "gw-7"
        assert offline["peer_id"] == peer_id
        # retained: a dashboard that connects later still reads it
        late = asyncio.run(_statuses(mosquitto, topic, lambda s: True))
        assert late["online"] is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.timeout(60)
def test_a_clean_close_publishes_offline_with_the_last_status(mosquitto):
    from gossip.mqtt_transport import MqttTransport

    ident = Identity.generate()
    topic = f"gossipfl/lab/{ident.peer_id}/status"

    async def run():
        t = MqttTransport(ident, "lab", port=mosquitto, name="gw-1")
        await t.start()
        first = await _statuses(mosquitto, topic, lambda s: s.get("online") is True)  # online at connect
        await t.status({"round": 5, "loss": 0.125})
        await t.close()
        return first, await _statuses(mosquitto, topic, lambda s: s.get("online") is False)

    first, offline = asyncio.run(run())
    assert first["name"] == "gw-1" and first["peer_id"] == ident.peer_id
    assert offline["reason"] == "stopped" and offline["round"] == 5 and offline["loss"] == 0.125


# --- JSON logs: everything the process prints -------------------------------------------------

LOGGING_PROCESS = textwrap.dedent("""
    import logging, threading, warnings
    from peer.runtime import logs
    PID = "12D3KooW" + "A" * 44
    logs.setup("json", peer="gw-1", names={PID: "gw-2"})
    import libp2p  # configures its own loggers at import: no handler, no propagation
    logging.getLogger("libp2p.network.swarm").warning("dial to %s failed", PID)
    logging.getLogger("libp2p.network.auto_connector").info("chatter")  # below WARNING: dropped
    logging.getLogger("gossipfl.peer").info("round %d", 3, extra={"event": "round", "round": 3, "accepted": 2})
    warnings.warn("careful")
    t = threading.Thread(target=lambda: 1 / 0, name="worker")
    t.start()
    t.join()
""")


def test_json_logs_route_libp2p_warnings_and_thread_errors_with_plan_names():
    out = subprocess.run([sys.executable, "-c", LOGGING_PROCESS], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line one JSON object
    assert all(o["peer"] == "gw-1" for o in lines)
    by_logger = {o["logger"]: o for o in lines}
    assert by_logger["libp2p.network.swarm"]["msg"] == "dial to gw-2 (..AAAAAAAA) failed"
    assert "libp2p.network.auto_connector" not in by_logger
    assert by_logger["gossipfl.peer"]["event"] == "round" and by_logger["gossipfl.peer"]["accepted"] == 2
    assert "UserWarning: careful" in by_logger["py.warnings"]["msg"]
    assert "ZeroDivisionError" in by_logger["gossipfl.process"]["exc"]
