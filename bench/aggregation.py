"""Time every aggregation rule, vectorized vs the plain reference, on random (n, d) stacks.

    python bench/aggregation.py            # n in {8, 32, 64}, d in {100k, 1M, 10M}
    python bench/aggregation.py --quick    # n = 32, d = 1M only

The reference (tests/reference_rules.py, float64 numpy with loops over rows and pairs)
is timed once per size where it finishes in reasonable time, and the ratio printed.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from aggregation import aggregate  # noqa: E402
from bench._table import best_time, emit_json, print_table  # noqa: E402
from tests import reference_rules as R  # noqa: E402

CASES = {  # rule -> (params given f, reference or None)
    "mean": ({}, lambda x, f: R.mean(x)),
    "median": ({}, lambda x, f: R.median(x)),
    "trimmed_mean": ({}, lambda x, f: R.trimmed_mean(x, f)),
    "krum": ({}, lambda x, f: R.krum(x, f)),
    "multi_krum": ({}, lambda x, f: R.multi_krum(x, f)),
    "bulyan": ({}, None),
    "geomed": ({"max_iter": 10}, None),
    "centered_clip": ({"tau": 10.0, "center": "zero"}, lambda x, f: R.centered_clip(x, 10.0)),
    "self_centered_clip": ({}, None),
    "meamed": ({}, lambda x, f: R.meamed(x, f)),
    "nnm+krum": ({}, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only n = 32, d = 1M")
    ap.add_argument("--max-cells", type=float, default=3.3e8, help="skip n*d above this (memory/time)")
    args = ap.parse_args()
    torch.manual_seed(0)
    sizes = [(32, 1_000_000)] if args.quick else [
        (n, d) for d in (100_000, 1_000_000, 10_000_000) for n in (8, 32, 64)]
    rows, figures = [], {}
    for n, d in sizes:
        if n * d > args.max_cells:
            continue
        f = max(1, (n - 3) // 4)  # satisfies Bulyan's n >= 4f + 3
        x = torch.randn(n, d)
        xn = x.double().numpy()
        ref_ok = n * d <= 3.3e7
        for rule, (params, ref) in CASES.items():
            vec = best_time(lambda: aggregate(rule, x, f=f, **params), repeat=3 if n * d <= 1e8 else 1)
            ref_t = best_time(lambda: ref(xn, f), repeat=1) if (ref and ref_ok) else None
            ratio = ref_t / vec if ref_t else None
            rows.append([n, f"{d:,}", rule, vec, ref_t if ref_t else "-", f"{ratio:.1f}x" if ratio else "-"])
            key = f"{rule}/n{n}/d{d}"
            figures[key] = {"s": round(vec, 5), "ref_s": None if ref_t is None else round(ref_t, 4),
                            "speedup": None if ratio is None else round(ratio, 1)}
        pass_mb = best_time(lambda: x.sum(), repeat=3)
        rows.append([n, f"{d:,}", "(one read of the stack)", pass_mb, "-", "-"])
        figures[f"read/n{n}/d{d}"] = {"s": round(pass_mb, 5)}
    print_table(["n", "d", "rule", "vectorized s", "reference s", "speed-up"], rows,
                title=f"aggregation rules, torch {torch.__version__}, {torch.get_num_threads()} threads")
    emit_json(figures)


if __name__ == "__main__":
    main()
