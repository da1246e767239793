"""Sealing and checking signed sparse updates (gossip.sparse) on the envelope.

`seal_sparse` signs one compressed update (kind "sparse", codec sparse-*, `n` = the entries
kept). A receiver runs `Verifier.screen` (size, structure, trust, round window, replay,
signature: O(header)) and then `finish_sparse` instead of `Verifier.finish`: kind, schema,
codec and entry count against its own compression settings, payload hash, then the canonical
payload checks of `decode_sparse`. Each refusal is a `Rejected` with a `Reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .envelope import Envelope, Sealed, payload_digest, seal
from .identity import Identity
from .sparse import Compression, SparseRejected, SparseUpdate, decode_sparse, encode_sparse
from .verify import Reason, Rejected, Verified

SPARSE_KIND = "sparse"


def seal_sparse(identity: Identity, idx: torch.Tensor, values: torch.Tensor, comp: Compression, **fields) -> Sealed:
    """Sign a compressed update: `idx` (k,) sorted unique, `values` (k,) as compress_rows made them."""
    payload = encode_sparse(idx, values, comp.codec)
    return seal(identity, payload=payload, codec=comp.codec, n=int(idx.numel()), kind=SPARSE_KIND, **fields)


@dataclass
class SparseAccepted(Verified):
    update: SparseUpdate


def finish_sparse(env: Envelope, *, schema: bytes, n_params: int, comp: Compression) -> SparseAccepted | Rejected:
    """The payload checks of a screened sparse envelope (its sender is proven)."""
    h = env.header

    def reject(reason: Reason, detail: str) -> Rejected:
        return Rejected(reason, detail, env.sender, env.round, env, authenticated=True)

    k = comp.k(n_params)
    if h["kind"] != SPARSE_KIND:
        return reject(Reason.WRONG_KIND, f"kind {h['kind']!r:.20}: a sparse update was expected")
    if h["schema"] != schema:
        return reject(Reason.SCHEMA_MISMATCH, f"schema {h['schema'].hex()[:12]}.., expected {schema.hex()[:12]}..")
    if h["codec"] != comp.codec or h["n"] != k:
        return reject(Reason.SCHEMA_MISMATCH, f"{h['codec']} with {h['n']} entries, this network sends "
                                              f"{comp.codec} with {k} entries of {n_params} values")
    if payload_digest(env.payload) != h["payload_hash"]:
        return reject(Reason.PAYLOAD_HASH_MISMATCH, "payload does not match its signed hash")
    try:
        update = decode_sparse(env.payload, h["codec"], k, n_params)
    except SparseRejected as exc:
        return reject(Reason(exc.reason), str(exc))
    return SparseAccepted(env, update)
