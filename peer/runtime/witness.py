"""Neighbours witness a peer's past: a log and checkpoint rolled back to an older, valid pair
verify perfectly on their own, but the peer's neighbours hold headers it signed since.

- Every update carries the sender's cumulative epsilon in its signed header (`eps`); a
  neighbour remembers the highest it accepted from each sender (rebuilt from its log's
  `received` events at start) and rejects a lower one as `privacy_rollback`.
- A starting peer asks each neighbour (ASK) for the newest header of its own that the neighbour
  logged; the answer (ANSWER + msgpack {"header", "sig"}, both empty when it holds none) is
  self-authenticating: the asker checks its own signature on it. A header of a later round
  than the peer resumes at, or with a higher epsilon than its ledger says, stops the start with
  one line, unless the operator passes `--accept-rollback` (then it is logged, and neighbours
  still refuse a lower epsilon: only a budget at least as high as announced is accepted).
Waiting is bounded (ASK_WAIT): a neighbour that is down does not hold the start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3

import msgpack

from gossip.identity import verify_signature

from ..errors import PeerError
from .commands import Command, Transmit

ASK = b"GFLW\x01?"
ANSWER = b"GFLW\x01="
ASK_WAIT = 5.0  # seconds a start waits for its neighbours' answers at most
ENVELOPE_DOMAIN = b"gossipfl/envelope/v1\x00"  # gossip.envelope.DOMAIN (not imported: it loads torch)
MAX_ANSWER = 1 << 16
log = logging.getLogger("gossipfl.peer")


class RollbackError(PeerError):
    """A neighbour holds a header this peer signed later than the state it starts from."""


def is_witness(data) -> bool:
    return bytes(data[:6]) in (ASK, ANSWER)


def _newest_received(con: sqlite3.Connection, sender: str | None = None) -> list[tuple[str, str]]:
    """(counterpart, details) of the newest `received` event of each sender (or of `sender`)."""
    where, args = ("AND counterpart = ?", (sender,)) if sender else ("", ())
    return con.execute(f"SELECT counterpart, details FROM events WHERE seq IN (SELECT MAX(seq) FROM events "
                       f"WHERE kind = 'received' {where} GROUP BY counterpart)", args).fetchall()


def _header(details: str) -> tuple[bytes, bytes, dict] | None:
    """(header bytes, sig, header fields) of a stored `received` event, None if unreadable."""
    try:
        d = json.loads(details)
        header, sig = bytes.fromhex(d["header"]), bytes.fromhex(d["sig"])
        fields = msgpack.unpackb(header, raw=False, max_bin_len=1 << 16, max_array_len=1024, max_str_len=1024)
    except Exception:
        return None
    return (header, sig, fields) if isinstance(fields, dict) else None


def _eps(fields: dict) -> float:
    eps = fields.get("eps", 0.0)  # v2 headers had none
    return float(eps) if isinstance(eps, float) else 0.0


def witnessed_from_log(prov) -> dict[str, float]:
    """The highest signed epsilon accepted from each sender, from the (verified) log."""
    out = {}
    for sender, details in _newest_received(prov.con):
        parsed = _header(details)
        if parsed is not None:
            out[sender] = _eps(parsed[2])
    return out


class Witness:
    """Both sides: answering neighbours' asks from the log, and asking at start."""

    def __init__(self, prov, own_id: str, network: str, verifier=None):
        self.prov, self.own_id, self.network = prov, own_id, network
        self.answers: dict[str, tuple[int, float] | None] = {}
        self.arrived = asyncio.Event()
        self.accept = False  # --accept-rollback
        if verifier is not None and verifier.witnessed is not None:  # what this peer witnessed before its restart
            verifier.witnessed.update(witnessed_from_log(prov))

    def on_message(self, hint: str | None, data) -> list[Command]:
        data = bytes(data)
        if data == ASK and hint:  # the newest header of the asker's own this peer logged
            rows = _newest_received(self.prov.con, hint)
            parsed = _header(rows[0][1]) if rows else None
            doc = {"header": parsed[0], "sig": parsed[1]} if parsed else {"header": b"", "sig": b""}
            return [Transmit((hint,), ANSWER + msgpack.packb(doc, use_bin_type=True), retry_for=ASK_WAIT)]
        if data.startswith(ANSWER) and hint and len(data) <= MAX_ANSWER:
            self.answers[hint] = self._read(data[len(ANSWER):])
            self.arrived.set()
        return []

    def _read(self, body: bytes) -> tuple[int, float] | None:
        """(round, eps) of an answer that carries a header this peer signed, else None."""
        try:
            doc = msgpack.unpackb(body, raw=False, max_bin_len=MAX_ANSWER, max_map_len=2, max_str_len=16)
            header, sig = doc["header"], doc["sig"]
            fields = msgpack.unpackb(header, raw=False, max_bin_len=1 << 16, max_array_len=1024, max_str_len=1024)
        except Exception:
            return None
        if not isinstance(fields, dict) or fields.get("sender") != self.own_id or fields.get("net") != self.network:
            return None
        if not verify_signature(self.own_id, sig, hashlib.sha256(ENVELOPE_DOMAIN + header).digest()):
            return None
        rnd = fields.get("round")
        return (rnd, _eps(fields)) if type(rnd) is int else None

    async def ask(self, send, neighbours: list[str], wait: float) -> dict[str, tuple[int, float] | None]:
        """Ask every neighbour; the answers that came within `wait` seconds."""
        if not neighbours:
            return {}
        await send([Transmit(tuple(neighbours), ASK, retry_for=wait)])
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while set(neighbours) - set(self.answers) and loop.time() < end:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), end - loop.time())
            except TimeoutError:
                break
        return dict(self.answers)


def rollback(answers: dict, resumed_round: int, epsilon: float) -> str | None:
    """What the neighbours' answers say against the state the peer starts from, None if nothing."""
    for nb, got in sorted(answers.items()):
        if got is None:
            continue
        rnd, eps = got
        if rnd > resumed_round:
            return (f"neighbour {nb} holds this peer's signed update of round {rnd}, but it starts from round "
                    f"{resumed_round}")
        if eps > epsilon * (1 + 1e-9) + 1e-12:
            return (f"neighbour {nb} holds this peer's signed update announcing epsilon {eps:.6g}, but its privacy "
                    f"ledger says {epsilon:.6g}")
    return None


async def confirm_past(peer) -> dict:
    """At start: refuse (RollbackError) a state older than what the neighbours witnessed, unless
    --accept-rollback; returns what was accepted, for the `started` event."""
    if peer.resumed_from is None:  # a first start has no past to roll back (an emptied folder: see the README)
        return {}
    answers = await peer.witness.ask(peer._execute, peer.neighbours, min(ASK_WAIT, 2 * peer.cfg.round.deadline))
    problem = rollback(answers, peer.round, peer.privacy.epsilon())
    if problem is None:
        return {}
    if not peer.witness.accept:
        await peer.go_offline()  # nothing was logged: close what start() opened, then refuse
        peer.prov.close()
        peer.lock.release()
        peer.metrics.stop()
        raise RollbackError(f"this peer's log and checkpoint were rolled back: {problem}. Restore its newest data "
                            "folder; to start from this one anyway, pass --accept-rollback")
    log.warning("--accept-rollback: %s; starting anyway", problem)
    return {"accepted_rollback": problem}
