"""What a peer sends: its own update, sealed once, logged as `sent` before it leaves, and sent
to every neighbour at once, so a slow or stalled neighbour never holds up the others.
With secure_mean each neighbour gets its own masked contribution instead (one `sent` event
each, with its own update id); the own model is sealed for the record only."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gossip.envelope import seal_update

from .inbox import off_loop_if_large
from .round import Send

if TYPE_CHECKING:
    import torch

    from .driver import Peer

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
        nbytes = own.numel() * 4
        sealed = await off_loop_if_large(nbytes, seal_update, p.identity, own, **fields)
        if not cmd.transmit:  # kept for the record (the aggregation names it), never sent
            p.state.sent(sealed.update_id, [])
            return
        if p.secure is None:  # the same bytes to every neighbour
            out = {nb: sealed for nb in p.neighbours}
            details = {"bytes": len(sealed.data), "codec": codec}
        else:  # secure_mean: a masked contribution per neighbour, masked for that neighbour's group
            out, details = {}, {"codec": "u32", "kind": "masked"}
            masked = {k: v for k, v in fields.items() if k not in ("net", "round", "codec")}
            for nb in p.neighbours:
                if len(p.secure.groups.get(nb, ())) < 2:  # admitted later, without a group from the plan
                    log.warning("round %d: no secure-aggregation group known for %s; not sending to it",
                                cmd.round, nb)
                    continue
                out[nb] = await off_loop_if_large(nbytes, p.secure.seal_for, own, nb, cmd.round, **masked)
        p.log_events(p.state.sent(sealed.update_id, [
            (nb, s.update_id, {"bytes": len(s.data), **details}) for nb, s in out.items()]),
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
