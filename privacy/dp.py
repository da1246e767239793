"""Clipping and Gaussian noise (update mode), and where the noise's randomness comes from.

Update mode releases start + (clip(end - start) + N(0, (sigma*C)^2 I)): the Gaussian mechanism
on a change of L2 norm <= C, whose privacy the accountant composes over rounds. Every function
works on one vector (d,) or on many rows (n, d) at once (the batched simulator privatizes all
its nodes in one call).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from gossip.lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")


def secure_generator() -> torch.Generator:
    """A generator seeded from the OS's CSPRNG: a gateway's noise is never predictable from a
    seed, a config or a restart."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def seeded_generator(seed: int) -> torch.Generator:
    """A reproducible generator: for the simulator only, never on a gateway."""
    return torch.Generator().manual_seed(int(seed))


def clip_rows(delta: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scaled to L2 norm <= clip (rows already within it unchanged); also returns the
    norms before clipping: a scalar for (d,), (n,) for (n, d)."""
    if delta.dim() not in (1, 2):
        raise ValueError(f"clip_rows takes a (d,) or (n, d) tensor, got shape {tuple(delta.shape)}")
    norms = torch.linalg.vector_norm(delta, dim=-1)
    over = norms > clip  # only these are scaled: rows within the bound stay bit-for-bit
    scale = torch.where(over, torch.full_like(norms, clip) / norms.clamp_min(1e-30), torch.ones_like(norms))
    clipped = delta * scale.unsqueeze(-1)
    return clipped, norms


def gaussian_noise(shape, std: float, generator: torch.Generator, dtype=None) -> torch.Tensor:
    """N(0, std^2) per coordinate, drawn from `generator`."""
    return torch.randn(shape, generator=generator, dtype=dtype or torch.float32) * std


def privatize(delta: torch.Tensor, clip: float, sigma: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """clip_rows, then N(0, (sigma*clip)^2) added to every coordinate; returns (noised, norms)."""
    clipped, norms = clip_rows(delta, clip)
    if sigma > 0:
        clipped = clipped + gaussian_noise(clipped.shape, sigma * clip, generator, clipped.dtype)
    return clipped, norms


def privatize_model(start_flat: torch.Tensor, end_flat: torch.Tensor, clip: float, sigma: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Update mode for one peer: the round's change end - start, privatized, added back to start.

    details: {"norm": the change's L2 norm before clipping, "clipped": whether it was scaled}.
    ValueError if the change holds inf or nan (clipping cannot bound it)."""
    if start_flat.shape != end_flat.shape or start_flat.dim() != 1:
        raise ValueError(f"privatize_model takes two flat models of one shape, got {tuple(start_flat.shape)} "
                         f"and {tuple(end_flat.shape)}")
    noised, norms = privatize(end_flat - start_flat, clip, sigma, generator)
    norm = float(norms)
    if not math.isfinite(norm):
        raise ValueError("the model change is not finite (training diverged): nothing to release")
    return start_flat + noised, {"norm": norm, "clipped": norm > clip}
