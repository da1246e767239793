"""Protocol-engine cost: wall time per node-round for 16, 64 and 256 peers (digits MLP,
8-regular graph, median, real signing, verification, provenance and checkpoints) and peak
memory, next to the same local training alone (the baseline measured in the same run).

    python bench/sim.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402

ROUNDS = 5


def child(nodes: int) -> dict:
    from sim.run import run_all
    from sim.scenario import Scenario

    sc = Scenario(name=f"bench{nodes}", rounds=ROUNDS, topology=f"regular:{nodes},8", rules=["median"], f=2,
                  engine="protocol",
                  local_steps=5, deadline=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = run_all([sc], tmp, quiet=True)
    row = out.rows[0]
    # baseline: the same local training alone, for every node and round
    from peer.learning.classification import ClassificationLearner, TrainConfig
    from peer.learning.data import digits_shard
    from peer.learning.model import FlatModel, build_model

    t0 = time.perf_counter()
    for i in range(nodes):
        data = digits_shard(i, nodes)
        fm = FlatModel(build_model("mlp", 64, 10, {"hidden": [32]}))
        tr = ClassificationLearner(fm.module, fm.flat, data, TrainConfig(local_steps=5))
        for _ in range(ROUNDS):
            tr.train_round()
            tr.evaluate()
    train_only = (time.perf_counter() - t0) / (nodes * ROUNDS)
    return {"s_per_node_round": row["seconds_per_node_round"], "train_only_s": train_only,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mean_accuracy": row["mean_accuracy"]}


def main() -> None:
    answer_help(__doc__)
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]))))
        return
    rows, figures = [], {}
    for nodes in (16, 64, 256):
        out = subprocess.run([sys.executable, __file__, "--child", str(nodes)], capture_output=True, text=True,
                             check=True)
        fig = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = fig["s_per_node_round"] / fig["train_only_s"]
        rows.append([nodes, fig["s_per_node_round"], fig["train_only_s"], f"{ratio:.1f}x", f"{fig['maxrss_mb']:.0f}"])
        figures[f"n{nodes}"] = {**{k: round(v, 5) for k, v in fig.items()}, "vs_train_only": round(ratio, 2)}
    print_table(["peers", "s per node-round", "training alone s", "protocol engine / training", "peak RSS MB"], rows,
                title=f"protocol engine, digits MLP 64-32-10, 8-regular, median, {ROUNDS} rounds")
    emit_json(figures)


if __name__ == "__main__":
    main()
