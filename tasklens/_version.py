"""The installed tasklens version (from the package metadata, so it is written once, in pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tasklens")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
