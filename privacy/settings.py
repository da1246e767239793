"""`[privacy]`: what a peer (or a simulated node) protects and how much it may spend."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .accountant import SIGMA_RANGE

MODES = ("off", "update", "record")
ACCOUNTANTS = ("rdp", "pld")


@dataclass
class PrivacySettings:
    mode: str = "off"  # off | update (clip + noise the model change) | record (DP-SGD)
    noise_multiplier: float = 1.0  # sigma: noise std is sigma * clip
    clip: float = 1.0  # C: L2 bound of a change (update) or of a per-example gradient (record)
    delta: float = 1e-5
    epsilon: float = math.inf  # the budget; inf: account, never stop
    accountant: str = "rdp"  # rdp | pld (dp_accounting)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_privacy(s: PrivacySettings) -> str | None:
    """None if the settings are usable, else one line naming the field as the user writes it."""
    if s.mode not in MODES:
        return f"privacy.mode must be one of {', '.join(MODES)}, got {s.mode!r:.40}"
    if s.accountant not in ACCOUNTANTS:
        return f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)}, got {s.accountant!r:.40}"
    sigma = s.noise_multiplier
    if not _number(sigma) or not math.isfinite(sigma) or sigma < 0:
        return f"privacy.noise_multiplier must be a finite number >= 0, got {sigma!r:.40}"
    lo, hi = SIGMA_RANGE
    if s.mode != "off" and not lo <= sigma <= hi:
        return (f"privacy.noise_multiplier must be in [{lo:g}, {hi:g}] with privacy.mode = {s.mode!r}, "
                f"got {sigma!r:.40} (0 noise: infinite epsilon)")
    if not _number(s.clip) or not math.isfinite(s.clip) or s.clip <= 0:
        return f"privacy.clip must be a finite number > 0, got {s.clip!r:.40}"
    if not _number(s.delta) or not 0 < s.delta < 1:
        return f"privacy.delta must be a number with 0 < delta < 1, got {s.delta!r:.40}"
    if not _number(s.epsilon) or math.isnan(s.epsilon) or s.epsilon <= 0:
        return f"privacy.epsilon must be a number > 0 (inf: no budget), got {s.epsilon!r:.40}"
    return None
