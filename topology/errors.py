class TopologyError(ValueError):
    """A topology spec, file or analysis request is invalid; the message says what to fix."""
