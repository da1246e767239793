"""Analysis time for random 8-regular graphs of 100, 1,000 and 10,000 nodes (target:
under 5 s at 10,000), next to a dense eigen-decomposition baseline where it fits.

    python bench/topology.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402
from topology import from_spec, metropolis_hastings, summarize  # noqa: E402


def main() -> None:
    answer_help(__doc__)
    rows, figures = [], {}
    for n in (100, 1_000, 10_000):
        t0 = time.perf_counter()
        g = from_spec(f"regular:{n},8", seed=0)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary, _ = summarize(g, "krum", 0.1)
        t_an = time.perf_counter() - t0
        t_dense = None
        if n <= 2_000:
            _, w = metropolis_hastings(g)
            t0 = time.perf_counter()
            np.linalg.eigvals(w.toarray())
            t_dense = time.perf_counter() - t0
        rows.append([f"{n:,}", t_gen, t_an, t_dense if t_dense is not None else "-",
                     f"{summary.spectral_gap:.4f}", summary.diameter])
        figures[f"n{n}"] = {"generate_s": round(t_gen, 3), "analyse_s": round(t_an, 3),
                            "dense_eig_s": None if t_dense is None else round(t_dense, 3),
                            "gap": round(summary.spectral_gap, 5)}
    print_table(["nodes", "generate s", "analyse s", "dense eig s (baseline)", "spectral gap", "diameter"], rows,
                title="topology analysis, random 8-regular graphs")
    figures["target_10k_under_5s"] = figures["n10000"]["analyse_s"] < 5.0
    emit_json(figures)


if __name__ == "__main__":
    main()
