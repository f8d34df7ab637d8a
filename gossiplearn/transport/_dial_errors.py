"""Say what went wrong when a dial or a stream to a peer fails, and what to try.

py-libp2p 0.8.1 reports every failed dial as ``SwarmDialAllFailedError: unable to connect
to <id>, no addresses established a successful connection`` caused by a ``MultiError``
whose entries read ``fail to open connection to peer <id>``; the real reason lies several
causes deep (measured: ``ConnectionRefusedError`` inside an ``ExceptionGroup`` inside an
``OSError`` inside ``OpenConnectionError``; ``PeerIDMismatchesPubkey`` inside
``SecurityUpgradeFailure``; ``MultiselectClientError`` when the other end does not speak
Noise; ``SwarmException: No known addresses`` when nothing was ever dialled). This module
walks the whole chain and names the first cause it recognises.

It imports neither trio nor libp2p: exceptions are recognised by their type names and
errno values, so it can be tested with plain exceptions.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["DialFailure", "chain", "classify"]


@dataclass(frozen=True)
class DialFailure:
    """Why a connection failed (``kind``), in words, with a hint of what to try."""

    kind: str  # refused, timeout, unreachable, wrong-peer-id, no-address, security,
    # protocol, broken, closed
    reason: str
    hint: str

    def text(self) -> str:
        return f"{self.reason}; {self.hint}" if self.hint else self.reason


_HINTS = {
    "refused": (
        "connection refused: nothing listens on that port",
        "is the peer running, with this --listen port, and is the address the one it "
        "printed (or its --announce address)?",
    ),
    "timeout": (
        "timed out: no answer from that address",
        "a firewall may drop the traffic, the address may be private or behind NAT (the "
        "peer should give --announce with an address others can reach), or the network "
        "is partitioned",
    ),
    "unreachable": (
        "no route to that host or network",
        "check the address (a private or link-local address of another network?) and "
        "this machine's routes",
    ),
    "wrong-peer-id": (
        "wrong peer id: a peer answers at that address with another identity",
        "the peer restarted with a new key (give it --identity FILE to keep its id) or "
        "the address now belongs to another peer; use the /p2p/ id it prints now",
    ),
    "no-address": (
        "no address known for this peer",
        "dial it first with a full multiaddr (/ip4/HOST/tcp/PORT/p2p/ID)",
    ),
    "security": (
        "security negotiation failed: the other end does not speak libp2p with Noise",
        "is that port another service, or a libp2p node without Noise encryption?",
    ),
    "protocol": (
        "the peer does not speak this protocol",
        "it may be a gossiplearn relay (a bootstrap and relay node that trains nothing), "
        "another application, or a gossiplearn version without it",
    ),
    "broken": (
        "the connection to the peer broke",
        "the peer stopped, or the network between us failed (a partition?)",
    ),
    "closed": (
        "the connection closed during the handshake",
        "the peer may be stopping, overloaded, or refusing this peer",
    ),
}

_TIMEOUT_NAMES = {"TimeoutError", "TooSlowError", "timeout", "ReadTimeout"}
_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}
_TIMED_OUT = {errno.ETIMEDOUT}
_CLOSED = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
#: A stream on a connection that died (py-libp2p's yamux and network streams).
_BROKEN_NAMES = {"StreamEOF", "StreamReset", "MuxedStreamEOF", "MuxedStreamReset",
                 "MuxedConnUnavailable", "StreamClosed"}  # fmt: skip


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything inside it: causes, contexts, exception groups and libp2p's
    MultiError entries, depth first, each once."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[BaseException] = []
        if isinstance(current, BaseExceptionGroup):
            inner.extend(current.exceptions)
        entries = getattr(current, "errors", None)
        if isinstance(entries, list | tuple):
            inner.extend(e for e in entries if isinstance(e, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                inner.append(linked)
        stack.extend(reversed(inner))


def _kind_of(error: BaseException) -> str | None:
    name = type(error).__name__
    text = str(error).lower()
    code = getattr(error, "errno", None)
    if isinstance(error, ConnectionRefusedError) or code in _REFUSED:
        return "refused"
    if code in _UNREACHABLE:
        return "unreachable"
    if name in _TIMEOUT_NAMES or code in _TIMED_OUT or "timed out" in text:
        return "timeout"
    if name == "PeerIDMismatchesPubkey" or "does not correspond to the received pubkey" in text:
        return "wrong-peer-id"
    if "no known addresses" in text:
        return "no-address"
    if "failed to negotiate the secure protocol" in text:
        return "security"
    if name.startswith("Multiselect"):
        return _multiselect_kind(text)
    if name in _BROKEN_NAMES:
        return "broken"
    if code in _CLOSED or isinstance(error, ConnectionResetError | BrokenPipeError):
        return "closed"
    return None


#: What py-libp2p's Multiselect errors say when the connection under them died.
_BROKEN_WORDS = ("read failed", "write failed", "fail to read", "fail to write")


def _multiselect_kind(text: str) -> str:
    """py-libp2p raises Multiselect errors when the other end speaks another protocol (a
    security mismatch, or "protocols not supported" for an application protocol) and when
    the connection dies mid-negotiation, as it does in a partition ("handshake read
    failed: ...")."""
    if any(words in text for words in _BROKEN_WORDS):
        return "broken"
    if "not supported" in text:  # the answer "na" to a protocol after the handshake
        return "protocol"
    return "security"


#: When several causes are present, the most specific wins. A timeout outranks a failed
#: negotiation: a handshake cut short by the deadline (a slow or overloaded peer) also
#: leaves a multiselect error in the chain, and the deadline is what happened.
_PRIORITY = ("wrong-peer-id", "no-address", "refused", "unreachable", "timeout", "protocol",
             "security", "broken", "closed")  # fmt: skip


def classify(error: BaseException) -> DialFailure | None:
    """What ``error`` (from a dial or a stream open) means, or None if not recognised."""
    kinds = {kind for e in chain(error) if (kind := _kind_of(e)) is not None}
    for kind in _PRIORITY:
        if kind in kinds:
            reason, hint = _HINTS[kind]
            return DialFailure(kind, reason, hint)
    return None


def explain(error: BaseException, fallback: str) -> str:
    """One line for a user: the classified reason and hint, or ``fallback``."""
    failure = classify(error)
    return failure.text() if failure is not None else fallback
