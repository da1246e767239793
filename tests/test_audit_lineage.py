"""`audit trace` draws an update's lineage as a DAG (PNG by default, Graphviz on request)
from a small real fleet's logs: plan names as labels, the traced update highlighted,
rejected inputs marked; a model hash is traced as a model."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.fleet import Fleet
from peer.audit.lineage import lineage, lineage_summary
from peer.audit.query import model_inputs
from tests.audit_fleet import JUNK_NODE, build_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return build_fleet(tmp_path_factory.mktemp("lineage") / "plan")


@pytest.fixture(scope="module")
def loaded(fleet):
    return Fleet.load([fleet.plan])


def own_update(loaded, peer_id, rnd):
    return next(e.update_hash for e in loaded.log_of(peer_id).events if e.kind == "sent" and e.round == rnd)


def test_lineage_is_a_dag_with_shared_inputs_and_rejected_inputs_marked(fleet, loaded):
    target = own_update(loaded, fleet.peer_ids[0], 2)
    g = lineage(loaded, target, depth=2)
    s = lineage_summary(loaded, g)
    assert s["name"] == fleet.names[0] and s["round"] == 2
    # node 0 aggregated its own and node 1's round-1 updates; node 3's NaN update was refused
    assert {i["update"] for i in s["inputs"]} == set(model_inputs(loaded, fleet.peer_ids[0], 1).inputs[i]["update"]
                                                     for i in range(2))
    assert [r["peer"] for r in s["rejected_inputs"]] == [fleet.peer_ids[JUNK_NODE]]
    assert {f["name"] for f in s["fed"]} == {fleet.names[0], fleet.names[1], fleet.names[3]}
    # a DAG: node 0's round-0 update feeds both round-1 inputs, and is drawn once
    r0 = own_update(loaded, fleet.peer_ids[0], 0)
    assert g.out_degree(r0) >= 2


def test_trace_writes_a_png_named_after_the_update(fleet, loaded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = own_update(loaded, fleet.peer_ids[1], 2)
    r = CliRunner().invoke(main, ["audit", "trace", target[:8], str(fleet.plan)])
    assert r.exit_code == 0, r.output
    png = tmp_path / f"lineage-{target[:10]}.png"
    assert png.is_file() and png.stat().st_size > 20_000 and f"drawing: {png.name}" in r.output
    img = mpimg.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    highlight = np.all(np.abs(img[..., :3] - np.array([1.0, 0xD3 / 255, 0x4D / 255])) < 0.02, axis=-1)
    assert highlight.sum() > 500  # the traced update is drawn filled in gold
    assert "came from" in r.output and f"update of {fleet.names[1]}, round 2" in r.output


def test_trace_of_a_model_hash_and_a_chosen_png_and_dot(fleet, loaded, tmp_path):
    model = model_inputs(loaded, fleet.peer_ids[2], 1).model
    png, dot = tmp_path / "m.png", tmp_path / "m.dot"
    r = CliRunner().invoke(main, ["audit", "trace", model[:9], str(fleet.plan), "--png", str(png),
                                  "--dot", str(dot), "--depth", "1"])
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 10_000
    text = dot.read_text()
    assert text.startswith("digraph") and "fillcolor=gold" in text and f"{fleet.names[2]} r1" in text
    r = CliRunner().invoke(main, ["audit", "trace", model[:9], str(fleet.plan), "--json", "--depth", "1"])
    s = json.loads(r.output)
    assert s["kind"] == "model" and s["round"] == 1 and len(s["inputs"]) == 3 and len(s["fed"]) == 1


def test_trace_ambiguous_prefix_lists_candidates(fleet, loaded):
    r = CliRunner().invoke(main, ["audit", "trace", "", str(fleet.plan), "--json"])
    assert r.exit_code == 2 and "not a hexadecimal" in r.output
    hashes = loaded.update_hashes()  # random keys: pick a first digit two updates share
    shared = next(c for c in "0123456789abcdef" if sum(h.startswith(c) for h in hashes) >= 2)
    r = CliRunner().invoke(main, ["audit", "trace", shared, str(fleet.plan), "--json"])
    assert r.exit_code == 2 and "ambiguous" in r.output, r.output
