import os

import pytest
from hypothesis import settings

from .netfixtures import mosquitto, peer_processes  # noqa: F401  (fixtures)
from .netlab import Lab, require_lab

# CI explores the same examples on every run (a failure there reproduces); a developer's run
# draws new ones each time and so keeps finding new cases.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def lab():
    """A fresh network lab (tests/netlab.py), torn down after the test; skips with the reason
    where it cannot run (not root, no `ip netns`, no nft)."""
    require_lab()
    with Lab() as built:
        yield built
