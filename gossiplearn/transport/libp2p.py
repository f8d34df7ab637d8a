"""The libp2p transport: py-libp2p (trio) in a dedicated thread, behind an asyncio API.

How it works: :meth:`Libp2pTransport.start` runs ``trio.run`` in a thread of its own; that
thread owns the libp2p host (TCP, Noise only, yamux) and a nursery. An asyncio call
(``connect``, ``send``) is scheduled into that nursery with ``TrioToken.run_sync_soon``
and its result comes back with ``loop.call_soon_threadsafe``; cancelling the asyncio call
cancels the trio task. Every message travels on a fresh stream: the sender writes one
frame (:mod:`gossiplearn.transport.framing`) and reads a one-byte status while it writes,
so a receiver can refuse an oversize frame early; the receiver reads the frame with its
own loop (bounded size, digest check, idle timeout, a deadline for the whole frame, a
buffer that grows from a budget shared by all peers), answers, and hands the payload to
the asyncio handler as a task.

Invariants: this is the only module that imports trio or libp2p; trio objects are touched
only in the trio thread (``connected_peers`` only copies the connection table) and
asyncio objects only in the loop thread; every stream
handler is wrapped (errors are logged and the stream is reset, never silently dropped);
``stop()`` ends the thread.

py-libp2p 0.8.1 facts relied on (read in its source): ``libp2p.new_host(key_pair=,
sec_opt=, muxer_opt=, connection_config=)``; ``sec_opt={"/noise": NoiseTransport}``
replaces the default set (noise, TLS, secio, plaintext); ``muxer_opt`` with only yamux
drops the mplex fallback; ``ConnectionConfig(max_connections_per_peer=1)`` ends
``Swarm.dial_peer`` as soon as one connection is up instead of waiting 250 ms
(happy eyeballs); ``host.run(listen_addrs)`` logs a failed listen instead of raising; the
swarm's AutoConnector dials every peer in the peerstore (disabled here); yamux's reading
task writes control frames itself (deadlock, fixed by :class:`_Yamux`); yamux buffers
a DATA frame beyond its stream's receive window with only a warning, appending it to
``Yamux.stream_buffers[stream_id]`` (flow control enforced by :class:`_Yamux`); a yamux
``stream.read(n)`` returns at most what is buffered; ``read_exactly`` is never used.
For speed (see the README's transport section): Noise carries at most
``MAX_PLAINTEXT_LENGTH`` (65519) bytes a message, so writes are cut to yamux frames that
fit one; ``YamuxStream`` credits its window in ``_auto_tune_and_send_window_update``
(overridden by :class:`_YamuxStream` on inbound streams); a Noise connection's socket is
a ``TrioTCPStream`` at ``SecureSession.conn.read_writer.read_write_closer.stream``
(read ahead by :class:`_ReadAheadTCPStream`). Each class switch checks the exact type it
replaces, so another libp2p version keeps its own behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import libp2p
import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH as NOISE_MAX_PLAINTEXT
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE as YAMUX_DEFAULT_WINDOW
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE as YAMUX_HEADER_SIZE
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE as YAMUX_MAX_WINDOW
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from multiaddr import Multiaddr

from gossiplearn.errors import ConfigError
from gossiplearn.protocols.signing import CallableSigner
from gossiplearn.transport._addresses import advertised, dial_order
from gossiplearn.transport._dial_errors import chain, classify
from gossiplearn.transport._handlers import HandlerTasks
from gossiplearn.transport.base import Handler, ProtocolNotSpoken, ReceiverBusy, TransportError
from gossiplearn.transport.discovery import NetworkServices
from gossiplearn.transport.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    FrameError,
    FrameReader,
    FrameRefused,
    FrameTooLarge,
    Status,
    new_hasher,
    pack_header,
)
from gossiplearn.transport.libp2p_discovery import HostServices, is_circuit_address
from gossiplearn.transport.limits import (
    DEFAULT_DEADLINE_FLOOR,
    DEFAULT_EVICTION_GRACE,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_OPEN_STREAMS,
    DEFAULT_MIN_BYTES_PER_SECOND,
    FrameProgress,
    FrameSlots,
    InboundLimits,
)

__all__ = [
    "Libp2pTransport",
    "check_announce",
    "generate_identity",
    "load_identity",
    "peer_id_of",
]

log = logging.getLogger("gossiplearn.transport")

T = TypeVar("T")

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
#: The most bytes asked of ``stream.read`` at once (yamux returns what it has buffered).
READ_CHUNK = 16 * 2**20
#: Hash large payloads in pieces of this size, yielding to trio in between.
_HASH_PIECE = 4 * 2**20
#: Payload bytes of one stream write: a yamux DATA frame of this payload and its 12-byte
#: header is exactly one Noise transport message (65519 bytes of plaintext). Left to
#: itself yamux cuts a write into frames of 65524 payload bytes, each of which Noise sends
#: as two messages (65519 + 17 bytes): twice the encryptions, length prefixes and socket
#: writes at the sender, and twice the messages to read and decrypt at the receiver.
_FRAME_FIT = NOISE_MAX_PLAINTEXT - YAMUX_HEADER_SIZE
#: Write payloads in pieces of this size (whole frames); cancellation lands between pieces.
_WRITE_PIECE = 16 * _FRAME_FIT
#: The pieces of the untuned channel (:data:`_UNTUNED`).
_UNTUNED_PIECE = 1 * 2**20
#: Extra seconds the asyncio side waits beyond a trio-side timeout before giving up.
_GRACE = 5.0
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_ANSWER_TIMEOUT = 5.0
_INBOUND_GRACE = 2.0
#: Seconds to wait for a new connection's identify message (the protocols it speaks).
_IDENTIFY_WAIT = 2.0
#: How long a refused stream is drained so its sender reads our status before the reset
#: (a cooperating sender stops after its current write piece; others are cut off).
_DRAIN_TIMEOUT = 5.0
#: A stream waiting for a reading slot re-checks this often for frames to evict.
_SLOT_RECHECK = 1.0
_LIBP2P_LOG_LEVEL = logging.CRITICAL
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


# ---- logging ---------------------------------------------------------------------------------


def _tame_libp2p_logging() -> None:
    """Undo what ``import libp2p`` does to logging unless LIBP2P_DEBUG asks for it.

    py-libp2p turns off propagation of its ``libp2p`` logger and logs routine events
    (a peer closing a connection, a stream reset) at warning and error level. We let its
    records propagate like any library's, but only at CRITICAL by default: our own
    ``gossiplearn.transport`` logger reports every failure that matters to a peer. Lower
    it with ``logging.getLogger("libp2p").setLevel(...)`` to see libp2p's own view.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers.clear()
    libp2p_logger.propagate = True
    libp2p_logger.setLevel(_LIBP2P_LOG_LEVEL)
    # multiaddr (pulled in by libp2p) logs every address it parses at debug level
    logging.getLogger("multiaddr").setLevel(logging.WARNING)
    for name, child in list(logging.Logger.manager.loggerDict.items()):
        # some modules pin their own level (auto_connector: INFO); make them inherit
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)


_tame_libp2p_logging()


# ---- identity --------------------------------------------------------------------------------


def generate_identity(path: Path | str) -> str:
    """Write a new ed25519 private key to ``path`` (mode 0600) and return its peer id.

    Refuses to overwrite an existing file (raises :class:`ConfigError`).
    """
    path = Path(path)
    key_pair = create_new_key_pair()
    data = key_pair.private_key.serialize()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"identity file {path} already exists; refusing to overwrite it "
            "(delete it first if you really want a new peer id)"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot create identity file {path}: {error.strerror}") from error
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave half a key behind
        raise ConfigError(f"cannot write identity file {path}: {error.strerror}") from error
    os.close(fd)
    return ID.from_pubkey(key_pair.public_key).to_base58()


