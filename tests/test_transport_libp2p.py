"""Tests for the libp2p transport over real loopback sockets (marked ``network``)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gossiplearn.errors import ConfigError
from gossiplearn.transport.base import MODEL_PROTOCOL, ReceiverBusy, TransportError
from gossiplearn.transport.framing import FrameTooLarge, Status, digest, pack_header
from gossiplearn.transport.libp2p import Libp2pTransport, generate_identity, load_identity

pytestmark = pytest.mark.network

LIMIT = 60.0  # seconds: the bound on every test
Inbox = asyncio.Queue[tuple[str, bytes]]


def _inbox(transport: Libp2pTransport, protocol: str = MODEL_PROTOCOL) -> Inbox:
    queue: Inbox = asyncio.Queue()

    async def handler(sender: str, payload: bytes) -> None:
        await queue.put((sender, payload))

    transport.set_handler(protocol, handler)
    return queue


@asynccontextmanager
async def _running(*transports: Libp2pTransport) -> AsyncIterator[None]:
    try:
        for transport in transports:
            await transport.start()
        yield
    finally:
        for transport in transports:
            await transport.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_ten_megabytes_both_ways_intact() -> None:
    a, b = Libp2pTransport(), Libp2pTransport()
    inbox_a, inbox_b = _inbox(a), _inbox(b)
    to_b, to_a = os.urandom(10 * 2**20), os.urandom(10 * 2**20 + 7)
    async with asyncio.timeout(LIMIT), _running(a, b):
        assert await a.connect(b.addresses[0]) == b.peer_id
        upgrader = a._host.get_network().upgrader  # type: ignore[union-attr]  # white-box
        assert list(upgrader.security_multistream.transports) == ["/noise"]
        assert list(upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]
        await asyncio.gather(
            a.send(b.peer_id, MODEL_PROTOCOL, to_b), b.send(a.peer_id, MODEL_PROTOCOL, to_a)
        )
        assert await inbox_b.get() == (a.peer_id, to_b)
        assert await inbox_a.get() == (b.peer_id, to_a)
        assert a.connected_peers() == [b.peer_id]
        assert b.connected_peers() == [a.peer_id]


async def test_identity_file_gives_a_stable_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    peer_id = generate_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = Libp2pTransport(path), Libp2pTransport(identity=str(path))
    assert first.peer_id == second.peer_id == peer_id
    assert Libp2pTransport().peer_id != peer_id
    async with asyncio.timeout(LIMIT), _running(first):
        assert first.addresses
        for address in first.addresses:
            assert address.startswith("/ip4/127.0.0.1/tcp/")
            assert address.endswith(f"/p2p/{peer_id}")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_identity(path)
    assert load_identity(path).public_key == load_identity(path).public_key


def test_bad_identity_files_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_identity(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key at all")
    with pytest.raises(ConfigError, match="not a libp2p private key"):
        Libp2pTransport(junk)
    with pytest.raises(ConfigError, match="cannot read"):
        load_identity(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="cannot create"):
        generate_identity(tmp_path / "no" / "such" / "dir.key")


def test_libp2p_logging_is_tamed() -> None:
    libp2p_logger = logging.getLogger("libp2p")
    assert libp2p_logger.propagate and libp2p_logger.level >= logging.WARNING
    # modules that pinned their own level now inherit it
    assert logging.getLogger("libp2p.network.auto_connector").level == logging.NOTSET


async def test_unreachable_address_fails_within_the_timeout() -> None:
    a, b = Libp2pTransport(connect_timeout=3.0), Libp2pTransport()
    async with asyncio.timeout(LIMIT), _running(a):
        address = f"/ip4/127.0.0.1/tcp/{_closed_port()}/p2p/{b.peer_id}"
        start = time.monotonic()
        with pytest.raises(TransportError):
            await a.connect(address)
        assert time.monotonic() - start < 3.0 + 2.0
        with pytest.raises(TransportError, match="invalid peer address"):
            await a.connect("/ip4/127.0.0.1/tcp/1")  # no /p2p/<id>
        with pytest.raises(TransportError):
            await a.send(b.peer_id, MODEL_PROTOCOL, b"nobody knows where b is")
        with pytest.raises(TransportError, match="invalid peer id"):
            await a.send("not-a-peer-id", MODEL_PROTOCOL, b"x")


async def test_listen_failure_raises_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        transport = Libp2pTransport(listen=f"/ip4/127.0.0.1/tcp/{port}")
        async with asyncio.timeout(LIMIT):
            with pytest.raises(TransportError, match="cannot listen"):
                await transport.start()
            await transport.stop()
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


@pytest.mark.parametrize(
    "listen",
    ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0/ws", "not an address", []],
)
def test_only_plain_tcp_listen_addresses_are_accepted(listen: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        Libp2pTransport(listen=listen)


async def test_calls_before_start_raise() -> None:
    idle = Libp2pTransport()
    assert idle.addresses == [] and idle.connected_peers() == []
    with pytest.raises(TransportError, match="not running"):
        await idle.send(Libp2pTransport().peer_id, MODEL_PROTOCOL, b"x")
    await idle.stop()  # never started: a no-op


async def test_a_failing_handler_does_not_kill_the_transport() -> None:
    a, b = Libp2pTransport(), Libp2pTransport()
    received: Inbox = asyncio.Queue()

    async def handler(sender: str, payload: bytes) -> None:
        if payload == b"poison":
            raise RuntimeError("handler bug")
        await received.put((sender, payload))

    b.set_handler(MODEL_PROTOCOL, handler)
    async with asyncio.timeout(LIMIT), _running(a, b):
        await a.connect(b.addresses[0])
        await a.send(b.peer_id, MODEL_PROTOCOL, b"poison")
        await a.send(b.peer_id, MODEL_PROTOCOL, b"next")
        assert await received.get() == (a.peer_id, b"next")


async def test_oversize_frame_is_refused_and_the_connection_survives() -> None:
    a = Libp2pTransport()
    b = Libp2pTransport(max_frame_bytes=2**20)
    inbox = _inbox(b)
    async with asyncio.timeout(LIMIT), _running(a, b):
        await a.connect(b.addresses[0])
        connection = _connection(a, b.peer_id)
        with pytest.raises(TransportError, match="max_frame_bytes"):
            await a.send(b.peer_id, MODEL_PROTOCOL, os.urandom(8 * 2**20))
        await a.send(b.peer_id, MODEL_PROTOCOL, b"small")
        assert await inbox.get() == (a.peer_id, b"small")
        assert _connection(a, b.peer_id) is connection  # same connection, not a redial
        with pytest.raises(FrameTooLarge):  # the sender's own limit, checked before sending
            await b.send(a.peer_id, MODEL_PROTOCOL, b"x" * (2**20 + 1))


async def test_a_cancelled_send_leaves_the_connection_usable() -> None:
    a, b = Libp2pTransport(), Libp2pTransport()
    inbox = _inbox(b)
    async with asyncio.timeout(LIMIT), _running(a, b):
        await a.connect(b.addresses[0])
        connection = _connection(a, b.peer_id)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await a.send(b.peer_id, MODEL_PROTOCOL, os.urandom(40 * 2**20))
        await a.send(b.peer_id, MODEL_PROTOCOL, b"after")
        assert await inbox.get() == (a.peer_id, b"after")
        assert _connection(a, b.peer_id) is connection


async def test_concurrent_sends_both_ways_do_not_deadlock() -> None:
    # Upstream yamux 0.8.1 deadlocks here: both readers wait on write locks held by
    # writers stuck in full TCP buffers (see _Yamux).
    a, b = Libp2pTransport(read_timeout=20), Libp2pTransport(read_timeout=20)
    inbox_a, inbox_b = _inbox(a), _inbox(b)
    payload = os.urandom(2 * 2**20)
    async with asyncio.timeout(LIMIT), _running(a, b):
        await a.connect(b.addresses[0])
        # b answers at once: its side of the new connection may not be registered yet
        await b.send(a.peer_id, MODEL_PROTOCOL, b"hello back")
        assert await inbox_a.get() == (b.peer_id, b"hello back")
        sends = [a.send(b.peer_id, MODEL_PROTOCOL, payload) for _ in range(20)]
        sends += [b.send(a.peer_id, MODEL_PROTOCOL, payload) for _ in range(20)]
        await asyncio.gather(*sends)
        for inbox in (inbox_a, inbox_b):
            for _ in range(20):
                assert (await inbox.get())[1] == payload


async def test_unknown_protocol_is_refused() -> None:
    a, b = Libp2pTransport(), Libp2pTransport()
    _inbox(b)
    async with asyncio.timeout(LIMIT), _running(a, b):
        await a.connect(b.addresses[0])
        with pytest.raises(TransportError):
            await a.send(b.peer_id, "/gossiplearn/unknown/1", b"x")


async def test_stop_leaves_no_threads_running() -> None:
    before = set(threading.enumerate())
    a, b = Libp2pTransport(), Libp2pTransport()
    inbox = _inbox(b)
    async with asyncio.timeout(LIMIT):
        async with _running(a, b):
            await a.connect(b.addresses[0])
            await a.send(b.peer_id, MODEL_PROTOCOL, b"x" * 5_000_000)
            await inbox.get()
            assert len(set(threading.enumerate()) - before) == 2  # one trio thread each
        await a.stop()  # idempotent
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not [t for t in left if not t.daemon], left
    assert not [t for t in left if t.name.startswith("gossiplearn-libp2p")], left
    with pytest.raises(TransportError):
        await a.start()  # a stopped transport is not restarted


# ---- limits across identities: deadlines, eviction, the shared buffer budget -----------


async def _raw_stream(sender: Libp2pTransport, peer: str, data: bytes) -> Any:
    """Open a model stream from ``sender`` to ``peer`` and write ``data`` (no more)."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    async def open_and_write() -> Any:
        assert sender._host is not None
        stream = await sender._host.new_stream(ID.from_base58(peer), [TProtocol(MODEL_PROTOCOL)])
        await stream.write(data)
        return stream

    return await sender._call(open_and_write, timeout=LIMIT)  # white-box: in its trio thread


