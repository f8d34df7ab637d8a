"""Tests of yamux flow control on the libp2p transport: a peer that writes raw yamux
frames beyond what the receiver granted (more than a stream's receive window, a frame no
window has room for, too many streams) has its connection closed, what it made the
receiver buffer stays within the window and is freed, and the receiver goes on serving
honest peers (real loopback peers, marked ``network``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, FLAG_SYN, Yamux, YamuxStream

from gossiplearn.transport.base import MODEL_PROTOCOL, TransportError
from gossiplearn.transport.libp2p import (
    _MAX_CONTROL_FRAMES,
    _MAX_INBOUND_STREAMS,
    _SHARED_FLOOR,
    Libp2pTransport,
    _SharedBuffers,
    _StreamBuffer,
    _Yamux,
)

LIMIT = 90.0  # seconds: the bound on every network test (the machine may be loaded)
DATA, WINDOW_UPDATE = 0, 1


class _NoConnection:
    """A secured connection that is never written to (the units below stay in memory)."""

    is_initiator = False


def _guarded(shared: _SharedBuffers | None = None) -> _Yamux:
    muxed = Yamux(_NoConnection(), ID(b"hostile"), is_initiator=False)  # type: ignore[arg-type]
    muxed.__class__ = _Yamux
    assert isinstance(muxed, _Yamux)
    muxed._guard(None, own_windows=True, shared=shared)
    return muxed


def _inbound(muxed: _Yamux, stream_id: int) -> YamuxStream:
    stream = YamuxStream(stream_id, muxed, False)
    muxed.streams[stream_id] = stream
    muxed.stream_buffers[stream_id] = bytearray()
    return stream


def test_data_within_the_window_is_buffered_unless_nobody_reads_it() -> None:
    muxed = _guarded()
    live, reset = _inbound(muxed, 2), _inbound(muxed, 4)
    reset.closed = reset.recv_closed = True  # as our reset leaves it
    muxed.stream_buffers[2].extend(b"a" * DEFAULT_WINDOW_SIZE)
    muxed.stream_buffers[4].extend(b"b" * 1000)  # in flight when the reset left: dropped
    assert [len(b) for b in muxed.stream_buffers.values()] == [DEFAULT_WINDOW_SIZE, 0]
    assert muxed._broken is None and not muxed.event_shutting_down.is_set()
    assert live.recv_window == DEFAULT_WINDOW_SIZE  # upstream charges it after extend


def test_a_byte_beyond_a_stream_window_breaks_the_connection_and_frees_its_buffers() -> None:
    muxed = _guarded()
    _inbound(muxed, 2)
    stingy = _inbound(muxed, 4)
    stingy.recv_window = 10
    muxed.stream_buffers[2].extend(b"a" * 1000)
    muxed.stream_buffers[4].extend(b"b" * 11)
    assert muxed._broken is not None and "had 10 left" in muxed._broken
    assert muxed.event_shutting_down.is_set()
    assert [len(b) for b in muxed.stream_buffers.values()] == [0, 0]
    muxed.stream_buffers[2].extend(b"a")  # nothing more is buffered once broken
    assert len(muxed.stream_buffers[2]) == 0


def test_too_many_inbound_streams_break_the_connection_but_our_own_do_not() -> None:
    muxed = _guarded()
    for i in range(_MAX_INBOUND_STREAMS):
        muxed.streams[2 * i + 1] = YamuxStream(2 * i + 1, muxed, True)  # ours
        _inbound(muxed, 2 * i + 2)
    assert muxed._broken is None
    _inbound(muxed, 2 * _MAX_INBOUND_STREAMS + 2)
    assert muxed._broken is not None and "streams" in muxed._broken


def test_streams_a_peer_resets_while_they_hold_bytes_still_count() -> None:
    # SYN with a window of data, then RST: upstream keeps such a stream and its buffer
    # for a minute or more, so a peer repeating it must run into the stream limit
    async def main() -> _Yamux:
        muxed = _guarded()
        for i in range(_MAX_INBOUND_STREAMS + 1):
            stream = _inbound(muxed, 2 * i + 2)
            if muxed._broken is not None:
                break
            muxed.stream_buffers[2 * i + 2].extend(b"x" * DEFAULT_WINDOW_SIZE)
            stream.recv_window -= DEFAULT_WINDOW_SIZE
            stream.closed = stream.reset_received = True  # the peer's RST
            muxed._finalize_stream_locked(stream, fully_closed=True)  # upstream keeps it
        return muxed

    muxed = trio.run(main)
    assert muxed._broken is not None and "streams" in muxed._broken
    assert sum(map(len, muxed.stream_buffers.values())) == 0


def test_bytes_buffered_over_all_streams_are_capped() -> None:
    muxed = _guarded()
    muxed._max_buffered = 3 * DEFAULT_WINDOW_SIZE
    for sid in (2, 4, 6):
        _inbound(muxed, sid)
        muxed.stream_buffers[sid].extend(b"x" * DEFAULT_WINDOW_SIZE)
    assert muxed._broken is None
    _inbound(muxed, 8)
    muxed.stream_buffers[8].extend(b"x")
    assert muxed._broken is not None and "more than" in muxed._broken
    assert sum(map(len, muxed.stream_buffers.values())) == 0


def _fill(muxed: _Yamux, first_stream: int, windows: int) -> None:
    """Open ``windows`` inbound streams on ``muxed``, each buffering a full window."""
    for sid in range(first_stream, first_stream + 2 * windows, 2):
        _inbound(muxed, sid)
        muxed.stream_buffers[sid].extend(b"x" * DEFAULT_WINDOW_SIZE)


def test_connections_together_are_capped_and_the_one_holding_the_most_is_closed() -> None:
    # each connection is far below its own cap: only the shared one stops them
    shared = _SharedBuffers(8 * DEFAULT_WINDOW_SIZE)
    greedy, modest, newcomer = _guarded(shared), _guarded(shared), _guarded(shared)
    _fill(greedy, 2, 5)
    _fill(modest, 2, 3)
    assert greedy._broken is None and modest._broken is None
    _fill(newcomer, 2, 3)  # its third window (past the floor) makes 11: the greedy one goes
    assert greedy._broken is not None and "the most of any connection" in greedy._broken
    assert sum(map(len, greedy.stream_buffers.values())) == 0
    assert modest._broken is None and newcomer._broken is None
    assert sum(map(len, newcomer.stream_buffers.values())) == 3 * DEFAULT_WINDOW_SIZE
    assert sum(map(len, modest.stream_buffers.values())) == 3 * DEFAULT_WINDOW_SIZE


def test_a_connection_that_would_hold_the_most_past_the_shared_cap_is_closed_itself() -> None:
    shared = _SharedBuffers(4 * DEFAULT_WINDOW_SIZE)
    honest, hostile = _guarded(shared), _guarded(shared)
    _fill(honest, 2, 2)
    _fill(hostile, 2, 3)  # its third window would make 5: it holds the most
    assert hostile._broken is not None and "the most of any connection" in hostile._broken
    assert sum(map(len, hostile.stream_buffers.values())) == 0
    assert honest._broken is None
    assert sum(map(len, honest.stream_buffers.values())) == 2 * DEFAULT_WINDOW_SIZE


def test_bytes_read_since_are_not_held_against_a_connection() -> None:
    shared = _SharedBuffers(4 * DEFAULT_WINDOW_SIZE)
    reader, other = _guarded(shared), _guarded(shared)
    _fill(reader, 2, 4)
    for buffer in reader.stream_buffers.values():
        buffer.clear()  # its handlers read everything
    _fill(other, 2, 4)  # 8 windows were buffered, but never more than 4 at once
    assert reader._broken is None and other._broken is None


def test_connections_below_the_shared_floor_are_not_charged() -> None:
    shared = _SharedBuffers(1)  # smaller than any honest connection's first bytes
    conns = [_guarded(shared) for _ in range(4)]
    for muxed in conns:
        _fill(muxed, 2, _SHARED_FLOOR // DEFAULT_WINDOW_SIZE)
    assert all(muxed._broken is None for muxed in conns)


def test_control_frames_a_peer_leaves_unread_are_bounded() -> None:
    async def main() -> _Yamux:
        muxed = _guarded()
        muxed._control, _receive = trio.open_memory_channel[bytes](math.inf)
        muxed._reader_task = trio.lowlevel.current_task()  # as if reading the connection
        for _ in range(_MAX_CONTROL_FRAMES + 5):
            await muxed._write_frame(b"\0" * 12)  # pongs nobody reads
        assert _receive.statistics().current_buffer_used == _MAX_CONTROL_FRAMES
        return muxed

    muxed = trio.run(main)
    assert muxed._broken is not None and "control frames" in muxed._broken


def _frame(kind: int, flags: int, stream_id: int, length: int, body: bytes = b"") -> bytes:
    return struct.pack("!BBHII", 0, kind, flags, stream_id, length) + body


def _inbox(transport: Libp2pTransport) -> asyncio.Queue[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(sender: str, payload: bytes) -> None:
        await queue.put(payload)

    transport.set_handler(MODEL_PROTOCOL, handler)
    return queue


async def _write_raw(attacker: Libp2pTransport, victim: str, frames: Any) -> None:
    """From ``attacker``'s trio thread: write yamux frames straight onto its secured
    connection to ``victim``, below the stream API (no window is waited for)."""

    async def write() -> None:
        assert attacker._host is not None
        (conn,) = attacker._host.get_network().get_connections(ID.from_base58(victim))
        muxed = conn.muxed_conn
        assert isinstance(muxed, _Yamux)
        first = muxed.next_stream_id
        muxed.next_stream_id += 2 * 1000  # stream ids of our own that no stream uses
        await muxed._write_frame(frames(first))

    await attacker._call(write, timeout=LIMIT)


def _buffered(transport: Libp2pTransport) -> int:
    """Bytes all yamux connections of ``transport`` hold in their receive buffers."""
    assert transport._host is not None
    return sum(
        len(buffer)
        for conn in transport._host.get_network().get_connections()
        for buffer in getattr(conn.muxed_conn, "stream_buffers", {}).values()
    )


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.05)


BEYOND_THE_WINDOW = {
    # 200 KiB opening a stream, then 200 KiB more: past its 256 KiB window (checked
    # before the second is buffered; nobody reads the stream: it never negotiated)
    "frame beyond its stream's window": lambda sid: (
        _frame(DATA, FLAG_SYN, sid, 200 * 1024, b"\xff" * 200 * 1024)
        + _frame(DATA, 0, sid, 200 * 1024, b"\xff" * 200 * 1024)
    ),
    # one frame announcing 1 MiB: refused from its header, the body never read
    "frame larger than any window": lambda sid: _frame(DATA, FLAG_SYN, sid, 2**20),
    # streams opened and never used, each allowed to buffer a window
    "too many streams": lambda sid: b"".join(
        _frame(WINDOW_UPDATE, FLAG_SYN, sid + 2 * i, 0) for i in range(_MAX_INBOUND_STREAMS + 1)
    ),
}


@pytest.mark.network
@pytest.mark.parametrize("attack", list(BEYOND_THE_WINDOW))
async def test_a_peer_beyond_its_yamux_window_is_cut_off_and_others_still_served(
    attack: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    victim, attacker, honest = Libp2pTransport(), Libp2pTransport(), Libp2pTransport()
    inbox = _inbox(victim)
    peak: list[int] = [0]
    extend = _StreamBuffer.extend

    def watched(self: _StreamBuffer, data: Any) -> None:
        extend(self, data)
        peak[0] = max(peak[0], sum(len(b) for b in self.conn.stream_buffers.values()))

    monkeypatch.setattr(_StreamBuffer, "extend", watched)
    caplog.set_level(logging.WARNING, logger="gossiplearn.transport")
    async with asyncio.timeout(3 * LIMIT):
        for peer in (victim, attacker, honest):
            await peer.start()
        try:
            await attacker.connect(victim.addresses[0])
            await _write_raw(attacker, victim.peer_id, BEYOND_THE_WINDOW[attack])
            await _until(lambda: attacker.peer_id not in victim.connected_peers())
            await _until(lambda: victim.rejected_counts().get("WindowExceeded"))
            assert victim.rejected_counts() == {"WindowExceeded": 1}
            assert peak[0] <= DEFAULT_WINDOW_SIZE  # never more than the window granted
            assert _buffered(victim) == 0
            warnings = [r for r in caplog.records if attacker.peer_id in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING

            payload = os.urandom(20 * 2**20)  # an honest peer's model still arrives
            await honest.connect(victim.addresses[0])
            await honest.send(victim.peer_id, MODEL_PROTOCOL, payload)
            assert await inbox.get() == payload
            assert victim.rejected_counts() == {"WindowExceeded": 1}
        finally:
            for peer in (victim, attacker, honest):
                await peer.stop()


def _streams_with_data(streams: int, size: int) -> Any:
    """Raw yamux frames opening ``streams`` streams, each with ``size`` bytes of data that
    nobody reads (within the stream's window: no per-connection rule is broken)."""
    return lambda sid: b"".join(
        _frame(DATA, FLAG_SYN, sid + 2 * i, size, b"\xff" * size) for i in range(streams)
    )


@pytest.mark.network
async def test_fresh_identities_cannot_make_a_peer_buffer_more_than_its_shared_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each attacker stays within every per-connection rule and, alone, within the shared
    # cap (15 streams x 200 KiB, far below 128 streams and the 112 MiB an honest
    # connection may hold); together they would make the victim hold 9 MiB
    limit = 4 * 2**20
    victim = Libp2pTransport(max_frame_bytes=limit, max_buffered_bytes=limit)
    attackers = [Libp2pTransport() for _ in range(3)]
    honest = Libp2pTransport()
    inbox = _inbox(victim)
    peak: list[int] = [0]
    extend = _StreamBuffer.extend

    def watched(self: _StreamBuffer, data: Any) -> None:
        extend(self, data)
        if self.conn.peer_id != ID.from_base58(honest.peer_id):
            peak[0] = max(peak[0], _buffered(victim))

    monkeypatch.setattr(_StreamBuffer, "extend", watched)
    peers = [victim, honest, *attackers]
    async with asyncio.timeout(3 * LIMIT):
        for peer in peers:
            await peer.start()
        try:
            for attacker in attackers:
                await attacker.connect(victim.addresses[0])
                with contextlib.suppress(TransportError):  # cut off while it writes
                    await _write_raw(attacker, victim.peer_id, _streams_with_data(15, 200 * 1024))
            # the cap, plus what each connection may hold below the shared floor
            bound = limit + len(attackers) * _SHARED_FLOOR
            await _until(
                lambda: victim.rejected_counts().get("WindowExceeded", 0) >= 2 or peak[0] > bound
            )
            assert peak[0] <= bound
            assert _buffered(victim) <= limit
            await _until(lambda: sum(a.peer_id in victim.connected_peers() for a in attackers) <= 1)

            payload = os.urandom(3 * 2**20)  # an honest peer's model still arrives
            await honest.connect(victim.addresses[0])
            await honest.send(victim.peer_id, MODEL_PROTOCOL, payload)
            assert await inbox.get() == payload
        finally:
            for peer in peers:
                await peer.stop()
