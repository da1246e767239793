"""What a peer sends: its own update, sealed once, logged as `sent` before it leaves, and sent
to every neighbour at once, so a slow or stalled neighbour never holds up the others.
With secure_mean each neighbour gets its own masked contribution instead (one `sent` event
each, with its own update id); the own model is sealed for the record only."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gossip.envelope import seal_update

from .inbox import VERIFY_IN_THREAD_BYTES
from .round import Send

if TYPE_CHECKING:
    import torch

    from .node import Peer

log = logging.getLogger("gossipfl.peer")
SEND_SLOTS = 2  # transmissions at once: a stalled neighbour holds one, and a transport buffers at most two


class Outbox:
    def __init__(self, peer: Peer):
        self.peer = peer
        self.sending: dict[str, asyncio.Task] = {}  # neighbour -> the transmission in flight
        self.slots = asyncio.Semaphore(SEND_SLOTS)
        self.bytes_sent = 0  # this round

    async def send(self, cmd: Send, own: torch.Tensor) -> None:
        p = self.peer
        codec = p.cfg.round.codec
        fields = dict(net=p.cfg.network, round=cmd.round, schema=p.model.schema, codec=codec,
                      parents=[bytes.fromhex(x) for x in cmd.parents], deg=len(p.neighbours))
        if own.numel() * 4 >= VERIFY_IN_THREAD_BYTES:  # hashing tens of MB off the event loop
            sealed = await asyncio.to_thread(seal_update, p.identity, own, **fields)
        else:
            sealed = seal_update(p.identity, own, **fields)
        size = len(sealed.data)
        if not cmd.transmit:  # kept for the record (the aggregation names it), never sent
            p.state.sent(sealed.update_id, [])
            return
        if p.secure is not None:
            await self._send_masked(cmd, own, sealed.update_id, fields)
            return
        p.log_events(p.state.sent(sealed.update_id, [
            (nb, sealed.update_id, {"bytes": size, "codec": codec}) for nb in p.neighbours]),
            flush=True)  # `sent` is durable before transmission: never a receipt without a send
        loop = asyncio.get_running_loop()
        for nb in p.neighbours:
            pending = self.sending.get(nb)
            if pending is not None and not pending.done():
                log.warning("round %d: the last update to %s is still in flight; not sending this one",
                            cmd.round, nb)
                continue
            self.sending[nb] = loop.create_task(self._transmit(nb, sealed.data, cmd.round))

    async def _send_masked(self, cmd: Send, own: torch.Tensor, own_id: str, fields: dict) -> None:
        """secure_mean: a masked contribution per neighbour, masked for that neighbour's group."""
        p, out = self.peer, {}
        fields = {k: v for k, v in fields.items() if k not in ("net", "round", "codec")}
        for nb in p.neighbours:
            if len(p.secure.groups.get(nb, ())) < 2:  # admitted later, without a group from the plan
                log.warning("round %d: no secure-aggregation group known for %s; not sending to it", cmd.round, nb)
                continue
            if own.numel() * 4 >= VERIFY_IN_THREAD_BYTES:  # a ChaCha20 stream per other member: off the loop
                out[nb] = await asyncio.to_thread(p.secure.seal_for, own, nb, cmd.round, **fields)
            else:
                out[nb] = p.secure.seal_for(own, nb, cmd.round, **fields)
        p.log_events(p.state.sent(own_id, [
            (nb, s.update_id, {"bytes": len(s.data), "codec": "u32", "kind": "masked"}) for nb, s in out.items()]),
            flush=True)  # `sent` is durable before transmission: never a receipt without a send
        loop = asyncio.get_running_loop()
        for nb, s in out.items():
            pending = self.sending.get(nb)
            if pending is not None and not pending.done():
                log.warning("round %d: the last update to %s is still in flight; not sending this one",
                            cmd.round, nb)
                continue
            self.sending[nb] = loop.create_task(self._transmit(nb, s.data, cmd.round))

    async def _transmit(self, nb: str, data: bytes, round_: int) -> None:
        async with self.slots:
            delivered = await self.peer.transport.send(nb, data)
        if delivered:
            self.bytes_sent += len(data)
            self.peer.metrics.bytes_out(len(data))
        else:
            log.debug("round %d: update to %s not delivered", round_, nb)

    async def drain(self, timeout: float) -> None:
        """Let the last updates go out, within reason, at shutdown."""
        in_flight = [t for t in self.sending.values() if not t.done()]
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=timeout)
            for t in late:
                t.cancel()
