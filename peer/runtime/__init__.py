"""The runtime of one node: the round state machine, its asyncio driver and the parts it drives."""
