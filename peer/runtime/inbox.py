"""What arrives at a peer: updates (screened, rate-limited, verified, counted), the
admin's membership records (applied, logged, passed on) and, with secure_mean, reveal
requests (answered at most once per receiver and round) and reveals (to the round state). The driver half of the peer that
listens; peer.runtime.driver.Peer owns it and the round state it feeds."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gossip.membership import is_record
from gossip.verify import Accepted
from privacy.secure_wire import (
    SecureWireError,
    encode_request,
    kind_of,
    parse_request,
    parse_reveal,
    verify,
)

from ..state.provenance import EventKind, NewEvent
from .parts import allowed_peers
from .round import Finish, Log, OfferKind, RequestReveals
from .stack import UpdateStack

if TYPE_CHECKING:
    from .driver import Peer

log = logging.getLogger("gossipfl.peer")
VERIFY_IN_THREAD_BYTES = 1 << 20
VERIFY_WORKERS = 2  # SHA-256 releases the GIL: two updates hash at once on a 2-core gateway


async def off_loop_if_large(nbytes: int, fn, *args, **kwargs):
    """fn(*args, **kwargs), on a worker thread when it works through megabytes (hashing, masking,
    unmasking would stall the event loop), inline otherwise (a thread costs more than small work)."""
    if nbytes >= VERIFY_IN_THREAD_BYTES:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


class Inbox:
    def __init__(self, peer: Peer):
        self.peer = peer
        self.pool = ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="verify")
        self.slots: asyncio.Semaphore | None = None  # bounds the messages held while being verified
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the transport and one receive loop (never a second); a failure of either, even on
        another thread, stops the peer with its cause."""
        if self.task is not None and not self.task.done():
            return
        p, loop = self.peer, asyncio.get_running_loop()
        p.transport.on_failure = lambda exc: loop.call_soon_threadsafe(p.failed, "the transport", exc)
        await p.transport.start()
        self.task = loop.create_task(self.run())
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.peer.failed("the receive loop", task.exception())

    async def stop(self) -> None:
        if self.task is None:
            return
        task, self.task = self.task, None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # already reported by _ended
            log.debug("receive loop ended with %r", exc)

    async def run(self) -> None:
        p = self.peer
        self.slots = asyncio.Semaphore(VERIFY_WORKERS)
        async for hint, data in p.transport:
            p.metrics.bytes_in(len(data))
            if is_record(data):
                self.on_record(hint, data)
                continue
            secure_kind = kind_of(data) if p.secure is not None else None
            if secure_kind is not None:
                self.on_secure(hint, data, secure_kind)
                continue
            screened = p.verifier.screen(data, p.round, p.state.seen)
            for cmd in p.state.screened(screened):
                if isinstance(cmd, Finish) and len(data) >= VERIFY_IN_THREAD_BYTES:
                    # hashing megabytes would stall the event loop: worker threads verify, the loop takes
                    await self.slots.acquire()
                    job = asyncio.get_running_loop().run_in_executor(self.pool, p.verifier.finish, cmd.envelope)
                    job.add_done_callback(functools.partial(self._verified, len(data)))
                elif isinstance(cmd, Finish):
                    self.take(p.verifier.finish(cmd.envelope), len(data))
                else:
                    p.log_events([cmd])

    def _verified(self, size: int, job: asyncio.Future) -> None:
        self.slots.release()
        if not self.peer.started or job.cancelled():
            return
        if job.exception() is not None:  # the verifier returns Rejected for bad input; this is a bug
            log.error("verifying a message failed: %r", job.exception())
            return
        self.take(job.result(), size)

    def take(self, result, size: int) -> None:
        p = self.peer
        if p.secure is not None and isinstance(result, Accepted):
            try:
                result = p.secure.open(result, p.neighbours)
            except SecureWireError as exc:  # signed by its sender, but made for another receiver or round
                p.log_events(p.state.reject(exc.reason, str(exc), result.sender, True, result.update_id))
                return
        kind, commands = self.peer.state.offer(result, size)
        self.peer.log_events(commands)
        if kind is OfferKind.ACCEPTED:
            self.peer.wake()

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    # --- fleet membership ----------------------------------------------------------------

    def on_record(self, hint: str | None, data: bytes) -> None:
        """An admin-signed membership record: apply it at once, log it, pass it on."""
        p = self.peer
        offer = p.membership.offer(bytes(data))
        r = offer.record
        if r is None and not offer.reason:  # an echo of a record this peer applied: nothing new
            return
        if r is None:  # forged or malformed: unproven; an older epoch: proven (admin-signed) but stale
            proven = offer.reason == "stale_membership"
            p.log_events(p.state.reject(offer.reason, offer.detail, p.membership.admin if proven else hint, proven))
            return
        log.info("membership epoch %d: %s %s", r.epoch, r.action, r.peer)
        p.log_events([Log(NewEvent(EventKind.MEMBERSHIP, p.round, r.peer, r.record_id,
                                   {**r.summary(), "bytes": data.hex()}))], flush=True)
        if r.action == "revoke":  # from now on: its updates are rejected, what it sent this round dropped
            p.state.forget(r.peer)
        p.parts.allowed.clear()  # the transport reads this set live
        p.parts.allowed.update(allowed_peers(p.membership.neighbours, p.membership.admin))
        loop = asyncio.get_running_loop()
        for nb in p.neighbours:  # gossip it on; the epoch stops it coming back
            if nb != hint and nb != r.peer:
                loop.create_task(p.transport.send(nb, data))

    # --- secure aggregation ------------------------------------------------------------------

    def on_secure(self, hint: str | None, data, kind: str | None = None) -> None:
        """A reveal request (this peer is a member asked to reveal) or a reveal (this peer asked);
        `kind` is secure_wire.kind_of(data) when the caller has it already."""
        p = self.peer
        kind = kind or kind_of(data)
        try:
            if kind == "reveal_request":
                req = verify(parse_request(data), network=p.cfg.network, trusted=p.membership.trusted)
            else:
                rev = verify(parse_reveal(data), network=p.cfg.network, trusted=p.membership.trusted, me=p.peer_id)
        except SecureWireError as exc:  # unproven: counted, summarised at the round's close
            p.log_events(p.state.reject(exc.reason, str(exc), hint, False))
            return
        if kind == "reveal":
            p.log_events(p.state.revealed(rev.sender, rev.round, rev.seed_map()))
            p.wake()
            return
        reply, why, events = p.secure.answer(req)
        if reply is None:
            p.log_events(p.state.reject(why, f"reveal request for round {req.round} refused", req.sender, True))
            return
        p.log_events([Log(e) for e in events], flush=True)  # durable before the seeds leave: never twice
        log.info("round %d: revealed %d seeds to %s", req.round, len(req.missing), req.sender)
        asyncio.get_running_loop().create_task(p.transport.send(req.sender, reply))

    def request_reveals(self, cmd: RequestReveals) -> None:
        """Ask every member that delivered for its seeds towards the missing ones (one signed request)."""
        p = self.peer
        data = encode_request(p.identity, net=p.cfg.network, round=cmd.round, delivered=cmd.delivered,
                              missing=cmd.missing)
        log.info("round %d: %d of %d neighbours delivered; asking them for reveals", cmd.round, len(cmd.delivered),
                 len(cmd.delivered) + len(cmd.missing))
        loop = asyncio.get_running_loop()
        for j in cmd.delivered:
            loop.create_task(p.transport.send(j, data))

    async def apply_neighbours(self) -> None:
        """New or revoked neighbours count from a round boundary (the stack has one row each)."""
        p = self.peer
        wanted = p.membership.neighbours
        if set(wanted) == set(p.neighbours):
            return
        log.info("neighbours now %s", ", ".join(sorted(wanted)) or "none")
        p.neighbours = sorted(wanted)
        p.stack = UpdateStack(p.neighbours, p.model.size, masked=p.secure is not None)
        p.state.keep = p.stack.settle
        p.state.set_neighbours(frozenset(wanted))
        p.state.collected = {s: p.stack.settle(a) for s, a in p.state.collected.items()}
        p.verifier.neighbours = set(wanted)
        if p.secure is not None:
            p.verifier.masked_words = p.secure.words(len(wanted))
        await p.transport.set_neighbours(dict(wanted))
