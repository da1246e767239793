"""Fleet-scale simulation: the batched engine against baselines measured in the same run.

1. 1,000 nodes, 8-regular, digits MLP 64-32-10 (d = 2,410), one local SGD step of batch 32 per
   round, 100 rounds: wall time per rule (goal: 2 s each, issue 27), next to the protocol
   engine's seconds per node-round on the same scenario (a few rounds), a plain per-node
   PyTorch loop doing the same arithmetic (one SGD step per node-round, no aggregation), and
   a floor from memory bandwidth measured in the same run: every round each node's rule reads
   its 9 rows and the round writes and re-reads its model, (9 + 2) x 4 bytes x d per node,
   at the measured copy bandwidth (a bound no engine beats, not a target it can reach).
2. 10,000 nodes x 100 rounds, median, synthetic data (digits stops at 1,527 nodes) (goal <= 30 s), peak RSS.
3. 1,000,000 nodes x 10 rounds on the synthetic data set (goal: peak RSS <= 24 GB): 16 samples per node
   and an MLP 60-16-10 (d = 1,146), so that the models (twice: this round's and the next) and the data fit.
4. One batched run (1,500 nodes, digits, 20 rounds) sharded over two Ray actors vs one process: time ratio and whether the
   results are equal.

Each figure is measured in its own subprocess so peak RSS is its own. Batched runs use both
cores (two worker threads, one torch thread each); the baselines one thread. Large runs evaluate
test accuracy on a schedule (sim.batched.eval_every: about 10 evaluated rounds and the last);
every node still trains and every honest node aggregates every round. Wall time depends on what
else the machine runs: each batched row also gives its CPU seconds (all threads; on two free
cores the wall time is about half) and the 1-minute load average at its end.

    python bench/sim_scale.py            # the figures above (about 10 minutes on 2 cores)
    python bench/sim_scale.py --quick    # 10x fewer rounds and nodes, 10,000 for figure 3 (about 2 minutes)
    python bench/sim_scale.py --only trimmed_mean,nnm+trimmed_mean   # figure 1 for these rules only
                                         # (protocol baseline on 200 nodes; no figures 2-4)

"mean acc" is the honest nodes' mean test accuracy in the last round: digits on its shared test set;
synthetic nodes (64 or 16 samples) hold fewer than 30 held-out samples and are not scored ("-").

Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402

RULES = ["mean", "median", "trimmed_mean", "nnm+trimmed_mean", "krum", "self_centered_clip"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scenario(nodes: int, rounds: int, rule: str, dataset: str = "digits", **kw):
    from sim.scenario import Scenario

    return Scenario(name=f"scale{nodes}", seed=0, rounds=rounds, topology=f"regular:{nodes},8", dataset=dataset,
                    local_steps=1, batch_size=32, lr=0.1, rules=[rule], f=2, engine="batched", **kw)


def batched(nodes: int, rounds: int, rule: str, dataset: str = "digits", options: str = "{}",
            hidden: int = 32) -> dict:
    from sim.batched import BatchedEngine
    from topology import from_spec

    sc = _scenario(nodes, rounds, rule, dataset, data_options=json.loads(options), model_options={"hidden": [hidden]})
    t0, c0 = time.perf_counter(), time.process_time()
    graph = from_spec(sc.topology, seed=0)
    t_setup = time.perf_counter()
    eng = BatchedEngine(sc, rule, graph, ".")
    del graph  # the engine keeps the graph's arrays, not its networkx object
    res = eng.run()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    run_rounds = sum(rm.seconds for rm in res.rounds)
    accs = list(res.rounds[-1].accuracy.values())
    return {"seconds": total, "round_seconds": run_rounds, "setup_seconds": total - run_rounds,
            "evaluated_rounds": sum(1 for rm in res.rounds if rm.accuracy), "workers": 2,
            "cpu_seconds": cpu, "load_average_1min": os.getloadavg()[0],
            "graph_seconds": t_setup - t0, "s_per_node_round": run_rounds / (nodes * rounds),
            "mean_accuracy": sum(accs) / len(accs) if accs else None, "maxrss_mb": _rss_mb()}


def protocol(nodes: int, rounds: int) -> dict:
    import tempfile

    from sim.run import run_all

    sc = _scenario(nodes, rounds, "median")
    sc.engine = "protocol"
    with tempfile.TemporaryDirectory() as tmp:
        row = run_all([sc], tmp, quiet=True).rows[0]
    return {"s_per_node_round": row["seconds_per_node_round"], "maxrss_mb": _rss_mb()}


def per_node_loop(nodes: int, rounds: int) -> dict:
    """The baseline of the issue: one SGD step per node-round, a PyTorch module per node."""
    import torch

    from peer.learning.data import digits_pool_and_test
    from peer.learning.model import build_model

    (x, y), _ = digits_pool_and_test()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    models = [build_model("mlp", 64, 10, {"hidden": [32]}, seed=0) for _ in range(nodes)]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for m in models:
            idx = torch.randint(0, len(y), (32,))
            loss = torch.nn.functional.cross_entropy(m(x[idx]), y[idx])
            m.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
    return {"s_per_node_round": (time.perf_counter() - t0) / (nodes * rounds), "maxrss_mb": _rss_mb()}


def sharded(nodes: int, rounds: int) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1
    import ray

    from sim.batched import BatchedEngine
    from sim.sharded import run_sharded
    from topology import from_spec

    sc = _scenario(nodes, rounds, "median")  # digits: every node is scored on the shared test set
    graph = from_spec(sc.topology, seed=0)
    t0 = time.perf_counter()
    one = BatchedEngine(sc, "median", graph, ".").run()
    t_one = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        two, _ = run_sharded(sc, "median", graph, 2)
        t_two = time.perf_counter() - t0
    finally:
        ray.shutdown()
    equal = all(a.accuracy == b.accuracy for a, b in zip(one.rounds, two.rounds, strict=True))
    assert any(a.accuracy for a in one.rounds), "no node was scored: the comparison would say nothing"
    rel = max(abs(a.consensus - b.consensus) / max(a.consensus, 1e-30) for a, b in zip(one.rounds, two.rounds,
                                                                                        strict=True)
              if a.consensus == a.consensus)  # measured rounds only (NaN elsewhere)
    return {"one_process_s": t_one, "two_actors_s": t_two, "ratio": t_two / t_one, "accuracy_equal": equal,
            "consensus_max_rel_diff": rel}


def bandwidth() -> dict:
    """Copy bandwidth (bytes read + written per second) of a 256 MB float32 tensor, best of 5."""
    import torch

    a = torch.ones(64 << 20)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return {"bytes_per_s": 2 * a.numel() * 4 / best}


def floor_seconds(bw: float, nodes: int, rounds: int, degree: int = 8, d: int = 2410) -> float:
    return rounds * nodes * (degree + 1 + 2) * 4 * d / bw


def child(args: list[str]) -> dict:
    import torch

    kind, *rest = args
    # the batched engine runs one worker thread per torch thread, each torch op on one thread: two
    # on 2 cores; Ray's actors set one each; the protocol engine and the per-node loop one
    torch.set_num_threads(2 if kind in ("batched", "sharded") else 1)
    fn = {"batched": batched, "protocol": protocol, "loop": per_node_loop, "sharded": sharded,
          "bandwidth": bandwidth}[kind]
    conv = [int(a) if a.isdigit() else a for a in rest]
    return fn(*conv)


def run(*args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise SystemExit(f"{args}: failed\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _only(argv: list[str]) -> list[str] | None:
    """The rules named by `--only RULE[,RULE]` (None without it); unknown names end the run."""
    if "--only" not in argv:
        return None
    i = argv.index("--only")
    names = argv[i + 1].split(",") if i + 1 < len(argv) else []
    unknown = [r for r in names if r not in RULES]
    if not names or unknown:
        raise SystemExit(f"--only takes a comma-separated list of {', '.join(RULES)}; got {unknown or 'nothing'}")
    return names


def main() -> None:
    answer_help(__doc__, '[--quick] [--only RULE,...]')
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2:])))
        return
    quick = "--quick" in sys.argv
    only = _only(sys.argv)
    n1, r1 = (1000, 10) if quick else (1000, 100)
    n2, r2 = (2000, 10) if quick else (10_000, 100)
    n3, r3 = (10_000, 2) if quick else (1_000_000, 10)
    figures: dict = {"quick": quick, "only": only, "load_average_1min_start": os.getloadavg()[0]}
    rows = []
    bw = run("bandwidth")["bytes_per_s"]
    floor = floor_seconds(bw, n1, r1)
    figures["copy_bandwidth_gb_s"] = bw / 1e9
    figures[f"floor_n{n1}x{r1}_s"] = floor
    loop = run("loop", 200, 5)
    proto = run("protocol", 200 if quick or only else n1, 2)
    figures["baseline_per_node_loop_s"] = loop["s_per_node_round"]
    figures["protocol_engine_s_per_node_round"] = proto["s_per_node_round"]

    def row(label: str, f: dict, goal: float | None = None, floor_s: float | None = None) -> list:
        return [label, f["seconds"], f["cpu_seconds"], f["load_average_1min"], f["round_seconds"],
                "-" if goal is None else ("met" if f["round_seconds"] <= goal else f"not met ({goal:g} s)"),
                "-" if floor_s is None else f"{f['round_seconds'] / floor_s:.1f}x",
                f["s_per_node_round"], f"{proto['s_per_node_round'] / f['s_per_node_round']:.0f}x",
                f"{loop['s_per_node_round'] / f['s_per_node_round']:.1f}x", f"{f['maxrss_mb']:.0f}",
                "-" if f["mean_accuracy"] is None else f"{100 * f['mean_accuracy']:.1f}%"]

    for rule in only or RULES:
        f = run("batched", n1, r1, rule)
        figures[f"n{n1}/{rule}"] = f
        f["goal_2s_met"] = f["round_seconds"] <= 2.0 and not quick
        f["ratio_to_floor"] = f["round_seconds"] / floor
        rows.append(row(f"{n1:,} x {r1} {rule}", f, None if quick else 2.0, floor))
    if only is None:
        for n, r, samples, hidden in ((n2, r2, 64, 32), (n3, r3, 16, 16)):  # digits stops at 1,527 nodes
            f = run("batched", n, r, "median", "synthetic", json.dumps({"samples": samples}), hidden)
            figures[f"n{n}/synthetic/median"] = f
            goal = 30.0 if (n, r) == (10_000, 100) else None
            if (n, r) == (1_000_000, 10):
                f["goal_24gb_met"] = f["maxrss_mb"] <= 24 * 1024
            rows.append(row(f"{n:,} x {r} median synthetic (hidden {hidden}, {samples} samples)", f, goal))
    print_table(["run", "total s", "CPU s", "load", "rounds s", "goal", "vs floor", "s/node-round", "vs protocol",
                 "vs per-node loop", "peak RSS MB", "mean acc"], rows,
                title=f"batched engine, 8-regular, one SGD step of batch 32 per round (protocol engine: "
                      f"{proto['s_per_node_round']:.4f} s/node-round; per-node PyTorch loop: "
                      f"{loop['s_per_node_round']:.5f} s/node-round, training only; batched: 2 worker threads, "
                      f"accuracy evaluated on a schedule, every round trained and aggregated; floor "
                      f"{floor:.2f} s at {bw / 1e9:.1f} GB/s copy bandwidth)")
    if only is None:
        sh = run("sharded", 1500, 5 if quick else 20)
        figures["sharded"] = sh
        print(f"\nsharded over 2 Ray actors vs one process (1,500 nodes, digits): {sh['two_actors_s']:.1f} s vs "
              f"{sh['one_process_s']:.1f} s (ratio {sh['ratio']:.2f}); accuracies equal: {sh['accuracy_equal']}; "
              f"consensus max rel. diff {sh['consensus_max_rel_diff']:.1e}")
    emit_json(figures)


if __name__ == "__main__":
    main()
