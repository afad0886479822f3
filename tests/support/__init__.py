"""What the tests share that is not a fixture: servers in a thread or a subprocess (servers), WebSocket
helpers (ws), a Redis Cluster (cluster), hostile MCAP files (mcapforge), the permission tests' lab
(permissionlab) and the browser tests' chromium (browser). The fixtures live in tests/conftest.py;
no test imports conftest (ruff's TID251 refuses it). Importable as `support` through pytest's
`pythonpath = ["tests"]` (pyproject.toml)."""
