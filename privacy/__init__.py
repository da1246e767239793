"""Differential privacy for gossipfl peers (issue 15).

- settings:   `[privacy]` as a dataclass and its one-line validation
- dp:         clipping and Gaussian noise on model changes (update mode), the noise generators
- dpsgd:      per-example clipped, noised gradients (record mode, DP-SGD)
- accountant: epsilon of the composed releases, from dp_accounting (no hand-written composition)

and secure aggregation among a receiver's neighbours (`secure_mean`):

- secagg:          double masking (SecAgg / SecAgg+): the protocol, threshold, threat model, derivations
- secagg_member:   a member's session per (receiver, round)
- secagg_ledger:   what a member signed and revealed, persisted across restarts
- secagg_receiver: the receiver's session: phases, survivor set, unmasking
- secagg_wire:     the signed canonical messages of both
- shamir:          Shamir sharing of 32-byte secrets
- masking:         the fixed point and the ChaCha20 PRG

Nothing here imports torch or dp_accounting at import time: `gossipfl --help` stays fast.
"""

from .settings import MODES, PrivacySettings, check_privacy

__all__ = ["MODES", "PrivacySettings", "check_privacy"]
