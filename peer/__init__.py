"""One node of the network: config, data, model, training, the round loop, checkpoints and
the provenance log. Imports gossip, topology and aggregation; never sim or gossipfl."""