async def _read_status(sender: Libp2pTransport, stream: Any) -> Status:
    async def read() -> Status:
        return Status((await stream.read(1))[0])

    return await sender._call(read, timeout=LIMIT)


async def test_a_trickling_frame_is_cut_at_its_deadline_and_answered_busy() -> None:
    attacker = Libp2pTransport()
    victim = Libp2pTransport(frame_deadline_floor=1.0)
    _inbox(victim)
    async with asyncio.timeout(LIMIT), _running(attacker, victim):
        await attacker.connect(victim.addresses[0])
        started = time.monotonic()
        stream = await _raw_stream(attacker, victim.peer_id, pack_header(100, digest(b"")) + b"x")
        assert await _read_status(attacker, stream) is Status.BUSY
        assert 0.9 < time.monotonic() - started < 5.0  # the floor, not read_timeout (30 s)
        assert victim.rejected_counts() == {"FrameDeadline": 1}


async def test_a_slow_frame_loses_its_slot_to_an_honest_sender() -> None:
    attacker, honest = Libp2pTransport(), Libp2pTransport()
    victim = Libp2pTransport(max_inbound_streams=1, eviction_grace=0.5)
    inbox = _inbox(victim)
    async with asyncio.timeout(LIMIT), _running(attacker, honest, victim):
        await attacker.connect(victim.addresses[0])
        await honest.connect(victim.addresses[0])
        trickle = await _raw_stream(attacker, victim.peer_id, pack_header(2**26, digest(b"")))
        while not victim._slots.active:  # white-box: the trickle holds the only slot
            await asyncio.sleep(0.01)
        status = asyncio.create_task(_read_status(attacker, trickle))
        started = time.monotonic()
        await honest.send(victim.peer_id, MODEL_PROTOCOL, b"model")
        assert await inbox.get() == (honest.peer_id, b"model")
        assert time.monotonic() - started < 5.0  # not the trickle's 64 s deadline
        assert await status is Status.BUSY
        assert victim.rejected_counts() == {"SlowFrameEvicted": 1}


