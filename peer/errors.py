"""Typed errors of the peer layer."""


class PeerError(Exception):
    """Base of the peer layer's errors that a user can act on."""


class ProvenanceError(PeerError):
    """A provenance database is missing, not a database, of a foreign schema, or another peer's."""


class ConfigError(PeerError):
    """A peer configuration field is missing or invalid; the message names the field."""


class DataError(PeerError):
    """Local training data is missing or does not fit the model."""
