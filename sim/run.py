"""Run scenarios (and sweeps): one engine run per (scenario, rule), results in one folder.

Each run picks its engine (sim.scenario.engine_for): the protocol engine (real peers, logs)
or the batched engine (sim.batched). With `ray`, the runs of a sweep are Ray tasks across
a cluster and `shards` > 1 splits each batched run over Ray actors (sim.sharded); the
results are gathered here and written into one folder either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from topology.draw import draw
from topology.formats import resolve

from . import measures, report
from .engine import ProtocolEngine, RunResult
from .errors import ScenarioError
from .scenario import Scenario, engine_for
from .virtual_time import run_virtual

DRAW_LIMIT = 300  # topology.png only for graphs small enough to read


@dataclass
class Outcome:
    out: Path
    results: list[RunResult]
    rows: list[dict]
    plots: list[Path]
    warnings: list[str]


def graph_of(sc: Scenario):
    try:
        return resolve(sc.topology, seed=sc.seed)
    except Exception as exc:
        raise ScenarioError(f"topology.graph: {exc}") from None


def small_batch_warning(sc: Scenario, counts) -> str | None:
    """Nodes with fewer training samples than a batch draw their batches with repeats."""
    small = [int(c) for c in counts if int(c) < sc.batch_size]
    if not small:
        return None
    return (f"{sc.name}: {len(small):,} of {len(counts):,} nodes have fewer training samples than a batch "
            f"(train.batch_size = {sc.batch_size}; smallest: {min(small)}): their batches repeat samples. "
            "Use fewer nodes, a larger data set (data.dataset = \"fashion_mnist\" or \"synthetic\") or a smaller batch")


def run_one(sc: Scenario, rule: str, run_dir: Path, *, engine: str | None = None, shards: int = 0,
            progress: Callable[[int], None] | None = None,
            setup: Callable[[str, int], Callable[[int], None] | None] | None = None) -> tuple[RunResult, list[str]]:
    """One run: (result, warnings). `setup(description, total)` returns a progress callback
    for the setup phase (loading every node's data)."""
    graph = graph_of(sc)
    chosen = engine_for(sc, graph.number_of_nodes(), engine)
    warnings = []
    if chosen == "batched":
        if shards > 1 and sc.compression:
            raise ScenarioError("round.compression runs in one process: leave out --shards")
        if shards > 1:
            from .sharded import run_sharded

            res, counts = run_sharded(sc, rule, graph, shards, progress=progress)
        else:
            from .batched import BatchedEngine

            eng = BatchedEngine(sc, rule, graph, run_dir, progress=progress,
                                setup_progress=setup("setup: data of each node", graph.number_of_nodes())
                                if setup else None)
            res = eng.run()
            counts = eng.shard.train_data.count
    else:
        eng = ProtocolEngine(sc, rule, graph, run_dir, progress=progress)
        res = run_virtual(eng.run())  # simulated seconds: the machine's load never decides a deadline
        counts = [len(p.learner.data.y_train) for p in eng.peers.values()]
    w = small_batch_warning(sc, counts)
    if w:
        warnings.append(w)
    run_dir.mkdir(parents=True, exist_ok=True)
    bad = report.byzantine_of(res)
    (run_dir / "scenario.json").write_text(json.dumps({**sc.to_dict(), "rule": rule, "engine_used": res.engine,
                                                       "byzantine_nodes": [str(b) for b in bad]}, indent=1))
    if graph.number_of_nodes() <= DRAW_LIMIT:
        draw(graph, run_dir / "topology.png", title=f"{sc.topology}" + (": Byzantine in red" if bad else ""),
             byzantine=bad)
    return res, warnings


def run_all(scenarios: list[Scenario], out: str | Path, *, quiet: bool = False, engine: str | None = None,
            ray: str | None = None, shards: int = 0, console=None) -> Outcome:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(sc, rule, out / f"{i:02d}-{sc.name}-{rule}".replace("/", "_").replace("+", "_"))
            for i, (sc, rule) in enumerate((sc, rule) for sc in scenarios for rule in sc.rules)]
    total = sum(sc.rounds for sc, _, _ in jobs)
    if ray:
        from .sharded import run_jobs

        pairs = run_jobs(jobs, ray, engine=engine, shards=shards, quiet=quiet)
    else:
        pairs = _run_here(jobs, total, quiet=quiet, engine=engine, console=console)
    results = [r for r, _ in pairs]
    warnings = [w for _, ws in pairs for w in ws]
    alone = baselines(results)
    rows = []
    for r in results:
        both = alone.get(measures.alone_key(r.scenario)) or {}
        rows.append(report.summary_row(r, both.get("test"), both.get("own")))
    keys = [k for k in report.sweep_plots.swept(results) if k != "attack"]
    for row, res in zip(rows, results, strict=True):  # the swept settings besides rule and attack, for the table
        row["setting"] = report.sweep_plots.setting(res, keys, skip=("attack",)) if keys else ""
    report.write_metrics(results, out)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    plots = report.plot(results, out, rows, {k: v["own"] for k, v in alone.items() if v})
    return Outcome(out, results, rows, plots, warnings)


def baselines(results: list[RunResult]) -> dict:
    """Each distinct scenario's nodes trained alone (sim.measures), once per data, learner and
    rounds however many rules and attacks a sweep runs on them; scenarios with baseline = false
    or a learner only the protocol engine runs have none."""
    out: dict = {}
    for res in results:
        sc = res.scenario
        key = measures.alone_key(sc)
        if sc.baseline and key not in out:
            out[key] = measures.alone_figures(sc, graph_of(sc))
    return out


def _run_here(jobs, total: int, *, quiet: bool, engine: str | None, console) -> list:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=quiet, transient=False, console=console)
    pairs = []
    with progress:
        task = progress.add_task("rounds", total=total)

        def setup(description: str, count: int):
            sub = progress.add_task(description, total=count)
            return lambda k: progress.advance(sub, k)

        for sc, rule, run_dir in jobs:
            progress.update(task, description=f"{sc.name}: {rule} / {sc.attack}")
            pairs.append(run_one(sc, rule, run_dir, engine=engine, progress=lambda k: progress.advance(task, k),
                                 setup=setup))
    return pairs
