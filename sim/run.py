"""Run scenarios (and sweeps): one engine run per (scenario, rule), results in one folder."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from topology.draw import draw
from topology.formats import resolve

from . import report
from .engine import ProtocolEngine, RunResult
from .errors import ScenarioError
from .scenario import Scenario


@dataclass
class Outcome:
    out: Path
    results: list[RunResult]
    rows: list[dict]
    plots: list[Path]


def run_all(scenarios: list[Scenario], out: str | Path, *, quiet: bool = False) -> Outcome:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(sc, rule) for sc in scenarios for rule in sc.rules]
    total = sum(sc.rounds for sc, _ in jobs)
    results: list[RunResult] = []
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=quiet, transient=False)
    with progress:
        task = progress.add_task("rounds", total=total)
        for i, (sc, rule) in enumerate(jobs):
            try:
                graph = resolve(sc.topology, seed=sc.seed)
            except Exception as exc:
                raise ScenarioError(f"topology.graph: {exc}") from None
            run_dir = out / f"{i:02d}-{sc.name}-{rule}".replace("/", "_").replace("+", "_")
            progress.update(task, description=f"{sc.name}: {rule} / {sc.attack}")
            engine = ProtocolEngine(sc, rule, graph, run_dir, progress=lambda k: progress.advance(task, k))
            res = asyncio.run(engine.run())
            results.append(res)
            (run_dir / "scenario.json").write_text(json.dumps({**sc.to_dict(), "rule": rule,
                                                                "byzantine_nodes": [str(b) for b in res.byzantine]},
                                                               indent=1))
            if i == 0 or res.byzantine:
                draw(graph, run_dir / "topology.png", title=f"{sc.topology}: Byzantine in red",
                     byzantine=res.byzantine)
    rows = [report.summary_row(r) for r in results]
    report.write_metrics(results, out)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    plots = report.plot(results, out)
    return Outcome(out, results, rows, plots)
