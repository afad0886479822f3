"""The earlier import path of `read_messages` (documented before the recordings became a package,
`from ptgstore.mcapfiles import read_messages`): kept so that readers' scripts go on working."""
from .recordings.mcapfiles import read_messages

__all__ = ["read_messages"]
