"""The Transport interface: how an asyncio Peer moves bytes to other peers.

A transport carries opaque payloads to a peer on a named protocol (e.g. models on
``/gossiplearn/model/1``, peer exchange on ``/gossiplearn/px/1``). It knows nothing about
models or protocol cores; framing, integrity checks, size bounds and timeouts live here.
Implementations: in-memory (tests) and libp2p (real networks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gossiplearn.errors import GossiplearnError

#: Called with (sender peer id, payload) for every complete, intact inbound message.
Handler = Callable[[str, bytes], Awaitable[None]]

MODEL_PROTOCOL = "/gossiplearn/model/1"
PEER_EXCHANGE_PROTOCOL = "/gossiplearn/px/1"
#: An empty message a peer sends its neighbours when it leaves on purpose.
GOODBYE_PROTOCOL = "/gossiplearn/bye/1"
#: A peer's model architecture (tensor names, dtypes, shapes), told on connecting.
SPEC_PROTOCOL = "/gossiplearn/spec/1"


class TransportError(GossiplearnError):
    """A send or dial failed (peer unreachable, timeout, stream reset)."""


class ProtocolNotSpoken(TransportError):
    """The peer is there but does not speak the protocol: e.g. a ``gossiplearn relay``
    node (a bootstrap and relay that trains nothing), or another application."""


class ReceiverBusy(TransportError):
    """The receiver refused a message for now (over its stream or byte-rate limits): the
    peer is alive, try again later."""


class Transport(Protocol):
    @property
    def peer_id(self) -> str:
        """This peer's id (for libp2p, the base58 peer id derived from its key)."""
        ...

    @property
    def addresses(self) -> list[str]:
        """Addresses others can dial, each ending in /p2p/<peer id> for libp2p."""
        ...

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Deliver inbound messages on ``protocol`` to ``handler`` (set before start)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Close every connection and free every resource; idempotent."""
        ...

    async def connect(self, address: str) -> str:
        """Dial ``address``; return the remote peer id. Raises TransportError."""
        ...

    async def send(self, peer: str, protocol: str, payload: bytes) -> None:
        """Deliver ``payload`` to ``peer`` or raise TransportError (bounded in time)."""
        ...

    def connected_peers(self) -> list[str]: ...