def load_identity(path: Path | str) -> KeyPair:
    """Read a private key written by :func:`generate_identity` (or ``gossiplearn keygen``).

    Raises :class:`ConfigError` if the file is missing, unreadable or not a key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"identity file {path} does not exist (create one with `gossiplearn keygen {path}`)"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read identity file {path}: {error.strerror}") from error
    try:
        private_key = deserialize_private_key(data)
        public_key = private_key.get_public_key()
        ID.from_pubkey(public_key)
    except Exception as error:
        raise ConfigError(
            f"identity file {path} is not a libp2p private key ({type(error).__name__}); "
            "was it written by `gossiplearn keygen`?"
        ) from error
    if path.stat().st_mode & 0o077:
        log.warning("identity file %s is readable by other users; chmod 600 it", path)
    return KeyPair(private_key, public_key)


def peer_id_of(key_pair: KeyPair) -> str:
    """The base58 peer id of ``key_pair``."""
    return ID.from_pubkey(key_pair.public_key).to_base58()


# ---- the transport ---------------------------------------------------------------------------


class _Aborted(TransportError):
    """An inbound stream ended before its frame was complete."""


class _TooSlow(TransportError):
    """An inbound frame was not complete within its deadline."""


def _deadline_text(allowed: float, reader: FrameReader) -> str:
    header = reader.header
    announced = "its header" if header is None else f"{header.length} payload bytes"
    return (
        f"frame not complete within its deadline of {allowed:.0f} s ({reader.received} bytes "
        f"of {announced} arrived); a sender this slow needs a lower "
        "min_inbound_bytes_per_second on the receiver"
    )


class _Inbound:
    """One inbound frame holding a reading slot (trio thread only)."""

    __slots__ = ("evicted", "progress", "scope")

    def __init__(self, now: float) -> None:
        self.progress = FrameProgress(started=now)
        self.scope: trio.CancelScope | None = None
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        if self.scope is not None:
            self.scope.cancel()


@dataclass(frozen=True)
class _Channel:
    """How a transport drives py-libp2p's streams. The defaults are the tuned channel;
    :data:`_UNTUNED` is the channel as it was before (kept so that benchmarks can measure
    both in one run; peers of either kind talk to each other, the wire is the same)."""

    #: Write in yamux frames that fit one Noise message each, the frame header in the
    #: first (else 1 MiB writes that yamux cuts into frames Noise splits in two).
    fit_noise: bool = True
    #: Inbound streams get a receive window the size of their admitted frame (at most
    #: yamux's 16 MiB), credited back once half of it is read (else py-libp2p's own
    #: tuning: a window update after every read, about one per 64 KB frame).
    frame_window: bool = True
    #: Read each connection's socket ahead, up to :data:`_READ_AHEAD` bytes at a time
    #: (else two or more ``recv`` calls for each Noise message: its 2-byte length, then
    #: its body).
    read_ahead: bool = True


_TUNED = _Channel()
_UNTUNED = _Channel(fit_noise=False, frame_window=False, read_ahead=False)


class _Call:
    """One asyncio -> trio call. Its fields are touched only in the trio thread."""

    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Libp2pTransport:
    """A :class:`~gossiplearn.transport.base.Transport` over py-libp2p (TCP, Noise, yamux).

    ``identity`` is a key file from :func:`generate_identity` (same file, same peer id);
    without it (and without ``key_pair``) the peer gets a fresh random identity.
    ``listen`` is one multiaddr or several; ``announce`` the addresses others should
    dial (behind NAT or in a cloud, the public ones): given, :attr:`addresses` lists them
    instead of the listening ones (each gets ``/p2p/<peer id>``). Sizes are bytes, timeouts
    seconds: ``connect_timeout`` bounds a dial, ``open_timeout`` the opening of a stream
    (dialling first if there is no connection), so that an unreachable peer fails fast;
    ``send_timeout`` one whole send (stream opening, payload, acknowledgement);
    ``read_timeout`` each read of an inbound stream.

    Inbound resource limits: at most ``max_inbound_streams`` frames are read at once, at
    most ``max_reading_per_peer`` of them from one peer (others wait, holding no more than
    the muxer's flow-control window); a peer with ``max_inbound_per_peer`` streams open
    (reading or waiting) has more refused at once; and each peer may push
    ``max_bytes_per_peer_per_second`` payload bytes per second on average (None:
    unlimited), refused from the frame header, before the payload is buffered.

    Limits that hold across identities (a new peer id costs nothing): at most
    ``max_open_inbound`` inbound streams are open at once from all peers together;
    unfinished frames together buffer at most ``max_buffered_bytes`` (None: twice
    ``max_frame_bytes``, at least 256 MiB), their buffers growing as bytes arrive, never
    from what a header announces, and yamux's receive buffers of all connections together
    as much again (the connection holding the most is closed); a frame must be complete within
    ``max(frame_deadline_floor, length / min_inbound_bytes_per_second)`` seconds of
    getting its reading slot; and when every slot is taken, a newcomer takes the slot of
    a frame that has fallen behind that minimum rate (after ``eviction_grace`` seconds).

    Refusals are counted by reason (:meth:`rejected_counts`: ``TooManyStreams``,
    ``TooManyFrames``, ``ReadersBusy``, ``RateLimited``, ``BufferFull``,
    ``FrameDeadline``, ``SlowFrameEvicted``, ``StreamIdle``, ``FrameTooLarge``,
    ``CorruptFrame``, and ``WindowExceeded``: a connection closed because its peer sent
    beyond a yamux receive window, opened too many streams, left too many control frames
    unread or held the most yamux bytes when all connections passed their shared cap);
    a sender refused for load gets :class:`~gossiplearn.transport.base.ReceiverBusy`, so
    it can tell busy from broken.
    """

    def __init__(
        self,
        identity: Path | str | None = None,
        *,
        key_pair: KeyPair | None = None,
        listen: str | Sequence[str] = DEFAULT_LISTEN,
        announce: Sequence[str] = (),
        open_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connect_timeout: float = 10.0,
        send_timeout: float = 120.0,
        read_timeout: float = 30.0,
        max_inbound_streams: int = 32,
        max_inbound_per_peer: int = 32,
        max_reading_per_peer: int = 4,
        max_bytes_per_peer_per_second: float | None = None,
        max_open_inbound: int = DEFAULT_MAX_OPEN_STREAMS,
        max_buffered_bytes: int | None = None,
        min_inbound_bytes_per_second: float = DEFAULT_MIN_BYTES_PER_SECOND,
        frame_deadline_floor: float = DEFAULT_DEADLINE_FLOOR,
        eviction_grace: float = DEFAULT_EVICTION_GRACE,
        services: NetworkServices | None = None,
    ) -> None:
        if identity is not None and key_pair is not None:
            raise ConfigError("give either an identity file or a key_pair, not both")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("open_timeout", open_timeout),
            ("send_timeout", send_timeout),
            ("read_timeout", read_timeout),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value}")
        if max_frame_bytes < 0 or max_inbound_streams < 1:
            raise ConfigError("max_frame_bytes must be >= 0 and max_inbound_streams >= 1")
        if identity is not None:
            key_pair = load_identity(identity)
        self._key_pair = key_pair or create_new_key_pair()
        self._peer_id = peer_id_of(self._key_pair)
        self._listen = _tcp_addresses([listen] if isinstance(listen, str) else list(listen))
        suffix = f"/p2p/{self._peer_id}"
        self._announce = [_with_suffix(check_announce(a), suffix) for a in announce]
        self.open_timeout = open_timeout
        self.max_frame_bytes = max_frame_bytes
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.read_timeout = read_timeout
        self.max_inbound_streams = max_inbound_streams
        if max_buffered_bytes is None:
            max_buffered_bytes = max(DEFAULT_MAX_BUFFERED_BYTES, 2 * max_frame_bytes)
        if max_buffered_bytes < max_frame_bytes:
            raise ConfigError(
                f"max_buffered_bytes ({max_buffered_bytes}) must be >= max_frame_bytes "
                f"({max_frame_bytes}), or no frame of the largest size could ever arrive"
            )
        if eviction_grace < 0:
            raise ConfigError(f"eviction_grace must be >= 0 seconds, got {eviction_grace}")
        self.limits = InboundLimits(
            max_inbound_per_peer,
            max_bytes_per_peer_per_second,
            max_open_streams=max_open_inbound,
            max_buffered_bytes=max_buffered_bytes,
            min_bytes_per_second=min_inbound_bytes_per_second,
            deadline_floor=frame_deadline_floor,
        )
        self.eviction_grace = eviction_grace
        #: Frames being read, all peers together (trio thread only).
        self._slots: FrameSlots[_Inbound] = FrameSlots(max_inbound_streams)
        self._slot_freed: trio.Event | None = None
        if max_reading_per_peer < 1:
            raise ConfigError(f"max_reading_per_peer must be >= 1, got {max_reading_per_peer}")
        self.max_reading_per_peer = max_reading_per_peer
        #: sender -> its limiter of frames read at once (trio thread only; dropped when the
        #: sender has no stream open).
        self._reading: dict[str, trio.CapacityLimiter] = {}
        self._handlers: dict[str, Handler] = {}
        self._handler_tasks = HandlerTasks()
        self._addresses: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Future[list[str]] | None = None
        self._finished: asyncio.Future[None] | None = None
        # Set in the trio thread; the token is then read from the loop thread.
        self._token: trio.lowlevel.TrioToken | None = None
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_requested: trio.Event | None = None
        self._listening = False  # set in the trio thread once the host listens
        self._running = False
        #: Discovery and NAT traversal (DHT, mDNS, relay, AutoNAT, DCUtR), if asked for.
        self.services = services
        self._services: HostServices | None = None
        #: peer -> the address a dial of ours last reached it at (trio thread only).
        self._worked: dict[ID, Multiaddr] = {}
        #: How streams are written and windowed (benchmarks set :data:`_UNTUNED`).
        self._channel = _TUNED

    # ---- the Transport interface -------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """The base58 peer id derived from this transport's key (known before start)."""
        return self._peer_id

    @property
    def addresses(self) -> list[str]:
        """The addresses others should dial, each ending in ``/p2p/<peer id>``: the
        ``announce`` addresses if given, else the listening ones, wildcards expanded to
        this machine's usable addresses (empty until started); then our relayed addresses
        through relays that hold a reservation for us."""
        services = self._services
        relayed = services.circuit_addresses() if services is not None else []
        return [*(self._announce or self._addresses), *relayed]

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Deliver inbound messages on ``protocol`` to ``handler``."""
        new = protocol not in self._handlers
        self._handlers[protocol] = handler
        if new and self._running and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._register_protocol, protocol)

    async def start(self) -> None:
        """Start the libp2p host in its thread and listen; raises TransportError."""
        if self._running:
            return
        if self._thread is not None:
            raise TransportError("a Libp2pTransport cannot be restarted; create a new one")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ready = loop.create_future()
        self._finished = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"gossiplearn-libp2p-{self._peer_id[-8:]}", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                self._addresses = await self._ready
        except BaseException as error:
            self._request_stop()
            await self._join()
            if isinstance(error, TimeoutError):
                raise TransportError(
                    f"libp2p host did not start within {_START_TIMEOUT} s"
                ) from None
            raise
        self._running = True
        log.info("libp2p transport %s listening on %s", self._peer_id, ", ".join(self._addresses))
        if self._announce:
            log.info("announcing %s", ", ".join(self._announce))
        elif not self._addresses:
            log.warning(
                "listening on %s, but this machine has no address others can dial there "
                "(only link-local or none); give --announce with a reachable address",
                self._listen_text(),
            )

    async def stop(self) -> None:
        """Close every connection, end the trio thread, cancel running handlers; idempotent."""
        if self._thread is None:
            return
        self._running = False
        await self._handler_tasks.cancel_all()
        self._request_stop()
        await self._join()

    async def connect(self, address: str) -> str:
        """Dial ``address`` (a multiaddr ending in /p2p/<peer id>); return the peer id."""
        return await self._call(self._trio_connect, address, timeout=self.connect_timeout)

    async def send(self, peer: str, protocol: str, payload: bytes) -> None:
        """Deliver ``payload`` to ``peer`` on ``protocol``, acknowledged by the receiver.

        Raises TransportError if the peer is unreachable, refuses the frame, or the whole
        exchange takes longer than ``send_timeout``.
        """
        if len(payload) > self.max_frame_bytes:
            raise FrameTooLarge(len(payload), self.max_frame_bytes)
        await self._call(self._trio_send, peer, protocol, payload, timeout=self.send_timeout)

    def signer(self) -> CallableSigner:
        """Signs records with this transport's private key, as its peer id."""
        return CallableSigner(self._peer_id, self._key_pair.private_key.sign)

    def rejected_counts(self) -> dict[str, int]:
        """Inbound frames and streams refused so far, by reason (any thread may ask)."""
        return self.limits.rejected_counts()

    async def speaks(self, peer: str, protocol: str) -> bool | None:
        """Whether a connected ``peer`` speaks ``protocol``, as its identify message says
        (waited for up to 2 s after the connection opened); None if unknown."""
        return await self._call(self._trio_speaks, peer, protocol, timeout=_IDENTIFY_WAIT + 1)

    def connected_peers(self) -> list[str]:
        """Peers with at least one open connection."""
        host = self._host
        if host is None or not self._running:
            return []
        connections = list(host.get_network().connections.items())
        return sorted(peer.to_base58() for peer, conns in connections if conns)

    def discovered(self) -> list[tuple[str, list[str], str]]:
        """Peers found by the DHT or mDNS since the last call: (peer id, addresses,
        source); empty without discovery services."""
        services = self._services
        return services.drain_found() if services is not None else []

    def network_status(self) -> dict[str, Any]:
        """Reachability (AutoNAT), relay reservations, connection kinds (direct or
        relayed) and bytes over relayed connections; empty without the services."""
        services = self._services
        if services is None:
            return {}
        snapshot = services.snapshot
        return {
            "reachability": snapshot.reachability,
            "reservations": dict(snapshot.reservations),
            "connections": dict(snapshot.connections),
            "dht_peers": snapshot.dht_peers,
            "upgraded": list(snapshot.upgraded),
            "dcutr": dict(snapshot.dcutr),
            "relaying": snapshot.relaying,
            "relayed_bytes_in": services.counts["relayed_bytes_in"],
            "relayed_bytes_out": services.counts["relayed_bytes_out"],
        }

    def relay_routes(self, peer: str) -> list[str]:
        """Addresses of ``peer`` through the relays we know (it may hold a slot there)."""
        services = self._services
        return services.relay_routes(peer) if services is not None else []

    # ---- the asyncio side of the bridge ----------------------------------------------------

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any, timeout: float) -> T:
        """Run ``function(*args)`` in the trio thread; its result or error comes back here."""
        token, loop = self._token, self._loop
        if not self._running or token is None or loop is None:
            raise TransportError("the libp2p transport is not running (call start() first)")
        future: asyncio.Future[T] = loop.create_future()
        call = _Call()
        try:
            token.run_sync_soon(self._spawn_call, call, future, function, args)
        except trio.RunFinishedError:
            raise TransportError("the libp2p transport has stopped") from None
        try:
            async with asyncio.timeout(timeout + _GRACE):
                return await future
        except TimeoutError:
            raise TransportError(f"no answer from the libp2p thread within {timeout} s") from None
        finally:
            # A cancelled await cancels ``future`` too: in both cases the trio task is
            # still running and must be told to stop.
            if not future.done() or future.cancelled():
                future.cancel()
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(call.cancel)

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        """From the trio thread: complete ``future`` in the loop thread."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_complete, future, result, error)

    def _deliver(self, protocol: str, sender: str, payload: bytes) -> None:
        """In the loop thread: start the handler of an inbound message as a task."""
        handler = self._handlers.get(protocol)
        if not self._running:
            log.info("dropped a message from %s on %s: stopping", sender, protocol)
            return
        if handler is None:
            log.warning("dropped a message from %s on %s: no handler", sender, protocol)
            return
        self._handler_tasks.spawn(handler, sender, protocol, payload)

    def _request_stop(self) -> None:
        token, event = self._token, self._stop_requested
        if token is None or event is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(event.set)

    async def _join(self) -> None:
        thread, finished = self._thread, self._finished
        if thread is None or finished is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await asyncio.shield(finished)
        except TimeoutError:
            log.error("libp2p thread of %s did not stop within %s s", self._peer_id, _STOP_TIMEOUT)
            return
        thread.join(timeout=1.0)

    # ---- the trio thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as error:
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            if isinstance(error, TransportError):
                failure = error
            else:
                detail = _describe(error)
                failure = TransportError(f"libp2p on {self._listen_text()} failed: {detail}")
            # before start() returned, the error goes to its caller; after, only to the log
            level = logging.ERROR if self._listening else logging.DEBUG
            log.log(level, "libp2p transport %s: %s", self._peer_id, failure)
            if self._ready is not None:
                self._settle(self._ready, None, failure)
        finally:
            self._host = None
            self._nursery = None
            if self._finished is not None:
                self._settle(self._finished, None, None)

    async def _trio_main(self) -> None:
        self._stop_requested = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._slot_freed = trio.Event()
        host = libp2p.new_host(
            key_pair=self._key_pair,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    self._key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},  # yamux only, no mplex
            connection_config=ConnectionConfig(
                # one connection per peer: dial_peer returns at once instead of waiting
                # 250 ms for a second (happy-eyeballs) connection
                max_connections_per_peer=1,
                dial_timeout=self.connect_timeout,
                # the Peer chooses its neighbours: no background dialing to a quota
                min_connections=0,
                low_watermark=0,
            ),
            # what identify, the DHT and AutoNAT tell others: never a wildcard
            addrs_factory=self._addresses_to_tell,
        )
        _disable_auto_dial(host)
        _use_fixed_yamux(
            host,
            read_ahead=self._channel.read_ahead,
            refused=self._refuse_peer,
            own_windows=self._channel.frame_window,
            max_buffered=_max_buffered(self.max_reading_per_peer),
            shared=_SharedBuffers(self.limits.buffer.limit),
        )
        self._host = host
        for protocol in list(self._handlers):
            self._register_protocol(protocol)
        async with host.run(listen_addrs=self._listen):
            # host.run logs a failed listen (port taken, address not local) and goes on
            if len(host.get_transport_addrs()) < len(self._listen):
                raise TransportError(
                    f"cannot listen on {self._listen_text()} "
                    "(port already in use, or not an address of this machine?)"
                )
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.services is not None:
                        self._services = HostServices(host, self.services)
                        await nursery.start(self._services.run)
                    self._listening = True
                    assert self._ready is not None
                    suffix = f"/p2p/{self._peer_id}"
                    listening = advertised(host.get_transport_addrs())
                    self._settle(self._ready, [f"{a}{suffix}" for a in listening], None)
                    await self._stop_requested.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._nursery = None
                with trio.move_on_after(_STOP_TIMEOUT) as scope:
                    scope.shield = True
                    await host.close()

    def _addresses_to_tell(self, candidates: list[Multiaddr]) -> list[Multiaddr]:
        """In the trio thread: the addresses ``host.get_addrs()`` gives others (our
        ``announce`` ones if given; else the listening ones, wildcards expanded)."""
        if self._announce:
            return [Multiaddr(a) for a in self._announce]
        return advertised(candidates)

    def _prepare_dial(self, peer: ID, first: Multiaddr | None = None) -> None:
        """In the trio thread, before a dial: put ``first`` (else the address that last
        worked) first among the peer's known addresses, and drop wildcards."""
        host = self._host
        assert host is not None
        store = host.get_peerstore()
        try:
            known = store.addrs(peer)
        except Exception:  # PeerStoreError: never heard of it, or its entry expired
            known = []
        ordered = dial_order(known, first or self._worked.get(peer))
        if ordered != known:
            store.clear_addrs(peer)
            store.add_addrs(peer, ordered, 0)  # 0: keep them

    def _spawn_call(
        self,
        call: _Call,
        future: asyncio.Future[Any],
        function: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        """In the trio thread (must not raise): start one bridged call in the nursery."""
        try:
            if self._nursery is None:
                raise RuntimeError("no nursery")
            self._nursery.start_soon(self._run_call, call, future, function, args)
        except RuntimeError:  # no nursery yet, or it is closing
            self._settle(future, None, TransportError("the libp2p transport has stopped"))

    async def _run_call(
        self,
        call: _Call,
        future: asyncio.Future[Any],
        function: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        with trio.CancelScope() as scope:
            call.scope = scope
            if call.cancelled:
                scope.cancel()
            try:
                result = await function(*args)
            except TransportError as error:
                self._settle(future, None, error)
            except Exception as error:
                failure = TransportError(_describe(error))
                failure.__cause__ = error
                self._settle(future, None, failure)
            except BaseException as error:
                # A call cancelled while a shielded write fails raises a group of both:
                # the failure settles the call, only the cancellation goes on (re-raising
                # the whole group would end the host's nursery: the transport would die).
                cancelled, rest = _split_cancelled(error)
                text = "the libp2p transport is stopping" if rest is None else _describe(rest)
                self._settle(future, None, TransportError(text))
                if cancelled is not None:
                    raise cancelled from None
            else:
                self._settle(future, result, None)

    def _register_protocol(self, protocol: str) -> None:
        """In the trio thread: accept streams on ``protocol``."""
        if self._host is None:
            return

        async def handle(stream: INetStream) -> None:
            # libp2p swallows a handler's exception and leaves the stream open: every
            # failure is handled here, logged, and the stream reset.
            try:
                await self._serve_stream(protocol, stream)
            except TransportError as error:
                log.warning("inbound %s stream failed: %s", protocol, error)
                await _reset(stream)
            except Exception:
                log.exception("inbound %s stream failed unexpectedly", protocol)
                await _reset(stream)
            except BaseException as error:  # trio.Cancelled: the transport is stopping
                await _reset(stream)
                cancelled, rest = _split_cancelled(error)  # as in _run_call
                if rest is not None:
                    log.warning("inbound %s stream failed: %s", protocol, _describe(rest))
                if cancelled is not None:
                    raise cancelled from None

        self._host.set_stream_handler(TProtocol(protocol), handle)

    async def _trio_connect(self, address: str) -> str:
        if self._services is not None and is_circuit_address(address):
            return await self._services.dial_circuit(address)
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as error:
            raise TransportError(
                f"invalid peer address {address!r}: {error} "
                "(expected e.g. /ip4/1.2.3.4/tcp/4001/p2p/<peer id>)"
            ) from None
        if info.peer_id.to_base58() == self._peer_id:
            raise TransportError("cannot connect to ourselves")
        host = self._host
        assert host is not None
        network = host.get_network()
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:  # an explicit dial retries a peer that failed recently
            unblock(info.peer_id)
        fresh = not network.get_connections(info.peer_id)
        self._prepare_dial(info.peer_id, info.addrs[0] if info.addrs else None)
        try:
            with trio.fail_after(self.connect_timeout):
                await host.connect(info)
        except trio.TooSlowError:
            raise TransportError(
                f"cannot connect to {address}: timed out after {self.connect_timeout} s: "
                f"{_explain(TimeoutError())}"
            ) from None
        except Exception as error:
            raise TransportError(f"cannot connect to {address}: {_explain(error)}") from error
        host.get_peerstore().add_addrs(info.peer_id, info.addrs, 0)  # 0: keep them
        if fresh and info.addrs:  # a dial of ours reached it there
            self._worked[info.peer_id] = info.addrs[0]
        if self._services is not None:
            self._services.note_connected(address)
        return info.peer_id.to_base58()

    async def _trio_speaks(self, peer: str, protocol: str) -> bool | None:
        host = self._host
        assert host is not None
        with contextlib.suppress(Exception), trio.move_on_after(_IDENTIFY_WAIT):
            peer_id = ID.from_base58(peer)
            while True:
                with contextlib.suppress(Exception):
                    protocols = host.get_peerstore().get_protocols(peer_id)
                    if protocols:
                        return protocol in protocols
                await trio.sleep(0.05)
        return None

    async def _trio_send(self, peer: str, protocol: str, payload: bytes) -> None:
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            raise TransportError(f"invalid peer id {peer!r}") from None
        host = self._host
        assert host is not None
        opening: trio.CancelScope | None = None
        try:
            with trio.fail_after(self.send_timeout):
                header = await _header(payload, self.max_frame_bytes)
                network = host.get_network()
                unblock = getattr(network, "unblock_peer", None)
                if not network.get_connections(peer_id):
                    self._prepare_dial(peer_id)
                    if unblock is not None:
                        unblock(peer_id)  # our own backoff decides when to retry a peer
                with trio.fail_after(self.open_timeout) as opening:
                    await _await_inbound_connection(host, peer_id)
                    stream = await host.new_stream(peer_id, [TProtocol(protocol)])
                try:
                    status = await _exchange(
                        stream, header, payload, self.read_timeout, self._channel.fit_noise
                    )
                except BaseException:
                    await _reset(stream)
                    raise
                if status is Status.OK:
                    await _close(stream)
                else:
                    await _reset(stream)
        except trio.TooSlowError:
            if opening is not None and opening.cancelled_caught:  # the peer never answered
                # A connection that cannot open a stream is dead or stuck behind TCP's
                # retransmission backoff (a partition): close it, so that the next try
                # dials afresh and traffic resumes as soon as the network heals.
                with trio.move_on_after(_ANSWER_TIMEOUT) as closing:
                    closing.shield = True
                    with contextlib.suppress(Exception):
                        await host.get_network().close_peer(peer_id)
                raise TransportError(
                    f"cannot open a stream to {peer} within {self.open_timeout} s: "
                    f"{_explain(TimeoutError())}"
                ) from None
            raise TransportError(
                f"sending to {peer} timed out after {self.send_timeout} s"
            ) from None
        except TransportError:
            raise
        except Exception as error:
            failure = classify(error)
            kind = ProtocolNotSpoken if failure and failure.kind == "protocol" else TransportError
            raise kind(f"sending to {peer} failed: {_explain(error)}") from error
        if status is Status.BUSY:
            raise ReceiverBusy(f"{peer} {status.describe()}")
        if status is not Status.OK:
            raise TransportError(f"{peer} {status.describe()}")

    async def _serve_stream(self, protocol: str, stream: INetStream) -> None:
        sender = stream.muxed_conn.peer_id.to_base58()
        if self._channel.frame_window:
            _own_window(stream)
        if not self.limits.open_stream(sender):
            log.info("refused a %s stream from %s: too many at once", protocol, sender)
            await self._refuse(stream, Status.BUSY)
            return
        try:
            reading = self._reading.get(sender)
            if reading is None:
                reading = self._reading[sender] = trio.CapacityLimiter(self.max_reading_per_peer)
            async with reading:
                outcome = await self._receive_frame(protocol, sender, stream)
            if isinstance(outcome, Status):  # drained outside the slots, still counted open
                await self._refuse(stream, outcome)
        finally:
            self.limits.close_stream(sender)
            if sender not in self.limits.streams:
                self._reading.pop(sender, None)
        if not isinstance(outcome, bytes):
            return
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._deliver, protocol, sender, outcome)
        except RuntimeError:
            log.warning("dropped a message from %s: the event loop is closed", sender)
            await _reset(stream)
            return
        await _answer(stream, Status.OK)
        await _close(stream)

    async def _receive_frame(
        self, protocol: str, sender: str, stream: INetStream
    ) -> bytes | Status | None:
        """Read one frame within the limits: its payload, the status to refuse it with
        (the caller drains the stream), or None if the stream is already answered or reset."""

        def admit(length: int) -> None:
            if not self.limits.admit_bytes(sender, length, trio.current_time()):
                raise FrameRefused(f"{sender} is over its rate of bytes per second", "RateLimited")

        inbound = _Inbound(trio.current_time())
        if not await self._enter_slot(inbound):
            self.limits.reject("ReadersBusy")
            log.info("refused a %s frame from %s: every reading slot is busy", protocol, sender)
            return Status.BUSY
        reader = FrameReader(self.max_frame_bytes, admit, self.limits)
        try:
            with trio.CancelScope() as scope:
                inbound.scope = scope
                if inbound.evicted:
                    scope.cancel()
                return await self._read_frame(stream, reader, inbound.progress)
            # cancelled by _enter_slot of another stream: this frame fell behind schedule
            log.info("evicted a slow %s frame from %s", protocol, sender)
            await _answer(stream, Status.BUSY)
            await _reset(stream)
        except _Aborted as error:  # e.g. the sender timed out or was cancelled
            log.info("inbound %s stream from %s ended early: %s", protocol, sender, error)
            await _reset(stream)
        except _TooSlow as error:  # a trickle: answer, and waste no more time on it
            log.info("dropped a %s frame from %s: %s", protocol, sender, error)
            await _answer(stream, Status.BUSY)
            await _reset(stream)
        except FrameRefused as error:
            log.info("refused a frame from %s on %s: %s", sender, protocol, error)
            return Status.BUSY
        except FrameTooLarge as error:
            self.limits.reject("FrameTooLarge")
            log.warning("refused a frame from %s on %s: %s", sender, protocol, error)
            return Status.TOO_LARGE
        except FrameError as error:
            self.limits.reject("CorruptFrame")
            log.warning("dropped a frame from %s on %s: %s", sender, protocol, error)
            return Status.CORRUPT
        finally:
            reader.discard()  # gives its buffered bytes back to the shared budget
            self._leave_slot(inbound)
        return None

    async def _enter_slot(self, inbound: _Inbound) -> bool:
        """Take a reading slot for ``inbound``: a free one, or that of a frame behind
        schedule (evicted); wait at most the deadline floor. False if none came."""
        with trio.move_on_after(self.limits.deadline_floor):
            while True:
                now = trio.current_time()
                inbound.progress.started = now  # the frame's clock starts with its slot
                if self._slots.try_enter(inbound, inbound.progress):
                    return True
                victim = self._slots.most_behind(
                    now, self.limits.min_bytes_per_second, self.eviction_grace
                )
                if victim is not None:
                    self._slots.evict(victim, inbound, inbound.progress)
                    self.limits.reject("SlowFrameEvicted")
                    victim.evict()
                    return True
                freed = self._slot_freed
                assert freed is not None
                with trio.move_on_after(_SLOT_RECHECK):  # frames fall behind as time passes
                    await freed.wait()
        return False

    def _leave_slot(self, inbound: _Inbound) -> None:
        if inbound in self._slots.active:
            self._slots.leave(inbound)
            freed, self._slot_freed = self._slot_freed, trio.Event()
            if freed is not None:
                freed.set()

    async def _read_frame(
        self, stream: INetStream, reader: FrameReader, progress: FrameProgress
    ) -> bytes:
        while True:
            header = reader.header
            allowed = self.limits.deadline(None if header is None else header.length)
            left = progress.started + allowed - trio.current_time()
            wait = min(self.read_timeout, left)
            try:
                if wait <= 0:
                    raise trio.TooSlowError
                with trio.fail_after(wait):
                    chunk = await stream.read(min(reader.wanted, READ_CHUNK))
            except StreamError:  # EOF, reset, or the connection broke
                chunk = b""
            except trio.TooSlowError:
                if wait < self.read_timeout:
                    self.limits.reject("FrameDeadline")
                    raise _TooSlow(_deadline_text(allowed, reader)) from None
                self.limits.reject("StreamIdle")
                raise TransportError(f"inbound stream idle for {self.read_timeout} s") from None
            if not chunk:
                raise _Aborted(
                    f"the sender closed or reset the stream after {reader.received} bytes"
                )
            payloads = reader.feed(chunk)
            if payloads:
                return payloads[0]
            progress.received = reader.received
            if header is None and reader.header is not None:  # admitted: size its window
                await _widen_window(stream, HEADER_SIZE + reader.header.length)

    async def _refuse(self, stream: INetStream, status: Status) -> None:
        """Answer ``status``, then discard what the sender still pushes until it stops
        (for a few seconds at most: a sender that ignores the answer is cut off)."""
        await _answer(stream, status)
        with trio.move_on_after(min(self.read_timeout, _DRAIN_TIMEOUT)):
            try:
                while await stream.read(READ_CHUNK):
                    pass
            except Exception:
                pass
        await _reset(stream)

    def _refuse_peer(self, peer: ID, reason: str) -> None:
        """In the trio thread: a peer broke yamux flow control; its connection is closed."""
        self.limits.reject("WindowExceeded")
        log.warning("closed the connection of %s: it %s", peer.to_base58(), reason)

    def _listen_text(self) -> str:
        return ", ".join(str(address) for address in self._listen)


def _tcp_addresses(addresses: list[str]) -> list[multiaddr.Multiaddr]:
    """Parse listen addresses; only plain TCP (``/ip4|ip6|dns*/<host>/tcp/<port>``) is
    accepted, so every connection is secured by Noise (QUIC or WebSocket listeners would
    bring their own security stacks)."""
    if not addresses:
        raise ConfigError("give at least one listen address, e.g. /ip4/0.0.0.0/tcp/4001")
    parsed = []
    for address in addresses:
        try:
            value = multiaddr.Multiaddr(address)
            names = [protocol.name for protocol in value.protocols()]
        except Exception as error:
            raise ConfigError(f"invalid listen address {address!r}: {error}") from error
        if len(names) != 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
            raise ConfigError(
                f"unsupported listen address {address!r}: use /ip4/<host>/tcp/<port> "
                "(or /ip6/...); only TCP with Noise is enabled"
            )
        parsed.append(value)
    return parsed


# ---- helpers (trio thread) -------------------------------------------------------------------


def _use_fixed_yamux(
    host: IHost,
    read_ahead: bool = True,
    refused: Callable[[ID, str], None] | None = None,
    own_windows: bool = True,
    max_buffered: int = 0,
    shared: _SharedBuffers | None = None,
) -> None:
    """Make every yamux connection of ``host`` a :class:`_Yamux` (``refused`` is told of
    each one closed for breaking flow control; with ``own_windows`` its inbound streams
    are :class:`_YamuxStream` from their first frame, it buffers at most ``max_buffered``
    bytes, and all of them together what ``shared`` allows) and, with ``read_ahead``, its
    TCP stream a :class:`_ReadAheadTCPStream`.

    ``MuxerMultistream.new_conn`` in 0.8.1 builds ``Yamux`` itself whatever class
    ``muxer_opt`` names, so the new connection's class is switched right after it is
    built, before it starts (same layout: only two methods differ).
    """
    multistream = getattr(getattr(host.get_network(), "upgrader", None), "muxer_multistream", None)
    if multistream is None:
        log.warning("cannot install the yamux deadlock fix: libp2p internals changed")
        return
    build = multistream.new_conn

    async def new_conn(conn: Any, peer_id: ID) -> Any:
        muxed = await build(conn, peer_id)
        if type(muxed) is Yamux:
            muxed.__class__ = _Yamux
            assert isinstance(muxed, _Yamux)
            if own_windows:
                muxed._guard(refused, own_windows, max_buffered, shared)
            else:
                muxed._guard(refused, own_windows)
        if read_ahead:
            _read_ahead(conn)
        return muxed

    setattr(multistream, "new_conn", new_conn)  # noqa: B010 (this instance only)


#: Bytes a connection's socket is read ahead (a few Noise messages).
_READ_AHEAD = 256 * 2**10


def _read_ahead(secured: Any) -> None:
    """Switch the TCP stream under a Noise connection (0.8.1: ``SecureSession.conn``
    -> ``NoisePacketReadWriter`` -> ``RawConnection.stream``) to a
    :class:`_ReadAheadTCPStream`; anything else is left as it is."""
    noise = getattr(secured, "conn", None)
    packets = getattr(noise, "read_writer", None)
    raw = getattr(packets, "read_write_closer", None)
    tcp = getattr(raw, "stream", None)
    if type(tcp) is TrioTCPStream:
        tcp.__class__ = _ReadAheadTCPStream


class _ReadAheadTCPStream(TrioTCPStream):
    """A py-libp2p 0.8.1 TCP stream that reads its socket ahead.

    Noise reads each message with two exact reads (its 2-byte length, then up to 65535
    bytes of body), each a ``recv`` call and a trip through trio's scheduler. Here a
    short read asks the socket for up to :data:`_READ_AHEAD` bytes and keeps the rest
    for the next reads, which then need no system call. Bytes come out exactly as they
    came in; only the connection's reading task reads, so nothing else sees the buffer.
    A read from the buffer yields to trio as a socket read does (the tasks the last frame
    woke run first), so the order in which streams see their data is unchanged.
    """

    _ahead: bytes = b""
    _at: int = 0

    async def read(self, n: int | None = None) -> bytes:
        if self._at < len(self._ahead) and n != 0:
            # yield as a socket read does, so that the tasks this connection's last frame
            # woke run before the next frame is handled (a reader must see the data a
            # stream received before the reset that may follow it)
            await trio.lowlevel.checkpoint()
        ahead, at = self._ahead, self._at
        if at < len(ahead) and n != 0:
            end = len(ahead) if n is None else min(len(ahead), at + n)
            self._at = end
            if end == len(ahead):
                self._ahead, self._at = b"", 0
            return ahead[at:end]
        if n is None or n <= 0 or n >= _READ_AHEAD:
            return await super().read(n)
        data = await super().read(_READ_AHEAD)
        if len(data) > n:
            self._ahead, self._at = data, n
            return data[:n]
        return data


class _Yamux(Yamux):
    """py-libp2p 0.8.1 yamux whose reading task never waits to write.

    Upstream, the task that reads a connection (``handle_incoming``) writes the ACK of a
    new stream, a pong or a RST itself, under the connection's write lock. When both
    peers push bulk data at once (two neighbours exchanging models) each writer can hold
    its lock blocked in a full TCP send buffer while each reader waits for that lock to
    answer the other side: neither reads, and the connection deadlocks (measured: 10
    concurrent 2 MB sends each way on one connection). Here those control frames are
    queued to a writer task of their own, so the reading task always keeps reading and
    the other side's writes always drain. The frames on the wire are unchanged.

    Flow control is enforced (:meth:`_guard`). Upstream, a DATA frame beyond its stream's
    receive window only logs a warning and is buffered all the same, as is data on a
    stream already reset or half-closed by the peer, and a peer may open any number of
    streams, each buffering a window before anyone reads it: memory a hostile peer fills
    outside the transport's shared byte budget. Here a frame longer than every window of
    the connection is refused before its body is read, a frame beyond its stream's window
    before it is buffered, and so is a stream beyond :data:`_MAX_INBOUND_STREAMS` (one the
    peer closed or reset counts while it holds bytes: upstream keeps it a minute or more)
    and a byte beyond what an honest peer can make the connection hold
    (:func:`_max_buffered`) or, while this connection holds the most, beyond what all
    connections of the host may hold together (:class:`_SharedBuffers`): the connection
    is closed at once, every byte it buffered
    freed, and the transport told once. Data on a stream that is closed or reset is
    dropped (an honest sender may have it in flight when our reset leaves), its window
    still charged. The queue of control frames holds at most :data:`_MAX_CONTROL_FRAMES`
    (a peer that pings but never reads the pongs breaks the connection too).
    """

    _reader_task: trio.lowlevel.Task | None = None
    _control: trio.MemorySendChannel[bytes] | None = None
    #: Told (peer, what it did) of a connection closed for breaking flow control.
    _refused: Callable[[ID, str], None] | None = None
    #: What the peer did, once it broke flow control.
    _broken: str | None = None
    #: Inbound streams are :class:`_YamuxStream` from their first frame: upstream's
    #: tuning doubles a window on every read within 4 RTTs, so the few bytes read while
    #: a stream's protocol is negotiated would grant its peer up to 16 MiB.
    _own_windows = False
    #: Bytes all its streams may buffer at once (0: no cap); see :func:`_max_buffered`.
    _max_buffered = 0
    #: The cap all connections of this host share (None: none).
    _shared: _SharedBuffers | None = None

    def _guard(
        self,
        refused: Callable[[ID, str], None] | None,
        own_windows: bool,
        max_buffered: int = 0,
        shared: _SharedBuffers | None = None,
    ) -> None:
        """Check every byte and stream the peer makes this connection hold (called
        before it starts): upstream buffers and tracks them in these two dicts only.
        Another layout (another libp2p version) is left unguarded, and said so."""
        if not (type(self.stream_buffers) is dict and type(self.streams) is dict):
            log.warning("cannot enforce yamux flow control: libp2p internals changed")
            return
        self._refused = refused
        self._own_windows = own_windows
        self._max_buffered = max_buffered
        self.stream_buffers = _StreamBuffers(self, self.stream_buffers)
        self.streams = _Streams(self, self.streams)
        if shared is not None:
            shared.add(self)
            self._shared = shared

    def _break(self, reason: str) -> None:
        """The peer broke flow control: free what its streams buffer and stop reading
        (the reading task ends after the frame at hand; :meth:`handle_incoming` closes)."""
        if self._broken is None:
            self._broken = reason
        self.event_shutting_down.set()
        for buffer in self.stream_buffers.values():
            buffer.clear()

    def _evict(self, reason: str) -> None:
        """Break this connection from another one's reading task and close its socket,
        so that its own reading task ends now rather than at its peer's next frame."""
        self._break(reason)
        if self._nursery is not None and not self.event_closed.is_set():
            self._nursery.start_soon(self._close_socket)

    async def _close_socket(self) -> None:
        with contextlib.suppress(Exception):
            await self.secured_conn.close()

    def _buffered(self) -> int:
        return sum(map(len, self.stream_buffers.values()))

    async def _read_data_body(self, length: int) -> bytes:
        # before the body is read: a frame no stream of this connection has room for (a
        # new stream gets yamux's initial window) is never read into memory
        widest = max((stream.recv_window for stream in self.streams.values()), default=0)
        if length > max(widest, YAMUX_DEFAULT_WINDOW):
            self._break(
                f"sent a yamux frame of {length} bytes, more than any of its streams' "
                f"receive windows allows ({max(widest, YAMUX_DEFAULT_WINDOW)} bytes)"
            )
            raise _FlowControlBroken(self._broken or "")
        return await super()._read_data_body(length)

    async def handle_incoming(self) -> None:
        send, receive = trio.open_memory_channel[bytes](math.inf)
        self._control = send
        self._reader_task = trio.lowlevel.current_task()
        if self._nursery is not None:
            self._nursery.start_soon(self._write_control_frames, receive)
        try:
            await super().handle_incoming()
        finally:
            self._control = None
            send.close()
        if self._broken is not None:
            if self._refused is not None:
                self._refused(self.peer_id, self._broken)
            if not self.event_closed.is_set():  # upstream has not closed it already
                await self._cleanup_on_error()

    async def _write_frame(self, data: bytes) -> None:
        control = self._control
        if control is not None and trio.lowlevel.current_task() is self._reader_task:
            if control.statistics().current_buffer_used >= _MAX_CONTROL_FRAMES:
                # a peer that sends pings or opens streams but never reads the answers
                self._break(f"left {_MAX_CONTROL_FRAMES} yamux control frames unread")
                return
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                control.send_nowait(data)
            return
        await super()._write_frame(data)

    async def _write_control_frames(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for frame in receive:
                try:
                    await super()._write_frame(frame)
                except Exception:  # the connection is gone; the reader will notice
                    return


#: Inbound yamux streams one connection may hold open at once. Each may buffer a receive
#: window (256 KiB until the frame reader admits its frame) before a handler reads it; an
#: honest peer has at most ``max_inbound_per_peer`` (default 32) message streams open and
#: a few of libp2p's own (identify, ping, the DHT).
_MAX_INBOUND_STREAMS = 128
#: Control frames (ACKs, pongs, RSTs) a :class:`_Yamux` connection queues while its peer
#: does not read: an honest peer never leaves more than an ACK per stream and a pong.
_MAX_CONTROL_FRAMES = 1024


def _max_buffered(max_reading_per_peer: int) -> int:
    """The most an honest peer makes one connection buffer: a default window on each
    inbound stream, a widened one (at most 16 MiB) on each frame being read, and one more
    for the replies libp2p's own protocols send on our streams."""
    return (
        _MAX_INBOUND_STREAMS * YAMUX_DEFAULT_WINDOW + (max_reading_per_peer + 1) * YAMUX_MAX_WINDOW
    )


class _FlowControlBroken(Exception):
    """The peer sent more than a yamux receive window allows (ends the reading task)."""


class _Streams(dict[int, YamuxStream]):
    """A :class:`_Yamux` connection's streams: a peer opening more than
    :data:`_MAX_INBOUND_STREAMS` at once breaks the connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Yamux, streams: dict[int, YamuxStream]) -> None:
        super().__init__(streams)
        self._conn = conn

    def __setitem__(self, stream_id: int, stream: YamuxStream) -> None:
        if not stream.is_initiator and stream_id not in self:
            if self._conn._own_windows and type(stream) is YamuxStream:
                stream.__class__ = _YamuxStream
            # a stream the peer closed or reset still counts while it holds bytes:
            # upstream keeps such a stream and its buffer for a minute or more
            buffers = self._conn.stream_buffers
            opened = sum(
                1
                for sid, s in self.items()
                if not s.is_initiator and (not s.closed or buffers.get(sid))
            )
            if opened >= _MAX_INBOUND_STREAMS:
                self._conn._break(f"opened more than {_MAX_INBOUND_STREAMS} yamux streams")
        super().__setitem__(stream_id, stream)


class _StreamBuffers(dict[int, bytearray]):
    """A :class:`_Yamux` connection's receive buffers, each a :class:`_StreamBuffer`."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Yamux, buffers: dict[int, bytearray]) -> None:
        super().__init__()
        self._conn = conn
        for stream_id, buffer in buffers.items():
            self[stream_id] = buffer

    def __setitem__(self, stream_id: int, buffer: bytearray) -> None:
        checked = _StreamBuffer(buffer)
        checked.conn, checked.stream_id = self._conn, stream_id
        super().__setitem__(stream_id, checked)


class _StreamBuffer(bytearray):
    """One stream's receive buffer: upstream's reading task appends every DATA frame's
    payload with ``extend`` (then takes it off the stream's ``recv_window``)."""

    __slots__ = ("conn", "stream_id")
    conn: _Yamux
    stream_id: int

    def extend(self, data: Any) -> None:
        conn = self.conn
        stream = conn.streams.get(self.stream_id)
        if conn._broken is not None:
            return
        if stream is None:  # upstream buffers only for streams it knows
            super().extend(data)
            return
        if len(data) > stream.recv_window:
            conn._break(
                f"sent {len(data)} bytes on a yamux stream whose receive window had "
                f"{stream.recv_window} left"
            )
            return
        if stream.closed or stream.recv_closed:  # nobody reads it any more
            return
        held = conn._buffered() + len(data)
        cap = conn._max_buffered
        if cap and held > cap:
            conn._break(f"made its yamux streams buffer more than {cap} bytes")
            return
        shared = conn._shared
        if shared is not None and not shared.admit(conn, held):
            return
        super().extend(data)


#: Bytes a connection may buffer without looking at the others (two initial windows): the
#: shared cap can be exceeded by at most this much per connection, and the common case,
#: a connection whose frames are read as they arrive, costs no sum over all connections.
_SHARED_FLOOR = 2 * YAMUX_DEFAULT_WINDOW


class _SharedBuffers:
    """The yamux receive buffers of all connections of one host, capped together.

    Each connection is capped by what an honest peer can make it hold
    (:func:`_max_buffered`), but identities are free and a host accepts hundreds of
    connections, so those caps alone bound nothing. Here a connection holding more than
    :data:`_SHARED_FLOOR` may buffer more only while all connections together hold at
    most ``limit`` bytes; past it, the connection holding the most is closed (as for
    breaking flow control: its buffers are freed and the transport told), which may be
    the one adding bytes. An honest connection is read as it arrives and holds little,
    so the peer that made the host buffer the most is the one cut off.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: connection -> bytes it held when it last buffered (at least what it holds now:
        #: reads only shrink a buffer)
        self._held: weakref.WeakKeyDictionary[_Yamux, int] = weakref.WeakKeyDictionary()

    def add(self, conn: _Yamux) -> None:
        self._held[conn] = 0

    def admit(self, conn: _Yamux, held: int) -> bool:
        """Whether ``conn`` may now hold ``held`` bytes (its new data included);
        connections are closed, the largest first, until all fit in ``limit``."""
        self._held[conn] = held
        if held <= _SHARED_FLOOR or sum(self._held.values()) <= self.limit:
            return True
        exact = {c: (held if c is conn else c._buffered()) for c in self._held}
        total = sum(exact.values())
        while total > self.limit:
            largest = max(exact, key=exact.__getitem__)
            reason = (
                f"held {exact[largest]} bytes in yamux buffers, the most of any connection "
                f"when all of them together passed {self.limit}"
            )
            total -= exact[largest]
            exact[largest] = 0
            if largest is conn:
                conn._break(reason)
            else:
                largest._evict(reason)
        self._held.update(exact)
        return exact[conn] > 0


def _own_window(stream: INetStream) -> None:
    """Make ``stream``'s yamux half a :class:`_YamuxStream` (an inbound stream, before any
    read); other muxers and other libp2p versions keep their own window tuning."""
    muxed = getattr(stream, "muxed_stream", None)
    if type(muxed) is YamuxStream and hasattr(muxed, "target_recv_window"):
        muxed.__class__ = _YamuxStream


async def _widen_window(stream: INetStream, size: int) -> None:
    """Let the sender of an admitted frame of ``size`` bytes (header included) push all
    of it (at most 16 MiB) without waiting for credit."""
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, _YamuxStream):
        return
    window = min(max(size, YAMUX_DEFAULT_WINDOW), YAMUX_MAX_WINDOW)
    if window > muxed.target_recv_window:
        muxed.target_recv_window = window
        # a write cut short would leave half a Noise message on the connection
        with trio.CancelScope(shield=True), trio.move_on_after(_ANSWER_TIMEOUT):
            await muxed._auto_tune_and_send_window_update()


class _YamuxStream(YamuxStream):
    """An inbound py-libp2p 0.8.1 yamux stream whose receive window the reader sizes.

    Upstream credits the sender with a WINDOW_UPDATE after every read (at full speed
    about one per 64 KB frame, each an encrypted write here and a read there) and grows
    the window by doubling it when updates come fast. Here the frame reader sets the
    window once the frame's header is admitted (:func:`_widen_window`: the frame's size,
    between yamux's 256 KiB and 16 MiB, the most upstream's own tuning reaches), and
    credit goes back as go-yamux gives it: in one update once half the window was read.
    A sender never has more than the window in flight, as before, and a stream that
    waits for a reading slot is never widened. The frames on the wire are unchanged.
    """

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            # read since the last credit (or what widening the window adds)
            credit = self.target_recv_window - (self.recv_window + buffered)
            if credit <= 0 or credit < self.target_recv_window // 2:
                return
            self.recv_window += credit
        await self.send_window_update(credit)


def check_announce(address: str) -> str:
    """``address`` if it is a multiaddr others can dial (``/ip4|ip6|dns*/HOST/tcp/PORT``,
    optionally ending in ``/p2p/<peer id>``); ConfigError naming ``--announce`` if not."""
    try:
        value = multiaddr.Multiaddr(address)
        names = [protocol.name for protocol in value.protocols()]
    except Exception as error:
        raise ConfigError(
            f"--announce {address!r} is not a multiaddr ({error}); "
            "expected e.g. /ip4/203.0.113.7/tcp/4001 or /dns4/peer.example.org/tcp/4001"
        ) from None
    if names[-1:] == ["p2p"]:
        names = names[:-1]
    if len(names) != 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
        raise ConfigError(
            f"--announce {address!r}: give a TCP address others can dial, e.g. "
            "/ip4/203.0.113.7/tcp/4001 or /dns4/peer.example.org/tcp/4001"
        )
    host_part = value.value_for_protocol(value.protocols()[0].code)
    if host_part in ("0.0.0.0", "::"):
        raise ConfigError(f"--announce {address!r}: a wildcard address cannot be dialled")
    return address


def _with_suffix(address: str, suffix: str) -> str:
    if "/p2p/" in address:
        if not address.endswith(suffix):
            raise ConfigError(f"--announce {address!r} names another peer id than this peer's")
        return address
    return address.rstrip("/") + suffix


def _explain(error: BaseException) -> str:
    if log.isEnabledFor(logging.DEBUG):  # the whole chain, to check what classify names
        log.debug("libp2p error chain: %s", " <- ".join(
            f"{type(e).__name__}: {str(e)[:200]}" for e in chain(error)))  # fmt: skip
    failure = classify(error)
    return failure.text() if failure is not None else _describe(error)


def _disable_auto_dial(host: IHost) -> None:
    """Stop the swarm's AutoConnector from dialing every peer in the peerstore.

    py-libp2p 0.8.1 dials known peers until it holds (low + high watermark) / 2
    connections; a gossip peer talks to the neighbours its protocol picks, so the
    connector's ``maybe_connect`` is replaced by a no-op on this host only.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        connector.maybe_connect = _no_auto_dial


