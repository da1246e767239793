"""Compressed gossip in the batched engine (sim.compression): identity compression is plain
gossip, CHOCO with top-k learns with a fraction of the bytes, a Byzantine node's public copy
drifts where it wants while a robust rule holds, bytes are counted at their real size, and
scenarios that the engine cannot simulate with compression are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip.identity import Identity
from gossip.sparse import Compression, compress_rows
from gossip.sparse_verify import seal_sparse
from sim.batched import BatchedEngine
from sim.compression import message_bytes, settings
from sim.errors import ScenarioError
from sim.run import graph_of
from sim.scenario import build

TOPK10 = {"compressor": "topk", "fraction": 0.1, "gamma": 0.5}


def scenario(compression: dict, rounds: int = 15, rule: str = "mean", f: int = 0, attack: str = "none", **extra):
    doc = {"rounds": rounds, "engine": "batched", "topology": {"graph": "regular:32,8"},
           "data": {"partition": "dirichlet", "alpha": 0.5}, "aggregation": {"rule": rule, "f": f},
           "round": {"compression": compression}, **extra}
    if attack != "none":
        doc["attack"] = {"kind": attack, "byzantine": 4}
    return build(doc)


def run(sc, rule: str | None = None, tmp="unused"):
    threads = torch.get_num_threads()
    eng = BatchedEngine(sc, rule or sc.rules[0], graph_of(sc), tmp)
    try:
        res = eng.run()
    finally:
        torch.set_num_threads(threads)
    last = res.rounds[-1]
    return eng, res, float(np.mean(list(last.accuracy.values()))), sum(r.bytes_sent for r in res.rounds)


def test_identity_compression_is_plain_gossip():
    plain, _, acc, _ = run(scenario({}))
    same, res, acc_same, sent = run(scenario({"compressor": "none", "values": "f32", "error_feedback": False}))
    assert torch.allclose(plain.shard.params, same.shard.params, atol=1e-5)
    assert acc == pytest.approx(acc_same, abs=1e-3)
    assert sent == 15 * 32 * 8 * message_bytes("raw-f32", same.shard.d, 9)


def test_choco_topk_learns_with_a_quarter_of_the_bytes():
    _, _, acc_raw, bytes_raw = run(scenario({"compressor": "none", "values": "f32", "error_feedback": False},
                                            rounds=30))
    eng, res, acc, sent = run(scenario(TOPK10, rounds=30))
    assert acc > 0.7 and acc >= acc_raw - 0.1, (acc, acc_raw)
    assert 4 * sent < bytes_raw  # a 2,410-value model: the signed header is a third of a top-10% message
    # the public copies follow the models: what each node has not sent yet is small
    gap = (eng.shard.params - eng.shard.hat).norm(dim=1) / eng.shard.params.norm(dim=1)
    assert float(gap.max()) < 0.2


def test_without_error_feedback_the_copies_lose_what_was_dropped():
    ef, _, _, _ = run(scenario(TOPK10))
    no, _, _, _ = run(scenario({**TOPK10, "error_feedback": False}))
    assert float((no.shard.params - no.shard.hat).norm()) > 2 * float((ef.shard.params - ef.shard.hat).norm())


def test_a_byzantine_copy_drifts_and_the_median_holds():
    mean_eng, _, acc_mean, _ = run(scenario(TOPK10, rounds=20, attack="sign_flip"), "mean")
    med_eng, _, acc_median, _ = run(scenario(TOPK10, rounds=20, rule="median", attack="sign_flip"), "median")
    shard = med_eng.shard
    honest = torch.from_numpy(np.flatnonzero(~shard.topo.byz))
    assert len(shard.bad_edges) > 0
    # the copies honest nodes hold of the attackers point away from the honest models
    honest_mean = shard.hat[honest].mean(0)
    cos = torch.nn.functional.cosine_similarity(shard.bad_hat, honest_mean[None], dim=1)
    assert float(cos.max()) < 0
    assert acc_mean < 0.2 and acc_median > acc_mean + 0.15, (acc_mean, acc_median)


def test_bytes_are_real_signed_message_sizes():
    sc = scenario({"compressor": "topk", "fraction": 0.01, "values": "f16"}, rounds=2)
    eng, res, _, sent = run(sc)
    comp = Compression("topk", 0.01, None, "f16")
    x = torch.randn(1, eng.shard.d)
    idx, vals = compress_rows(x, comp)
    real = seal_sparse(Identity.from_seed(b"s" * 32), idx[0], vals[0], comp, net="sim", round=1000,
                       schema=bytes(32), parents=[bytes(32)] * 9, deg=8, ts=0.0).data
    assert message_bytes("sparse-f16", comp.k(eng.shard.d), 9) == len(real)
    assert all(r.bytes_sent == 32 * 8 * len(real) for r in res.rounds)


@pytest.mark.parametrize("doc,extra,match", [
    ({"compressor": "zip"}, {}, "compressor"),
    ({"compressor": "topk", "fraction": 2.0}, {}, "fraction"),
    ({"compressor": "topk", "gamma": 0.0}, {}, "gamma"),
    ({"compressor": "topk", "speed": 1}, {}, "unknown field"),
    ({"compressor": "topk", "error_feedback": 1}, {}, "wrong type"),
    ({"compressor": "topk"}, {"faults": {"dropout": 0.1}}, "faults.dropout"),
    ({"compressor": "topk"}, {"engine": "protocol"}, "batched engine"),
])
def test_scenarios_compression_cannot_run_are_refused(doc, extra, match):
    args = {k: v for k, v in extra.items() if k != "engine"}
    with pytest.raises(ScenarioError, match=match):
        sc = scenario(doc, **args)
        if "engine" in extra:
            sc.engine = extra["engine"]
            from sim.compression import check
            check(sc)


def test_settings_defaults():
    s = settings({"compressor": "randk", "count": 100, "values": "int8"})
    assert s.sparse == Compression("randk", None, 100, "int8") and s.error_feedback and s.gamma == 1.0
    assert settings({}) is None


def test_sim_run_with_a_compression_table(tmp_path):
    import json

    from click.testing import CliRunner

    from gossipfl.cli import main

    sc = tmp_path / "s.toml"
    sc.write_text('name = "small"\nrounds = 3\n[topology]\ngraph = "regular:8,4"\n[aggregation]\nrules = ["median"]\n'
                  'f = 0\n[round.compression]\ncompressor = "randk"\ncount = 50\nvalues = "int8"\ngamma = 0.5\n')
    r = CliRunner().invoke(main, ["sim", "run", str(sc), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "B/node-rnd" in r.output
    row = json.loads((tmp_path / "r" / "summary.json").read_text())[0]
    assert row["engine"] == "batched"
    assert row["bytes_per_node_round"] == 4 * message_bytes("sparse-int8", 50, 5)
    assert "real size" in row["bytes"]
