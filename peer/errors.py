"""Typed errors of the peer layer. Each says, by its exit status, what a service manager
should do about it: 2 (fix the configuration or files: restarting cannot help), 3 (this peer
was revoked: it must not come back), 75 (EX_TEMPFAIL: transient, such as a full disk: restart
later). The systemd units that plans write retry only the last."""

EXIT_USER_ERROR = 2
EXIT_REVOKED = 3
EXIT_TRANSIENT = 75


class PeerError(Exception):
    """Base of the peer layer's errors that a user can act on."""

    exit_status = EXIT_USER_ERROR


class ProvenanceError(PeerError):
    """A provenance database is missing, not a database, of a foreign schema, or another peer's."""


class ConfigError(PeerError):
    """A peer configuration field is missing or invalid; the message names the field."""


class DataError(PeerError):
    """Local training data is missing or does not fit the model."""


class RevokedError(PeerError):
    """The network admin revoked this peer: it stops and must not be restarted."""

    exit_status = EXIT_REVOKED


class TransientError(PeerError):
    """A passing condition (a full disk, an I/O error) stopped the peer: restarting later helps."""

    exit_status = EXIT_TRANSIENT
