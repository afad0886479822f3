"""The loopback TCP proxies of the tests (ptgstore/testproxy.py, shared with the soak scripts)."""
from ptgstore.testproxy import CuttingProxy, RoundRobinProxy  # noqa: F401
