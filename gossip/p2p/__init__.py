"""gossipfl's libp2p stack, one job per module (the asyncio-facing class is
gossip/libp2p_transport.py; nothing here imports peer/ or sim/):

- host.py       the host (Noise only, yamux) and its hardening: trust gate, yamux bounds per
                connection (a larger stream cap for relays), two-stage inbound admission
- acceptor.py   accepting TCP connections beside trio: silent ones never cost a task (churn)
- admission.py  fair slots for inbound connections (pure)
- updates.py    the update stream protocol: per-sender read slots, size bound, rate limit
- dialer.py     reuse a connection, else direct addresses, else a circuit; reconnect backoff
- circuits.py   the client side of Circuit Relay v2: reserve, dial a circuit, STOP from our relays only
- nat.py        reservation keeper, hole punching bookkeeping, paths per peer, reachability
- relay.py      the fleet relay (the fixed hop) and the honest dial-back
- relay_service.py  RelayService: a fleet relay on a host of its own (gossipfl relay start)
- records.py    signed address records and the address book (pure)
- announce.py   our record kept current and pushed; neighbours' records taken in
- node.py       the trio side of the transport: all of the above wired together
- streams.py    stream helpers
"""
