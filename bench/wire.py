"""Wire-path speed: seal (encode + hash + sign) and verify (+ decode) of 1M and 10M float32
parameters, next to SHA-256 of the same bytes (the floor: the payload must be hashed) and
pickle / torch.save round trips; the cost of rejecting hostile input (a scanner bomb, garbage,
a non-canonical re-encoding, a forged signature) next to SHA-256 of the same bytes; then the
provenance log's append rate.

    python bench/wire.py
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import tempfile
import time

import msgpack
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import best_time as best  # noqa: E402
from bench._table import emit_json, print_table
from gossip.envelope import seal_update  # noqa: E402
from gossip.identity import Identity  # noqa: E402
from gossip.verify import Accepted, Rejected, Verifier  # noqa: E402
from peer.runtime.process import tune_allocator  # noqa: E402
from peer.state.provenance import ProvenanceLog  # noqa: E402


def torch_save_round_trip(x):
    buf = io.BytesIO()
    torch.save(x, buf)
    buf.seek(0)
    return torch.load(buf)


def main() -> None:
    answer_help(__doc__)
    torch.set_num_threads(1)
    figures = {}
    for label, tuned in (("default allocator", False), ("peer runtime (tune_allocator)", True)):
        if tuned:
            tune_allocator()
        figures[label] = wire_figures(label)
    figures["hostile"] = hostile_figures()
    provenance(figures)
    emit_json(figures)


def wire_figures(label: str) -> dict:
    ident = Identity.generate()
    schema = b"\x01" * 32
    rows, figures = [], {}
    for n in (1_000_000, 10_000_000):
        x = torch.randn(n)
        mb = 4 * n / 1e6
        raw = x.numpy().tobytes()
        v = Verifier("net", {ident.peer_id}, schema, n, max_size=8 * n + 4096, max_lag=10**9)
        msg = seal_update(ident, x, net="net", round=1, schema=schema).data

        def verify_once():
            r = v.verify(msg, 1, set())
            assert isinstance(r, Accepted)
            return r.params

        t_hash = best(lambda: hashlib.sha256(raw).digest())
        t_seal = best(lambda: seal_update(ident, x, net="net", round=1, schema=schema))
        t_verify = best(verify_once)
        t_pickle = best(lambda: pickle.loads(pickle.dumps(x)))
        t_tsave = best(lambda: torch_save_round_trip(x))
        for name, t in [("sha256 of the payload (floor)", t_hash), ("seal: encode + hash + sign", t_seal),
                        ("verify + decode", t_verify), ("pickle round trip (unsafe)", t_pickle),
                        ("torch.save/load round trip", t_tsave)]:
            rows.append([f"{n:,}", name, t, mb / t, t_hash / t])
        figures[f"n{n}"] = {
            "sha256_MBps": round(mb / t_hash), "seal_MBps": round(mb / t_seal),
            "verify_MBps": round(mb / t_verify), "pickle_MBps": round(mb / t_pickle),
            "torch_save_MBps": round(mb / t_tsave),
            "seal_vs_sha256": round(t_hash / t_seal, 3), "verify_vs_sha256": round(t_hash / t_verify, 3)}
    print_table(["params", "operation", "seconds", "MB/s", "x sha256 speed"], rows,
                title=f"wire path, 1 torch thread, {label}")
    return figures


def hostile_inputs(ident: Identity, schema: bytes, n: int) -> dict[str, bytes]:
    """Messages an attacker without a key can send, each a few MB."""
    good = seal_update(ident, torch.randn(n), net="net", round=1, schema=schema).data
    sorted_keys = msgpack.unpackb(good, raw=False)
    forged = bytearray(good)
    i = good.find(b"\xa3sig\xc4\x40") + 6  # the signature's first byte
    forged[i] ^= 1
    return {
        "4.2 MB of nested msgpack arrays": b"\x91" * 4_200_000,
        "1 MB of random garbage": os.urandom(1 << 20),
        "non-canonical: the update with sorted keys": msgpack.packb(dict(sorted(sorted_keys.items()))),
        "a 4 MB network id (over its bound)": b"\x8e\xa1v\x01\xa3net\xdb" + (4 << 20).to_bytes(4, "big") + b"a" * (4 << 20),
        "forged signature on a valid update": bytes(forged),
    }


def hostile_figures() -> dict:
    """Rejection cost of hostile input next to SHA-256 of the same bytes, measured in this run."""
    ident, schema, n = Identity.generate(), b"\x01" * 32, 1_000_000
    v = Verifier("net", {ident.peer_id}, schema, n, max_size=8 * n + 4096, max_lag=10**9)
    rows, figures = [], {}
    for name, data in hostile_inputs(ident, schema, n).items():
        result = v.verify(data, 1, set())
        assert isinstance(result, Rejected), name
        t_reject = best(lambda data=data: v.verify(data, 1, set()), repeat=20)
        t_hash = best(lambda data=data: hashlib.sha256(data).digest(), repeat=20)
        rows.append([name, f"{len(data) / 1e6:.1f}", result.reason.value, t_reject * 1e6, t_hash * 1e6,
                     t_reject / t_hash])
        figures[name] = {"bytes": len(data), "reason": result.reason.value, "reject_us": round(t_reject * 1e6, 1),
                         "sha256_us": round(t_hash * 1e6, 1), "reject_vs_sha256": round(t_reject / t_hash, 4)}
    print_table(["hostile input", "MB", "rejected as", "reject us", "sha256 us", "reject / sha256"], rows,
                title="rejecting hostile input, 1 torch thread (the model: 1M float32)")
    return figures


def provenance(figures: dict) -> None:
    ident = Identity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        log = ProvenanceLog(os.path.join(tmp, "p.db"), ident, "net")
        count = 300
        t0 = time.perf_counter()
        for i in range(count):
            log.append("trained", i, details={"loss": 0.1, "samples": 100})
        single = count / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        batches = 60
        for i in range(batches):
            log.append_many([("received", i, "p", "ab" * 32, {"k": k}) for k in range(8)])
        batched = batches * 8 / (time.perf_counter() - t0)
        log.close()
    print_table(["provenance append", "events/s"], [["one event per transaction", single],
                                                    ["8 events per transaction (a round's receipts)", batched]])
    figures["provenance_events_per_s"] = {"single": round(single), "batch8": round(batched)}


if __name__ == "__main__":
    main()