async def _no_auto_dial() -> None:
    return None


async def _await_inbound_connection(host: IHost, peer: ID) -> None:
    """Give a connection the peer is opening to us a moment to be registered.

    Right after a peer dials us, its ``connect()`` returns before our side has finished
    upgrading the inbound connection; sending back at once would make the swarm dial a
    peer whose addresses we do not know. Wait briefly when that is the situation.
    """
    network = host.get_network()
    if network.get_connections(peer) or _knows_addresses(host, peer):
        return
    with trio.move_on_after(_INBOUND_GRACE):
        while not network.get_connections(peer):
            await trio.sleep(0.01)


def _knows_addresses(host: IHost, peer: ID) -> bool:
    try:
        return bool(host.get_peerstore().peer_info(peer).addrs)
    except Exception:  # PeerStoreError: never heard of it
        return False


async def _header(payload: bytes, max_frame_bytes: int) -> bytes:
    """The frame header; a large payload is hashed in pieces so the trio loop stays live."""
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(len(payload), max_frame_bytes)
    hasher = new_hasher()
    view = memoryview(payload)
    for start in range(0, len(view), _HASH_PIECE):
        hasher.update(view[start : start + _HASH_PIECE])
        if len(view) > _HASH_PIECE:
            await trio.lowlevel.checkpoint()
    return pack_header(len(payload), hasher.digest())


