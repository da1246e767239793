from .netfixtures import mosquitto, peer_processes  # noqa: F401  (fixtures)