async def test_a_full_shared_buffer_answers_busy_not_broken() -> None:
    attacker, honest = Libp2pTransport(), Libp2pTransport()
    victim = Libp2pTransport(max_frame_bytes=2**20, max_buffered_bytes=2**20)
    inbox = _inbox(victim)
    async with asyncio.timeout(LIMIT), _running(attacker, honest, victim):
        await attacker.connect(victim.addresses[0])
        await honest.connect(victim.addresses[0])
        head = pack_header(2**20, digest(b""))
        await _raw_stream(attacker, victim.peer_id, head + bytes(900_000))
        while victim.limits.buffer.used < 900_000:  # white-box: wait until it is buffered
            await asyncio.sleep(0.01)
        with pytest.raises(ReceiverBusy):
            await honest.send(victim.peer_id, MODEL_PROTOCOL, os.urandom(200_000))
        await honest.send(victim.peer_id, MODEL_PROTOCOL, b"small fits")
        assert await inbox.get() == (honest.peer_id, b"small fits")
        assert victim.rejected_counts() == {"BufferFull": 1}


def test_buffer_limits_must_fit_a_whole_frame() -> None:
    with pytest.raises(ConfigError, match="max_buffered_bytes"):
        Libp2pTransport(max_frame_bytes=2**20, max_buffered_bytes=2**19)
    assert Libp2pTransport(max_frame_bytes=2**30).limits.buffer.limit == 2**31


def _connection(transport: Libp2pTransport, peer: str) -> object:
    """The (single) libp2p connection object to ``peer``: white-box, to detect redials."""
    host = transport._host
    assert host is not None
    matches = [c for pid, c in host.get_network().connections.items() if pid.to_base58() == peer]
    assert len(matches) == 1 and len(matches[0]) == 1
    return matches[0][0]


def test_a_failure_raised_with_a_cancellation_does_not_propagate_as_one_group() -> None:
    # a cancelled call whose shielded write then failed raises both at once (lab, partition):
    # only the cancellation may propagate, or the host's nursery (the transport) would end
    from gossiplearn.transport.libp2p import _split_cancelled

    stop, failure = KeyboardInterrupt(), TransportError("a write stalled for 30 s")
    cancelled, rest = _split_cancelled(BaseExceptionGroup("both", [stop, failure]))
    assert isinstance(cancelled, BaseExceptionGroup) and cancelled.exceptions == (stop,)
    assert isinstance(rest, BaseExceptionGroup) and rest.exceptions == (failure,)
    assert _split_cancelled(failure) == (None, failure)
    assert _split_cancelled(stop) == (stop, None)
