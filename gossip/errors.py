"""Typed errors of the wire layer; every one has a message that says what to fix."""


class GossipError(Exception):
    """Base of the wire layer's errors that a user can act on."""


class KeyFileError(GossipError):
    """A key file is missing, unreadable, too open, or not an Ed25519 private key."""


class TrustListError(GossipError):
    """A trust list file is missing or malformed, or lists a peer twice."""


class PeerIdError(GossipError):
    """A string is not a valid Ed25519 PeerId."""


class CodecError(GossipError):
    """A payload codec is unknown or a payload does not decode to the expected size."""


class TransportError(GossipError):
    """A transport cannot start: port in use, bad address, unreachable broker."""
