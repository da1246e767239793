"""Differential privacy for gossipfl peers (issue 15).

- settings:   `[privacy]` as a dataclass and its one-line validation
- dp:         clipping and Gaussian noise on model changes (update mode), the noise generators
- dpsgd:      per-example clipped, noised gradients (record mode, DP-SGD)
- accountant: epsilon of the composed releases, from dp_accounting (no hand-written composition)

Nothing here imports torch or dp_accounting at import time: `gossipfl --help` stays fast.
"""

from .settings import MODES, PrivacySettings, check_privacy

__all__ = ["MODES", "PrivacySettings", "check_privacy"]
