"""Our framing on a byte stream: a fixed header, then the payload.

How it works: a frame is a 48-byte header followed by ``length`` payload bytes::

    magic  b"GLFR"   4 bytes
    version          1 byte   (FRAME_VERSION)
    reserved         3 bytes  (zero)
    length           8 bytes  unsigned, big-endian
    digest          32 bytes  BLAKE2b-256 of the payload

:class:`FrameReader` turns arbitrary chunks of a byte stream back into payloads.
Invariants: the size limit is checked on the header, before any payload buffer is
allocated; the payload is held as the pieces that arrived (a header is a claim, not a
reservation: announcing 64 MiB and sending one byte holds one byte), each piece taken
from an optional shared :class:`Budget` first and given back when the frame ends, however
it ends; the digest is updated chunk by chunk and checked when the last byte arrives,
and only then are the pieces joined, in one copy (immutable ``bytes`` chunks are held as
views, never copied on arrival; mutable ones are copied, since their owner may reuse them);
after any :class:`FrameError` the reader is poisoned and raises again, since the stream
position is no longer trustworthy.

A receiver answers each frame with one status byte (:class:`Status`), so a sender knows
the frame arrived intact. Pure functions and classes: no I/O, no event loop.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gossiplearn.transport.base import TransportError

MAGIC = b"GLFR"
FRAME_VERSION = 1
DIGEST_SIZE = 32
_HEADER = struct.Struct(">4sB3xQ32s")
HEADER_SIZE = _HEADER.size  # 48
#: Default bound on one payload (256 MiB); larger frames are rejected from their header.
DEFAULT_MAX_FRAME_BYTES = 256 * 2**20


class FrameError(TransportError):
    """The bytes on a stream are not a valid gossiplearn frame."""


class FrameTooLarge(FrameError):
    """A frame announces (or a caller tries to send) more bytes than the limit allows."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"frame of {length} bytes exceeds the limit of {limit} bytes "
            "(raise max_frame_bytes on the receiving transport to accept it)"
        )
        self.length = length
        self.limit = limit


class FrameRefused(FrameError):
    """The receiver will not take this frame now (too many streams, over its rate, its
    buffers full, or the frame too slow); ``reason`` names the limit, as counted."""

    def __init__(self, message: str, reason: str = "Refused") -> None:
        super().__init__(message)
        self.reason = reason


