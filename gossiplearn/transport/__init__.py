"""Transports move bytes between peers; only :mod:`gossiplearn.transport.libp2p` knows libp2p.

``gossiplearn.transport.libp2p`` (the real network) is not imported here: it pulls in
trio and py-libp2p, so it is imported on demand.
"""

from gossiplearn.transport.base import (
    GOODBYE_PROTOCOL,
    MODEL_PROTOCOL,
    PEER_EXCHANGE_PROTOCOL,
    Handler,
    ProtocolNotSpoken,
    Transport,
    TransportError,
)
from gossiplearn.transport.framing import FrameError, FrameTooLarge
from gossiplearn.transport.memory import InMemoryNetwork, InMemoryTransport

__all__ = [
    "GOODBYE_PROTOCOL",
    "MODEL_PROTOCOL",
    "PEER_EXCHANGE_PROTOCOL",
    "FrameError",
    "FrameTooLarge",
    "Handler",
    "InMemoryNetwork",
    "InMemoryTransport",
    "ProtocolNotSpoken",
    "Transport",
    "TransportError",
]
