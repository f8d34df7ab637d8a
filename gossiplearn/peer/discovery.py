"""Peer exchange: peers tell their neighbours which peers they know, and how to dial them.

A peer-exchange message is a small msgpack map ``{"type": 2, "version": 1, "peers":
[[peer_id, [address, ...]], ...]}``. It is hostile input like any other: bounded in size,
entry count and string lengths, and checked field by field.

What a message says about third peers is hearsay: the :class:`AddressBook` keeps it under a
per-source quota, below what this peer saw first-hand, and forgets it when it does not
pan out. Peers tell others only of peers that proved useful to them (sent a valid model).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

import msgpack

from gossiplearn.errors import MalformedMessage, MessageTooLarge
from gossiplearn.protocols.codec import unpack_bounded

PX_TYPE_ID = 2
PX_VERSION = 1
MAX_PX_BYTES = 64 * 1024
MAX_PX_PEERS = 64
MAX_ADDRESSES = 8
MAX_STRING = 512


def encode_exchange(peers: Iterable[tuple[str, list[str]]]) -> bytes:
    entries = [[peer, addresses[:MAX_ADDRESSES]] for peer, addresses in peers][:MAX_PX_PEERS]
    return msgpack.packb({"type": PX_TYPE_ID, "version": PX_VERSION, "peers": entries})


def decode_exchange(data: bytes) -> list[tuple[str, list[str]]]:
    """The (peer id, addresses) entries of a peer-exchange message; WireError if invalid."""
    if len(data) > MAX_PX_BYTES:
        raise MessageTooLarge(f"peer-exchange message of {len(data)} bytes > {MAX_PX_BYTES}")
    message = unpack_bounded(
        data,
        "peer-exchange message",
        max_str_len=MAX_STRING,
        max_array_len=max(MAX_PX_PEERS, MAX_ADDRESSES, 2),
        max_map_len=4,
    )
    if not isinstance(message, dict) or message.get("type") != PX_TYPE_ID:
        raise MalformedMessage("not a peer-exchange message")
    if message.get("version") != PX_VERSION:
        raise MalformedMessage(f"unsupported peer-exchange version {message.get('version')!r}")
    peers = message.get("peers")
    if not isinstance(peers, list):
        raise MalformedMessage("peer-exchange 'peers' must be a list")
    entries = []
    for entry in peers:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], list)
            or not all(isinstance(a, str) for a in entry[1])
        ):
            raise MalformedMessage("peer-exchange entries must be [peer_id, [address, ...]]")
        entries.append((entry[0], list(entry[1])))
    return entries


#: Source of the entries this peer saw first-hand: its bootstrap list, peers it reached by
#: dialling, peers that sent it a valid model.
FIRST_HAND = ""
#: Entries one sender may have in the book; its newer entries replace its older ones.
SOURCE_QUOTA = 64
#: A hearsay entry that is never reached is forgotten after this many seconds.
HEARSAY_TTL = 600.0
#: First-hand entries are retried this many times, with doubling pauses, then forgotten;
#: a hearsay entry that cannot be dialled is forgotten at once.
MAX_FAILURES = 3
RETRY_AFTER = 30.0
#: A source whose entries failed this many times (and none was reached since) is a liar:
#: its entries are forgotten and what it says is ignored for SOURCE_BAN seconds.
SOURCE_FAILURES = 8
SOURCE_BAN = 600.0
_MAX_BANNED = 4096


@dataclass
class Entry:
    addresses: list[str]
    source: str  # FIRST_HAND, or the peer that told us
    learned: float
    failures: int = 0
    retry_at: float = 0.0
    useful: bool = False  # the peer itself sent us a valid model


class AddressBook:
    """Peers this peer has heard of, bounded in size and fair between sources.

    Invariants: one source holds at most ``quota`` entries; hearsay never replaces a
    first-hand entry or re-points a known peer's addresses; when the book is full, a new
    hearsay entry may only displace an entry of a source that holds more than its own
    (so no source can fill the book, however many identities it runs); first-hand
    entries displace hearsay first. Dead and useless entries back off, then are forgotten.
    """

    def __init__(
        self,
        own_id: str,
        capacity: int = 1024,
        *,
        quota: int = SOURCE_QUOTA,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.own_id = own_id
        self.capacity = capacity
        self.quota = quota
        self.clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._by_source: dict[str, OrderedDict[str, None]] = {}
        self._source_failures: Counter[str] = Counter()
        self._banned: OrderedDict[str, float] = OrderedDict()  # source -> until

    # ---- learning ---------------------------------------------------------------------

    def add(self, peer: str, addresses: list[str], source: str = FIRST_HAND) -> bool:
        """Remember ``peer`` as told by ``source`` (FIRST_HAND: seen ourselves); True if
        it was not known before."""
        if peer == self.own_id or not addresses or self.banned(source):
            return False
        addresses = addresses[:MAX_ADDRESSES]
        entry = self._entries.get(peer)
        if entry is not None:
            if source == FIRST_HAND:  # our own sighting beats hearsay
                entry.addresses = addresses
                self._attribute(peer, FIRST_HAND)
            return False
        if not self._make_room(source):
            return False
        self._entries[peer] = Entry(addresses, source, self.clock())
        self._by_source.setdefault(source, OrderedDict())[peer] = None
        return True

    def reached(self, peer: str) -> None:
        """A dial to ``peer`` succeeded: its address is first-hand now."""
        entry = self._entries.get(peer)
        if entry is not None:
            entry.failures, entry.retry_at = 0, 0.0
            self._source_failures.pop(entry.source, None)
            self._attribute(peer, FIRST_HAND)

    def useful(self, peer: str) -> None:
        """``peer`` sent a valid model: worth dialling first, and worth telling others of."""
        entry = self._entries.get(peer)
        if entry is not None:
            entry.useful = True
            entry.failures, entry.retry_at = 0, 0.0
            self._attribute(peer, FIRST_HAND)

    def failed(self, peer: str) -> None:
        """A dial to ``peer`` failed, or it never sent a model: back off, then forget it.
        Too many failures from one source forget and ban that source."""
        entry = self._entries.get(peer)
        if entry is None:
            return
        entry.failures += 1
        source = entry.source
        if source == FIRST_HAND and entry.failures < MAX_FAILURES:
            entry.retry_at = self.clock() + RETRY_AFTER * 2 ** (entry.failures - 1)
            return
        self.forget(peer)
        if source != FIRST_HAND:
            self._source_failures[source] += 1
            if self._source_failures[source] >= SOURCE_FAILURES:
                self._ban(source)

    def forget(self, peer: str) -> None:
        entry = self._entries.pop(peer, None)
        if entry is None:
            return
        peers = self._by_source[entry.source]
        del peers[peer]
        if not peers:
            del self._by_source[entry.source]

    def expire(self) -> None:
        """Forget hearsay older than HEARSAY_TTL that was never reached."""
        limit = self.clock() - HEARSAY_TTL
        old = [p for p, e in self._entries.items() if e.source != FIRST_HAND and e.learned < limit]
        for peer in old:
            self.forget(peer)

    def banned(self, source: str) -> bool:
        until = self._banned.get(source)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._banned[source]
        return False

    # ---- reading ----------------------------------------------------------------------

    def to_dial(self, exclude: Container[str], useful_sources: Container[str]) -> list[str]:
        """Peers worth dialling now, best first: useful ones, first-hand ones, hearsay from
        useful sources, other hearsay; newest first within each."""
        now = self.clock()

        def rank(item: tuple[str, Entry]) -> int:
            _, entry = item
            if entry.source == FIRST_HAND:
                return 0 if entry.useful else 1
            return 2 if entry.source in useful_sources else 3

        ready = [
            (peer, entry)
            for peer, entry in reversed(self._entries.items())
            if entry.retry_at <= now and peer not in exclude
        ]
        return [peer for peer, _ in sorted(ready, key=rank)]  # sorted() is stable

    def shareable(self, limit: int) -> list[tuple[str, list[str]]]:
        """What to tell others: only peers that proved useful to us, newest first."""
        useful = [(p, e.addresses) for p, e in reversed(self._entries.items()) if e.useful]
        return useful[:limit]

    def source_of(self, peer: str) -> str | None:
        entry = self._entries.get(peer)
        return None if entry is None else entry.source

    def count_from(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def addresses(self, peer: str) -> list[str]:
        entry = self._entries.get(peer)
        return [] if entry is None else entry.addresses

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, list[str]]]:
        return [(peer, entry.addresses) for peer, entry in self._entries.items()]

    # ---- bookkeeping ------------------------------------------------------------------

    def _make_room(self, source: str) -> bool:
        """Room for one more entry from ``source``; False if it may not have any."""
        own = self._by_source.get(source, ())
        if source != FIRST_HAND and len(own) >= self.quota:
            self.forget(next(iter(own)))  # a source rolls over only its own entries
            return True
        if len(self._entries) < self.capacity:
            return True
        largest = max(
            (s for s in self._by_source if s != FIRST_HAND),
            key=lambda s: len(self._by_source[s]),
            default=None,
        )
        if largest is not None and (
            source == FIRST_HAND or len(self._by_source[largest]) > len(own) + 1
        ):
            self.forget(next(iter(self._by_source[largest])))
            return True
        if source == FIRST_HAND:  # a book full of first-hand entries: the oldest goes
            self.forget(next(iter(self._entries)))
            return True
        return False

    def _attribute(self, peer: str, source: str) -> None:
        entry = self._entries[peer]
        if entry.source == source:
            return
        old = self._by_source[entry.source]
        del old[peer]
        if not old:
            del self._by_source[entry.source]
        entry.source = source
        self._by_source.setdefault(source, OrderedDict())[peer] = None

    def _ban(self, source: str) -> None:
        for peer in list(self._by_source.get(source, ())):
            self.forget(peer)
        self._source_failures.pop(source, None)
        self._banned[source] = self.clock() + SOURCE_BAN
        self._banned.move_to_end(source)
        while len(self._banned) > _MAX_BANNED:
            self._banned.popitem(last=False)


#: A neighbour (or a peer we dialled) that sent no valid model for this many of our
#: rounds, and at least GRACE_SECONDS, is dropped: with push "all" every silent
#: neighbour costs each round a whole merge timeout.
GRACE_ROUNDS = 5
GRACE_SECONDS = 5.0
#: Dials to peers from the address book in flight at once, and of them from one source.
MAX_DIALS = 4
DIALS_PER_SOURCE = 2
#: A dial that takes longer than this (or the send timeout, if shorter) has failed.
DIAL_TIMEOUT = 10.0
_MAX_TRACKED = 4096


class Usefulness:
    """Which peers help: valid models counted per sender, and when each was last heard.

    A peer's grace period starts when it becomes a neighbour (or a dialled candidate) and
    again with each valid model it sends; past it, the peer is silent and may be dropped.
    """

    def __init__(
        self,
        grace_rounds: int = GRACE_ROUNDS,
        grace_seconds: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_rounds = grace_rounds
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.models: Counter[str] = Counter()
        self._heard: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def joined(self, peer: str, round_: int) -> None:
        self._touch(peer, round_)

    def model_from(self, peer: str, round_: int) -> None:
        self.models[peer] += 1
        self._touch(peer, round_)

    def silent(self, peer: str, round_: int) -> bool:
        """True if ``peer`` sent no valid model for the whole grace period."""
        heard = self._heard.get(peer)
        if heard is None:
            return False
        since_round, since_time = heard
        return (
            round_ - since_round >= self.grace_rounds
            and self.clock() - since_time >= self.grace_seconds
        )

    def least_useful_silent(self, peers: Iterable[str], round_: int) -> str | None:
        """The silent one of ``peers`` with the fewest valid models, if any is silent."""
        silent = [p for p in peers if self.silent(p, round_)]
        return min(silent, key=lambda p: self.models[p], default=None)

    def useful(self) -> set[str]:
        return {peer for peer, count in self.models.items() if count > 0}

    def _touch(self, peer: str, round_: int) -> None:
        self._heard[peer] = (round_, self.clock())
        self._heard.move_to_end(peer)
        while len(self._heard) > _MAX_TRACKED:  # bounded whatever the number of identities
            old, _ = self._heard.popitem(last=False)
            self.models.pop(old, None)
