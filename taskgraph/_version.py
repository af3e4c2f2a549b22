"""The package version (leaf module)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("taskgraph")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
