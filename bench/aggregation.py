"""Time every aggregation rule, vectorized vs the plain reference, on random (n, d) stacks.

    python bench/aggregation.py            # n in {8, 32, 64}, d in {100k, 1M, 10M}
    python bench/aggregation.py --quick    # n = 32, d = 1M only

The reference (tests/reference_rules.py, float64 numpy with loops over rows and pairs)
is timed once per size where it finishes in reasonable time, and the ratio printed.

Then the batched call a simulator makes, one (B, n, d) stack per round (B = 1,000 nodes,
n = 9 rows each, d = 2,410: the digits MLP), next to B separate (n, d) calls measured in
the same run; the issue's target is a whole round well under 0.1 s.
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
BATCHED = {"mean": {}, "median": {}, "trimmed_mean": {}, "nnm+trimmed_mean": {}, "krum": {},
           "self_centered_clip": {}}


def batched_rows(batch: int, n: int, d: int, f: int) -> tuple[list[list], dict]:
    """One batched call vs `batch` separate calls on the same stacks, per rule."""
    x = torch.randn(batch, n, d)
    rows, figures = [], {}
    for rule, params in BATCHED.items():
        one = best_time(lambda: aggregate(rule, x, f=f, **params), repeat=3)
        separate = best_time(lambda: [aggregate(rule, x[b], f=f, **params) for b in range(batch)], repeat=1)
        rows.append([batch, n, f"{d:,}", rule, one, separate, f"{separate / one:.1f}x"])
        figures[f"batched/{rule}/B{batch}/n{n}/d{d}"] = {"s": round(one, 5), "separate_s": round(separate, 4),
                                                        "speedup": round(separate / one, 1)}
    return rows, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only n = 32, d = 1M")
    ap.add_argument("--max-cells", type=float, default=3.3e8, help="skip n*d above this (memory/time)")
    ap.add_argument("--batch", type=int, default=1000, help="stacks in the batched call (0: skip it)")
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
    if args.batch > 0:
        brows, bfig = batched_rows(args.batch, 9, 2410, 2)
        figures.update(bfig)
        print()
        print_table(["B", "n", "d", "rule", "batched s", f"{args.batch} calls s", "speed-up"], brows,
                    title="one batched (B, n, d) call vs B separate (n, d) calls, f = 2")
    emit_json(figures)


if __name__ == "__main__":
    main()
