"""Dial failures are named (refused, timed out, wrong peer id, ...) with a hint."""

from __future__ import annotations

import errno

import pytest

from gossiplearn.errors import ConfigError
from gossiplearn.transport._dial_errors import classify, explain


class SwarmDialAllFailedError(Exception):
    pass


class MultiError(Exception):
    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(errors)
        self.errors = errors


class PeerIDMismatchesPubkey(Exception):
    pass


class MultiselectClientError(Exception):
    pass


class MultiselectCommunicatorError(Exception):
    pass


class StreamEOF(Exception):
    pass


def wrapped(inner: BaseException) -> Exception:
    """Shaped like py-libp2p 0.8.1's chain: Swarm... from MultiError([... from inner])."""
    entry = RuntimeError("fail to open connection to peer 12D3...")
    entry.__cause__ = OSError("all attempts to connect failed")
    entry.__cause__.__cause__ = ExceptionGroup("attempts", [inner])  # type: ignore[type-var]
    outer = SwarmDialAllFailedError("unable to connect to 12D3..., no addresses ...")
    outer.__cause__ = MultiError([entry])
    return outer


@pytest.mark.parametrize(
    ("inner", "kind", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused", "--listen port"),
        (TimeoutError(), "timeout", "--announce"),
        (OSError(errno.EHOSTUNREACH, "no route"), "unreachable", "routes"),
        (PeerIDMismatchesPubkey("peer id does not correspond"), "wrong-peer-id", "--identity"),
        (RuntimeError("failed to negotiate the secure protocol"), "security", "Noise"),
        (RuntimeError("No known addresses to peer 12D3..."), "no-address", "/p2p/ID"),
        (MultiselectClientError("handshake read failed: EOF"), "broken", "partition"),
        (MultiselectClientError("multiselect protocol ID mismatch"), "security", "Noise"),
        (
            MultiselectClientError("protocols not supported: tried ['/gossiplearn/model/1']"),
            "protocol",
            "relay",
        ),
        (StreamEOF("Stream closed"), "broken", "partition"),
        (
            MultiselectCommunicatorError("fail to read from multiselect communicator"),
            "broken",
            "partition",
        ),
    ],
)
def test_the_cause_deep_in_a_libp2p_chain_is_named(inner: Exception, kind: str, words: str) -> None:
    failure = classify(wrapped(inner))
    assert failure is not None and failure.kind == kind
    assert words in failure.text()


def test_a_handshake_cut_short_by_the_deadline_is_a_timeout() -> None:
    negotiation = RuntimeError("failed to negotiate the secure protocol")
    negotiation.__context__ = TimeoutError()
    failure = classify(wrapped(negotiation))
    assert failure is not None and failure.kind == "timeout"


def test_an_unknown_error_keeps_its_own_text() -> None:
    assert classify(ValueError("odd")) is None
    assert explain(ValueError("odd"), "fallback text") == "fallback text"


def test_announce_addresses_are_checked_and_named() -> None:
    pytest.importorskip("libp2p")
    from gossiplearn.transport.libp2p import Libp2pTransport, check_announce

    assert check_announce("/ip4/203.0.113.7/tcp/4001") == "/ip4/203.0.113.7/tcp/4001"
    for bad in ("not-a-multiaddr", "/ip4/1.2.3.4/udp/4001", "/ip4/0.0.0.0/tcp/4001"):
        with pytest.raises(ConfigError, match="--announce"):
            check_announce(bad)
    transport = Libp2pTransport(announce=["/dns4/peer.example.org/tcp/4001"])
    assert transport.addresses == [f"/dns4/peer.example.org/tcp/4001/p2p/{transport.peer_id}"]


def test_wildcards_expand_to_usable_addresses_only() -> None:
    pytest.importorskip("libp2p")
    import multiaddr

    from gossiplearn.transport._addresses import usable as _usable

    assert not _usable(multiaddr.Multiaddr("/ip6/fe80::1/tcp/4001"))
    assert not _usable(multiaddr.Multiaddr("/ip6/::/tcp/4001"))
    assert _usable(multiaddr.Multiaddr("/ip6/2001:db8::1/tcp/4001"))
    assert _usable(multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/4001"))


def test_a_stream_on_a_connection_cut_by_a_partition_is_not_called_a_security_failure() -> None:
    # the chain measured in the lab when a partition cut a connection (tests/lab/)
    eof = StreamEOF("")
    eof.__cause__ = RuntimeError("Stream closed")
    communicator = MultiselectCommunicatorError("fail to read from multiselect communicator")
    communicator.__cause__ = eof
    client = MultiselectClientError("handshake read failed: fail to read from multiselect")
    client.__cause__ = communicator
    outer = RuntimeError("failed to open a stream to peer 12D3...")
    outer.__cause__ = client
    failure = classify(outer)
    assert failure is not None and failure.kind == "broken", failure


def test_a_peer_never_tells_or_dials_a_wildcard_and_dials_what_worked_first() -> None:
    pytest.importorskip("libp2p")
    from multiaddr import Multiaddr

    from gossiplearn.transport._addresses import advertised, dial_order

    told = advertised([Multiaddr("/ip4/0.0.0.0/tcp/4001")])
    assert told and all("0.0.0.0" not in str(a) for a in told)  # interface addresses
    peer = "/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    known = [Multiaddr(f"/ip4/0.0.0.0/tcp/4001{peer}"), Multiaddr(f"/ip4/10.0.0.9/tcp/4001{peer}")]
    worked = Multiaddr("/ip4/10.0.0.7/tcp/4001")
    assert dial_order(known, worked) == [worked, known[1]]
    assert dial_order(known, Multiaddr("/ip4/10.0.0.9/tcp/4001")) == [
        Multiaddr("/ip4/10.0.0.9/tcp/4001")
    ]
