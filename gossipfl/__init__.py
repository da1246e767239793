"""gossipfl: the command-line face of the project (wiring only; logic lives in the packages)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gossipfl")
except PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+local"
