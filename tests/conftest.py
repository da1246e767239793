import os

from hypothesis import settings

from .netfixtures import mosquitto, peer_processes  # noqa: F401  (fixtures)

# CI explores the same examples on every run (a failure there reproduces); a developer's run
# draws new ones each time and so keeps finding new cases.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