class Budget(Protocol):
    """Bytes shared by many readers (e.g. all inbound frames of a transport)."""

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` bytes; False (nothing reserved) if that is over the limit."""
        ...

    def give(self, amount: int) -> None:
        """Return ``amount`` bytes reserved earlier."""
        ...


class Status(enum.IntEnum):
    """The one-byte answer a receiver sends after a frame."""

    OK = 0
    TOO_LARGE = 1
    CORRUPT = 2
    NO_HANDLER = 3
    BUSY = 4

    def describe(self) -> str:
        """A human-readable reason, for error messages on the sending side."""
        return _STATUS_TEXT[self]


_STATUS_TEXT = {
    Status.OK: "delivered",
    Status.TOO_LARGE: "rejected: frame larger than the receiver's max_frame_bytes",
    Status.CORRUPT: "rejected: corrupt frame (bad magic, version or digest)",
    Status.NO_HANDLER: "rejected: no handler for this protocol on the receiver",
    Status.BUSY: (
        "refused: the receiver is busy (over its stream, byte, buffer or time limits; "
        "the frame was too slow or too many arrived at once): try again later"
    ),
}


def new_hasher() -> hashlib.blake2b:
    """An incremental BLAKE2b-256, for payloads hashed in pieces."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def digest(payload: bytes | bytearray | memoryview) -> bytes:
    """BLAKE2b-256 of ``payload`` (the integrity check carried in every header)."""
    return hashlib.blake2b(payload, digest_size=DIGEST_SIZE).digest()


def pack_header(length: int, payload_digest: bytes, max_frame_bytes: int | None = None) -> bytes:
    """The header of a ``length``-byte payload whose digest is ``payload_digest``."""
    if max_frame_bytes is not None and length > max_frame_bytes:
        raise FrameTooLarge(length, max_frame_bytes)
    if len(payload_digest) != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes, got {len(payload_digest)}")
    return _HEADER.pack(MAGIC, FRAME_VERSION, length, payload_digest)


def encode_header(
    payload: bytes | bytearray | memoryview, max_frame_bytes: int | None = None
) -> bytes:
    """The header for ``payload``; raises :class:`FrameTooLarge` above ``max_frame_bytes``."""
    if max_frame_bytes is not None and len(payload) > max_frame_bytes:
        raise FrameTooLarge(len(payload), max_frame_bytes)
    return pack_header(len(payload), digest(payload))


def encode_frame(payload: bytes, max_frame_bytes: int | None = None) -> bytes:
    """Header and payload in one buffer (copies the payload; prefer :func:`encode_header`
    followed by a separate write of the payload for large messages)."""
    return encode_header(payload, max_frame_bytes) + payload


@dataclass(frozen=True)
class FrameHeader:
    """A decoded, validated header."""

    length: int
    digest: bytes


def decode_header(data: bytes | bytearray | memoryview, max_frame_bytes: int) -> FrameHeader:
    """Parse and validate a :data:`HEADER_SIZE`-byte header.

    Raises :class:`FrameError` on a bad magic or version, :class:`FrameTooLarge` when the
    announced length exceeds ``max_frame_bytes``.
    """
    if len(data) != HEADER_SIZE:
        raise FrameError(f"frame header must be {HEADER_SIZE} bytes, got {len(data)}")
    magic, version, length, expected = _HEADER.unpack(data)
    if magic != MAGIC:
        raise FrameError(
            f"bad frame magic {bytes(magic)!r} (expected {MAGIC!r}): not a gossiplearn peer?"
        )
    if version != FRAME_VERSION:
        raise FrameError(f"unsupported frame version {version} (this peer speaks {FRAME_VERSION})")
    if length > max_frame_bytes:
        raise FrameTooLarge(length, max_frame_bytes)
    return FrameHeader(length, bytes(expected))


class FrameReader:
    """Reassemble frames from chunks of any size.

    ``feed(chunk)`` returns the payloads completed by that chunk (usually none or one).
    ``wanted`` tells a reader loop how many bytes complete the current header or payload,
    so it never needs to read past a frame; ``close()`` at end of stream raises if a frame
    was cut short. ``admit(length)``, if given, is called with each announced payload
    length before any payload byte is buffered, and may refuse it by raising
    :class:`FrameRefused`. ``budget``, if given, is asked for every payload byte before
    it is buffered (a refusal raises :class:`FrameRefused`, reason ``BufferFull``) and
    gets all of them back when the frame completes or fails, or on :meth:`discard`.
    """

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        admit: Callable[[int], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        if max_frame_bytes < 0:
            raise ValueError("max_frame_bytes must be >= 0")
        self.max_frame_bytes = max_frame_bytes
        self.admit = admit
        self.budget = budget
        self._header = bytearray()
        self._frame: FrameHeader | None = None
        self._pieces: list[bytes | memoryview] | None = None
        self._filled = 0  # payload bytes of the current frame held in ``_pieces``
        self._held = 0  # bytes taken from the budget for the current frame
        self._hasher: hashlib.blake2b | None = None
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Payload bytes of the unfinished frame held in memory (taken from the budget)."""
        return self._held

    @property
    def header(self) -> FrameHeader | None:
        """The header of the frame being received, once it is complete."""
        return self._frame

    @property
    def in_frame(self) -> bool:
        """Whether some bytes of an unfinished frame have been fed."""
        return bool(self._header) or self._frame is not None

    @property
    def received(self) -> int:
        """Bytes of the current, unfinished frame fed so far (header included)."""
        if self._frame is None:
            return len(self._header)
        return HEADER_SIZE + self._filled

    @property
    def wanted(self) -> int:
        """Bytes still needed to finish the current header or payload (> 0)."""
        if self._frame is None:
            return HEADER_SIZE - len(self._header)
        return self._frame.length - self._filled

    def discard(self) -> None:
        """Drop the unfinished frame and return its bytes to the budget (idempotent); the
        reader is poisoned, since the stream is abandoned mid-frame."""
        if self._error is None:
            self._error = FrameError("the frame was abandoned by its reader")
        self._release()

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Consume ``chunk``; return every payload it completes, in order.

        A ``bytes`` chunk is kept by reference until its frame completes (no copy); a
        ``bytearray`` or ``memoryview`` is copied, so its owner may reuse it at once.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._feed(memoryview(chunk).cast("B"), isinstance(chunk, bytes))
        except FrameError as error:
            self._error = error
            self._release()
            raise

    def close(self) -> None:
        """Declare end of stream; raises :class:`FrameError` if a frame is incomplete."""
        if self._error is not None:
            raise self._error
        if self.in_frame:
            if self._frame is None:
                got, need = len(self._header), HEADER_SIZE
                what = "header"
            else:
                got, need = self._filled, self._frame.length
                what = "payload"
            self._error = FrameError(f"stream ended inside a frame {what}: {got} of {need} bytes")
            self._release()
            raise self._error

    def _feed(self, data: memoryview, immutable: bool) -> list[bytes]:
        done: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end or (self._frame is not None and self._frame.length == 0):
            if self._frame is None:
                take = min(HEADER_SIZE - len(self._header), end - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) < HEADER_SIZE:
                    break
                self._start(decode_header(self._header, self.max_frame_bytes))
                continue
            assert self._pieces is not None and self._hasher is not None
            take = min(self._frame.length - self._filled, end - pos)
            self._grow(take)
            piece = data[pos : pos + take] if immutable else data[pos : pos + take].tobytes()
            self._hasher.update(piece)
            self._pieces.append(piece)
            self._filled += take
            pos += take
            if self._filled == self._frame.length:
                done.append(self._finish())
        return done

    def _start(self, header: FrameHeader) -> None:
        if self.admit is not None:
            self.admit(header.length)  # may raise FrameRefused: nothing buffered yet
        self._frame = header
        self._pieces = []  # grows with what arrives, never with what is announced
        self._filled = 0
        self._hasher = new_hasher()

    def _grow(self, amount: int) -> None:
        """Take ``amount`` more payload bytes from the budget before buffering them."""
        if self.budget is None or amount == 0:
            return
        if not self.budget.take(amount):
            raise FrameRefused(
                f"the receiver's inbound buffers are full ({amount} more bytes refused); "
                "raise max_buffered_bytes on the receiving transport if this is honest load",
                reason="BufferFull",
            )
        self._held += amount

    def _finish(self) -> bytes:
        assert self._frame is not None and self._hasher is not None and self._pieces is not None
        if self._hasher.digest() != self._frame.digest:
            raise FrameError(f"frame digest mismatch on a {self._frame.length}-byte payload")
        pieces = self._pieces
        whole = pieces[0].obj if len(pieces) == 1 and isinstance(pieces[0], memoryview) else None
        if isinstance(whole, bytes) and len(whole) == self._frame.length:
            payload = whole  # the frame came in one chunk of exactly its payload
        else:
            payload = b"".join(pieces)
        self._release()
        return payload

    def _release(self) -> None:
        if self._held and self.budget is not None:
            self.budget.give(self._held)
        self._held = 0
        self._header = bytearray()
        self._frame = None
        self._pieces = None
        self._filled = 0
        self._hasher = None


def chunks(payload: bytes, size: int) -> Iterator[memoryview]:
    """Zero-copy slices of ``payload`` of at most ``size`` bytes (for chunked writes)."""
    view = memoryview(payload)
    for start in range(0, len(payload), size):
        yield view[start : start + size]
