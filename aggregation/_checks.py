"""Input validation shared by every rule: bad input is an error, never a wrong answer."""

from __future__ import annotations

import torch


class AggregationError(ValueError):
    """Raised for input a rule cannot aggregate; the message says what to fix."""


def check_stack(stack: torch.Tensor) -> torch.Tensor:
    """Return `stack` as a contiguous float32/float64 tensor of shape (n, d) with finite values."""
    if not isinstance(stack, torch.Tensor):
        raise AggregationError(f"stack must be a torch.Tensor of shape (n, d), got {type(stack).__name__}")
    if stack.dim() != 2:
        raise AggregationError(f"stack must have shape (n, d), got shape {tuple(stack.shape)}")
    n, d = stack.shape
    if n == 0 or d == 0:
        raise AggregationError(f"stack is empty (shape {tuple(stack.shape)}): nothing to aggregate")
    if not stack.is_floating_point():
        raise AggregationError(f"stack must be floating point, got {stack.dtype}")
    if stack.dtype not in (torch.float32, torch.float64):  # half precision: aggregate in float32
        stack = stack.float()
    # min/max propagate NaN and keep +-Inf: one pass over the stack instead of an (n, d) mask;
    # only when that finds something, name the rows.
    lo, hi = torch.aminmax(stack)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        finite = torch.isfinite(stack.amax(dim=1)) & torch.isfinite(stack.amin(dim=1))
        bad = torch.nonzero(~finite).flatten().tolist()
        raise AggregationError(f"rows {bad[:10]} contain NaN or Inf; reject them before aggregating")
    return stack.contiguous()


def check_weights(weights: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Validate optional non-negative weights of shape (n,); returns float64-free float32 weights."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != n:
        raise AggregationError(f"weights has {w.numel()} entries but the stack has {n} rows")
    if not bool(torch.isfinite(w).all()):
        raise AggregationError("weights contain NaN or Inf")
    if bool((w < 0).any()):
        raise AggregationError(f"weights must be non-negative, got {w.tolist()}")
    if float(w.sum()) <= 0:
        raise AggregationError("weights sum to zero: at least one row needs a positive weight")
    return w


def is_uniform(weights: torch.Tensor | None) -> bool:
    return weights is None or bool(torch.all(weights == weights[0]))


def check_f(f: object, name: str = "f") -> int:
    if isinstance(f, bool) or not isinstance(f, int):
        raise AggregationError(f"{name} must be a whole number, got {f!r}")
    if f < 0:
        raise AggregationError(f"{name} must be >= 0, got {f}")
    return f
