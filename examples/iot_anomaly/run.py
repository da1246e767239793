"""Three gateways on one machine learn the anomaly detector together (memory transport, the
real peer: signed updates, aggregation, provenance logs); the same gateways trained alone
are the baseline. Prints the AUROC of each on held-out windows from every operating mode.

    python examples/iot_anomaly/run.py [--rounds 20] [--out /tmp/iot-fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the gossipfl checkout, when run from it

TEMPLATE = HERE / "peer.toml"  # model, data and learner from gateway.py: what every gateway inherits


def plan(out: Path, rounds: int):
    """Three gateway folders, each with its peer.toml, key and a copy of gateway.py (the
    template's modules are copied by the plan)."""
    from peer.ops.plan import write_plan
    from peer.ops.template import NodeTemplate
    from topology import from_spec

    over = {"round": {"deadline": 10.0, "train_in_thread": False, "rounds": rounds}}
    return write_plan(from_spec("complete:3"), out, transport="memory", template=NodeTemplate.load(TEMPLATE),
                      overrides=over, draw=False, force=True)


def federated(nodes, rounds: int) -> list:
    from peer.runtime.local import build_memory_network, run_peers

    _, peers = build_memory_network(nodes)
    asyncio.run(run_peers(peers, rounds))
    return peers


def local_only(nodes, rounds: int) -> list:
    """The same gateways, learners and seeds, trained for the same rounds without neighbours."""
    from peer.config.parse import load_config
    from peer.learning.learner import make_learner
    from peer.learning.model import FlatModel, build_model
    from peer.runtime.parts import load_local_data

    learners = []
    for n in nodes:
        cfg = load_config(n.config)
        data = load_local_data(cfg)
        fm = FlatModel(build_model(cfg.model.name, data.features, cfg.model.classes, cfg.model.options,
                                   cfg.model.seed, base=n.dir))
        learner = make_learner(fm.module, fm.flat, data, cfg.train, cfg.data.seed + 7 * cfg.data.shard, base=n.dir)
        for r in range(rounds):
            learner.train(r)
        learners.append(learner)
    return learners


def compare(out: Path, rounds: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    from peer.learning.model import load_object

    nodes = plan(out, rounds)
    x, y = load_object("gateway:test_set", "test set", nodes[0].dir)()
    alone = [lr.evaluate(x, y)["auroc"] for lr in local_only(nodes, rounds)]
    together = [p.learner.evaluate(x, y)["auroc"] for p in federated(nodes, rounds)]
    return {"local_only": alone, "federated": together}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="plan folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="iot-fleet-"))
    result = compare(out, args.rounds)
    for i, (a, f) in enumerate(zip(result["local_only"], result["federated"], strict=True)):
        print(f"gateway {i}: AUROC local-only {a:.3f}  federated {f:.3f}")
    mean = {k: sum(v) / len(v) for k, v in result.items()}
    print(f"mean:      AUROC local-only {mean['local_only']:.3f}  federated {mean['federated']:.3f}")
    print(f"plan and provenance logs: {out}")


if __name__ == "__main__":
    main()
