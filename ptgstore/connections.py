"""Connections to Redis, a single server or a Redis Cluster: the only module touching redis-py internals.

- `Connections.client`: redis-py's client (a blocking pool, or `RedisCluster` doing discovery and
  routing) for pipelines, transactions, scripts and scans.
- Lanes: a few connections kept per server (per master on a cluster), created lazily and capped,
  for the one-command hot path (`once`): leasing from a pool costs more than the command itself.
  Lanes have no per-command timer (a third of the cost of a command): a watchdog drops a lane
  whose command has waited too long instead.
- `Tail`: a connection of its own for one follower's blocking reads, to the master owning the
  followed stream, following the cluster when the slot moves.
- Redis failures come out as one of `UNAVAILABLE` (never as a refusal): `MOVED`, `ASK` and `TRYAGAIN`
  are followed here, and if they cannot be, they mean "not reachable now", not "empty" or "bad request".
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.connection import PythonRespSerializer
from redis.crc import key_slot

log = logging.getLogger("ptgstore.connections")

LANES = 8  # connections kept per server for the hot path, besides the pool
LARGE_VALUE = 16 * 1024  # bytes from which a command's value is sent as it is, not packed with the rest
REDIRECTS = 16  # MOVED/ASK/TRYAGAIN followed for one command before giving up (a slot in migration)

# the redis-py exceptions the rest of ptgstore names (it imports no redis-py module itself)
RedisError = rexc.RedisError
ResponseError = rexc.ResponseError
NoScriptError = rexc.NoScriptError
WatchError = rexc.WatchError

# failures that mean "Redis cannot serve this now"; MOVED/ASK that could not be followed included, and
# a cluster none of whose nodes answers (RedisClusterException, redis-py's "cannot be connected")
UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, OSError, rexc.BusyLoadingError, rexc.ClusterError,
               rexc.ClusterDownError, rexc.TryAgainError, rexc.AskError, rexc.SlotNotCoveredError,
               rexc.MasterDownError, rexc.RedisClusterException)


_SOCKET_PATH = re.compile(r"(unix socket): .*?(\. |\.?$)")


def reason(exc: BaseException) -> str:
    """What to say about a Redis failure."""
    if isinstance(exc, rexc.BusyLoadingError):
        return "Redis is loading its data"
    if isinstance(exc, (rexc.AskError, rexc.TryAgainError)):
        return f"a cluster slot is moving: {exc}"
    # clients are told that the socket failed, not where the server's files are
    return _SOCKET_PATH.sub(r"\1\2", str(exc)) or type(exc).__name__


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE)


# -- one-off blocking calls, outside the event loop (the CLI's start-up check, the embedded server's
# lifecycle, the tests' private servers): redis-py stays behind this module

def blocking_client(url: str, timeout: float | None = None) -> redis.Redis:
    """A blocking redis-py client on `url` (the caller closes it); `timeout` bounds connecting and each reply."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def ping_error(url: str, timeout: float = 5) -> str | None:
    """Why the Redis at `url` does not answer a PING within `timeout` seconds, or None when it does."""
    client = blocking_client(url, timeout)
    try:
        client.ping()
    except (rexc.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


def server_run_id(url: str, timeout: float = 1) -> str | None:
    """The run id of the Redis answering at `url`, or None when nothing answers."""
    try:
        with blocking_client(url, timeout) as client:
            return str(client.info("server")["run_id"])
    except (rexc.RedisError, OSError, KeyError):
        return None


def shut_down(url: str, timeout: float) -> None:
    """SHUTDOWN the Redis at `url` (RedisError when it refuses or does not answer)."""
    with blocking_client(url, timeout) as client:
        client.shutdown()


class Multi(tuple):
    """Commands run in MULTI ... EXEC (`Connections.transaction`)."""


async def _call(connection, command: tuple, asking: bool = False):
    """One command and its reply on `connection` (connected on first use and after a failure); with
    `asking`, preceded by ASKING (a slot being imported by this node)."""
    if command[0].__class__ is Multi:
        return await _exec(connection, command[0], asking)
    try:
        if _closed_by_peer(connection):
            await connection.disconnect()  # closed by Redis while idle (a restart, a timeout): reconnect
        packed = _pack(connection, command)
        if asking:
            packed = [hiredis.pack_command(("ASKING",)), *([packed] if isinstance(packed, bytes) else packed)]
        await connection.send_packed_command(packed, check_health=False)
        if asking:
            await connection.read_response()
        return await connection.read_response()
    except rexc.ResponseError:
        raise
    except BaseException:
        # cut short (failure or cancellation): its reply may still come, so never reuse the socket
        await connection.disconnect()
        raise


async def _exec(connection, commands: Multi, asking: bool):
    """MULTI, `commands` and EXEC sent together on `connection`: EXEC's replies (a command's error among
    them as its exception). A command refused as it is queued (MOVED, ASK, TRYAGAIN) is raised: EXEC
    then runs nothing."""
    replies = await _send_all(connection, [*([("ASKING",)] if asking else []), ("MULTI",), *commands, ("EXEC",)])
    return replies[-1]


async def _send_all(connection, commands: list[tuple]) -> list:
    """`commands` sent together on `connection` (Redis serves them one after the other) and their
    replies; a reply that is an error is raised. Cut short (an error, a failure, a cancellation), the
    connection is dropped: the replies not read may still come."""
    chunks: list = []
    for command in commands:
        packed = _pack(connection, command)
        chunks += [packed] if isinstance(packed, bytes) else packed
    try:
        if _closed_by_peer(connection):
            await connection.disconnect()
        await connection.send_packed_command(chunks, check_health=False)
        return [await connection.read_response() for _ in commands]
    except BaseException:
        await connection.disconnect()
        raise


def _pack(connection, command: tuple):
    """The command in Redis's protocol: packed in C by hiredis (a fifth of redis-py's cost), except
    with a large value (always last) or memoryviews (slices of a batch), which redis-py's Python
    packer sends as they are, uncopied (`connection.pack_command` packs with hiredis too, copying
    the value, when hiredis is installed: a 16 MiB entry cost 16 MiB more)."""
    last = command[-1]
    if not (isinstance(last, bytes) and len(last) >= LARGE_VALUE):
        try:
            return hiredis.pack_command(command)
        except TypeError:  # a memoryview
            pass
    return PythonRespSerializer(LARGE_VALUE, connection.encoder.encode).pack(*command)


def _closed_by_peer(connection) -> bool:
    """Whether Redis closed an idle connection, read from its stream reader's state (redis-py's own
    check reads the socket under a zero timeout, which costs more than the command)."""
    reader = getattr(connection, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


class _Lanes:
    """The connections kept for one server."""

    def __init__(self, make, cap: int):
        self.make = make
        self.cap = cap
        self.free: list = []
        self.busy: dict = {}  # lane -> when its command was sent (monotonic)

    def take(self):
        """A free lane, a new one, or None when all `cap` are busy."""
        if self.free:
            return self.free.pop()
        if len(self.busy) < self.cap:
            return self.make()
        return None

    async def call(self, lane, command: tuple, asking: bool = False):
        self.busy[lane] = time.monotonic()
        try:
            return await _call(lane, command, asking)
        finally:
            del self.busy[lane]
            self.free.append(lane)

    async def close(self) -> None:
        for lane in self.free + list(self.busy):
            await lane.disconnect()


class Connections:
    """Redis for one process: a single server, or a cluster when `cluster` (the URL names any node)."""

    def __init__(self, url: str, *, cluster: bool = False, pool_size: int = 64, timeout: float = 30):
        self.cluster = cluster
        self.timeout = timeout
        self.lane_cap = min(LANES, pool_size)
        self._lanes: dict[str, _Lanes] = {}  # by server ("" for the single server)
        self._watchdog: asyncio.TimerHandle | None = None
        self.pool: aioredis.BlockingConnectionPool | None
        self.client: Any  # aioredis.Redis or RedisCluster: the same commands
        if cluster:
            if not hasattr(RedisCluster, "transaction"):  # (asyncio cluster transactions: redis-py 6.2)
                raise RuntimeError(f"PTGSTORE_REDIS_CLUSTER needs redis-py 6.2 or newer, not {redis.__version__}: "
                                   "pip install 'redis[hiredis]>=6.2'")
            self.pool = None
            self.client = RedisCluster.from_url(
                url, max_connections=pool_size, socket_timeout=timeout, socket_connect_timeout=5,
                health_check_interval=30, require_full_coverage=False)
            parts = urlsplit(url)
            self.address = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379} (cluster)"  # no password
        else:
            # a blocking pool: callers wait for a free connection instead of failing
            self.pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=10, socket_timeout=timeout,
                socket_connect_timeout=5, health_check_interval=30,
            )
            self.client = aioredis.Redis(connection_pool=self.pool)
            kwargs = self.pool.connection_kwargs
            self.address = (f"unix:{kwargs['path']}" if "path" in kwargs
                            else f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}")
            options = {**kwargs, "socket_timeout": None, "health_check_interval": 0}
            self._lane_class, self._lane_options = self.pool.connection_class, options
            self._single = self._lanes_of()

    def expect_run_id(self, expected) -> None:
        """Check every new connection (a reconnect after Redis restarted included) against
        `expected()`, the run id of the server meant to answer (None: any): another server answering
        at the same address (a reused port) is refused as unavailable instead of being written to."""
        async def connect(connection) -> None:
            await connection.on_connect()
            await connection.send_command("INFO", "server", check_health=False)
            info = await connection.read_response()
            text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
            found = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("run_id:")),
                         None)
            wanted = expected()
            if wanted is not None and found != wanted:
                log.error("the Redis answering at %s is not the embedded one (run id %s, expected %s): not using it",
                          self.address, found, wanted)
                raise rexc.ConnectionError(f"the Redis at {self.address} is not the embedded server")

        assert self.pool is not None, "the embedded Redis is a single server"
        self.pool.connection_kwargs["redis_connect_func"] = connect
        self._lane_options["redis_connect_func"] = connect

    # -- where keys live ----------------------------------------------------------------------

    def slot(self, key: str) -> int:
        """The key's hash slot on a cluster (0 on a single server: everything is together)."""
        return key_slot(key.encode("utf-8", "surrogateescape")) if self.cluster else 0

    async def _node(self, key: str):
        """The master owning the key's slot, as the cluster client knows it now."""
        await self.client.initialize()  # at once when already done; discovery after a failure
        # (through the slot: redis-py 5 applies a MOVED learnt meanwhile there)
        return self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key))

    def _lost(self, exc: BaseException) -> None:
        """A node failed on a connection of ours: have the cluster client discover the topology again
        before the next command (a replica may be taking over)."""
        if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError, rexc.ClusterDownError,
                            rexc.MasterDownError)):
            self.client._initialize = True  # what RedisCluster does after such a failure of its own

    async def _learn(self, exc: rexc.MovedError) -> None:
        """Take a MOVED reply into the slot map (a slot changed owner: resharding, failover)."""
        manager = self.client.nodes_manager
        move = getattr(manager, "move_slot", None)
        if move is None:  # redis-py 5: applied by the next get_node_from_slot
            manager._moved_exception = exc
            return
        moved = move(exc)
        if inspect.isawaitable(moved):
            await moved

    def _node_options(self, node) -> tuple:
        return node.connection_class, {**node.connection_kwargs, "socket_timeout": None,
                                       "health_check_interval": 0}

    def _lanes_of(self, node=None) -> _Lanes:
        name = "" if node is None else node.name
        lanes = self._lanes.get(name)
        if lanes is None:
            cls, options = (self._lane_class, self._lane_options) if node is None else self._node_options(node)
            lanes = self._lanes[name] = _Lanes(lambda: cls(**options), self.lane_cap)
        return lanes

    # -- the hot path -------------------------------------------------------------------------

    async def once(self, key: str, *command):
        """One command about `key` and its reply, on a kept connection to the server holding the key
        (MOVED and ASK followed on a cluster). Without the client's retry layer (and its cost on
        every entry): a write retried after a lost reply could be stored twice; a redirection is
        safe to follow (the command did not run)."""
        if not self.cluster:  # (the hot path of a single Redis, kept to as few calls as before)
            lanes = self._single
            lane = lanes.free.pop() if lanes.free else lanes.take()
            if lane is None:
                return await self._on(lanes, command)
            if self._watchdog is None:
                self._watch()
            lanes.busy[lane] = time.monotonic()
            try:
                return await _call(lane, command)
            finally:
                del lanes.busy[lane]
                lanes.free.append(lane)
        asking_node = None
        for _ in range(REDIRECTS):
            node = asking_node or await self._node(key)
            try:
                return await self._on(self._lanes_of(node), command, asking_node is not None, node)
            except rexc.MovedError as exc:  # (a subclass of AskError: first)
                asking_node = None
                await self._learn(exc)
            except rexc.AskError as exc:
                asking_node = self.client.nodes_manager.get_node(host=exc.host, port=exc.port)
                if asking_node is None:
                    raise
            except rexc.TryAgainError:
                asking_node = None
                await asyncio.sleep(0.05)  # a multi-key command during a slot migration
            except BaseException as exc:
                self._lost(exc)
                raise
        raise rexc.ClusterError(f"{command[0]} {key}: still redirected after {REDIRECTS} tries")

    async def transaction(self, key: str, *commands: tuple) -> list:
        """`commands` about `key` (all in its slot on a cluster) as one MULTI ... EXEC, routed as `once`:
        EXEC's replies, a command's error among them as its exception (not raised)."""
        return await self.once(key, Multi(commands))

    async def _on(self, lanes: _Lanes, command: tuple, asking: bool = False, node=None):
        lane = lanes.take()
        if lane is None:  # every lane busy: a pooled connection (of the node, on a cluster)
            if node is None:
                assert self.pool is not None  # (a single server always has its pool)
                connection = await self.pool.get_connection()
                try:
                    return await _call(connection, command)
                finally:
                    await self.pool.release(connection)
            connection = node.acquire_connection()
            try:
                return await _call(connection, command, asking)
            finally:
                node.release(connection)
        if self._watchdog is None:
            self._watch()
        return await lanes.call(lane, command, asking)

    def _watch(self) -> None:
        """Drop a lane whose command has waited too long (Redis stopped or cut off): the waiting
        caller then fails as unavailable instead of hanging."""
        now = time.monotonic()
        for lanes in self._lanes.values():
            for lane, since in list(lanes.busy.items()):
                if now - since > self.timeout:
                    log.warning("Redis did not answer within %.0f s: dropping the connection", self.timeout)
                    asyncio.get_running_loop().create_task(lane.disconnect())
        self._watchdog = asyncio.get_running_loop().call_later(1, self._watch)

    # -- followers ----------------------------------------------------------------------------

    def tail(self, key: str) -> "Tail":
        """A connection of its own for blocking reads about `key` (kept off the pool and lanes)."""
        return Tail(self, key)

    # -- the whole deployment -----------------------------------------------------------------

    async def scan(self, match: str, type_: str):
        """Every key matching `match` of type `type_`, on every master."""
        async for key in self.client.scan_iter(match=match, count=1000, _type=type_):
            yield key

    @contextlib.asynccontextmanager
    async def subscribed(self, channel: str):
        """A pub/sub subscribed to `channel` (on a cluster, on any one node: PUBLISH reaches every node)."""
        pool = None
        if self.cluster:
            await self.client.initialize()
            node = self.client.get_random_node()
            pool = aioredis.ConnectionPool(connection_class=node.connection_class, max_connections=2,
                                           **{**node.connection_kwargs, "socket_timeout": None})
            pubsub = aioredis.Redis(connection_pool=pool).pubsub()
        else:
            pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(channel)
            yield pubsub
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if pool is not None:
                await pool.disconnect()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for lanes in self._lanes.values():
            await lanes.close()
        await self.client.aclose()
        if self.pool is not None:
            await self.pool.disconnect()


