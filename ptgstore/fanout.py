"""New entries written straight to the pull sockets waiting on a stream, each delivery encoded once.

Without this, each pull socket's task is woken for every delivery, asks its subscription for the
entries, has them framed by the WebSocket library and sent through the ASGI send: per socket and
per delivery, a task switch and two frames serialized. A socket whose options allow it (one
stream, no acks, no `latest`, no timeout, no time sync) instead leaves a `Direct` on its
subscription: while its task waits for entries, the follower that read them writes the delivery's
frames (made once for every socket at the same cursor: server frames are not masked) to its
transport in one loop, and advances its cursor. A socket that cannot take them now (its transport's
write buffer is past the high-water mark, it is closing) or whose delivery carries a gap notice, or
whose cursor fell out of the buffer, is woken as before and served by its task, which waits for
the transport to drain: a slow socket never holds up the others and costs no memory here.
"""
from __future__ import annotations

from weakref import WeakKeyDictionary

from .framing import encode_header, pack_entries
from .wsframes import delivery_frames

# What the routes made of each hub delivery (its wire form by header codec, frames, Foxglove
# payloads), once for every socket it goes to: kept as long as the delivery itself, which the
# follower shares with every socket at the same cursor until its next read.
_made: WeakKeyDictionary = WeakKeyDictionary()


def made(delivery) -> dict:
    """The cache of what was made of `delivery` for the wire (the route side's, never the hub's)."""
    cache = _made.get(delivery)
    if cache is None:
        cache = _made[delivery] = {}
    return cache


def wire(delivery, codec: str, cache: dict | None = None) -> tuple[str | bytes, bytes]:
    """A delivery's header message (text for JSON) and blob, encoded once for every socket it goes to
    (`cache`: its `made`, when the caller has it at hand)."""
    if cache is None:
        cache = made(delivery)
    encoded = cache.get(codec)
    if encoded is None:
        header, blob = pack_entries(delivery.entries)
        raw = encode_header(header, codec)
        encoded = cache[codec] = (raw.decode() if codec == "json" else raw, blob)
    return encoded


def frames(delivery, codec: str, cache: dict | None = None) -> tuple[tuple[bytes, ...], int]:
    """A delivery's two messages as WebSocket frame bytes, made once for every socket it goes to,
    and the size of its blob (`cache` as for `wire`)."""
    if cache is None:
        cache = made(delivery)
    key = ("frames", codec)
    framed = cache.get(key)
    if framed is None:
        header, blob = wire(delivery, codec, cache)
        framed = cache[key] = (delivery_frames(header, blob), len(blob))
    return framed


class Direct:
    """How a pull socket takes deliveries without its task: frames written to its `sink` (the
    server's `serving.FrameSink`), counted with `tally(entries, bytes)`."""

    def __init__(self, sink, codec: str, count: int, tally):
        self.sink, self.codec, self.count, self.tally = sink, codec, count, tally
        self.key = ("frames", codec)  # of its frames in a delivery's `made`
        self.sent = 0  # deliveries written so

    def send(self, delivery, cache: dict | None = None) -> bool:
        """Write `delivery` now if the socket can take it; whether it did."""
        if not self.sink.ready():
            return False
        made_frames = cache.get(self.key) if cache is not None else None
        framed, size = made_frames if made_frames is not None else frames(delivery, self.codec, cache)
        self.sink.write(framed)
        self.tally(len(delivery.entries), size)
        self.sent += 1
        return True


def deliver(follower) -> None:
    """After `follower` buffered new entries: write them to its parked sockets that take them
    directly, and wake every other socket (and any that could not take them)."""
    written = set()
    # what was made of each delivery, at hand for this round (the deliveries stay in the follower's
    # `shared` meanwhile, so their ids stand for them): sockets at one cursor share one delivery
    caches: dict[int, dict] = {}
    for subscription in follower.readers:
        if subscription.parked and subscription.direct is not None:
            if _send(subscription, follower, caches):
                written.add(subscription.wake)
            else:
                subscription.parked = False  # its task serves it from here
    for waiter in follower.waiters:
        if waiter not in written:
            waiter.set()


def _send(subscription, follower, caches: dict[int, dict]) -> bool:
    """Write every delivery due up to the follower's newest entry; whether all went (else its task
    takes over from the cursor reached)."""
    if subscription.closed or len(subscription.followers) != 1 or subscription.epochs[0] != follower.epoch:
        return False
    direct = subscription.direct
    while subscription.cursors[0] < follower.newest:
        delivery = follower.delivery_after(subscription.cursors[0], direct.count)
        if delivery is None or delivery.last is None or delivery.gaps or not delivery.entries:
            return False
        cache = caches.get(id(delivery))
        if cache is None:
            cache = caches[id(delivery)] = made(delivery)
        if not direct.send(delivery, cache):
            return False
        subscription.cursors[0] = delivery.last
        subscription.fresh[0] = False
    return True