async def _exchange(
    stream: INetStream, header: bytes, payload: bytes, stall: float, fit_noise: bool = True
) -> Status:
    """Write one frame while reading the receiver's status; stop writing on a refusal.

    The payload goes out in pieces, each written under a cancel shield: yamux and noise
    writes are not cancel-safe (a write cut short leaves half a noise message on the
    connection and breaks every stream on it), so cancellation lands between pieces.
    With ``fit_noise`` each write is one yamux frame that fits one Noise message
    (:data:`_FRAME_FIT`), the header travelling in the first.
    """
    answer: list[Status] = []

    async def read_status() -> None:
        data = await stream.read(1)
        if not data:
            raise TransportError("the receiver closed the stream without an answer")
        try:
            answer.append(Status(data[0]))
        except ValueError:
            raise TransportError(f"the receiver sent an unknown status {data[0]}") from None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_status)
        if fit_noise:
            first = _FRAME_FIT - len(header)  # the header shares the first frame
            await _write_shielded(stream, header + payload[:first], stall)
            view = memoryview(payload)[first:]
            for start in range(0, len(view), _WRITE_PIECE):
                if answer:  # refused: stop sending
                    break
                await trio.lowlevel.checkpoint_if_cancelled()  # cancellation lands here
                piece = view[start : start + _WRITE_PIECE]
                await _write_shielded(stream, piece, stall, _FRAME_FIT)
        elif len(payload) <= _UNTUNED_PIECE:
            await _write_shielded(stream, header + payload, stall)
        else:
            await _write_shielded(stream, header, stall)
            view = memoryview(payload)
            for start in range(0, len(view), _UNTUNED_PIECE):
                if answer:  # refused: stop sending
                    break
                await trio.lowlevel.checkpoint_if_cancelled()  # cancellation lands here
                await _write_shielded(stream, view[start : start + _UNTUNED_PIECE], stall)
    if not answer:
        raise TransportError("the receiver sent no answer")
    return answer[0]


