"""Signed records: what a peer asserts about itself, relayed by others, unforgeable.

Records that travel on behalf of a third party -- a SybilWall history (the origin's model
of some round), a MoDeST membership change (JOIN/LEAVE number ``index``) -- carry the
origin's Ed25519 signature over a canonical encoding (:func:`history_statement`,
:func:`membership_statement`). A receiver checks it with a :class:`Verifier` before it
stores or relays the record, so no peer can forge another's history or membership.

A peer id is bound to its key:

* libp2p peers: the peer id *is* the public key (an identity multihash of an Ed25519 key,
  the ``12D3KooW...`` ids), so :class:`PeerIdVerifier` reads the key out of the origin id
  itself and a record signed by any other key fails;
* the simulator: :class:`SeedKeys` derives every peer's key from the run seed and the
  peer id (runs stay reproducible), and its verifier derives the public key the same way.

Cores stay sans-I/O: they are given a :class:`Signer` and a :class:`Verifier`. Verifiers
cache their verdicts by (origin, statement, signature), so a record relayed to many
peers of one simulation is checked once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgpack
import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gossiplearn.types import Params, PeerId

#: Bytes of an Ed25519 signature; an empty signature means "unsigned".
SIGNATURE_BYTES = 64
#: Distinct verdicts a verifier remembers (least recently used forgotten first).
CACHE_SIZE = 65_536
_HISTORY = "gossiplearn/history/1"
_MEMBERSHIP = "gossiplearn/membership/1"
#: An Ed25519 libp2p peer id: identity multihash (0x00, length 36) of the protobuf
#: PublicKey {Type: Ed25519 (0x08 0x01), Data: 32 bytes (0x12 0x20)}.
_ED25519_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VALUE = {c: i for i, c in enumerate(_BASE58)}


class Signer(Protocol):
    """Signs statements as ``peer_id``."""

    @property
    def peer_id(self) -> PeerId: ...

    def sign(self, statement: bytes) -> bytes:
        """The 64-byte signature of ``statement``."""
        ...


class Verifier(Protocol):
    def verify(self, origin: PeerId, statement: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``origin``'s over ``statement``; never raises."""
        ...


# ---- canonical statements ----------------------------------------------------------


def params_digest(params: Params) -> bytes:
    """SHA-256 over tensor names, dtypes, shapes and little-endian C-order bytes."""
    hasher = hashlib.sha256()  # the fastest of hashlib's secure hashes where SHA-NI exists
    for name, value in params.items():
        array = np.asarray(value)
        wire = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        header = msgpack.packb([name, wire.dtype.str, list(wire.shape)], use_bin_type=True)
        hasher.update(len(header).to_bytes(4, "little") + header)
        hasher.update(wire.reshape(-1).view(np.uint8).data)
    return hasher.digest()


def history_statement(origin: PeerId, round_: int, digest: bytes) -> bytes:
    """What ``origin`` signs for its model (history) of round ``round_``."""
    return msgpack.packb([_HISTORY, origin, round_, digest], use_bin_type=True)


def membership_statement(origin: PeerId, index: int, status: int) -> bytes:
    """What ``origin`` signs for its membership change number ``index`` (0 JOIN, 1 LEAVE)."""
    return msgpack.packb([_MEMBERSHIP, origin, index, int(status)], use_bin_type=True)


# ---- a verdict cache shared by the verifiers ----------------------------------------


class _Verdicts:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, bool] = OrderedDict()

    def check(
        self, origin: PeerId, statement: bytes, signature: bytes, verify: Callable[[], bool]
    ) -> bool:
        key = hashlib.blake2b(
            msgpack.packb([origin, statement, signature], use_bin_type=True), digest_size=16
        ).digest()
        verdict = self._seen.get(key)
        if verdict is None:
            verdict = verify()
            self._seen[key] = verdict
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        return verdict


def _verify_ed25519(public_key: bytes, statement: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        VerifyKey(public_key).verify(statement, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


# ---- libp2p peers: the key is in the peer id -------------------------------------------


class CallableSigner:
    """A :class:`Signer` around a signing function (e.g. a libp2p private key's ``sign``)."""

    def __init__(self, peer_id: PeerId, sign: Callable[[bytes], bytes]) -> None:
        self._peer_id = peer_id
        self._sign = sign

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def sign(self, statement: bytes) -> bytes:
        return bytes(self._sign(statement))


def public_key_of_peer_id(peer_id: object) -> bytes | None:
    """The Ed25519 public key inside a base58 libp2p peer id, or None if it holds none."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= 64:
        return None
    number = 0
    for char in peer_id:
        value = _BASE58_VALUE.get(char)
        if value is None:
            return None
        number = number * 58 + value
    zeros = len(peer_id) - len(peer_id.lstrip("1"))
    raw = b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(raw) != len(_ED25519_ID_PREFIX) + 32 or not raw.startswith(_ED25519_ID_PREFIX):
        return None
    return raw[len(_ED25519_ID_PREFIX) :]


def is_peer_id(value: object) -> bool:
    """True for a base58 libp2p peer id holding an Ed25519 key (what our peers use)."""
    return public_key_of_peer_id(value) is not None


class PeerIdVerifier:
    """Verifies with the key that the origin's libp2p peer id encodes."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._verdicts = _Verdicts(cache_size)

    def verify(self, origin: PeerId, statement: bytes, signature: bytes) -> bool:
        key = public_key_of_peer_id(origin)
        if key is None:
            return False
        return self._verdicts.check(
            origin, statement, signature, lambda: _verify_ed25519(key, statement, signature)
        )


# ---- the simulator: keys derived from the run seed --------------------------------------


class _KeySigner:
    def __init__(self, peer_id: PeerId, key: SigningKey) -> None:
        self._peer_id = peer_id
        self._key = key

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def sign(self, statement: bytes) -> bytes:
        return bytes(self._key.sign(statement).signature)


class SeedKeys:
    """Every simulated peer's Ed25519 key, derived from the run seed and the peer id.

    ``signer(peer)`` signs as ``peer``; :attr:`verifier` checks any origin against the key
    derived for it. Only the simulator, which plays every peer, holds this object: a
    simulated peer signs only through the signer it was given.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._keys: dict[PeerId, SigningKey] = {}
        self._public: dict[PeerId, bytes] = {}
        self.verifier = _SeedVerifier(self)

    def _key(self, peer: PeerId) -> SigningKey:
        key = self._keys.get(peer)
        if key is None:
            material = msgpack.packb(["gossiplearn/sim-key/1", self.seed, peer])
            key = SigningKey(hashlib.blake2b(material, digest_size=32).digest())
            self._keys[peer] = key
        return key

    def public_key(self, peer: PeerId) -> bytes:
        public = self._public.get(peer)
        if public is None:
            public = self._public[peer] = bytes(self._key(peer).verify_key)
        return public

    def signer(self, peer: PeerId) -> Signer:
        return _KeySigner(peer, self._key(peer))


class _SeedVerifier:
    def __init__(self, keys: SeedKeys, cache_size: int = CACHE_SIZE) -> None:
        self._keys = keys
        self._verdicts = _Verdicts(cache_size)

    def verify(self, origin: PeerId, statement: bytes, signature: bytes) -> bool:
        if isinstance(origin, bool) or not isinstance(origin, int | str):
            return False
        return self._verdicts.check(
            origin,
            statement,
            signature,
            lambda: _verify_ed25519(self._keys.public_key(origin), statement, signature),
        )
