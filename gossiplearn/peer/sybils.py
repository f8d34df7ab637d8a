"""Sybil identities of an attacking real peer: more keys, one model.

A new libp2p identity costs nothing, so an attacker (``peer --attack SPEC --sybils K``)
holds K−1 transports beside its own, each with its own key and listening address. Every
model push the attacker's core sends also goes out from each identity, so honest peers
receive the same model from many peer ids, as with the simulator's Sybils. Where it goes:

- following (``gossiplearn peer --attack SPEC --sybils K`` on its own): to the same
  neighbour the attacker sends it to, each identity dialling it the first time;
- attached (a scenario's attacker, e.g. under ``gossiplearn launch``): once per round to
  the identity's own neighbours, the honest peers connected to it. The scenario attaches
  each identity to a cluster of honest peers, as the simulator does, and those peers
  bootstrap from the identity's address (``--sybil-identity``/``--sybil-listen``).

A signed model push (SybilWall's record at distance 0) is signed again by each identity
with its own key, as its own model. The identities answer nothing: models, peer exchange
and goodbyes sent to them are read and dropped, so honest peers can keep them as
neighbours (and defences such as SybilWall have to find them out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gossiplearn.protocols.codec import encode
from gossiplearn.protocols.messages import Message, ModelMessage
from gossiplearn.protocols.sybilwall_messages import HistoryRecord
from gossiplearn.transport.base import (
    GOODBYE_PROTOCOL,
    MODEL_PROTOCOL,
    PEER_EXCHANGE_PROTOCOL,
    Transport,
    TransportError,
)

if TYPE_CHECKING:
    from gossiplearn.peer.config import PeerConfig

log = logging.getLogger("gossiplearn.peer")

Handler = Callable[[str, bytes], Awaitable[None]]


def any_port(listen: str) -> str:
    """``listen`` with its TCP port set to 0 (identities must not share the peer's port)."""
    parts = listen.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "tcp":
            parts[i + 1] = "0"
    return "/".join(parts)


def is_model_push(message: Message) -> bool:
    """A peer's own model (plain, or signed at distance 0): what its identities repeat."""
    return isinstance(message, ModelMessage) or (
        isinstance(message, HistoryRecord) and message.distance == 0
    )


class SybilIdentities:
    def __init__(
        self, transports: Sequence[Transport], send_timeout: float = 30.0, *, attached: bool = False
    ) -> None:
        self.transports = list(transports)
        self.send_timeout = send_timeout
        self.attached = attached
        #: (identity index, peer) pairs already connected (following).
        self._connected: set[tuple[int, str]] = set()
        #: Attached: each identity's neighbours heard from (besides those connected).
        self.heard: list[set[str]] = [set() for _ in self.transports]
        self._rounds_sent: set[int] = set()
        #: Models delivered from the identities, and sends that failed.
        self.delivered = 0
        self.failed = 0

    @property
    def peer_ids(self) -> list[str]:
        return [t.peer_id for t in self.transports]

    async def start(self) -> None:
        for index, transport in enumerate(self.transports):
            transport.set_handler(MODEL_PROTOCOL, self._hear(index))
            transport.set_handler(PEER_EXCHANGE_PROTOCOL, self._hear(index))
            transport.set_handler(GOODBYE_PROTOCOL, self._forget(index))
            await transport.start()

    async def stop(self) -> None:
        for transport in self.transports:
            with contextlib.suppress(TransportError):
                await transport.stop()

    def neighbours(self, index: int) -> list[str]:
        """Identity ``index``'s neighbours: the peers connected to it or heard from."""
        connected = getattr(self.transports[index], "connected_peers", None)
        return sorted(self.heard[index] | set(connected() if connected else ()))

    async def relay(self, peer: str, addresses: Sequence[str], message: Message) -> int:
        """The attacker sent ``message`` to ``peer``: send its model push from every
        identity (following: to ``peer``; attached: to each identity's own neighbours,
        once per round). How many sends delivered it."""
        if not isinstance(message, ModelMessage | HistoryRecord) or not is_model_push(message):
            return 0
        round_ = message.round
        if self.attached:
            if round_ in self._rounds_sent:
                return 0
            self._rounds_sent = {r for r in self._rounds_sent if r > round_ - 4} | {round_}
        sends = []
        for index in range(len(self.transports)):
            payload = await asyncio.to_thread(encode, self._as_identity(index, message))
            targets = self.neighbours(index) if self.attached else [peer]
            sends += [self._send_from(index, to, addresses, payload) for to in targets]
        results = await asyncio.gather(*sends)
        self.delivered += sum(results)
        self.failed += len(results) - sum(results)
        return sum(results)

    def _as_identity(self, index: int, message: Message) -> Message:
        """The push as identity ``index``'s own: a signed record is signed with its key."""
        make_signer = getattr(self.transports[index], "signer", None)
        if not isinstance(message, HistoryRecord) or make_signer is None:
            return message
        signer = make_signer()
        record = HistoryRecord(message.round, signer.peer_id, 0, message.params)
        statement = record.statement
        signed = HistoryRecord(
            message.round, signer.peer_id, 0, message.params, signer.sign(statement)
        )
        return signed.knowing_statement(statement)

    async def _send_from(
        self, index: int, peer: str, addresses: Sequence[str], payload: bytes
    ) -> bool:
        transport = self.transports[index]
        try:
            async with asyncio.timeout(self.send_timeout):
                if not self.attached and (index, peer) not in self._connected:
                    for address in addresses:
                        with contextlib.suppress(TransportError):
                            await transport.connect(address)
                            self._connected.add((index, peer))
                            break
                await transport.send(peer, MODEL_PROTOCOL, payload)
        except (TransportError, TimeoutError) as error:
            log.info("sybil %s could not send to %s: %s", transport.peer_id, peer, error)
            self._connected.discard((index, peer))
            self.heard[index].discard(peer)
            return False
        return True

    def _hear(self, index: int) -> Handler:
        async def heard(sender: str, payload: bytes) -> None:
            self.heard[index].add(sender)  # a neighbour: it sends to this identity

        return heard

    def _forget(self, index: int) -> Handler:
        async def left(sender: str, payload: bytes) -> None:
            self.heard[index].discard(sender)

        return left


def libp2p_identities(
    config: PeerConfig, keys: Sequence[Path], listen: Sequence[str]
) -> list[Transport]:
    """Transports for Sybil identities with these key files (``gossiplearn keygen``)
    listening at ``listen`` (one address per key), limited as the peer is."""
    from gossiplearn.transport.libp2p import Libp2pTransport  # heavy: imported on demand

    return [
        Libp2pTransport(
            key,
            listen=address,
            open_timeout=config.open_timeout,
            max_frame_bytes=int(config.max_message_mb * 2**20) + 4096,
            max_bytes_per_peer_per_second=config.inbound_mb_per_second * 2**20,
        )
        for key, address in zip(keys, listen, strict=True)
    ]