async def _write_shielded(
    stream: INetStream, data: bytes | memoryview, stall: float, frame: int | None = None
) -> None:
    """Write ``data`` whole (in writes of at most ``frame`` bytes, if given) or fail
    after ``stall`` seconds; outside cancellation waits."""
    with trio.CancelScope(shield=True):
        try:
            with trio.fail_after(stall):
                if frame is None or len(data) <= frame:
                    await stream.write(data)  # type: ignore[arg-type]
                else:
                    view = memoryview(data)
                    for start in range(0, len(view), frame):
                        await stream.write(view[start : start + frame])  # type: ignore[arg-type]
        except trio.TooSlowError:
            raise TransportError(f"a write stalled for {stall} s") from None


async def _reset(stream: INetStream) -> None:
    """Reset ``stream``, ignoring errors; shielded (it writes a frame). What its yamux
    half buffered is freed now: nobody reads it (upstream keeps it for 60 s)."""
    muxed = getattr(stream, "muxed_stream", None)
    if isinstance(muxed, YamuxStream):
        buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
        if buffer is not None:
            buffer.clear()
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(_ANSWER_TIMEOUT),
        contextlib.suppress(Exception),
    ):
        await stream.reset()


async def _close(stream: INetStream) -> None:
    """Close ``stream``, ignoring errors; shielded (it writes a frame). We read nothing
    after closing: its yamux half is closed for reading too (as go-yamux's CloseRead),
    so what it buffered is freed now and what the peer still sends is dropped."""
    muxed = getattr(stream, "muxed_stream", None)
    if isinstance(muxed, YamuxStream):
        buffer = muxed.conn.stream_buffers.get(muxed.stream_id)
        if buffer is not None:
            buffer.clear()
        muxed.recv_closed = True
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(_ANSWER_TIMEOUT),
        contextlib.suppress(Exception),
    ):
        await stream.close()


async def _answer(stream: INetStream, status: Status) -> None:
    """Send the one-byte status of a frame, ignoring errors."""
    try:
        await _write_shielded(stream, bytes([status]), _ANSWER_TIMEOUT)
    except Exception as error:
        log.debug("could not answer %s: %s", status.name, _describe(error))


def _complete(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """In the loop thread: settle ``future`` unless its caller gave up."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _split_cancelled(
    error: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """``error`` as (what must propagate: cancellation or another BaseException, what is a
    plain failure of the call)."""
    if isinstance(error, BaseExceptionGroup):
        return error.split(lambda e: not isinstance(e, Exception | BaseExceptionGroup))
    return (None, error) if isinstance(error, Exception) else (error, None)


def _describe(error: BaseException) -> str:
    """A one-line description, looking inside exception groups and chained causes."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({_describe(cause)})"
    return text
