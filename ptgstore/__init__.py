"""ptgstore: sensor frames from headsets to models, over REST and WebSockets, in Redis Streams."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ptgstore")  # pyproject.toml is the one source of the version
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
