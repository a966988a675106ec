"""WattiWatchman: zero feed-in control of a Victron ESS from Janitza smart meters."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("watti-watchman")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
