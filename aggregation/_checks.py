"""Input validation shared by every rule: bad input is an error, never a wrong answer."""

from __future__ import annotations

import numpy as np
import torch

from ._kernels import Rows
from .catalog import AggregationError  # noqa: F401  (defined without torch, raised here)


def check_stack(stack: torch.Tensor | Rows) -> torch.Tensor | Rows:
    """Return `stack` as a contiguous float32/float64 batch (B, n, d) with finite values:
    an (n, d) stack becomes the batch of one (1, n, d), a view when it is already contiguous
    float32 or float64; half precision is aggregated in float32. Rows (read in place) are
    checked by their rows' finiteness and returned as they are."""
    if isinstance(stack, Rows):
        if 0 in stack.shape:
            raise AggregationError(f"stack is empty (shape {stack.shape}): nothing to aggregate")
        ok = stack.finite
        if ok is None:
            x = stack.materialize()
            ok = (torch.isfinite(x.amax(dim=2)) & torch.isfinite(x.amin(dim=2))).numpy()
        if not ok.all():
            named = [tuple(i) for i in np.argwhere(~ok).tolist()]
            raise AggregationError(f"(batch, row) entries {named[:10]} contain NaN or Inf; reject them before "
                                   "aggregating")
        return stack
    if not isinstance(stack, torch.Tensor):
        raise AggregationError(
            f"stack must be a torch.Tensor of shape (n, d) or (B, n, d), got {type(stack).__name__}")
    if stack.dim() not in (2, 3):
        raise AggregationError(f"stack must have shape (n, d) or (B, n, d), got shape {tuple(stack.shape)}")
    if 0 in stack.shape:
        raise AggregationError(f"stack is empty (shape {tuple(stack.shape)}): nothing to aggregate")
    if not stack.is_floating_point():
        raise AggregationError(f"stack must be floating point, got {stack.dtype}")
    batched = stack.dim() == 3
    if not batched:
        stack = stack.unsqueeze(0)
    if stack.dtype not in (torch.float32, torch.float64):  # half precision: aggregate in float32
        stack = stack.float()
    # min/max propagate NaN and keep +-Inf: one pass over the stack instead of a (B, n, d) mask;
    # only when that finds something, name the rows.
    lo, hi = torch.aminmax(stack)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        finite = torch.isfinite(stack.amax(dim=2)) & torch.isfinite(stack.amin(dim=2))
        bad = torch.nonzero(~finite)
        named = [tuple(i) for i in bad.tolist()] if batched else bad[:, 1].tolist()
        raise AggregationError(
            f"{'(batch, row) entries' if batched else 'rows'} {named[:10]} contain NaN or Inf; "
            "reject them before aggregating")
    return stack.contiguous()


def check_weights(weights: torch.Tensor | None, batch: int, n: int, batched: bool) -> torch.Tensor | None:
    """Validate optional non-negative weights, (n,) or, for a batch, (B, n) or (n,) shared by
    every batch entry; returns float32 weights of shape (B, n)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32)
    if not batched or w.dim() <= 1:
        w = w.flatten()
        if w.numel() != n:
            raise AggregationError(f"weights has {w.numel()} entries but the stack has {n} rows")
        w = w.expand(batch, n)
    elif tuple(w.shape) != (batch, n):
        raise AggregationError(f"weights must have shape ({n},) or ({batch}, {n}), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise AggregationError("weights contain NaN or Inf")
    if bool((w < 0).any()):
        shown = w[0].tolist() if batch == 1 else torch.nonzero((w < 0).any(dim=1)).flatten().tolist()[:10]
        raise AggregationError(f"weights must be non-negative, got {shown}" if batch == 1 else
                               f"weights must be non-negative; batch entries {shown} have negative ones")
    empty = w.sum(dim=1) <= 0
    if bool(empty.any()):
        where = "" if not batched else f" in batch entries {torch.nonzero(empty).flatten().tolist()[:10]}"
        raise AggregationError(f"weights sum to zero{where}: at least one row needs a positive weight")
    return w.contiguous()


def is_uniform(weights: torch.Tensor | None) -> bool:
    """No weights, or (B, n) weights equal within every batch entry."""
    return weights is None or bool(torch.all(weights == weights[:, :1]))


def check_f(f: object, name: str = "f") -> int:
    if isinstance(f, bool) or not isinstance(f, int):
        raise AggregationError(f"{name} must be a whole number, got {f!r}")
    if f < 0:
        raise AggregationError(f"{name} must be >= 0, got {f}")
    return f
