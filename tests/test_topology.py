"""Generators, file formats, mixing matrices, analysis and per-node robustness."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from topology import (
    TopologyError,
    from_spec,
    load,
    metropolis_hastings,
    save,
    spectral_gap,
    summarize,
)
from topology.analysis import EXACT_LIMIT
from topology.mixing import mh_weights, rounds_to_consensus
from topology.robustness import analyse, max_byzantine

SPECS = {
    "ring:16": (16, {2}),
    "torus:4,5": (20, {4}),
    "grid:3,4": (12, {2, 3, 4}),
    "complete:7": (7, {6}),
    "star:9": (9, {1, 8}),
    "regular:32,4": (32, {4}),
    "er:50,0.15": (50, None),
    "ws:40,4,0.1": (40, None),
    "ba:50,2": (50, None),
    "exp:16": (16, {7}),
}


@pytest.mark.parametrize("spec", SPECS)
def test_generators_size_degree_connectivity_and_seed(spec):
    n, degrees = SPECS[spec]
    g = from_spec(spec, seed=3)
    assert g.number_of_nodes() == n and nx.is_connected(g)
    if degrees is not None:
        assert {d for _, d in g.degree()} <= degrees
    again = from_spec(spec, seed=3)
    assert sorted(g.edges()) == sorted(again.edges())


def test_random_generators_change_with_the_seed():
    assert sorted(from_spec("regular:32,4", seed=1).edges()) != sorted(from_spec("regular:32,4", seed=2).edges())


def test_exponential_graph_links_powers_of_two():
    g = from_spec("exp:16")
    assert set(g.neighbors(0)) == {1, 2, 4, 8, 15, 14, 12}


@pytest.mark.parametrize("spec, message", [
    ("ring", "expected ring:N"), ("hex:4", "unknown topology"), ("regular:5,3", "n\\*d even"),
    ("er:100,0.001", "connected"), ("ws:10,3,0.1", "even"), ("ring:x", "numbers"), ("ring:2", "at least 3"),
])
def test_bad_specs(spec, message):
    with pytest.raises(TopologyError, match=message):
        from_spec(spec)


@pytest.mark.parametrize("ext", [".edgelist", ".graphml", ".gml", ".json"])
def test_formats_round_trip(tmp_path, ext):
    g = from_spec("ws:20,4,0.2", seed=1)
    path = save(g, tmp_path / f"g{ext}")
    h = load(path)
    assert nx.utils.graphs_equal(nx.Graph(g), h) or sorted(map(sorted, g.edges())) == sorted(map(sorted, h.edges()))


def test_peer_id_labels_survive(tmp_path):
    g = nx.Graph([("12D3KooWa", "12D3KooWb"), ("12D3KooWb", "12D3KooWc"), ("12D3KooWc", "12D3KooWa")])
    h = load(save(g, tmp_path / "p.graphml"))
    assert set(h.nodes) == set(g.nodes)


def test_directed_and_disconnected_files_are_refused_unless_allowed(tmp_path):
    d = nx.DiGraph([(0, 1), (1, 2), (2, 0)])
    path = tmp_path / "d.graphml"
    nx.write_graphml(d, path)
    with pytest.raises(TopologyError, match="directed"):
        load(path)
    assert load(path, allow_directed=True).number_of_edges() == 3
    two = tmp_path / "two.edgelist"
    two.write_text("0 1\n2 3\n")
    with pytest.raises(TopologyError, match="2 disconnected parts"):
        load(two)
    assert load(two, allow_disconnected=True).number_of_nodes() == 4
    with pytest.raises(TopologyError, match="unknown graph format"):
        load(tmp_path / "g.xyz")
    with pytest.raises(TopologyError, match="no such"):
        load(tmp_path / "missing.gml")


@pytest.mark.parametrize("spec", ["ring:12", "regular:20,4", "ba:30,2", "star:6", "ws:30,4,0.3"])
def test_mixing_matrix_is_symmetric_doubly_stochastic_and_gap_matches_eig(spec):
    g = from_spec(spec, seed=0)
    nodes, w = metropolis_hastings(g)
    dense = w.toarray()
    assert np.allclose(dense, dense.T)
    assert np.allclose(dense.sum(axis=0), 1) and np.allclose(dense.sum(axis=1), 1)
    assert (dense >= -1e-12).all()
    ev = np.sort(np.abs(np.linalg.eigvals(dense)))[::-1]
    assert spectral_gap(w) == pytest.approx(1 - ev[1], abs=1e-9)
    # one node's row from degrees alone equals the matrix row
    v = nodes[0]
    self_w, nbr = mh_weights(g.degree(v), {u: g.degree(u) for u in g.neighbors(v)})
    assert self_w == pytest.approx(dense[0, 0])
    for u, x in nbr.items():
        assert x == pytest.approx(dense[0, nodes.index(u)])


def test_sparse_gap_agrees_with_dense():
    import topology.mixing as M
    g = from_spec("regular:200,6", seed=1)
    _, w = metropolis_hastings(g)
    dense_gap = spectral_gap(w)
    old = M.DENSE_LIMIT
    M.DENSE_LIMIT = 10
    try:
        assert spectral_gap(w) == pytest.approx(dense_gap, abs=1e-6)
    finally:
        M.DENSE_LIMIT = old


def test_rounds_to_consensus():
    assert rounds_to_consensus(0.5, 1e-3) == pytest.approx(np.log(1e3) / np.log(2))
    assert rounds_to_consensus(0.0) == float("inf")


def test_summary_of_a_ring():
    s, _ = summarize(from_spec("ring:10"))
    assert (s.nodes, s.edges, s.diameter, s.node_connectivity, s.edge_connectivity) == (10, 10, 5, 2, 2)
    assert s.diameter_exact and s.connectivity_exact


def test_large_graphs_use_bounds():
    s, _ = summarize(from_spec(f"regular:{EXACT_LIMIT + 10},4", seed=0))
    assert not s.diameter_exact and not s.connectivity_exact and s.node_connectivity == 4


def test_robustness_on_hand_built_cases():
    # Krum needs n > 2b + 2 with n = degree + 1.
    assert max_byzantine("krum", 4) == 1          # n = 5: b = 1 ok (5 > 4), b = 2 not (5 > 6 false)
    assert max_byzantine("median", 4) == 2        # n = 5 > 2b
    assert max_byzantine("bulyan", 6) == 1        # n = 7 >= 4b + 3
    assert max_byzantine("mean", 8) == 0
    ring = from_spec("ring:8")                     # degree 2: n = 3
    assert analyse(ring, "median", 1).at_risk == []          # 3 > 2
    assert len(analyse(ring, "krum", 1).at_risk) == 8        # 3 > 4 false
    star = from_spec("star:9")                     # centre degree 8, leaves degree 1
    rep = analyse(star, "median", 2)
    assert rep.at_risk == list(range(1, 9))        # leaves face b = 1 with n = 2
    r8 = from_spec("regular:32,8")                 # 12.5% = 4 Byzantine, worst case all next to one node
    assert len(analyse(r8, "krum", 0.125).at_risk) == 32     # n = 9 > 2*4 + 2 fails
    assert analyse(r8, "median", 0.125).at_risk == []        # n = 9 > 8
    assert analyse(r8, "krum", 3).at_risk == []              # n = 9 > 8


def test_topology_show_command(tmp_path):
    png = tmp_path / "g.png"
    r = CliRunner().invoke(main, ["topology", "show", "regular:16,4", "--rule", "krum", "--byzantine", "2",
                                  "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "spectral gap" in r.output and "at risk" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(main, ["topology", "show", "ring:8", "--json", "--png", str(png)])
    data = json.loads(r.output)
    assert data["nodes"] == 8 and data["diameter"] == 4
    r = CliRunner().invoke(main, ["topology", "show", "bogus:3", "--png", str(png)])
    assert r.exit_code == 2 and r.output.startswith("error: unknown topology")
