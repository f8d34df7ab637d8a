"""Tests for the tuned libp2p channel: yamux frames that fit one Noise message, receive
windows sized to the admitted frame, sockets read ahead (real loopback peers where the
network is involved, marked ``network``)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.io.trio import TrioTCPStream

from gossiplearn.transport.base import MODEL_PROTOCOL, TransportError
from gossiplearn.transport.framing import Status, digest, pack_header
from gossiplearn.transport.libp2p import (
    _UNTUNED,
    Libp2pTransport,
    _exchange,
    _ReadAheadTCPStream,
    _YamuxStream,
)

LIMIT = 60.0  # seconds: the bound on every network test


def test_a_read_ahead_stream_gives_the_bytes_in_order_and_never_more_than_asked() -> None:
    data = os.urandom(3 * 2**20)
    rng = random.Random(7)

    async def main() -> bytes:
        left, right = trio.testing.memory_stream_pair()
        stream = TrioTCPStream(right)  # type: ignore[arg-type]
        stream.__class__ = _ReadAheadTCPStream
        got = bytearray()

        async def write() -> None:
            for start in range(0, len(data), 100_000):
                await left.send_all(data[start : start + 100_000])
            await left.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            while True:
                asked = rng.choice([1, 2, 12, 65_519, 70_000, 2**20])
                chunk = await stream.read(asked)
                if not chunk:
                    break
                assert len(chunk) <= asked
                got += chunk
        return bytes(got)

    assert trio.run(main) == data


def _inbox(transport: Libp2pTransport) -> asyncio.Queue[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(sender: str, payload: bytes) -> None:
        await queue.put(payload)

    transport.set_handler(MODEL_PROTOCOL, handler)
    return queue


@pytest.mark.network
async def test_frames_beyond_the_largest_window_arrive_intact_between_any_channels() -> None:
    tuned, untuned, receiver = Libp2pTransport(), Libp2pTransport(), Libp2pTransport()
    untuned._channel = _UNTUNED
    inbox = _inbox(receiver)
    old_receiver = Libp2pTransport()
    old_receiver._channel = _UNTUNED
    old_inbox = _inbox(old_receiver)
    payload = os.urandom(20 * 2**20 + 3)  # more than yamux's 16 MiB window: credit returns
    peers = (tuned, untuned, receiver, old_receiver)
    async with asyncio.timeout(4 * LIMIT):
        for peer in peers:
            await peer.start()
        try:
            for sender, to, box in (
                (tuned, receiver, inbox),
                (untuned, receiver, inbox),
                (tuned, old_receiver, old_inbox),
            ):
                await sender.connect(to.addresses[0])
                await sender.send(to.peer_id, MODEL_PROTOCOL, payload)
                assert await box.get() == payload
            await tuned.send(receiver.peer_id, MODEL_PROTOCOL, b"small")
            assert await inbox.get() == b"small"
        finally:
            for peer in peers:
                await peer.stop()


@pytest.mark.network
async def test_a_corrupt_frame_in_fitted_writes_is_refused_and_its_buffers_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, victim = Libp2pTransport(), Libp2pTransport()
    inbox = _inbox(victim)
    payload = os.urandom(3 * 2**20)
    windows: list[int] = []

    async def send_corrupt() -> Status:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        assert sender._host is not None
        stream = await sender._host.new_stream(
            ID.from_base58(victim.peer_id), [TProtocol(MODEL_PROTOCOL)]
        )
        header = pack_header(len(payload), digest(payload[:-1]))  # the wrong digest
        return await _exchange(stream, header, payload, 10.0, fit_noise=True)

    original = _YamuxStream._auto_tune_and_send_window_update

    async def watched(self: Any, *, bytes_read: int = 0) -> None:
        windows.append(self.target_recv_window)
        await original(self, bytes_read=bytes_read)

    async with asyncio.timeout(LIMIT):
        await sender.start()
        await victim.start()
        try:
            await sender.connect(victim.addresses[0])
            monkeypatch.setattr(_YamuxStream, "_auto_tune_and_send_window_update", watched)
            assert await sender._call(send_corrupt, timeout=LIMIT) is Status.CORRUPT
            assert victim.rejected_counts() == {"CorruptFrame": 1}
            assert victim.limits.buffer.used == 0
            assert inbox.empty()
            assert max(windows) == len(payload) + 48  # widened to the admitted frame
        finally:
            await sender.stop()
            await victim.stop()


@pytest.mark.network
async def test_an_oversize_frame_is_refused_from_its_header_and_never_widens_a_window() -> None:
    sender, victim = Libp2pTransport(), Libp2pTransport(max_frame_bytes=2**20)
    _inbox(victim)
    async with asyncio.timeout(LIMIT):
        await sender.start()
        await victim.start()
        try:
            await sender.connect(victim.addresses[0])
            with pytest.raises(TransportError, match="larger than"):
                await sender.send(victim.peer_id, MODEL_PROTOCOL, os.urandom(5 * 2**20))
            assert victim.rejected_counts() == {"FrameTooLarge": 1}
            assert victim.limits.buffer.used == 0
        finally:
            await sender.stop()
            await victim.stop()
