"""A peer's state on disk: the provenance log, checkpoints, resuming, the data-folder lock."""
