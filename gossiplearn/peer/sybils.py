"""Sybil identities of an attacking real peer: more keys, one model.

A new libp2p identity costs nothing, so an attacker (``peer --attack SPEC --sybils K``)
holds K−1 transports beside its own, each with its own key and listening address. Every
poisoned model the peer sends is also sent from each identity, so a neighbour receives K
copies from K peer ids, as with the simulator's Sybils. The identities answer nothing:
models, peer exchange and goodbyes sent to them are read and dropped, so honest peers
can keep them as neighbours (and defences such as SybilWall have to find them out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from gossiplearn.transport.base import (
    GOODBYE_PROTOCOL,
    MODEL_PROTOCOL,
    PEER_EXCHANGE_PROTOCOL,
    Transport,
    TransportError,
)

log = logging.getLogger("gossiplearn.peer")


async def _ignore(sender: str, payload: bytes) -> None:
    """Sybils only send."""


class SybilIdentities:
    def __init__(self, transports: Sequence[Transport], send_timeout: float = 30.0) -> None:
        self.transports = list(transports)
        self.send_timeout = send_timeout
        #: (identity index, peer) pairs already connected.
        self._connected: set[tuple[int, str]] = set()
        #: Models delivered from the identities, and sends that failed.
        self.delivered = 0
        self.failed = 0

    @property
    def peer_ids(self) -> list[str]:
        return [t.peer_id for t in self.transports]

    async def start(self) -> None:
        for transport in self.transports:
            for protocol in (MODEL_PROTOCOL, PEER_EXCHANGE_PROTOCOL, GOODBYE_PROTOCOL):
                transport.set_handler(protocol, _ignore)
            await transport.start()

    async def stop(self) -> None:
        for transport in self.transports:
            with contextlib.suppress(TransportError):
                await transport.stop()

    async def send(self, peer: str, addresses: Sequence[str], payload: bytes) -> int:
        """Send ``payload`` to ``peer`` from every identity (dialling ``addresses`` the
        first time); how many identities delivered it."""
        results = await asyncio.gather(
            *(self._send_from(i, peer, addresses, payload) for i in range(len(self.transports)))
        )
        self.delivered += sum(results)
        self.failed += len(results) - sum(results)
        return sum(results)

    async def _send_from(
        self, index: int, peer: str, addresses: Sequence[str], payload: bytes
    ) -> bool:
        transport = self.transports[index]
        try:
            async with asyncio.timeout(self.send_timeout):
                if (index, peer) not in self._connected:
                    for address in addresses:
                        with contextlib.suppress(TransportError):
                            await transport.connect(address)
                            self._connected.add((index, peer))
                            break
                await transport.send(peer, MODEL_PROTOCOL, payload)
        except (TransportError, TimeoutError) as error:
            log.info("sybil %s could not send to %s: %s", transport.peer_id, peer, error)
            self._connected.discard((index, peer))
            return False
        return True