class Tail:
    """One follower's connection, to the master holding its stream (moved with the stream's slot)."""

    def __init__(self, connections: Connections, key: str):
        self.connections = connections
        self.key = key
        self.connection: Any = None
        self.node_name: str | None = None

    async def _connection(self):
        conns = self.connections
        node = await conns._node(self.key)
        if self.connection is None or node.name != self.node_name:
            await self.disconnect()
            cls, options = conns._node_options(node)
            self.connection, self.node_name = cls(**options), node.name
        return self.connection

    async def pipelined(self, commands: list[tuple], key: str | None = None) -> list:
        """The replies of `commands` sent together (Redis serves them one after the other); a reply
        that is an error is raised. MOVED is followed (nothing ran); during a slot's migration the
        commands are sent with ASKING to the node importing it. `key`: the commands are about that
        key from now on (the connection moves to its master)."""
        if key is not None:
            self.key = key
        if not self.connections.cluster:
            if self.connection is None:
                self.connection = self.connections._lane_class(**self.connections._lane_options)
            return await self._send(self.connection, commands, False)
        asking = None
        for _ in range(REDIRECTS):
            temporary = asking is not None
            connection = await self._ask_connection(asking) if temporary else await self._connection()
            try:
                return await self._send(connection, commands, temporary)
            except rexc.MovedError as exc:
                asking = None
                await self.connections._learn(exc)
            except rexc.AskError as exc:
                asking = (exc.host, exc.port)
            except rexc.TryAgainError:
                asking = None
                await asyncio.sleep(0.05)
            except BaseException as exc:
                self.connections._lost(exc)
                raise
            finally:
                if temporary:
                    await connection.disconnect()
        raise rexc.ClusterError(f"{self.key}: still redirected after {REDIRECTS} tries")

    async def _ask_connection(self, address):
        node = self.connections.client.nodes_manager.get_node(host=address[0], port=address[1])
        if node is None:
            raise rexc.ClusterError(f"ASK to an unknown node {address[0]}:{address[1]}")
        cls, options = self.connections._node_options(node)
        return cls(**options)

    @staticmethod
    async def _send(connection, commands, asking: bool) -> list:
        if asking:
            commands = [c for command in commands for c in (("ASKING",), command)]
        replies = await _send_all(connection, commands)
        return replies[1::2] if asking else replies

    async def disconnect(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.disconnect()
        self.connection = None
