"""Wire-path speed: seal (encode + hash + sign) and verify (+ decode) of 1M and 10M float32
parameters, next to SHA-256 of the same bytes (the floor: the payload must be hashed) and
pickle / torch.save round trips; then the provenance log's append rate.

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

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._table import best_time as best  # noqa: E402
from bench._table import emit_json, print_table
from gossip.envelope import seal_update  # noqa: E402
from gossip.identity import Identity  # noqa: E402
from gossip.verify import Accepted, Verifier  # noqa: E402
from peer.provenance import ProvenanceLog  # noqa: E402
from peer.runtime import tune_allocator  # noqa: E402


def torch_save_round_trip(x):
    buf = io.BytesIO()
    torch.save(x, buf)
    buf.seek(0)
    return torch.load(buf)


def main() -> None:
    torch.set_num_threads(1)
    figures = {}
    for label, tuned in (("default allocator", False), ("peer runtime (tune_allocator)", True)):
        if tuned:
            tune_allocator()
        figures[label] = wire_figures(label)
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
            v.seen.clear()
            r = v.verify(msg, 1)
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
